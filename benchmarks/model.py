"""The benchmark model: a DNN 64 -> 256 -> 256 -> 10 (float32, relu, softmax), exported with our exporter.

Random weights from a fixed seed, so every server in a run (and every run) computes the same thing.
Signature `serving_default` (predict): raw receiver `x` float32 [-1, 64] -> `probabilities` [-1, 10].

    python -m benchmarks.model --base /tmp/bench_models/bench   # publishes version 1
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
    args = parser.parse_args()
    print(export(args.base, seed=args.seed))


if __name__ == "__main__":
    main()
