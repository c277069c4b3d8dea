"""numpy <-> TensorProto, with TensorFlow's semantics.

Duck-typed over any message that has TensorFlow's TensorProto field names (`dtype`,
`tensor_shape.dim[].size`, `tensor_content`, `float_val`, ...): it works on
`protos.tensorflow.core.framework.tensor_pb2.TensorProto` (the gateway, the client) and on
`protos.tessera.wire_pb2.TensorProto` (warmup files) alike, and imports neither, so `exporter`
never registers TensorFlow's proto names.

Decoding follows `Tensor::FromProto` / `make_ndarray`:
- a non-empty `tensor_content` wins and must hold exactly the shape's bytes (little-endian);
- otherwise the dtype's typed field is read: no values give zeros (b"" for strings), fewer values
  than the shape repeat the last one, extra values are ignored;
- DT_HALF and DT_BFLOAT16 travel as 16-bit patterns in `half_val`; numpy has no bfloat16, so it
  decodes to float32 (exactly: bfloat16 is float32's upper half);
- DT_STRING gives a numpy object array of `bytes`.
"""

from __future__ import annotations

import math
from typing import Any, Final, TypeVar

import numpy as np

from exporter import dtypes
from exporter.errors import InvalidInputError

P = TypeVar("P")

# The typed field each dtype travels in, and the numpy dtype of that field's values.
_FIELDS: Final[dict[int, tuple[str, np.dtype]]] = {
    dtypes.FLOAT: ("float_val", np.dtype(np.float32)),
    dtypes.DOUBLE: ("double_val", np.dtype(np.float64)),
    dtypes.INT32: ("int_val", np.dtype(np.int32)),
    dtypes.INT16: ("int_val", np.dtype(np.int32)),
    dtypes.INT8: ("int_val", np.dtype(np.int32)),
    dtypes.UINT8: ("int_val", np.dtype(np.int32)),
    dtypes.UINT16: ("int_val", np.dtype(np.int32)),
    dtypes.INT64: ("int64_val", np.dtype(np.int64)),
    dtypes.UINT32: ("uint32_val", np.dtype(np.uint32)),
    dtypes.UINT64: ("uint64_val", np.dtype(np.uint64)),
    dtypes.BOOL: ("bool_val", np.dtype(np.bool_)),
    dtypes.HALF: ("half_val", np.dtype(np.int32)),
    dtypes.BFLOAT16: ("half_val", np.dtype(np.int32)),
    # Complex numbers as (real, imaginary) pairs of the component type.
    dtypes.COMPLEX64: ("scomplex_val", np.dtype(np.float32)),
    dtypes.COMPLEX128: ("dcomplex_val", np.dtype(np.float64)),
}
_BFLOAT16_WIRE: Final = np.dtype("<u2")
_FLOAT32: Final = np.dtype(np.float32)


def _numpy_dtype(dtype: int) -> np.dtype:
    """The numpy dtype an array of `dtype` decodes to (float32 for bfloat16)."""
    if dtype == dtypes.BFLOAT16:
        return _FLOAT32
    try:
        return dtypes.to_numpy(dtype)
    except ValueError:
        raise InvalidInputError(f"unsupported tensor dtype {dtype}") from None


def _shape(proto: Any) -> tuple[int, ...]:
    shape_proto = proto.tensor_shape
    if shape_proto.unknown_rank:
        raise InvalidInputError("a tensor value cannot have an unknown rank")
    shape = tuple(int(d.size) for d in shape_proto.dim)
    if any(s < 0 for s in shape):
        raise InvalidInputError(f"tensor shape {list(shape)} has a negative (unknown) dimension")
    return shape


