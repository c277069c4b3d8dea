"""exporter.tensor_codec against TensorFlow's own TensorProto bytes and make_ndarray results."""

from __future__ import annotations

import base64
import json
import pathlib
from typing import Any

import numpy as np
import pytest

from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.tensor_codec import proto_to_array
from exporter.tensor_encode import array_to_proto
from protos.tensorflow.core.framework import tensor_pb2
from protos.tessera import warmup_pb2
from tests.tensor_vectors_testlib import assert_same_array, expected_array

MESSAGE_TYPES = [tensor_pb2.TensorProto, warmup_pb2.TensorProto]


def _cases(testdata: pathlib.Path) -> list[dict[str, Any]]:
    return json.loads((testdata / "tensor_proto.json").read_text())["cases"]


def test_every_testdata_case(testdata_dir: pathlib.Path) -> None:
    cases = _cases(testdata_dir)
    assert len(cases) >= 20, "the reference file shrank"
    for i, case in enumerate(cases):
        expected = expected_array(case["array"])
        data = base64.b64decode(case["proto_b64"])
        tf_proto = tensor_pb2.TensorProto.FromString(data)
        assert tf_proto.dtype == case["dtype_enum"], i
        # TensorFlow's bytes decode to TensorFlow's array, through either message type.
        for message_type in MESSAGE_TYPES:
            assert_same_array(proto_to_array(message_type.FromString(data)), expected)
        # Our encoding, in both forms, decodes back to the same array.
        for use_tensor_content in (True, False):
            for message_type in MESSAGE_TYPES:
                ours = array_to_proto(expected, message_type(), use_tensor_content=use_tensor_content)
                assert ours.dtype == case["dtype_enum"], i
                assert_same_array(proto_to_array(message_type.FromString(ours.SerializeToString())), expected)
        # In TF's form, our bytes parse to a proto equal to TF's (not for the broadcast case,
        # where TF sent fewer values than the shape on purpose).
        if case.get("form") != "broadcast_last_value":
            form = bool(tf_proto.tensor_content)
            ours = array_to_proto(expected, tensor_pb2.TensorProto(), use_tensor_content=form)
            assert tensor_pb2.TensorProto.FromString(ours.SerializeToString()) == tf_proto, (i, case["array"])
            assert ours.SerializeToString() == data, (i, case["array"])


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
def test_tensor_content_is_little_endian_and_zero_copy(message_type: type) -> None:
    proto = message_type(dtype=dtypes.INT32, tensor_content=b"\x01\x00\x00\x00\x00\x01\x00\x00")
    proto.tensor_shape.dim.add().size = 2
    out = proto_to_array(proto)
    assert out.tolist() == [1, 256]
    assert not out.flags.writeable  # a view of the message's bytes


@pytest.mark.parametrize("content", [b"\x00" * 7, b"\x00" * 9, b"\x00" * 4])
def test_tensor_content_size_must_match_exactly(content: bytes) -> None:
    proto = tensor_pb2.TensorProto(dtype=dtypes.FLOAT, tensor_content=content)
    proto.tensor_shape.dim.add().size = 2
    with pytest.raises(InvalidInputError, match="tensor_content has"):
        proto_to_array(proto)


def _typed(dtype: int, shape: list[int], **fields: Any) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


def test_tensor_content_wins_over_typed_values() -> None:
    proto = _typed(dtypes.FLOAT, [1], float_val=[9.0], tensor_content=np.float32([2.0]).tobytes())
    assert proto_to_array(proto).tolist() == [2.0]


def test_typed_values_fill_like_tensorflow() -> None:
    assert proto_to_array(_typed(dtypes.INT64, [2, 2])).tolist() == [[0, 0], [0, 0]]
    assert proto_to_array(_typed(dtypes.INT64, [4], int64_val=[1, 2])).tolist() == [1, 2, 2, 2]
    assert proto_to_array(_typed(dtypes.INT64, [2], int64_val=[1, 2, 3])).tolist() == [1, 2]
    assert proto_to_array(_typed(dtypes.STRING, [3], string_val=[b"a", b"b"])).tolist() == [b"a", b"b", b"b"]
    assert proto_to_array(_typed(dtypes.STRING, [2])).tolist() == [b"", b""]
    assert proto_to_array(_typed(dtypes.STRING, [1], string_val=[b"x", b"y"])).tolist() == [b"x"]
    assert proto_to_array(_typed(dtypes.BOOL, [3], bool_val=[True])).tolist() == [True, True, True]
    scalar = proto_to_array(_typed(dtypes.DOUBLE, [], double_val=[2.5]))
    assert scalar.shape == () and scalar.dtype == np.float64 and scalar == 2.5
    empty = proto_to_array(_typed(dtypes.STRING, [0, 3]))
    assert empty.shape == (0, 3) and empty.dtype == object


