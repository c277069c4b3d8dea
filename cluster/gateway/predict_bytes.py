"""Big Predict messages by hand, so that their tensors' bytes are never copied while the GIL is held.

* Requests: `parse_predict_request` lifts the big tensor payloads (`tensor_content`, packed
  float/double/complex values) out of the message as views of the request's own bytes, and parses
  only what is left with protobuf. Parsing a 100 MB PredictRequest with upb takes one C call that
  holds the GIL for about as long as copying 100 MB (every thread, the event loop's included, waits),
  and reading `tensor_content` back out copies it again; the views cost nothing.
* Responses: `predict_response_bytes` writes the fixed-width outputs straight from their arrays'
  bytes (upb takes about 1 s for a 100 MB response, holding the GIL): one copy, by numpy, which
  lets go of the GIL while it copies (`tobytes()` and `bytes.join` of a view both hold it). The
  bytes parse to the very message `converters.predict_response` builds. Small answers are written
  so too (every gRPC Predict's is): encoding their few fields by hand takes less than building the
  message and serializing it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Final, cast

import numpy as np

from cluster.errors import Internal
from cluster.gateway.converters import fill_spec, parse
from cluster.requests import PredictResult, ResolvedSpec
from exporter import dtypes, protobuf_wire
from exporter.errors import InvalidInputError
from exporter.protobuf_wire import encode_varint, field, tag
from exporter.tensor_codec import LIFTABLE, Lifted
from exporter.tensor_encode import array_to_proto
from protos.tensorflow.core.framework import tensor_pb2
from protos.tensorflow_serving.apis import model_pb2, predict_pb2

# A tensor payload smaller than this stays in the message: protobuf parses it faster than we cut it.
LIFT_BYTES: Final = 64 * 1024
# A message with more top-level fields than this is parsed by protobuf alone (in its worker thread):
# scanning it field by field in Python would cost more than it saves.
_MAX_SCANNED_FIELDS: Final = 4096

_TENSOR_FIELDS: Final = tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name
_LIFTED_NUMBERS: Final = {
    _TENSOR_FIELDS[name].number: name for name in ("tensor_content", *LIFTABLE)
}
_INPUTS: Final = predict_pb2.PredictRequest.DESCRIPTOR.fields_by_name["inputs"].number
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # a map entry's fields


def parse_predict_request(raw: bytes) -> tuple[predict_pb2.PredictRequest, dict[str, Lifted]]:
    """A PredictRequest's bytes as the message without its big tensor payloads, and those payloads as
    views of `raw` by input alias (`converters.predict_request(message, lifted=...)` decodes them).

    Equivalent to `converters.parse(PredictRequest, raw)` with the lifted fields moved out. Anything
    unusual about a tensor (a payload field sent twice, or both packed and not, an alias sent twice,
    a packed length that is not a whole number of values, a message this scan cannot read) leaves the
    whole message to protobuf, which parses it or refuses it (INVALID_ARGUMENT) as it always did.
    """
    cut = _lift(raw) if len(raw) >= LIFT_BYTES else None  # small: nothing to lift, no scan
    if cut is None:
        return parse(predict_pb2.PredictRequest, raw), {}
    header, lifted = cut
    return parse(predict_pb2.PredictRequest, header), lifted


def _lift(raw: bytes) -> tuple[bytes, dict[str, Lifted]] | None:
    view = memoryview(raw)
    try:
        top = _scan(view, _MAX_SCANNED_FIELDS)
    except ValueError:
        return None
    if top is None:
        return None
    pieces: list[bytes | memoryview] = []
    lifted: dict[str, Lifted] = {}
    aliases: set[bytes] = set()
    for number, wire, start, payload, end in top:
        if number != _INPUTS or wire != protobuf_wire.LENGTH_DELIMITED:
            pieces.append(view[start:end])
            continue
        entry = _lift_entry(view[payload:end])
        if entry is None:
            return None
        key, rebuilt, one = entry
        if key in aliases:
            return None  # a map key sent twice: the last one wins; protobuf knows which
        aliases.add(key)
        if one is None:
            pieces.append(view[start:end])
            continue
        try:
            alias = key.decode()
        except UnicodeDecodeError:
            return None
        lifted[alias] = one
        pieces.append(field(_INPUTS, rebuilt))
    if not lifted:
        return None
    return b"".join(pieces), lifted


def _lift_entry(entry: memoryview) -> tuple[bytes, bytes, Lifted | None] | None:
    """A map entry {1: key, 2: TensorProto} as (key, the entry rebuilt without the lifted payload,
    the payload); (key, b"", None) when nothing in it is worth lifting; None: leave it to protobuf."""
    fields = _scan(entry, 16)
    if fields is None or [f[0] for f in fields] not in ([_ENTRY_KEY, _ENTRY_VALUE], [_ENTRY_VALUE, _ENTRY_KEY]):
        return None
    if any(f[1] != protobuf_wire.LENGTH_DELIMITED for f in fields):
        return None
    by_number = {number: entry[payload:end] for number, _, _, payload, end in fields}
    key, tensor = bytes(by_number[_ENTRY_KEY]), by_number[_ENTRY_VALUE]
    tensor_fields = _scan(tensor, 4096)
    if tensor_fields is None:
        return None
    big = [f for f in tensor_fields if f[0] in _LIFTED_NUMBERS and f[4] - f[3] >= LIFT_BYTES]
    if not big:
        return key, b"", None
    (number, wire, start, payload, end), *others = big
    name = _LIFTED_NUMBERS[number]
    if others or wire != protobuf_wire.LENGTH_DELIMITED or sum(f[0] == number for f in tensor_fields) > 1:
        return None  # two occurrences merge (or the last wins): protobuf's job
    if name in LIFTABLE and (end - payload) % LIFTABLE[name].itemsize:
        return None  # not a whole number of values: protobuf refuses it
    header = b"".join((tensor[:start], tensor[end:]))
    rebuilt = field(_ENTRY_KEY, key) + field(_ENTRY_VALUE, header)
    return key, rebuilt, Lifted(name, tensor[payload:end])


def _scan(data: memoryview, limit: int) -> list[tuple[int, int, int, int, int]] | None:
    """(number, wire type, start, payload start, end) of each field of a message, or None past
    `limit` fields. ValueError for bytes that are not a message."""
    out: list[tuple[int, int, int, int, int]] = []
    pos, size = 0, len(data)
    while pos < size:
        if len(out) >= limit:
            return None
        start = pos
        key, pos = protobuf_wire.decode_varint(data, pos)
        wire = key & 7
        if wire == protobuf_wire.VARINT:
            _, pos = protobuf_wire.decode_varint(data, pos)
            payload = start
        elif wire == protobuf_wire.FIXED64:
            payload, pos = pos, pos + 8
        elif wire == protobuf_wire.FIXED32:
            payload, pos = pos, pos + 4
        elif wire == protobuf_wire.LENGTH_DELIMITED:
            length, payload = protobuf_wire.decode_varint(data, pos)
            pos = payload + length
        else:
            raise ValueError(f"wire type {wire}")
        if pos > size or key >> 3 == 0:
            raise ValueError("truncated field")
        out.append((key >> 3, wire, start, payload, pos))
    return out


def predict_response_bytes(result: PredictResult, *, tensor_content: bool = False) -> bytes:
    """`predict_response(result, ...)` serialized, the fixed-width outputs written straight from
    their arrays' bytes: upb takes about 1 s to serialize a 100 MB response (and holds the GIL
    throughout); this takes one copy. It parses to the very message `predict_response` builds (the
    same bytes, for one output), and a small one is written in a third of upb's time (no message is
    built: its fields are encoded by hand, as upb writes them)."""
    parts: list[bytes | memoryview] = []
    for alias, array in result.outputs.items():
        tensor = _tensor_parts(alias, np.asarray(array), tensor_content)
        tensor_size = 0
        for part in tensor:
            tensor_size += len(part)
        key = _field(_KEY_TAG, alias.encode())
        value_size = _varint(tensor_size)
        parts += [_OUTPUTS_TAG, _varint(len(key) + len(_VALUE_TAG) + len(value_size) + tensor_size), key,
                  _VALUE_TAG, value_size, *tensor]
    parts.append(_field(_SPEC_TAG, _model_spec(result.spec)))
    total = 0
    for part in parts:
        total += len(part)
    # A small answer is joined as bytes; a big one's copy is numpy's, without the GIL.
    return b"".join(parts) if total < _JOIN_BYTES else _joined(parts, total)


_OUTPUTS_TAG: Final = tag(1)  # PredictResponse.outputs (map entries)
_SPEC_TAG: Final = tag(2)  # PredictResponse.model_spec
_KEY_TAG, _VALUE_TAG = tag(1), tag(2)  # a map entry's fields
_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(128))
# Below this, `b"".join` of the parts (it holds the GIL while it copies, for microseconds).
_JOIN_BYTES: Final = 64 * 1024


def _varint(value: int) -> bytes:
    return _SMALL_VARINTS[value] if value < 128 else encode_varint(value)


def _field(tag_bytes: bytes, payload: bytes) -> bytes:
    """A length-delimited field under its tag's bytes (`protobuf_wire.field` with the tag made once)."""
    return tag_bytes + _varint(len(payload)) + payload