def _fill(values: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    """`count` elements from `values`: zeros if empty, last value repeated if short, extras dropped."""
    have = values.shape[0]
    if have >= count:
        return values[:count]
    out = np.empty(count, dtype=dtype)
    if have == 0:
        out[...] = b"" if dtype.kind == "O" else 0
        return out
    out[:have] = values
    out[have:] = values[-1]
    return out


# The largest tensor a request may decode to. A tiny message can claim a huge shape with one typed
# value (the last value is repeated to fill it); refuse that rather than allocate it. 2 GiB - 1 is
# also the largest message the gateway accepts.
MAX_TENSOR_BYTES = 2**31 - 1


def proto_to_array(proto: Any, *, max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """Decodes a TensorProto-shaped message into an ndarray (see the module docstring).

    An array decoded from `tensor_content` is a read-only view of the message's bytes (no copy).
    Raises InvalidInputError for an unsupported dtype, a bad shape, a wrong content size, or a
    tensor that would take more than `max_bytes` once expanded.
    """
    dtype = int(proto.dtype)
    shape = _shape(proto)
    count = math.prod(shape)
    np_dtype = _numpy_dtype(dtype)
    if count * max(np_dtype.itemsize, 1) > max_bytes:
        raise InvalidInputError(
            f"tensor of shape {list(shape)} ({dtypes.name(dtype)}) would take "
            f"{count * np_dtype.itemsize} bytes, more than the limit of {max_bytes}"
        )
    content = proto.tensor_content
    if content:
        if dtype == dtypes.STRING:
            raise InvalidInputError("DT_STRING tensors must use string_val, not tensor_content")
        wire = _BFLOAT16_WIRE if dtype == dtypes.BFLOAT16 else np_dtype.newbyteorder("<")
        if len(content) != count * wire.itemsize:
            raise InvalidInputError(
                f"tensor_content has {len(content)} bytes but a {dtypes.name(dtype)} tensor of shape "
                f"{list(shape)} needs {count * wire.itemsize}"
            )
        flat = np.frombuffer(content, dtype=wire)
        if dtype == dtypes.BFLOAT16:
            flat = _bfloat16_to_float32(flat)
        elif not wire.isnative:
            flat = flat.astype(np_dtype)
        return flat.reshape(shape)
    if dtype == dtypes.STRING:
        # The only per-element Python work: building the object array of bytes.
        values = np.empty(len(proto.string_val), dtype=object)
        values[:] = list(proto.string_val)
        return _fill(values, count, np_dtype).reshape(shape)
    try:
        field, field_dtype = _FIELDS[dtype]
    except KeyError:
        raise InvalidInputError(f"unsupported tensor dtype {dtypes.name(dtype)}") from None
    # upb's repeated scalar containers implement __array__: one C-level copy, no Python loop.
    raw = np.asarray(getattr(proto, field), dtype=field_dtype)
    if dtype in dtypes.COMPLEX:
        # An odd trailing component is ignored, as TensorFlow does.
        raw = raw[: raw.shape[0] // 2 * 2].view(np_dtype)
    elif dtype == dtypes.HALF:
        raw = raw.astype(np.uint16).view(np.float16)
    elif dtype == dtypes.BFLOAT16:
        raw = _bfloat16_to_float32(raw.astype(np.uint16))
    elif raw.dtype != np_dtype:
        # int_val carries the narrow integer types; a C++-style cast wraps out-of-range values.
        raw = raw.astype(np_dtype)
    return _fill(raw, count, np_dtype).reshape(shape)


def _to_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    # bytes(3) would silently give three zero bytes: refuse anything that is not text or bytes.
    raise InvalidInputError(f"a string tensor holds str or bytes, got {type(value).__name__}")


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _float32_to_bfloat16(array: np.ndarray) -> np.ndarray:
    """Rounds float32 to bfloat16 bit patterns (round to nearest even; NaN stays a quiet NaN)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(array), np.uint16(0x7FC0), rounded)


def array_to_proto(array: Any, proto: P, *, use_tensor_content: bool = True, dtype: int | None = None) -> P:
    """Fills `proto` (cleared first) with `array`: dtype, shape, and the values.

    With `use_tensor_content`, fixed-size dtypes go to `tensor_content` (raw little-endian bytes,
    as TF's `AsProtoTensorContent`); otherwise, or for strings always, to the dtype's typed field
    (as `AsProtoField`). `dtype` overrides the dtype inferred from the array (the values are
    cast); it is the only way to produce DT_BFLOAT16. Returns `proto`.
    """
    array = np.asarray(array)
    if dtype is None:
        try:
            dtype = dtypes.from_numpy(array.dtype)
        except ValueError:
            raise InvalidInputError(f"cannot encode a numpy {array.dtype} array as a tensor") from None
    msg: Any = proto
    msg.Clear()
    msg.dtype = dtype
    # TensorFlow always sends the shape, even a scalar's empty one (present, zero dims).
    msg.tensor_shape.SetInParent()
    dims = msg.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    if dtype == dtypes.STRING:
        msg.string_val.extend(_to_bytes(v) for v in array.reshape(-1).tolist())
        return proto
    if dtype == dtypes.BFLOAT16:
        flat = _float32_to_bfloat16(array.reshape(-1))
    else:
        flat = np.ascontiguousarray(array.reshape(-1), dtype=_numpy_dtype(dtype))
    if use_tensor_content:
        msg.tensor_content = flat.astype(flat.dtype.newbyteorder("<"), copy=False).tobytes()
        return proto
    if dtype not in _FIELDS:
        raise InvalidInputError(f"unsupported tensor dtype {dtypes.name(dtype)}")
    field, _ = _FIELDS[dtype]
    if dtype == dtypes.HALF:
        values = flat.view(np.uint16).astype(np.int32)
    elif dtype == dtypes.BFLOAT16:
        values = flat.astype(np.int32)
    elif dtype in dtypes.COMPLEX:
        values = flat.view(np.float32 if dtype == dtypes.COMPLEX64 else np.float64)
    else:
        values = flat
    # tolist() converts in C; extending a repeated field from Python scalars is its fast path.
    getattr(msg, field).extend(values.tolist())
    return proto
