"""Predict on an imported Keras Conv2D SavedModel vs the same SavedModel in TensorFlow, in process.

    python -m benchmarks.savedmodel_speed [--seconds S]

Builds the Conv2D model of the importer's tests (28x28x1 -> Conv2D(8) -> MaxPool -> Conv2D(16) ->
Dense(10), Keras `model.export`), imports it with `exporter.importers.savedmodel` (tessera import),
and times, side by side in one process at batch 1 and 64:

- Tessera: the bundle loaded as a replica loads it (`load_servable("tensorflow", ...)`), then
  `servable.run("serving_default", feeds)` (feed checks, the graph plan, the ONNX node on
  onnxruntime);
- TensorFlow: `tf.saved_model.load(...).signatures["serving_default"](x)` on the original.

Both get the same threads (TF's intra/inter-op and onnxruntime's intra-op set to --threads). The
two are measured in alternating rounds so machine noise hits both; the median round is reported.
Needs the tensorflow extra. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCHES = (1, 64)


def _per_call(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per call of `fn`, over about `seconds` of calls."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return elapsed / calls


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both runtimes")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from exporter.importers.savedmodel import import_saved_model
    from exporter.servable import LoadOptions, load_servable
    from tests.exporter.savedmodel_models import conv2d

    with tempfile.TemporaryDirectory() as tmp:
        base = conv2d(pathlib.Path(tmp) / "conv")
        (result,) = import_saved_model(str(base), f"{tmp}/bundles")
        servable = load_servable("tensorflow", result.path, LoadOptions(intra_op_threads=args.threads))
        function = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
        (alias,) = servable.signatures["serving_default"].inputs
        print(f"{'batch':>5} {'tessera us':>11} {'tensorflow us':>14} {'tessera/tf':>11}  (median of {args.rounds} rounds)")
        for batch in BATCHES:
            x = np.random.RandomState(batch).rand(batch, 28, 28, 1).astype(np.float32)
            tx = tf.constant(x)
            ours = servable.run("serving_default", {alias: x})["output_0"]
            np.testing.assert_allclose(ours, function(**{alias: tx})["output_0"].numpy(), atol=1e-5)
            rounds = []
            for _ in range(args.rounds):
                t_ours = _per_call(lambda x=x: servable.run("serving_default", {alias: x}), args.seconds)
                t_tf = _per_call(lambda tx=tx: function(**{alias: tx})["output_0"].numpy(), args.seconds)
                rounds.append((t_ours, t_tf))
            t_ours = statistics.median(r[0] for r in rounds)
            t_tf = statistics.median(r[1] for r in rounds)
            print(f"{batch:>5} {t_ours * 1e6:>11.1f} {t_tf * 1e6:>14.1f} {t_ours / t_tf:>11.2f}")
        servable.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
