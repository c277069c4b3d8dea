"""tf.Example parsing: `exporter.example_parser.parse_example` against TensorFlow's parser on the same bytes.

    python -m benchmarks.parse_speed [--features 10] [--repeat 200]

Prints µs per call (the median) at batch 1 and 256 (10 float features of one value each: the shape of the iris and
diabetes examples), for our parser, for protobuf's own decoding of the same Examples one by one
(what any parser built on protobuf messages costs at least), and for `tf.io.parse_example` inside a
`tf.function`, where TensorFlow is installed (the `tensorflow` extra); ratios are to TensorFlow.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from exporter import dtypes
from exporter.example_parser import ExampleParser
from exporter.features import FixedLenFeature, VarLenFeature
from protos.tessera import example_pb2


def _examples(n: int, features: int, rng: np.random.Generator) -> list[bytes]:
    out = []
    for _ in range(n):
        ex = example_pb2.Example()
        for j in range(features):
            ex.features.feature[f"f{j}"].float_list.value.append(float(rng.normal()))
        ex.features.feature["tags"].bytes_list.value.extend([b"a", b"bc"][: int(rng.integers(0, 3))])
        out.append(ex.SerializeToString())
    return out


def _best_us(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    spec = {f"f{j}": FixedLenFeature((1,), dtypes.FLOAT) for j in range(args.features)}
    spec_varlen = {**spec, "tags": VarLenFeature(dtypes.STRING)}
    try:
        import tensorflow as tf  # the `tensorflow` extra; optional here
    except ImportError:
        tf = None
    print(f"{'batch':>5} {'spec':<14} {'tessera µs':>11} {'protobuf µs':>12} {'tf µs':>9} {'tessera/tf':>10}")
    for batch in (1, 256):
        blobs = _examples(batch, args.features, rng)
        for name, s in (("dense", spec), ("dense+varlen", spec_varlen)):
            parser = ExampleParser(s)  # what a servable's ParseExample node holds
            ours = _best_us(lambda parser=parser, blobs=blobs: parser(blobs), args.repeat)
            floor = _best_us(lambda blobs=blobs: [example_pb2.Example.FromString(b) for b in blobs], args.repeat)
            theirs = float("nan")
            if tf is not None:
                tf_spec = {k: tf.io.FixedLenFeature([1], tf.float32) for k in spec}
                if "tags" in s:
                    tf_spec["tags"] = tf.io.VarLenFeature(tf.string)
                fn = tf.function(lambda x, tf_spec=tf_spec: tf.io.parse_example(x, tf_spec))
                tensor = tf.constant(blobs)
                theirs = _best_us(lambda fn=fn, tensor=tensor: fn(tensor), args.repeat)
            print(f"{batch:>5} {name:<14} {ours:>11.1f} {floor:>12.1f} {theirs:>9.1f} {ours / theirs:>10.2f}")


if __name__ == "__main__":
    main()
