"""numpy <-> `tensorflow.TensorProto` for clients, with the semantics of TensorFlow's Python
`tf.make_tensor_proto` and `tf.make_ndarray` (same bytes for the same input).

Built on `exporter.tensor_codec` and `exporter.tensor_encode`, which do the element conversion without Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from exporter import dtypes
from exporter.tensor_codec import proto_to_array
from exporter.tensor_encode import array_to_proto
from protos.tensorflow.core.framework import tensor_pb2

# The dtypes TensorFlow's Python make_tensor_proto sends as tensor_content (and only when the
# tensor has more than one element); everything else goes to the typed *_val fields.
_CONTENT_DTYPES: Final = frozenset(
    {
        dtypes.HALF, dtypes.FLOAT, dtypes.DOUBLE, dtypes.INT32, dtypes.UINT8, dtypes.INT16,
        dtypes.INT8, dtypes.INT64, dtypes.UINT32, dtypes.UINT64,
    }
)  # fmt: skip
_INT32: Final = np.iinfo(np.int32)


def _as_dtype(dtype: Any) -> int:
    """A DataType number from a DataType int, a numpy dtype/type or a name ('float32', 'DT_FLOAT')."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        return int(dtype)
    if isinstance(dtype, str):
        return dtypes.from_name(dtype)
    return dtypes.from_numpy(dtype)


def _infer(values: Any) -> np.ndarray:
    """Python values -> ndarray the way TensorFlow infers: float -> float32, int -> int32 if it fits."""
    array = np.asarray(values)
    if array.dtype == np.float64:
        return array.astype(np.float32)
    if array.dtype == np.int64 and array.size and _INT32.min <= array.min() and array.max() <= _INT32.max:
        return array.astype(np.int32)
    if array.dtype == np.int64 and not array.size:
        return array.astype(np.int32)
    return array


def _convert(values: Any, dtype: int) -> np.ndarray:
    """`values` as an ndarray of `dtype`; refuses to truncate non-integral floats to integers."""
    if dtype == dtypes.STRING:
        return dtypes.as_array(values, dtype)
    if dtype == dtypes.BFLOAT16:
        return np.asarray(values, dtype=np.float32)  # array_to_proto rounds it to bfloat16
    array = np.asarray(values)
    if dtype in dtypes.INTEGER and array.dtype.kind == "f" and not np.array_equal(array, np.trunc(array)):
        raise TypeError(f"cannot convert non-integer values to {dtypes.name(dtype)} without losing them")
    return dtypes.as_array(array, dtype)


def make_tensor_proto(
    values: Any,
    dtype: Any = None,
    shape: Sequence[int] | None = None,
    use_tensor_content: bool = True,
) -> tensor_pb2.TensorProto:
    """Builds a TensorProto from a scalar, (nested) list or ndarray.

    `dtype`: a DataType number (`types_pb2.DT_FLOAT`), a numpy dtype or a name; inferred otherwise
    (Python floats become float32 and ints int32 when they fit, as in TensorFlow; ndarrays keep
    theirs). `shape`: the tensor's shape; fewer values than it holds are sent as they are and the
    receiver repeats the last one (TensorFlow's broadcast), more raise ValueError.
    `use_tensor_content`: send TensorFlow's packed types as raw `tensor_content` when the tensor has
    more than one element, exactly as `tf.make_tensor_proto` does; False always uses the typed
    `*_val` fields. Strings always use `string_val`.
    """
    if isinstance(values, np.ndarray) or dtype is not None:
        array = np.asarray(values) if dtype is None else _convert(values, _as_dtype(dtype))
    else:
        array = _infer(values)
    kind = _as_dtype(dtype) if dtype is not None else dtypes.from_numpy(array.dtype)
    proto = tensor_pb2.TensorProto()
    if shape is None:
        shape = array.shape
    shape = tuple(int(s) for s in shape)
    wanted = math.prod(shape)
    if array.size > wanted:
        raise ValueError(f"too many values for shape {list(shape)}: takes at most {wanted}, got {array.size}")
    flat = array.reshape(-1)
    packed = use_tensor_content and kind in _CONTENT_DTYPES and wanted > 1 and array.size == wanted
    array_to_proto(flat, proto, use_tensor_content=packed, dtype=kind)
    # Set the real shape after encoding the flat values (they may be fewer than it holds).
    del proto.tensor_shape.dim[:]
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


def make_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The ndarray a TensorProto holds, as `tf.make_ndarray` returns it (a writable array).

    DT_STRING gives an object array of bytes; DT_BFLOAT16 gives float32 (numpy has no bfloat16).
    Raises `exporter.errors.InvalidInputError` for malformed protos.
    """
    array = proto_to_array(proto)
    return array if array.flags.writeable else array.copy()
