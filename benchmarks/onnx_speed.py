"""What a Tessera bundle adds around an ONNX model, and ONNX Runtime against our numpy ops.

    python -m benchmarks.onnx_speed [--iterations N] [--rounds R]

Two models built with onnx.helper (random weights; no torch): an MLP 64 -> 256 -> 256 -> 10 (Gemm,
Relu, Softmax) and a small CNN ([batch, 1, 28, 28] -> Conv 8x3x3, Relu, MaxPool 2 -> Conv 16x3x3,
Relu, MaxPool 2 -> Flatten -> Gemm 10, Softmax). For batch 1, 8, 64 and 256 it times, side by side
in one process and interleaved round by round (so drift on a shared machine hits every column):

- ``bare``: `onnxruntime.InferenceSession.run` on the same .onnx, with the session options the
  bundle's session uses (exporter.onnx_model: no spinning; intra-op threads ``--threads``);
- ``ort-default``: the same, with onnxruntime's default session options (all cores, spinning);
- ``onnx_model``: `exporter.onnx_model.OnnxModel.run` (the wrapper alone: bytes/str, errors);
- ``bundle``: the model imported (exporter.importers.onnx), exported, read back from disk and
  loaded through `exporter.servable.load_servable`, then `servable.run("predict", feeds)`;
- for the MLP, ``numpy``: the same weights as a graph of our numpy ops (exporter.ops.math) in a
  bundle, run by the numpy runtime.

Each cell is the best round's mean time per call (the least disturbed by other processes: what the
bundle adds is the same Python work every call, so the minimum estimates it best). ``--threads 1``
(the default) keeps onnxruntime's thread-pool wake-ups out of the comparison, which on a shared
2-core machine measure the neighbours more than the model; the model then runs in the calling
thread, so the clock is that thread's CPU time (``--wall`` for wall time). The ``ort-default``
column always uses all cores, so under thread CPU time it shows only the calling thread's share. Prints microseconds per call, the
bundle's overhead over ``bare`` (absolute and in %), and numpy / bundle. Not a test: nothing is
asserted; expect noise of a few % anyway.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from exporter import dtypes  # noqa: E402
from exporter.export import export_model  # noqa: E402
from exporter.importers.onnx import import_onnx  # noqa: E402
from exporter.onnx_model import OnnxModel, _session_options  # noqa: E402
from exporter.ops import math as tfm  # noqa: E402
from exporter.outputs import PredictOutput  # noqa: E402
from exporter.receivers import build_raw_serving_input_receiver_fn  # noqa: E402
from exporter.servable import LoadOptions, load_servable  # noqa: E402

BATCHES = (1, 8, 64, 256)
RNG = np.random.default_rng(0)
MLP_SIZES = (64, 256, 256, 10)


def _model(nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray]) -> bytes:
    graph = helper.make_graph(nodes, "bench", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def mlp_weights() -> list[tuple[np.ndarray, np.ndarray]]:
    layers = []
    for n_in, n_out in zip(MLP_SIZES, MLP_SIZES[1:], strict=False):
        scale = np.float32(1 / np.sqrt(n_in))
        layers.append(((RNG.normal(size=(n_in, n_out)) * scale).astype(np.float32), RNG.normal(size=n_out).astype(np.float32)))
    return layers


def mlp_onnx(layers: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    nodes, weights, x = [], {}, "x"
    for i, (w, b) in enumerate(layers):
        weights[f"w{i}"], weights[f"b{i}"] = w, b
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"]))
        x = f"h{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=1))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", MLP_SIZES[0]])],
                  [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", MLP_SIZES[-1]])], weights)  # fmt: skip


def cnn_onnx() -> bytes:
    def conv(c_out: int, c_in: int) -> np.ndarray:
        return (RNG.normal(size=(c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)

    weights = {
        "k1": conv(8, 1), "c1": np.zeros(8, np.float32), "k2": conv(16, 8), "c2": np.zeros(16, np.float32),
        "w": (RNG.normal(size=(16 * 5 * 5, 10)) / 20).astype(np.float32), "b": np.zeros(10, np.float32),
    }  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "k1", "c1"], ["a1"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "k2", "c2"], ["a2"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                  [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])], weights)  # fmt: skip


def numpy_mlp_fn(layers: list[tuple[np.ndarray, np.ndarray]]) -> Callable:
    def model_fn(g, features):  # type: ignore[no-untyped-def]
        x = features["x"]
        for i, (w, b) in enumerate(layers):
            x = tfm.bias_add(tfm.matmul(x, g.variable(w, f"w{i}")), g.variable(b, f"b{i}"))
            if i < len(layers) - 1:
                x = tfm.relu(x)
        return {"predict": PredictOutput({"probabilities": tfm.softmax(x)})}

    return model_fn


CLOCK = time.perf_counter


def mean_call(fn: Callable[[], object], iterations: int) -> float:
    start = CLOCK()
    for _ in range(iterations):
        fn()
    return (CLOCK() - start) / iterations


def bench(name: str, model: bytes, shape: tuple[int, ...], tmp: str, iterations: int, rounds: int,
          numpy_fn: Callable | None, threads: int) -> None:  # fmt: skip
    options = LoadOptions(intra_op_threads=threads)
    imported = import_onnx(model)
    path = export_model(f"{tmp}/{name}", imported.model_fn, imported.raw_receiver_fn())
    servable = load_servable("tensorflow", path, options)
    wrapper = OnnxModel(model, options=options)
    bare = ort.InferenceSession(model, sess_options=_session_options(options), providers=["CPUExecutionProvider"])
    default = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    numpy_servable = None
    if numpy_fn is not None:
        receiver = build_raw_serving_input_receiver_fn({"x": (dtypes.FLOAT, (None, shape[0]))})
        numpy_servable = load_servable("tensorflow", export_model(f"{tmp}/{name}-numpy", numpy_fn, receiver))
    for batch in BATCHES:
        x = RNG.normal(size=(batch, *shape)).astype(np.float32)
        feeds = {"x": x}
        calls: dict[str, Callable[[], object]] = {
            "bare": lambda: bare.run(None, feeds),  # noqa: B023 - called within this iteration
            "ort-default": lambda: default.run(None, feeds),  # noqa: B023
            "onnx_model": lambda: wrapper.run(feeds),  # noqa: B023
            "bundle": lambda: servable.run("predict", feeds),  # noqa: B023
        }
        if numpy_servable is not None:
            calls["numpy"] = lambda: numpy_servable.run("predict", feeds)  # noqa: B023
            got = numpy_servable.run("predict", feeds)["probabilities"]
            np.testing.assert_allclose(got, servable.run("predict", feeds)["probabilities"], rtol=1e-4, atol=1e-6)
        n = max(20, iterations // batch)
        times: dict[str, list[float]] = {k: [] for k in calls}
        for fn in calls.values():
            mean_call(fn, n // 10 + 1)  # warm-up
        for _ in range(rounds):
            for key, fn in calls.items():
                times[key].append(mean_call(fn, n))
        us = {k: min(v) * 1e6 for k, v in times.items()}
        extra = us["bundle"] - us["bare"]
        line = (f"{name:<4} {batch:>5} {us['bare']:>10.1f} {us['ort-default']:>12.1f} {us['onnx_model']:>11.1f} {us['bundle']:>10.1f} "
                f"{extra:>+9.1f} {100 * extra / us['bare']:>+7.1f}%")  # fmt: skip
        if "numpy" in us:
            line += f" {us['numpy']:>10.1f} {us['numpy'] / us['bundle']:>8.2f}x"
        print(line, flush=True)
    servable.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bundle vs bare onnxruntime; ONNX vs numpy ops")
    parser.add_argument("--iterations", type=int, default=4000, help="calls per round at batch 1 (fewer at larger batches)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the best is printed")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (bare and bundle)")
    parser.add_argument("--wall", action="store_true", help="wall-clock time even with --threads 1")
    args = parser.parse_args(argv)
    global CLOCK
    if args.threads == 1 and not args.wall:
        # One intra-op thread computes in the calling thread: its CPU time is the whole cost, and
        # unlike wall time it does not count the time other processes held the core.
        CLOCK = time.thread_time
        try:  # and numpy's BLAS on one thread too, so both runtimes are timed on one core
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
        except ImportError:
            print("(threadpoolctl missing: numpy's BLAS may use more threads than onnxruntime)")
    clock = "thread CPU time" if CLOCK is time.thread_time else "wall time"
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op thread(s); microseconds per call, {clock} "
          f"(best of {args.rounds} interleaved rounds)")  # fmt: skip
    print(f"{'':<4} {'batch':>5} {'bare':>10} {'ort-default':>12} {'onnx_model':>11} {'bundle':>10} {'+bundle':>9} {'':>8} "
          f"{'numpy':>10} {'numpy/onnx':>9}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        layers = mlp_weights()
        bench("mlp", mlp_onnx(layers), (MLP_SIZES[0],), tmp, args.iterations, args.rounds, numpy_mlp_fn(layers), args.threads)
        bench("cnn", cnn_onnx(), (1, 28, 28), tmp, args.iterations // 4, args.rounds, None, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
