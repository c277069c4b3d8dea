"""Arrow columns to numpy tensors and back, without a Python loop over rows where Arrow allows.

Reading: a numeric column without nulls is viewed as numpy (no copy); a fixed-size list column
(or a list column whose lists all have one length) becomes a [rows, k] array from its flat values;
string and binary columns become object arrays of `bytes` (the runtime's DT_STRING).

Writing: an output [batch] becomes a plain column (float, int, bool; strings as UTF-8 text, or
binary where they are not text); an output [batch, d1, ...] becomes nested fixed-size lists, so a
reader knows every row's shape from the schema. An output that is one row broadcast to the batch
(a classifier's `classes`) is converted once and repeated by Arrow, not once per row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exporter.errors import InvalidInputError


def null_rows(column: pa.Array) -> np.ndarray:
    """A boolean mask of the rows that are null (or hold a null inside a list)."""
    mask = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(
        column.type
    ):
        flat_nulls = column.flatten().is_null()
        if flat_nulls.null_count or pc.any(flat_nulls).as_py():
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
            rows = np.repeat(np.arange(len(column)), lengths)
            mask = mask.copy()
            mask[rows[flat_nulls.to_numpy(zero_copy_only=False)]] = True
    return mask


def to_numpy(column: pa.Array, name: str) -> np.ndarray:
    """`column` as a tensor with the batch first (see the module docstring); nulls refused.

    Raises InvalidInputError naming the column for nulls or ragged lists.
    """
    if column.null_count:
        raise InvalidInputError(f"column {name!r} has nulls")
    kind = column.type
    if pa.types.is_fixed_size_list(kind):
        values = to_numpy(column.flatten(), name)
        return values.reshape(len(column), kind.list_size, *values.shape[1:])
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and not (lengths == width).all():
            raise InvalidInputError(f"column {name!r}: lists of different lengths cannot make one tensor")
        values = to_numpy(column.flatten(), name)
        return values.reshape(len(column), width, *values.shape[1:])
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        column = column.cast(pa.large_binary())
        kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        out = np.empty(len(column), dtype=object)
        out[:] = column.to_numpy(zero_copy_only=False)
        return out
    if pa.types.is_dictionary(kind):
        return to_numpy(column.dictionary_decode(), name)
    return column.to_numpy(zero_copy_only=False)


def _strings(flat: np.ndarray) -> pa.Array:
    binary = pa.array(flat, type=pa.binary())
    try:
        return binary.cast(pa.string())  # validates UTF-8
    except pa.ArrowInvalid:
        return binary


def to_arrow(array: np.ndarray) -> pa.Array:
    """An output tensor (batch first) as a typed column (see the module docstring)."""
    if array.ndim == 0:
        raise InvalidInputError("a scalar output has no batch dimension")
    if array.dtype == object and array.ndim > 1 and array.strides[0] == 0 and len(array):
        # One row broadcast to the batch (a classifier's labels): convert the row once, repeat it in C.
        row = _strings(np.ascontiguousarray(array[0]).reshape(-1))
        values = row.take(np.tile(np.arange(len(row), dtype=np.int32), len(array)))
    else:
        flat = array.reshape(-1)
        values = _strings(flat) if array.dtype == object else pa.array(np.ascontiguousarray(flat))
    for size in reversed(array.shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    return values
