"""cluster.client.tensors: the same bytes as TensorFlow's make_tensor_proto, and make_ndarray."""

from __future__ import annotations

import base64
import json
import pathlib

import numpy as np
import pytest

from cluster.client.tensors import make_ndarray, make_tensor_proto
from protos.tensorflow.core.framework import tensor_pb2, types_pb2
from tests.tensor_vectors_testlib import assert_same_array, expected_array


def test_matches_tensorflow_bytes_on_every_reference_case(testdata_dir: pathlib.Path) -> None:
    cases = json.loads((testdata_dir / "tensor_proto.json").read_text())["cases"]
    for case in cases:
        expected = expected_array(case["array"])
        data = base64.b64decode(case["proto_b64"])
        if case.get("form") == "broadcast_last_value":
            # TF's make_tensor_proto([1.0], shape=...) sends one value for the whole shape.
            proto = make_tensor_proto(expected.reshape(-1)[:1], shape=expected.shape)
        else:
            proto = make_tensor_proto(expected, use_tensor_content=case.get("form") != "typed_val")
        assert proto.SerializeToString() == data, case["array"]
        # And make_ndarray gives TF's array back from TF's bytes.
        assert_same_array(make_ndarray(tensor_pb2.TensorProto.FromString(data)), expected)


def test_python_values_are_inferred_like_tensorflow() -> None:
    assert make_tensor_proto([1.5, 2.0]).dtype == types_pb2.DT_FLOAT
    assert make_tensor_proto([1, 2]).dtype == types_pb2.DT_INT32
    assert make_tensor_proto([1, 2**40]).dtype == types_pb2.DT_INT64
    assert make_tensor_proto([True]).dtype == types_pb2.DT_BOOL
    strings = make_tensor_proto(["a", "é"])
    assert strings.dtype == types_pb2.DT_STRING and list(strings.string_val) == [b"a", "é".encode()]
    # ndarrays keep their dtype.
    assert make_tensor_proto(np.array([1.0, 2.0])).dtype == types_pb2.DT_DOUBLE
    scalar = make_tensor_proto(3.5)
    assert scalar.HasField("tensor_shape") and len(scalar.tensor_shape.dim) == 0
    assert list(scalar.float_val) == [3.5]


def test_explicit_dtype_in_every_spelling() -> None:
    for dtype in (types_pb2.DT_INT64, np.int64, "int64", "DT_INT64"):
        proto = make_tensor_proto([[1, 2], [3, 4]], dtype=dtype)
        assert proto.dtype == types_pb2.DT_INT64
        assert make_ndarray(proto).tolist() == [[1, 2], [3, 4]]
    with pytest.raises(TypeError, match="non-integer"):
        make_tensor_proto([1.5], dtype="int32")
    assert make_tensor_proto([2.0], dtype="int32").int_val[:] == [2]


def test_tensor_content_only_for_more_than_one_element_of_packed_types() -> None:
    assert make_tensor_proto(np.float32([1, 2])).tensor_content
    assert not make_tensor_proto(np.float32([1])).tensor_content
    assert not make_tensor_proto(np.array([True, False])).tensor_content
    assert not make_tensor_proto(np.float32([1, 2]), use_tensor_content=False).tensor_content


def test_shape_argument() -> None:
    proto = make_tensor_proto([1, 2, 3, 4, 5, 6], dtype="float32", shape=[2, 3])
    assert make_ndarray(proto).shape == (2, 3)
    broadcast = make_tensor_proto([7], dtype="int64", shape=[3])
    assert list(broadcast.int64_val) == [7] and make_ndarray(broadcast).tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="too many values"):
        make_tensor_proto([1, 2, 3], shape=[2])


def test_bfloat16_on_request() -> None:
    proto = make_tensor_proto([1.5, -2.5], dtype=types_pb2.DT_BFLOAT16)
    assert proto.dtype == types_pb2.DT_BFLOAT16 and list(proto.half_val) == [0x3FC0, 0xC020]
    assert make_ndarray(proto).tolist() == [1.5, -2.5]


def test_make_ndarray_is_writable_and_empty_and_scalar() -> None:
    out = make_ndarray(make_tensor_proto(np.arange(6, dtype=np.int32).reshape(2, 3)))
    out[0, 0] = 42  # TF's make_ndarray returns a writable array; so do we.
    assert out.flags.writeable and out.shape == (2, 3)
    empty = make_ndarray(make_tensor_proto(np.zeros((0, 4), np.float32)))
    assert empty.shape == (0, 4) and empty.dtype == np.float32
    assert make_ndarray(make_tensor_proto(np.int64(5))).shape == ()
