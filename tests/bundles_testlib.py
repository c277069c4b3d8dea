"""Small bundles for the tests (unit and integration), written with the exporter's low-level API.

`write_version(base, version, scale)` publishes a model whose outputs are scaled by `scale`, so a
test can tell versions apart by their answers:
- `serving_default` (predict, raw receiver): x float32 [-1, 2] -> y = x * scale
- `classify` (classify, parsing receiver over features a, b): scores softmax([a, b] * scale), classes a/b
- `regress` (regress, parsing receiver): outputs (a + b) * scale
"""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np

from exporter import bundle, dtypes, storage
from exporter.features import FixedLenFeature
from exporter.graph import GraphBuilder
from exporter.ops import core, math
from exporter.ops.parsing import parse_example
from exporter.outputs import ClassificationOutput, PredictOutput, RegressionOutput
from protos.tessera import bundle_pb2


def build_meta_graph(scale: float) -> tuple[bundle_pb2.MetaGraph, dict[str, np.ndarray]]:
    g = GraphBuilder()
    s = g.variable(np.array([scale], np.float32), "scale")
    x = g.placeholder(dtypes.FLOAT, (None, 2), name="x")
    y = math.mul(x, s)
    serialized = g.placeholder(dtypes.STRING, (None,), name="examples")
    spec = {"a": FixedLenFeature((1,), dtypes.FLOAT), "b": FixedLenFeature((1,), dtypes.FLOAT)}
    feats = parse_example(serialized, spec)
    ab = math.mul(core.concat([feats["a"], feats["b"]], axis=1), s)
    scores = math.softmax(ab)
    classes = core.broadcast_to_batch(g.constant(["a", "b"]), scores)
    total = core.squeeze(math.reduce_sum(ab, axis=1, keepdims=True), axis=1)
    signatures = {
        "serving_default": PredictOutput({"y": y}).as_signature_def({"x": x}),
        "classify": ClassificationOutput(scores=scores, classes=classes).as_signature_def({"inputs": serialized}),
        "regress": RegressionOutput(total).as_signature_def({"inputs": serialized}),
    }
    meta = bundle_pb2.MetaGraph(format_version=1, graph=g.to_proto(), tags=["serve"])
    for key, sig in signatures.items():
        meta.signatures[key].CopyFrom(sig)
    return meta, g.variables


def write_version(base: str | pathlib.Path, version: int, scale: float, *, weights: int = 0) -> str:
    """With `weights`, one more float32 variable of that many values (unused by the graph): a
    model whose resident bytes are mostly its variables, as a real one's are."""
    meta, variables = build_meta_graph(scale)
    if weights:
        variables = {**variables, "weights": np.zeros(weights, np.float32)}
    with tempfile.TemporaryDirectory() as staging:
        bundle.write_bundle(staging, meta, variables, {}, {})
        return storage.publish(staging, str(base), version)


def corrupt_version(base: str | pathlib.Path, version: int) -> None:
    """Publishes a version whose variable file does not match its manifest checksum."""
    path = pathlib.Path(write_version(base, version, 1.0))
    target = next((path / "variables").glob("*.npy"))
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
