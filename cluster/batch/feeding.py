"""Turning a batch of table columns into a signature's inputs, and outputs back into columns.

Plain numpy (no Ray), so it is tested on its own. The rules:
- a signature whose one input is a vector of serialized tf.Examples (classify, regress, or a
  parsing receiver's predict) gets one Example per row, each column a feature: floats become a
  float_list, integers an int64_list, strings and bytes a bytes_list;
- otherwise each input is fed from the column of the same name, or from the columns
  `input_columns[alias]` stacked along axis 1 (e.g. `x` [-1, 4] from four measurement columns).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.signature import Signature
from protos.tessera import example_pb2

Batch = Mapping[str, np.ndarray]


def takes_examples(signature: Signature) -> bool:
    if len(signature.inputs) != 1:
        return False
    (info,) = signature.inputs.values()
    return info.dtype == dtypes.STRING and info.shape is not None and len(info.shape) == 1


def _feature(feature: example_pb2.Feature, value: object) -> None:
    if isinstance(value, bytes | str):
        feature.bytes_list.value.append(value.encode() if isinstance(value, str) else value)
    elif isinstance(value, bool | np.bool_ | int | np.integer):
        feature.int64_list.value.append(int(value))
    elif isinstance(value, float | np.floating):
        feature.float_list.value.append(float(value))
    else:
        raise InvalidInputError(f"cannot turn {type(value).__name__} into a tf.Example feature")


def serialize_rows(batch: Batch, columns: Sequence[str]) -> np.ndarray:
    """One serialized tf.Example per row; missing values (None, NaN) are left out of the row."""
    count = len(next(iter(batch.values()))) if batch else 0
    out = np.empty(count, dtype=object)
    for i in range(count):
        example = example_pb2.Example()
        for name in columns:
            value = batch[name][i]
            if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
                continue
            _feature(example.features.feature[name], value.item() if isinstance(value, np.generic) else value)
        out[i] = example.SerializeToString()
    return out


def feeds_for(signature: Signature, batch: Batch, input_columns: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """The signature's inputs for a batch of columns (see the module docstring)."""
    if takes_examples(signature) and not input_columns:
        (alias,) = signature.inputs
        return {alias: serialize_rows(batch, list(batch))}
    feeds = {}
    for alias, info in signature.inputs.items():
        columns = input_columns.get(alias)
        if columns:
            missing = [c for c in columns if c not in batch]
            if missing:
                raise InvalidInputError(f"input {alias!r}: no column {missing[0]!r} in the data")
            array = np.stack([np.asarray(batch[c]) for c in columns], axis=1)
        elif alias in batch:
            column = batch[alias]
            array = np.stack(list(column)) if column.dtype == object and len(column) and isinstance(
                column[0], np.ndarray) else np.asarray(column)
        else:
            raise InvalidInputError(
                f"input {alias!r} of signature {signature.key!r}: no column of that name; "
                f"name its columns with --input_columns={alias}:col1,col2,..."
            )
        feeds[alias] = dtypes.as_array(array, info.dtype)
    return feeds


def as_column(array: np.ndarray) -> np.ndarray | list[object]:
    """An output as a table column: bytes become text, string matrices become lists per row."""
    if array.dtype != object:
        return array
    text = np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v, otypes=[object])(array)
    if text.ndim <= 1:
        return text
    column = np.empty(len(text), dtype=object)
    column[:] = [list(row) for row in text.reshape(len(text), -1)]
    return column
