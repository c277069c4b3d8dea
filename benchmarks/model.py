"""The benchmark model: a DNN 64 -> 256 -> 256 -> 10 (float32, relu, softmax), exported with our exporter.

Random weights from a fixed seed, so every server in a run (and every run) computes the same thing.
Signature `serving_default` (predict): raw receiver `x` float32 [-1, 64] -> `probabilities` [-1, 10].
`export_onnx` writes the same DNN (same weights, same names) as an ONNX model in Triton's layout.

    python -m benchmarks.model --base /tmp/bench_models/bench   # publishes version 1
    python -m benchmarks.model --base /tmp/bench_models/bench_onnx --onnx
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np

from exporter import bundle, dtypes, storage
from exporter.graph import GraphBuilder
from exporter.ops import math
from exporter.outputs import PredictOutput
from protos.tessera import bundle_pb2

MODEL_NAME = "bench"
SIGNATURE = "serving_default"
INPUT = "x"
OUTPUT = "probabilities"
LAYERS = (64, 256, 256, 10)
SEED = 20240601


def build_meta_graph(seed: int = SEED) -> tuple[bundle_pb2.MetaGraph, dict[str, np.ndarray]]:
    """The graph and its variables; Glorot-uniform weights so the softmax is not saturated."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, LAYERS[0]), name=INPUT)
    h = x
    last = len(LAYERS) - 2
    for i, (fan_in, fan_out) in enumerate(zip(LAYERS[:-1], LAYERS[1:], strict=True)):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        bias = rng.uniform(-0.1, 0.1, (fan_out,)).astype(np.float32)
        h = math.matmul(h, g.variable(kernel, f"dense_{i}.kernel"))
        h = math.bias_add(h, g.variable(bias, f"dense_{i}.bias"))
        h = math.relu(h) if i < last else math.softmax(h, name=OUTPUT)
    meta = bundle_pb2.MetaGraph(format_version=1, graph=g.to_proto(), tags=["serve"])
    meta.signatures[SIGNATURE].CopyFrom(PredictOutput({OUTPUT: h}).as_signature_def({INPUT: x}))
    return meta, g.variables


def export(base: str | pathlib.Path, version: int = 1, seed: int = SEED) -> str:
    """Publishes the model as `base/<version>` (replacing nothing); returns the version's path."""
    meta, variables = build_meta_graph(seed)
    with tempfile.TemporaryDirectory() as staging:
        bundle.write_bundle(staging, meta, variables, {}, {})
        return storage.publish(staging, str(base), version)


def export_onnx(base: str | pathlib.Path, version: int = 1, seed: int = SEED) -> str:
    """Writes the same DNN as `<base>/<version>/model.onnx` (opset 17, symbolic batch); returns the
    version's path. Written into a temporary sibling and renamed, like an export should be."""
    from onnx import TensorProto, helper, numpy_helper

    _, variables = build_meta_graph(seed)
    nodes, initializers, h = [], [], INPUT
    last = len(LAYERS) - 2
    for i in range(len(LAYERS) - 1):
        kernel, bias = f"dense_{i}.kernel", f"dense_{i}.bias"
        initializers += [numpy_helper.from_array(variables[kernel], kernel), numpy_helper.from_array(variables[bias], bias)]
        nodes += [helper.make_node("MatMul", [h, kernel], [f"mm_{i}"]), helper.make_node("Add", [f"mm_{i}", bias], [f"z_{i}"])]
        h = f"z_{i}"
        if i < last:
            nodes.append(helper.make_node("Relu", [h], [f"h_{i}"]))
            h = f"h_{i}"
    nodes.append(helper.make_node("Softmax", [h], [OUTPUT], axis=-1))
    graph = helper.make_graph(
        nodes, MODEL_NAME,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", LAYERS[0]])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", LAYERS[-1]])],
        initializers,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 9
    final = pathlib.Path(base) / str(version)
    staging = pathlib.Path(base) / f"{storage.TEMP_PREFIX}{version}"
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(onnx_model.SerializeToString())
    staging.rename(final)
    return str(final)


def reference_predict(x: np.ndarray, seed: int = SEED) -> np.ndarray:
    """The same DNN in plain numpy, to check a server's answer."""
    meta, variables = build_meta_graph(seed)
    h = x
    for i in range(len(LAYERS) - 1):
        h = h @ variables[f"dense_{i}.kernel"] + variables[f"dense_{i}.bias"]
        if i < len(LAYERS) - 2:
            h = np.maximum(h, 0)
    e = np.exp(h - h.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="model base path; version 1 is published under it")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--onnx", action="store_true", help="write Triton's layout (model.onnx) instead")
    args = parser.parse_args()
    print((export_onnx if args.onnx else export)(args.base, seed=args.seed))


if __name__ == "__main__":
    main()