def _model_spec(spec: ResolvedSpec) -> bytes:
    """`fill_spec(ModelSpec(), spec)` serialized: name, version {value}, signature_name."""
    if spec.version < 0:  # a negative int64 is a 10-byte varint; leave it to protobuf
        message = model_pb2.ModelSpec()
        fill_spec(message, spec)
        return message.SerializeToString()
    name, key = spec.name.encode(), spec.signature_key.encode()
    # Fields at their default (an empty string, a zero) are not written, as protobuf does not.
    version = _VERSION_VALUE_TAG + _varint(spec.version) if spec.version else b""
    return b"".join((
        _field(_NAME_TAG, name) if name else b"", _SPEC_VERSION_TAG, _varint(len(version)), version,
        _field(_SIGNATURE_TAG, key) if key else b"",
    ))


_NAME_TAG, _SPEC_VERSION_TAG, _SIGNATURE_TAG = tag(1), tag(2), tag(3)  # ModelSpec's (version: an Int64Value)
_VERSION_VALUE_TAG: Final = tag(1, protobuf_wire.VARINT)  # Int64Value.value


# A new bytes object of a given size whose contents are still to be written, as C extensions make
# one (PyBytes_FromStringAndSize(NULL, n)): nothing else can see it until `_joined` returns it.
_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype, _new_bytes.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_ssize_t)
_bytes_data = ctypes.pythonapi.PyBytes_AsString
_bytes_data.restype, _bytes_data.argtypes = ctypes.c_void_p, (ctypes.py_object,)


