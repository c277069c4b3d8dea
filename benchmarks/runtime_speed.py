"""Speed of the bundle runtime on the two example models, at batch 1 and batch 256 (their
estimators run as one ONNX node, exporter.ops.onnx, since the scikit-learn importer uses skl2onnx).

    python -m benchmarks.runtime_speed [--iterations N]
    python benchmarks/runtime_speed.py

Exports iris and diabetes (examples/export_models.py) into a temporary directory, loads them as a
server would (read_bundle + Runtime.from_bundle), and times `Runtime.run` on the `predict`
signature (a float32 matrix) and the `serving_default` signature (serialized tf.Examples, parsed
in the graph) with time.perf_counter over a fixed number of iterations after a warm-up.
Prints mean microseconds per call and rows per second. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from examples import export_models  # noqa: E402
from exporter.bundle import read_bundle  # noqa: E402
from exporter.runtime import Runtime  # noqa: E402

BATCHES = (1, 256)


def time_calls(runtime: Runtime, key: str, feeds: Mapping[str, np.ndarray], iterations: int) -> float:
    """Mean seconds per `runtime.run(key, feeds)` after iterations // 10 + 1 warm-up calls."""
    for _ in range(iterations // 10 + 1):
        runtime.run(key, feeds)
    start = time.perf_counter()
    for _ in range(iterations):
        runtime.run(key, feeds)
    return (time.perf_counter() - start) / iterations


def feeds_for(trained: export_models.Trained, key: str, batch: int) -> dict[str, np.ndarray]:
    # Held-out rows, repeated up to the batch size.
    rows = np.resize(trained.x_test, (batch, trained.x_test.shape[1]))
    if key == "predict":
        return {"x": rows.astype(np.float32)}
    names = trained.model.feature_names or ()
    return {"inputs": np.array(export_models.serialize_examples(names, rows), dtype=object)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="numpy runtime speed on the example models")
    parser.add_argument("--iterations", type=int, default=2000, help="timed calls per case (batch 1)")
    args = parser.parse_args(argv)
    print(f"{'model':<9} {'signature':<16} {'batch':>5} {'us/call':>10} {'rows/s':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for trained in (export_models.train_iris(), export_models.train_diabetes()):
            path = export_models.export_trained(trained, f"{tmp}/{trained.name}")
            runtime = Runtime.from_bundle(read_bundle(path))
            for key in ("predict", "serving_default"):
                for batch in BATCHES:
                    # Fewer iterations for big batches: about the same wall time per case.
                    iterations = max(args.iterations // (1 if batch == 1 else 10), 20)
                    seconds = time_calls(runtime, key, feeds_for(trained, key, batch), iterations)
                    print(f"{trained.name:<9} {key:<16} {batch:>5} {seconds * 1e6:>10.1f} {batch / seconds:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
