"""A PredictResponse serialized by hand for big answers: the fixed-width outputs written straight from
their arrays' bytes (upb takes about 1 s for a 100 MB response, holding the GIL; this takes one copy).
The bytes parse to the very message `converters.predict_response` builds."""

from __future__ import annotations

from typing import Final, cast

import numpy as np

from cluster.errors import Internal
from cluster.gateway.converters import fill_spec
from cluster.requests import PredictResult
from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.tensor_codec import array_to_proto
from protos.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tensorflow_serving.apis import model_pb2


def predict_response_bytes(result: PredictResult, *, tensor_content: bool = False) -> bytes:
    """`predict_response(result, ...)` serialized, the big fixed-width outputs written straight from
    their arrays' bytes: upb takes about 1 s to serialize a 100 MB response (and holds the GIL
    throughout); this takes one copy. It parses to the very message `predict_response` builds."""
    parts: list[bytes] = []
    for alias, array in result.outputs.items():
        tensor = _tensor_parts(alias, np.asarray(array), tensor_content)
        key = _field(1, alias.encode())
        size = len(key) + _field_size(2, sum(len(p) for p in tensor))
        parts += [_tag(1), _varint(size), key, _tag(2), _varint(sum(len(p) for p in tensor)), *tensor]
    spec = model_pb2.ModelSpec()
    fill_spec(spec, result.spec)
    parts.append(_field(2, spec.SerializeToString()))
    return b"".join(parts)


_LENGTH_DELIMITED: Final = 2  # protobuf's wire type of bytes, strings and messages
_TENSOR_FIELDS: Final = tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name


# dtypes whose typed field's packed encoding is the values' own bytes (see exporter.tensor_codec).
_WIRE_LAYOUT: Final[dict[int, tuple[str, np.dtype]]] = {
    dtypes.FLOAT: ("float_val", np.dtype("<f4")),
    dtypes.DOUBLE: ("double_val", np.dtype("<f8")),
    dtypes.BOOL: ("bool_val", np.dtype(np.uint8)),
    dtypes.COMPLEX64: ("scomplex_val", np.dtype("<f4")),
    dtypes.COMPLEX128: ("dcomplex_val", np.dtype("<f8")),
}


def _tensor_parts(alias: str, array: np.ndarray, tensor_content: bool) -> list[bytes]:
    """A serialized TensorProto as byte chunks; other dtypes go through `array_to_proto`."""
    try:
        dtype = dtypes.from_numpy(array.dtype)
    except ValueError:
        dtype = None
    layout = _WIRE_LAYOUT.get(dtype) if dtype is not None else None
    fixed = dtype is not None and dtype not in (dtypes.STRING, dtypes.BFLOAT16)
    if not (fixed and (tensor_content or layout is not None)):
        message = tensor_pb2.TensorProto()
        try:
            array_to_proto(array, message, use_tensor_content=tensor_content)
        except InvalidInputError as exc:
            raise Internal(f"cannot encode output {alias}: {exc}") from exc
        return [message.SerializeToString()]
    assert dtype is not None  # `fixed`
    header = tensor_pb2.TensorProto(dtype=cast(types_pb2.DataType, dtype))  # proto3 enums are open
    header.tensor_shape.SetInParent()
    for size in array.shape:
        header.tensor_shape.dim.add().size = size
    flat = np.ascontiguousarray(array).reshape(-1)
    if tensor_content:
        number, data = _TENSOR_FIELDS["tensor_content"].number, flat.astype(flat.dtype.newbyteorder("<"), copy=False)
    else:
        assert layout is not None
        name, wire = layout
        parts = flat.view(flat.real.dtype) if np.iscomplexobj(flat) else flat
        number, data = _TENSOR_FIELDS[name].number, parts.astype(wire, copy=False)
    raw = data.tobytes()
    return [header.SerializeToString(), *([_tag(number), _varint(len(raw)), raw] if raw else [])]


def _tag(number: int) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _tag(number) + _varint(len(payload)) + payload


def _field_size(number: int, size: int) -> int:
    return len(_tag(number)) + len(_varint(size)) + size
