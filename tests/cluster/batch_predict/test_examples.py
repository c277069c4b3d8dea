"""Serialized tf.Examples built for a whole batch in numpy: the same Examples protobuf builds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cluster.batch_predict.examples import serialize, varints
from cluster.batch_predict.feeding import serialize_rows
from protos.tessera import example_pb2


def test_varints_match_protobuf() -> None:
    values = np.array([0, 1, 127, 128, 300, 2**35, 2**63 - 1, -1, -(2**63)], np.int64)
    counts, data = varints(values)
    expected = []
    for v in values.tolist():
        message = example_pb2.Int64List(value=[v]).SerializeToString()  # 0x0A len <varint>
        expected.append(message[2:])
    assert counts.tolist() == [len(e) for e in expected]
    assert data.tobytes() == b"".join(expected)


def _parsed(blobs: np.ndarray) -> list[example_pb2.Example]:
    return [example_pb2.Example.FromString(b) for b in blobs]


def test_every_handled_type_gives_protobufs_examples() -> None:
    rng = np.random.default_rng(0)
    n = 300
    ints = rng.integers(-(2**40), 2**40, n)
    ints[:3] = [0, -1, 2**62]
    floats = rng.normal(size=n).astype(np.float32)
    floats[5] = np.nan
    batch = pa.RecordBatch.from_pydict({
        "f": pa.array(floats.tolist(), pa.float32(), mask=np.arange(n) % 7 == 0),
        "d": pa.array(rng.normal(size=n)),
        "i": pa.array(ints),
        "b": pa.array(np.arange(n) % 2 == 0),
        "s": pa.array([None if i % 5 == 0 else "x" * (i % 200) for i in range(n)]),  # lengths past 127
        "raw": pa.array([bytes([i % 256]) * 3 for i in range(n)], pa.binary()),
        "vec": pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=3 * n).astype(np.float32)), 3),
        "ids": pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(0, 10**6, 2 * n)), 2),
        "a-long-feature-name" * 10: pa.array(np.ones(n, np.float32)),  # a key of 190 bytes
    })
    names = batch.schema.names
    fast = serialize(batch, names)
    assert fast is not None and fast.dtype == object and len(fast) == n
    assert _parsed(fast) == _parsed(serialize_rows(batch, names))


def test_types_it_does_not_handle_fall_back() -> None:
    ragged = pa.RecordBatch.from_pydict({"v": pa.array([[1.0], [2.0, 3.0]])})
    assert serialize(ragged, ["v"]) is None
    nested = pa.RecordBatch.from_pydict({"v": pa.array([[None, 1.0], [2.0, 3.0]], pa.list_(pa.float64(), 2))})
    assert serialize(nested, ["v"]) is None


@pytest.mark.parametrize("rows", [0, 1])
def test_tiny_batches(rows: int) -> None:
    batch = pa.RecordBatch.from_pydict({"a": pa.array([1.5] * rows, pa.float64()),
                                        "s": pa.array(["q"] * rows, pa.string())})
    out = serialize(batch, ["a", "s"])
    assert out is not None and len(out) == rows
    assert _parsed(out) == _parsed(serialize_rows(batch, ["a", "s"]))