def test_narrow_integer_types_travel_in_int_val() -> None:
    for dtype, np_dtype, values in [
        (dtypes.INT8, np.int8, [-128, 127]),
        (dtypes.UINT8, np.uint8, [0, 255]),
        (dtypes.INT16, np.int16, [-32768, 32767]),
        (dtypes.UINT16, np.uint16, [0, 65535]),
    ]:
        array = np.array(values, dtype=np_dtype)
        proto = array_to_proto(array, tensor_pb2.TensorProto(), use_tensor_content=False)
        assert proto.dtype == dtype and list(proto.int_val) == values
        assert_same_array(proto_to_array(proto), array)


def test_wide_unsigned_and_complex() -> None:
    u64 = np.array([2**64 - 1, 0], dtype=np.uint64)
    proto = array_to_proto(u64, tensor_pb2.TensorProto(), use_tensor_content=False)
    assert list(proto.uint64_val) == [2**64 - 1, 0]
    assert_same_array(proto_to_array(proto), u64)
    c128 = np.array([[1 + 2j, -3.5j]], dtype=np.complex128)
    proto = array_to_proto(c128, tensor_pb2.TensorProto(), use_tensor_content=False)
    assert list(proto.dcomplex_val) == [1.0, 2.0, 0.0, -3.5]
    assert_same_array(proto_to_array(proto), c128)
    # One complex value repeats over the shape like any other dtype.
    assert proto_to_array(_typed(dtypes.COMPLEX64, [2], scomplex_val=[1.0, -1.0])).tolist() == [1 - 1j, 1 - 1j]


def test_half_bit_patterns() -> None:
    # 0x3C00 = 1.0, 0xC000 = -2.0, 0x7C00 = +inf in IEEE half precision.
    proto = _typed(dtypes.HALF, [3], half_val=[0x3C00, 0xC000, 0x7C00])
    out = proto_to_array(proto)
    assert out.dtype == np.float16 and out.tolist() == [1.0, -2.0, float("inf")]
    back = array_to_proto(out, tensor_pb2.TensorProto(), use_tensor_content=False)
    assert list(back.half_val) == [0x3C00, 0xC000, 0x7C00]


def test_bfloat16_decodes_to_float32_and_encodes_on_request() -> None:
    # 0x3FC0 = 1.5, 0xC020 = -2.5 in bfloat16.
    typed = _typed(dtypes.BFLOAT16, [2], half_val=[0x3FC0, 0xC020])
    content = _typed(dtypes.BFLOAT16, [2], tensor_content=b"\xc0\x3f\x20\xc0")
    for proto in (typed, content):
        out = proto_to_array(proto)
        assert out.dtype == np.float32 and out.tolist() == [1.5, -2.5]
    values = np.array([1.5, -2.5, 1.0 + 2**-8, 1.0 + 3 * 2**-8, np.nan], dtype=np.float32)
    proto = array_to_proto(values, tensor_pb2.TensorProto(), use_tensor_content=False, dtype=dtypes.BFLOAT16)
    assert proto.dtype == dtypes.BFLOAT16
    # Round to nearest even: 1+2^-8 is a tie that goes down to 1.0, 1+3*2^-8 goes up to 1+2^-6.
    assert list(proto.half_val)[:4] == [0x3FC0, 0xC020, 0x3F80, 0x3F82]
    assert np.isnan(proto_to_array(proto)[4])
    packed = array_to_proto(values[:2], tensor_pb2.TensorProto(), dtype=dtypes.BFLOAT16)
    assert packed.tensor_content == b"\xc0\x3f\x20\xc0"


