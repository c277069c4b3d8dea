"""Arrow columns to tensors and outputs back to typed columns, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cluster.batch_predict.columns import to_arrow, to_numpy
from exporter.errors import InvalidInputError


def test_columns_become_tensors_batch_first() -> None:
    assert to_numpy(pa.array([1.5, 2.5], pa.float32()), "a").dtype == np.float32
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.int64)), 3)
    assert to_numpy(fixed, "f").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert to_numpy(pa.array([[1.0, 2.0], [3.0, 4.0]]), "l").shape == (2, 2)
    strings = to_numpy(pa.array(["a", "b"]), "s")
    assert strings.dtype == object and strings.tolist() == [b"a", b"b"]
    assert to_numpy(pa.array(["x", "y"]).dictionary_encode(), "d").tolist() == [b"x", b"y"]


def test_nulls_and_ragged_lists_are_refused_by_name() -> None:
    with pytest.raises(InvalidInputError, match="'a' has nulls"):
        to_numpy(pa.array([1.0, None]), "a")
    with pytest.raises(InvalidInputError, match="'l': lists of different lengths"):
        to_numpy(pa.array([[1.0], [2.0, 3.0]]), "l")


def test_outputs_become_typed_columns() -> None:
    ids = to_arrow(np.array([2, 0], np.int64))
    assert ids.type == pa.int64() and ids.to_pylist() == [2, 0]
    scores = to_arrow(np.ones((2, 3), np.float32))
    assert scores.type == pa.list_(pa.float32(), 3)
    cube = to_arrow(np.zeros((2, 2, 3), np.float64))
    assert cube.type == pa.list_(pa.list_(pa.float64(), 3), 2)
    labels = to_arrow(np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object))
    assert labels.type == pa.list_(pa.string(), 2) and labels.to_pylist() == [["a", "b"], ["c", "d"]]
    broadcast = to_arrow(np.broadcast_to(np.array([b"x", b"y"], dtype=object), (3, 2)))
    assert broadcast.type == pa.list_(pa.string(), 2) and broadcast.to_pylist() == [["x", "y"]] * 3
    raw = to_arrow(np.array([b"\xff", b"ok"], dtype=object))
    assert raw.type == pa.binary() and raw.to_pylist() == [b"\xff", b"ok"]
    with pytest.raises(InvalidInputError, match="no batch dimension"):
        to_arrow(np.float32(1.0).reshape(()))
