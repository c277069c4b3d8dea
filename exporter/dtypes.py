"""Data types: the bundle's DType enum (numbered like tensorflow.DataType) and numpy.

DT_STRING tensors are numpy object arrays whose elements are `bytes`, as TensorFlow's
`make_ndarray` returns them.
"""

from __future__ import annotations

from typing import Final, cast

import numpy as np

from protos.tessera import bundle_pb2

DType = int

FLOAT: Final[DType] = bundle_pb2.DT_FLOAT
DOUBLE: Final[DType] = bundle_pb2.DT_DOUBLE
INT32: Final[DType] = bundle_pb2.DT_INT32
UINT8: Final[DType] = bundle_pb2.DT_UINT8
INT16: Final[DType] = bundle_pb2.DT_INT16
INT8: Final[DType] = bundle_pb2.DT_INT8
STRING: Final[DType] = bundle_pb2.DT_STRING
INT64: Final[DType] = bundle_pb2.DT_INT64
BOOL: Final[DType] = bundle_pb2.DT_BOOL
UINT16: Final[DType] = bundle_pb2.DT_UINT16
HALF: Final[DType] = bundle_pb2.DT_HALF
UINT32: Final[DType] = bundle_pb2.DT_UINT32
UINT64: Final[DType] = bundle_pb2.DT_UINT64
# Not in the bundle's DType enum (proto3 enums are open, so the numbers still round-trip);
# numbered like tensorflow.DataType. They reach us in requests through TensorProto.
COMPLEX64: Final[DType] = 8
COMPLEX128: Final[DType] = 18
# numpy has no bfloat16: exporter.tensor_codec decodes it to float32 (exactly); tensor_encode only encodes
# it when asked to; it has no entry in the numpy maps below.
BFLOAT16: Final[DType] = 14

_TO_NUMPY: Final[dict[int, np.dtype]] = {
    FLOAT: np.dtype(np.float32),
    DOUBLE: np.dtype(np.float64),
    INT32: np.dtype(np.int32),
    UINT8: np.dtype(np.uint8),
    INT16: np.dtype(np.int16),
    INT8: np.dtype(np.int8),
    STRING: np.dtype(object),
    INT64: np.dtype(np.int64),
    BOOL: np.dtype(np.bool_),
    UINT16: np.dtype(np.uint16),
    HALF: np.dtype(np.float16),
    UINT32: np.dtype(np.uint32),
    UINT64: np.dtype(np.uint64),
    COMPLEX64: np.dtype(np.complex64),
    COMPLEX128: np.dtype(np.complex128),
}
_FROM_NUMPY: Final[dict[np.dtype, int]] = {v: k for k, v in _TO_NUMPY.items()}

NUMERIC: Final = frozenset(_TO_NUMPY) - {STRING, BOOL}
FLOATING: Final = frozenset({FLOAT, DOUBLE, HALF})
COMPLEX: Final = frozenset({COMPLEX64, COMPLEX128})
INTEGER: Final = NUMERIC - FLOATING - COMPLEX
_EXTRA_NAMES: Final = {"DT_COMPLEX64": COMPLEX64, "DT_COMPLEX128": COMPLEX128, "DT_BFLOAT16": BFLOAT16}


def as_enum(dtype: DType) -> bundle_pb2.DType:
    """`dtype` as the bundle proto's enum type (a field's type in the stubs). Proto3 enums are open,
    so every number is accepted, the ones outside the enum (COMPLEX64, ...) included."""
    return cast(bundle_pb2.DType, dtype)


def to_numpy(dtype: DType) -> np.dtype:
    """The numpy dtype that holds values of `dtype` (object for DT_STRING)."""
    try:
        return _TO_NUMPY[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype}") from None


def from_numpy(dtype: np.dtype | type) -> DType:
    """The DType of a numpy dtype; bytes/str/object arrays map to DT_STRING."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return STRING
    try:
        return _FROM_NUMPY[dtype]
    except KeyError:
        raise ValueError(f"unsupported numpy dtype {dtype}") from None


def name(dtype: DType) -> str:
    """TensorFlow's lower-case name of a dtype ('float32', 'int64', 'string', ...)."""
    if dtype == STRING:
        return "string"
    if dtype == BOOL:
        return "bool"
    if dtype == BFLOAT16:
        return "bfloat16"
    return to_numpy(dtype).name


def from_name(text: str) -> DType:
    """Parses 'float32', 'int64', 'string', ... (also the DT_ names)."""
    if text.upper().startswith("DT_"):
        if text.upper() in _EXTRA_NAMES:
            return _EXTRA_NAMES[text.upper()]
        return bundle_pb2.DType.Value(text.upper())
    if text == "bfloat16":
        return BFLOAT16
    if text in ("string", "bytes", "str"):
        return STRING
    return from_numpy(np.dtype(text))


def as_array(value: object, dtype: DType) -> np.ndarray:
    """Converts a Python value or array to an ndarray of `dtype` (strings become bytes objects)."""
    if dtype == STRING:
        arr = np.asarray(value, dtype=object)
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in arr.reshape(-1)]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape)
    return np.asarray(value, dtype=to_numpy(dtype))