def _joined(parts: Sequence[bytes | memoryview], total: int) -> bytes:
    """`b"".join(parts)` (`total` bytes), the copying done by numpy without the GIL: gRPC wants
    `bytes`, and both `tobytes()` and `bytes.join` of a memoryview copy 100 MB while holding the GIL
    (~100 ms during which the event loop's thread cannot run)."""
    out = _new_bytes(None, total)
    if total:
        target = np.ctypeslib.as_array((ctypes.c_uint8 * total).from_address(_bytes_data(out)))
        offset = 0
        for part in parts:
            target[offset : offset + len(part)] = np.frombuffer(part, np.uint8)
            offset += len(part)
    return cast(bytes, out)


# dtypes whose typed field's packed encoding is the values' own bytes (see exporter.tensor_encode).
# (the field's tag, the layout of its packed values)
_WIRE_LAYOUT: Final[dict[int, tuple[bytes, np.dtype]]] = {
    dtype: (tag(_TENSOR_FIELDS[name].number), wire)
    for dtype, name, wire in (
        (dtypes.FLOAT, "float_val", np.dtype("<f4")),
        (dtypes.DOUBLE, "double_val", np.dtype("<f8")),
        (dtypes.BOOL, "bool_val", np.dtype(np.uint8)),
        (dtypes.COMPLEX64, "scomplex_val", np.dtype("<f4")),
        (dtypes.COMPLEX128, "dcomplex_val", np.dtype("<f8")),
    )
}
_CONTENT_TAG: Final = tag(_TENSOR_FIELDS["tensor_content"].number)


_DTYPE_TAG: Final = tag(1, protobuf_wire.VARINT)  # TensorProto.dtype
_SHAPE_TAG: Final = tag(2)  # TensorProto.tensor_shape
_DIM_TAG: Final = tag(2)  # TensorShapeProto.dim
_SIZE_TAG: Final = tag(1, protobuf_wire.VARINT)  # TensorShapeProto.Dim.size


def _dim(size: int) -> bytes:
    if not size:
        return _DIM_TAG + b"\x00"
    dim = _SIZE_TAG + _varint(size)
    return _DIM_TAG + _varint(len(dim)) + dim


_SMALL_DIMS: Final = tuple(_dim(size) for size in range(128))


def _tensor_header(dtype: int, shape: tuple[int, ...]) -> bytes:
    """A TensorProto's dtype and tensor_shape serialized as protobuf writes them (the shape always
    present, a scalar's empty; a dim of size 0 is an empty Dim, its default not written)."""
    dims = []
    for size in shape:
        dims.append(_SMALL_DIMS[size] if size < 128 else _dim(size))
    encoded = b"".join(dims)
    return b"".join((_DTYPE_TAG, _varint(dtype), _SHAPE_TAG, _varint(len(encoded)), encoded))


def _tensor_parts(alias: str, array: np.ndarray, tensor_content: bool) -> list[bytes | memoryview]:
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
    flat = np.ascontiguousarray(array).reshape(-1)
    if tensor_content:
        field_tag, data = _CONTENT_TAG, flat.astype(flat.dtype.newbyteorder("<"), copy=False)
    else:
        assert layout is not None
        field_tag, wire = layout
        components = flat.view(flat.real.dtype) if dtype in dtypes.COMPLEX else flat
        data = components.astype(wire, copy=False)
    parts: list[bytes | memoryview] = [_tensor_header(dtype, array.shape)]
    size = data.nbytes
    if size:
        # A big one as a view, not tobytes(): the one copy is `_joined`'s, which lets go of the GIL.
        # A small one's copy takes less than making the view.
        raw = data.tobytes() if size < _JOIN_BYTES else np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
        parts += [field_tag, _varint(size), raw]
    return parts
