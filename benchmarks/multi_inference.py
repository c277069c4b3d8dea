"""MultiInference on a replica: two tasks on one parse of the examples vs. a Classify and a Regress.

    python -m benchmarks.multi_inference [--features 10] [--repeat 300]

One bundle, a parsing receiver over `--features` float features, a classify and a regress head on
it (iris-like). Per batch size, side by side in one run, the median µs of
- `separate`: `Replica.run(classify)` then `Replica.run(regress)` on the same examples (what a
  MultiInference of two tasks cost before: the examples parsed once per task);
- `tasks`: `Replica.run((classify, regress))`, the call MultiInference makes now (one parse).
No Ray, no network: the replica's own work, where the parse happens. Rounds alternate the two.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from cluster.replica.replica import Replica
from exporter import bundle, dtypes, storage
from exporter.features import FixedLenFeature
from exporter.graph import GraphBuilder
from exporter.ops import core, math
from exporter.ops.parsing import parse_example
from exporter.outputs import ClassificationOutput, RegressionOutput
from protos.tessera import bundle_pb2, example_pb2

TASKS = ("classify", "regress")


def _write(base: str, features: int) -> str:
    g = GraphBuilder()
    rng = np.random.default_rng(0)
    w = g.variable(rng.normal(size=(features, 3)).astype(np.float32), "w")
    serialized = g.placeholder(dtypes.STRING, (None,), name="examples")
    feats = parse_example(serialized, {f"f{j}": FixedLenFeature((1,), dtypes.FLOAT) for j in range(features)})
    x = core.concat([feats[f"f{j}"] for j in range(features)], axis=1)
    logits = math.matmul(x, w)
    scores = math.softmax(logits)
    classes = core.broadcast_to_batch(g.constant(["a", "b", "c"]), scores)
    total = core.squeeze(math.reduce_sum(logits, axis=1, keepdims=True), axis=1)
    meta = bundle_pb2.MetaGraph(format_version=1, graph=g.to_proto(), tags=["serve"])
    meta.signatures["classify"].CopyFrom(ClassificationOutput(scores=scores, classes=classes).as_signature_def({"inputs": serialized}))
    meta.signatures["regress"].CopyFrom(RegressionOutput(total).as_signature_def({"inputs": serialized}))
    with tempfile.TemporaryDirectory() as staging:
        bundle.write_bundle(staging, meta, g.variables, {}, {})
        return storage.publish(staging, base, 1)


def _examples(n: int, features: int, rng: np.random.Generator) -> np.ndarray:
    column = np.empty(n, dtype=object)
    for i in range(n):
        ex = example_pb2.Example()
        for j in range(features):
            ex.features.feature[f"f{j}"].float_list.value.append(float(rng.normal()))
        column[i] = ex.SerializeToString()
    return column


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as base:
        replica = Replica("m", enable_warmup=False)
        replica.load(1, _write(os.path.join(base, "m"), args.features))
        print(f"load average {os.getloadavg()[0]:.1f}; {args.features} float features; median µs of {args.repeat} rounds")
        print(f"{'batch':>5} {'separate µs':>12} {'tasks µs':>9} {'separate/tasks':>15}")
        for batch in (1, 64, 1024):
            feeds = {"inputs": _examples(batch, args.features, rng)}

            def separate(feeds: dict[str, np.ndarray] = feeds) -> None:
                for key in TASKS:
                    (result,) = replica.run(1, key, [feeds])
                    assert not isinstance(result, BaseException), result

            def tasks(feeds: dict[str, np.ndarray] = feeds) -> None:
                (result,) = replica.run(1, TASKS, [feeds])
                assert not isinstance(result, BaseException), result

            times: dict[str, list[float]] = {"separate": [], "tasks": []}
            separate(), tasks()  # warm
            for _ in range(args.repeat):
                for name, fn in (("separate", separate), ("tasks", tasks)):
                    started = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - started)
            us = {name: float(np.median(t)) * 1e6 for name, t in times.items()}
            print(f"{batch:>5} {us['separate']:>12.1f} {us['tasks']:>9.1f} {us['separate'] / us['tasks']:>15.2f}")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
