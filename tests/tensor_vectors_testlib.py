"""The TF-computed TensorProto vectors (tests/testdata/tensor_proto.json) as arrays, and an exact
array comparison (dtype, shape, values, NaNs and string bytes)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def expected_array(spec: dict[str, Any]) -> np.ndarray:
    """The array TensorFlow's make_ndarray returned, rebuilt from the JSON description."""
    shape = tuple(spec["shape"])
    if spec["dtype"] == "string":
        out = np.empty(len(spec["b64"]), dtype=object)
        out[:] = [base64.b64decode(v) for v in spec["b64"]]
        return out.reshape(shape)
    if spec["dtype"].startswith("complex"):
        return np.array([complex(re, im) for re, im in spec["values"]], dtype=spec["dtype"]).reshape(shape)
    return np.array(spec["values"], dtype=spec["dtype"]).reshape(shape)


def assert_same_array(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.ravel().tolist() == expected.ravel().tolist()
        assert all(type(v) is bytes for v in actual.ravel())
    else:
        np.testing.assert_array_equal(actual, expected)
