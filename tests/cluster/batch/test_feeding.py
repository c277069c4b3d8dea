"""Columns to signature inputs and outputs back to columns, without Ray."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.batch.feeding import as_column, feeds_for, serialize_rows, takes_examples
from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.features import FixedLenFeature, VarLenFeature, parse_example
from exporter.signature import Signature, TensorInfo


def _sig(**inputs: TensorInfo) -> Signature:
    return Signature("s", "tensorflow/serving/predict", inputs, {})


def test_rows_become_examples_that_parse_back() -> None:
    batch = {
        "a": np.array([1.5, np.nan], np.float64),
        "n": np.array([3, 4], np.int64),
        "s": np.array(["x", "y"], dtype=object),
    }
    serialized = serialize_rows(batch, ["a", "n", "s"])
    spec = {"a": VarLenFeature(dtypes.FLOAT), "n": FixedLenFeature((1,), dtypes.INT64),
            "s": FixedLenFeature((), dtypes.STRING)}
    parsed = parse_example(serialized, spec)
    assert parsed["a"].values.tolist() == [1.5]  # NaN: left out of its row
    assert parsed["n"].tolist() == [[3], [4]]
    assert parsed["s"].tolist() == [b"x", b"y"]


def test_examples_signature_is_fed_serialized_rows() -> None:
    sig = _sig(inputs=TensorInfo("in:0", dtypes.STRING, (None,)))
    assert takes_examples(sig)
    feeds = feeds_for(sig, {"a": np.array([1.0, 2.0])}, {})
    assert feeds["inputs"].shape == (2,) and isinstance(feeds["inputs"][0], bytes)


def test_columns_are_stacked_cast_and_checked() -> None:
    sig = _sig(x=TensorInfo("x:0", dtypes.FLOAT, (None, 2)), k=TensorInfo("k:0", dtypes.INT64, (None,)))
    batch = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0]), "k": np.array([7, 8], np.int32)}
    feeds = feeds_for(sig, batch, {"x": ("a", "b")})
    assert feeds["x"].dtype == np.float32 and feeds["x"].tolist() == [[1.0, 3.0], [2.0, 4.0]]
    assert feeds["k"].dtype == np.int64
    with pytest.raises(InvalidInputError, match="no column 'zz'"):
        feeds_for(sig, batch, {"x": ("a", "zz")})
    with pytest.raises(InvalidInputError, match="--input_columns=x:"):
        feeds_for(sig, batch, {})


def test_outputs_as_columns() -> None:
    labels = np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object)
    assert list(as_column(labels)) == [["a", "b"], ["c", "d"]]
    scores = np.ones((2, 3), np.float32)
    assert as_column(scores) is scores
