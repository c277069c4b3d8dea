"""Node attributes: Python values <-> the bundle's AttrValue.

Python side: bool, int, float, bytes (str is stored as UTF-8 bytes), np.ndarray (inline tensor),
and tuples/lists of int, float or bytes/str. A shape is a tuple of ints (-1 unknown); a dtype is
an int (exporter.dtypes). Decoding gives back bytes for strings and tuples for lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from exporter import dtypes
from protos.tessera import bundle_pb2

AttrMap = Mapping[str, Any]


def tensor_to_proto(array: np.ndarray) -> bundle_pb2.TensorValue:
    """An inline tensor: raw bytes for fixed-size dtypes, string_val for strings."""
    array = np.asarray(array)
    dtype = dtypes.from_numpy(array.dtype)
    proto = bundle_pb2.TensorValue(dtype=dtypes.as_enum(dtype), shape=bundle_pb2.Shape(dim=list(array.shape)))
    if dtype == dtypes.STRING:
        proto.string_val.extend(dtypes.as_array(array, dtypes.STRING).reshape(-1).tolist())
    else:
        proto.content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto


def tensor_from_proto(proto: bundle_pb2.TensorValue) -> np.ndarray:
    shape = tuple(proto.shape.dim)
    if proto.dtype == dtypes.STRING:
        out = np.empty(len(proto.string_val), dtype=object)
        out[:] = list(proto.string_val)
        return out.reshape(shape)
    np_dtype = dtypes.to_numpy(proto.dtype).newbyteorder("<")
    return np.frombuffer(proto.content, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def to_proto(value: Any) -> bundle_pb2.AttrValue:
    """Encodes one Python attribute value."""
    if isinstance(value, bool | np.bool_):
        return bundle_pb2.AttrValue(b=bool(value))
    if _is_int(value):
        return bundle_pb2.AttrValue(i=int(value))
    if isinstance(value, float | np.floating):
        return bundle_pb2.AttrValue(f=float(value))
    if isinstance(value, str):
        return bundle_pb2.AttrValue(s=value.encode())
    if isinstance(value, bytes):
        return bundle_pb2.AttrValue(s=value)
    if isinstance(value, np.ndarray):
        return bundle_pb2.AttrValue(tensor=tensor_to_proto(value))
    if isinstance(value, list | tuple):
        items = list(value)
        if all(_is_int(v) for v in items):
            return bundle_pb2.AttrValue(ints=bundle_pb2.IntList(value=[int(v) for v in items]))
        if all(isinstance(v, int | float | np.integer | np.floating) for v in items):
            return bundle_pb2.AttrValue(floats=bundle_pb2.FloatList(value=[float(v) for v in items]))
        if all(isinstance(v, str | bytes) for v in items):
            encoded = [v.encode() if isinstance(v, str) else v for v in items]
            return bundle_pb2.AttrValue(strings=bundle_pb2.BytesList(value=encoded))
    raise TypeError(f"unsupported attribute value {value!r}")


def from_proto(proto: bundle_pb2.AttrValue) -> Any:
    """Decodes one AttrValue; lists come back as tuples, strings as bytes."""
    kind = proto.WhichOneof("value")
    if kind is None:
        return None
    if kind == "shape":
        return tuple(proto.shape.dim)
    if kind == "tensor":
        return tensor_from_proto(proto.tensor)
    if kind in ("ints", "floats", "strings", "dtypes"):
        return tuple(getattr(proto, kind).value)
    if kind == "shapes":
        return tuple(tuple(s.dim) for s in proto.shapes.value)
    return getattr(proto, kind)


def encode_map(attrs: AttrMap) -> dict[str, bundle_pb2.AttrValue]:
    return {k: to_proto(v) for k, v in attrs.items()}


def decode_map(attrs: Mapping[str, bundle_pb2.AttrValue]) -> dict[str, Any]:
    return {k: from_proto(v) for k, v in attrs.items()}
