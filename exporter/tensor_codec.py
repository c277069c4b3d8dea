"""TensorProto -> numpy, with TensorFlow's semantics, and the dtype tables both directions share
(numpy -> TensorProto is `exporter.tensor_encode`).

Duck-typed over any message that has TensorFlow's TensorProto field names (`dtype`,
`tensor_shape.dim[].size`, `tensor_content`, `float_val`, ...): it works on
`protos.tensorflow.core.framework.tensor_pb2.TensorProto` (the gateway, the client) and on
`protos.tessera.warmup_pb2.TensorProto` (warmup files) alike, and imports neither, so `exporter`
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from exporter import dtypes
from exporter.errors import InvalidInputError

# The typed field each dtype travels in, and the numpy dtype of that field's values.
VALUE_FIELDS: Final[dict[int, tuple[str, np.dtype]]] = {
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
# The numpy dtype each dtype decodes to (float32 for bfloat16), and the layout of its tensor_content
# (little-endian; bfloat16's 16-bit patterns): looked up, not worked out, on every tensor of every request.
_NUMPY_DTYPES: Final[dict[int, np.dtype]] = {
    **{dtype: dtypes.to_numpy(dtype) for dtype in (*VALUE_FIELDS.keys() - {dtypes.BFLOAT16}, dtypes.STRING)},
    dtypes.BFLOAT16: _FLOAT32,
}
_CONTENT_WIRE: Final[dict[int, np.dtype]] = {
    dtype: _BFLOAT16_WIRE if dtype == dtypes.BFLOAT16 else np_dtype.newbyteorder("<")
    for dtype, np_dtype in _NUMPY_DTYPES.items()
}


def numpy_dtype(dtype: int) -> np.dtype:
    """The numpy dtype an array of `dtype` decodes to (float32 for bfloat16)."""
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise InvalidInputError(f"unsupported tensor dtype {dtype}") from None


def _shape(proto: Any) -> tuple[int, ...]:
    shape_proto = proto.tensor_shape
    if shape_proto.unknown_rank:
        raise InvalidInputError("a tensor value cannot have an unknown rank")
    sizes = []
    for dim in shape_proto.dim:  # a loop, not a generator: this runs for every tensor of every request
        sizes.append(dim.size)
    if sizes and min(sizes) < 0:
        raise InvalidInputError(f"tensor shape {sizes} has a negative (unknown) dimension")
    return tuple(sizes)


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


@dataclass(slots=True)
class TensorLayout:
    """What a TensorProto decodes to, read from its header and value counts without decoding it.

    `fill_bytes` is what TF's fill would add: the bytes of the elements the message does not carry
    (zeros, or the last value repeated). A sender pays for every other byte by sending it.

    Read-only by convention, not frozen: one is made per tensor of every Predict, and a frozen
    dataclass's `__init__` costs about 0.5 us more (one `object.__setattr__` per field).
    """

    dtype: int
    shape: tuple[int, ...]
    numpy_dtype: np.dtype
    fill_bytes: int
    # The message's tensor_content, read once: every read of the field copies it out of the message.
    content: bytes | memoryview = field(default=b"", repr=False, compare=False)
    # The typed field's values as their packed little-endian bytes, when they were lifted out of the
    # message (`Lifted`): decoded as a view, never copied.
    values: memoryview | None = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * max(self.numpy_dtype.itemsize, 1)


@dataclass(frozen=True, slots=True)
class Lifted:
    """One field of a TensorProto kept out of the message as the bytes of its payload: `tensor_content`,
    or a packed fixed-width typed field (`float_val`, `double_val`, `scomplex_val`, `dcomplex_val`),
    whose packed bytes are the values themselves. The message holds no other copy of that field.

    A big request's tensors are read this way (see `cluster.gateway.predict_bytes`): parsing them
    into the message would copy them, holding the GIL, and reading them back out copies them again.
    """

    field: str
    data: memoryview


# The typed fields that may be lifted, and the little-endian layout of their packed bytes.
LIFTABLE: Final[dict[str, np.dtype]] = {
    "float_val": np.dtype("<f4"),
    "double_val": np.dtype("<f8"),
    "scomplex_val": np.dtype("<f4"),
    "dcomplex_val": np.dtype("<f8"),
}


def tensor_layout(proto: Any, *, max_bytes: int = MAX_TENSOR_BYTES, lifted: Lifted | None = None) -> TensorLayout:
    """The dtype, shape and fill of a TensorProto-shaped message, checked, in O(1): nothing is decoded.

    `lifted`: one field of the tensor that travels beside the message instead of in it (see `Lifted`).
    Raises InvalidInputError for what `proto_to_array` would refuse before it reads a value: an
    unsupported dtype, a bad shape, a `tensor_content` of the wrong size, or more than `max_bytes`.
    """
    dtype = int(proto.dtype)
    shape = _shape(proto)
    count = math.prod(shape)
    np_dtype = numpy_dtype(dtype)
    itemsize = max(np_dtype.itemsize, 1)
    if count * itemsize > max_bytes:
        raise InvalidInputError(
            f"tensor of shape {list(shape)} ({dtypes.name(dtype)}) would take "
            f"{count * np_dtype.itemsize} bytes, more than the limit of {max_bytes}"
        )
    content: bytes | memoryview = proto.tensor_content
    if lifted is not None and lifted.field == "tensor_content":
        content = lifted.data
    if content:
        if dtype == dtypes.STRING:
            raise InvalidInputError("DT_STRING tensors must use string_val, not tensor_content")
        wire_size = _CONTENT_WIRE[dtype].itemsize
        if len(content) != count * wire_size:
            raise InvalidInputError(
                f"tensor_content has {len(content)} bytes but a {dtypes.name(dtype)} tensor of shape "
                f"{list(shape)} needs {count * wire_size}"
            )
        return TensorLayout(dtype, shape, np_dtype, 0, content)
    if dtype == dtypes.STRING:
        have = len(proto.string_val)
    else:
        try:
            values_field, _ = VALUE_FIELDS[dtype]
        except KeyError:
            raise InvalidInputError(f"unsupported tensor dtype {dtypes.name(dtype)}") from None
        values = None
        if lifted is not None and lifted.field == values_field:
            values = lifted.data
            have = len(values) // LIFTABLE[values_field].itemsize
        else:
            have = len(getattr(proto, values_field))  # O(1) on a repeated field
        if dtype in dtypes.COMPLEX:
            have //= 2
        return TensorLayout(dtype, shape, np_dtype, max(count - have, 0) * itemsize, values=values)
    return TensorLayout(dtype, shape, np_dtype, max(count - have, 0) * itemsize)


def proto_to_array(proto: Any, *, max_bytes: int = MAX_TENSOR_BYTES) -> np.ndarray:
    """Decodes a TensorProto-shaped message into an ndarray (see the module docstring).

    An array decoded from `tensor_content` is a read-only view of the message's bytes (no copy).
    Raises InvalidInputError for an unsupported dtype, a bad shape, a wrong content size, or a
    tensor that would take more than `max_bytes` once expanded.
    """
    return decode_tensor(proto, tensor_layout(proto, max_bytes=max_bytes))


# Strings are converted this many at a time, so a worker thread decoding a long string list lets
# the event loop's thread take the GIL between chunks, and `check` can stop a request that expired.
_STRING_CHUNK = 1 << 16


def decode_tensor(proto: Any, layout: TensorLayout, check: Callable[[], None] | None = None) -> np.ndarray:
    """Decodes `proto`, whose `tensor_layout` is `layout` (the checks are already done).

    `check`, if given, is called between chunks of a long string list; it raises to abort.
    """
    dtype, shape, np_dtype = layout.dtype, layout.shape, layout.numpy_dtype
    content = layout.content
    if content:
        wire = _CONTENT_WIRE[dtype]
        flat = np.frombuffer(content, dtype=wire)
        if dtype == dtypes.BFLOAT16:
            flat = _bfloat16_to_float32(flat)
        elif not wire.isnative:
            flat = flat.astype(np_dtype)
        return flat.reshape(shape)
    count = math.prod(shape)
    if dtype == dtypes.STRING:
        # The only per-element Python work: building the object array of bytes.
        strings = proto.string_val
        have = min(len(strings), count)  # values past the shape are dropped: never convert them
        values = np.empty(have, dtype=object)
        for start in range(0, have, _STRING_CHUNK):
            if check is not None and start:
                check()
            stop = min(start + _STRING_CHUNK, have)
            values[start:stop] = strings[start:stop]
        return _fill(values, count, np_dtype).reshape(shape)
    values_field, field_dtype = VALUE_FIELDS[dtype]
    if layout.values is not None:
        raw = np.frombuffer(layout.values, dtype=LIFTABLE[values_field])
        if not raw.dtype.isnative:
            raw = raw.astype(field_dtype)
    else:
        # upb's repeated scalar containers implement __array__: one C-level copy, no Python loop.
        raw = np.asarray(getattr(proto, values_field), dtype=field_dtype)
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


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)