def test_strings_accept_str_and_bytes_and_always_use_string_val() -> None:
    array = np.array(["héllo", b"\x00\xff"], dtype=object)
    proto = array_to_proto(array, tensor_pb2.TensorProto(), use_tensor_content=True)
    assert proto.dtype == dtypes.STRING and not proto.tensor_content
    assert list(proto.string_val) == ["héllo".encode(), b"\x00\xff"]
    assert proto_to_array(proto).tolist() == ["héllo".encode(), b"\x00\xff"]


def test_bool_and_scalar_tensor_content() -> None:
    proto = array_to_proto(np.array([True, False]), tensor_pb2.TensorProto())
    assert proto.tensor_content == b"\x01\x00"
    scalar = array_to_proto(np.float64(2.0), tensor_pb2.TensorProto())
    assert len(scalar.tensor_shape.dim) == 0 and len(scalar.tensor_content) == 8
    assert proto_to_array(scalar).shape == ()


def test_array_to_proto_clears_the_message_first() -> None:
    proto = _typed(dtypes.FLOAT, [5], float_val=[1.0] * 5)
    array_to_proto(np.array([7], dtype=np.int64), proto, use_tensor_content=False)
    assert list(proto.float_val) == [] and list(proto.int64_val) == [7]
    assert [d.size for d in proto.tensor_shape.dim] == [1]


@pytest.mark.parametrize(
    "proto, message",
    [
        (_typed(11, [1], int_val=[1]), "unsupported tensor dtype"),  # DT_QINT8
        (_typed(20, [1]), "unsupported tensor dtype"),  # DT_RESOURCE
        (_typed(0, [1]), "unsupported tensor dtype"),  # DT_INVALID
        (_typed(dtypes.FLOAT, [-1, 2]), "negative"),
        (tensor_pb2.TensorProto(dtype=dtypes.FLOAT, tensor_shape={"unknown_rank": True}), "unknown rank"),
        (_typed(dtypes.STRING, [1], tensor_content=b"\x01a"), "string_val"),
    ],
)
def test_bad_protos_raise_invalid_input(proto: tensor_pb2.TensorProto, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        proto_to_array(proto)


def test_unencodable_array_raises_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="cannot encode"):
        array_to_proto(np.array(["2020-01-01"], dtype="datetime64[D]"), tensor_pb2.TensorProto())
    with pytest.raises(InvalidInputError, match="str or bytes, got int"):
        array_to_proto(np.array([b"a", 3], dtype=object), tensor_pb2.TensorProto())


@pytest.mark.parametrize(
    "array",
    [
        np.linspace(-3, 3, 10_000, dtype=np.float32).reshape(100, 100),
        np.linspace(-3, 3, 9_000, dtype=np.float64),
        (np.arange(5_000) % 3 == 0),
        (np.arange(6_000, dtype=np.float32) + 1j * np.arange(6_000, dtype=np.float32)).astype(np.complex64),
        np.arange(300_000, dtype=np.complex128) * (1 - 2j),
        np.arange(300_000, dtype=np.int64) - 150_000,
    ],
    ids=["float", "double", "bool", "complex64", "complex128-chunked", "int64-chunked"],
)
def test_big_typed_fields_are_merged_as_wire_bytes_with_the_same_message(array: np.ndarray) -> None:
    """Big typed outputs are written as packed wire bytes (and in chunks): the same message as
    extending the repeated field value by value, which is what TF's AsProtoField gives."""
    from protos.tensorflow.core.framework import tensor_pb2

    ours = array_to_proto(array, tensor_pb2.TensorProto(), use_tensor_content=False)
    reference = tensor_pb2.TensorProto(dtype=ours.dtype)
    reference.tensor_shape.CopyFrom(ours.tensor_shape)
    field = {  # the typed field of each dtype
        dtypes.FLOAT: "float_val", dtypes.DOUBLE: "double_val", dtypes.BOOL: "bool_val",
        dtypes.COMPLEX64: "scomplex_val", dtypes.COMPLEX128: "dcomplex_val", dtypes.INT64: "int64_val",
    }[ours.dtype]
    flat = array.reshape(-1)
    values = flat.view(flat.real.dtype) if np.iscomplexobj(flat) else flat
    getattr(reference, field).extend(values.tolist())
    assert ours == reference
    assert_same_array(proto_to_array(ours), array)
