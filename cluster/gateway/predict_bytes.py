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
from exporter.protobuf_wire import encode_varint, field, field_size, tag
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
        key = field(1, alias.encode())
        size = len(key) + field_size(2, sum(len(p) for p in tensor))
        parts += [tag(1), encode_varint(size), key, tag(2), encode_varint(sum(len(p) for p in tensor)), *tensor]
    spec = model_pb2.ModelSpec()
    fill_spec(spec, result.spec)
    parts.append(field(2, spec.SerializeToString()))
    return b"".join(parts)


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
    return [header.SerializeToString(), *([tag(number), encode_varint(len(raw)), raw] if raw else [])]
