"""How a signature is fed from table columns: decided once per schema, then applied per batch.

Three ways, in this order:
- a signature whose one input is a vector of serialized tf.Examples (classify, regress, or a parsing
  receiver's predict), over TFRecord input: each record is fed as it is;
- the same signature over columns: when the servable can be fed its receiver's parsed features
  (`ParsesExamples`, the numpy runtime can), each feature comes straight from the column of its name
  (no Example is built, none parsed); otherwise one Example per row is serialized, each selected
  column a feature, for the whole batch at once (`cluster.batch_predict.examples`; row by row only for
  column types it does not handle);
- any other signature: each input from the column of its name, or from `--input_columns`
  `ALIAS:col1,col2,...` stacked along axis 1 (`x` [-1, 4] from four measurement columns).

Columns that feed nothing pass through to the output (ids, labels) unless dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.batch_predict import examples
from cluster.batch_predict.columns import to_numpy
from cluster.batch_predict.tfrecord import RECORD_COLUMN
from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.features import FeatureSpec, FixedLenFeature, SparseTensorValue, VarLenFeature
from exporter.servable import ParsesExamples, Servable
from exporter.signature import Signature, Tensors, check_feeds
from protos.tessera import example_pb2


@dataclass(frozen=True)
class InputSelection:
    """`--input_columns`: plain column names (the features of an Example signature) and stacks."""

    features: tuple[str, ...] = ()
    stacked: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def takes_examples(signature: Signature) -> bool:
    if len(signature.inputs) != 1:
        return False
    (info,) = signature.inputs.values()
    return info.dtype == dtypes.STRING and info.shape is not None and len(info.shape) == 1


class Feeder:
    """Feeds one signature of one servable from batches of one schema (see the module docstring)."""

    def __init__(self, servable: Servable, signature: Signature, names: Sequence[str], selection: InputSelection,
                 output_filter: Sequence[str] = ()) -> None:
        self._servable = servable
        self._signature = signature
        self._filter = list(output_filter) or None
        self._spec: Mapping[str, FeatureSpec] | None = None
        missing = [c for c in (*selection.features, *(c for cs in selection.stacked.values() for c in cs))
                   if c not in names]
        if missing:
            raise InvalidInputError(f"--input_columns names {missing[0]!r}, which the data does not have")
        if takes_examples(signature):
            self.mode, self.used = self._plan_examples(names, selection)
        else:
            self.mode, self.used = "tensors", self._plan_tensors(names, selection)

    def _plan_examples(self, names: Sequence[str], selection: InputSelection) -> tuple[str, tuple[str, ...]]:
        if RECORD_COLUMN in names:
            return "records", (RECORD_COLUMN,)
        spec = None
        if isinstance(self._servable, ParsesExamples):
            spec = self._servable.example_features(self._signature.key)
        if spec is not None and all(isinstance(f, FixedLenFeature | VarLenFeature) for f in spec.values()):
            chosen = set(selection.features or names)
            for key, feature in spec.items():
                if key not in chosen and not (isinstance(feature, FixedLenFeature) and not feature.required):
                    raise InvalidInputError(
                        f"signature {self._signature.key!r} needs feature {key!r}: the data has no column of that name"
                    )
            self._spec = spec
            return "features", tuple(k for k in spec if k in chosen)
        return "serialize", tuple(selection.features or names)

    def _plan_tensors(self, names: Sequence[str], selection: InputSelection) -> tuple[str, ...]:
        used: list[str] = []
        for alias in self._signature.inputs:
            columns = selection.stacked.get(alias)
            if columns:
                used.extend(columns)
            elif alias in names:
                used.append(alias)
            else:
                raise InvalidInputError(
                    f"input {alias!r} of signature {self._signature.key!r}: the data has no column of that name; "
                    f"name its columns with --input_columns={alias}:col1,col2,..."
                )
        self._stacked = selection.stacked
        return tuple(dict.fromkeys(used))

    def run(self, batch: pa.RecordBatch) -> Tensors:
        """The signature's outputs for `batch`; InvalidInputError if the data is refused."""
        sig = self._signature
        if self.mode == "features":
            assert isinstance(self._servable, ParsesExamples) and self._spec is not None
            features = {k: _feature(batch, k, f) for k, f in self._spec.items()}
            return self._servable.run_features(sig.key, features, self._filter)
        if self.mode == "records":
            (alias,) = sig.inputs
            feeds = {alias: to_numpy(batch.column(RECORD_COLUMN), RECORD_COLUMN)}
        elif self.mode == "serialize":
            (alias,) = sig.inputs
            serialized = examples.serialize(batch, self.used)
            feeds = {alias: serialized if serialized is not None else serialize_rows(batch, self.used)}
        else:
            feeds = {}
            for alias, info in sig.inputs.items():
                columns = self._stacked.get(alias)
                if columns:
                    array = np.stack([to_numpy(batch.column(c), c) for c in columns], axis=1)
                else:
                    array = to_numpy(batch.column(alias), alias)
                feeds[alias] = dtypes.as_array(array, info.dtype)
        check_feeds(sig, feeds)  # where batch prediction's rows enter: the servable trusts its feeds
        return self._servable.run(sig.key, feeds, self._filter)


def _feature(batch: pa.RecordBatch, key: str, feature: FeatureSpec) -> np.ndarray | SparseTensorValue:
    """One parsed feature, as ParseExample would give it, from the column `key` (or its default)."""
    rows = batch.num_rows
    if isinstance(feature, VarLenFeature):
        column = batch.column(key)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            flat = column.flatten()
        else:  # a scalar column: each value a list of one, a null an empty list
            present = column.is_valid()
            lengths = present.to_numpy(zero_copy_only=False).astype(np.int64)
            flat = column.filter(present)
        values = dtypes.as_array(to_numpy(flat, key), feature.dtype)
        row_ids = np.repeat(np.arange(rows, dtype=np.int64), lengths)
        positions = np.arange(len(row_ids), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        indices = np.stack([row_ids, positions], axis=1).reshape(-1, 2)
        return SparseTensorValue(indices, values, np.array([rows, int(lengths.max(initial=0))], np.int64))
    assert isinstance(feature, FixedLenFeature)
    if key not in batch.schema.names:
        assert feature.default_value is not None
        return np.broadcast_to(feature.default_value, (rows, *feature.shape)).copy()
    column = batch.column(key)
    if column.null_count and feature.default_value is not None and feature.default_value.size == 1:
        column = column.fill_null(feature.default_value.reshape(-1)[0].item())
    array = dtypes.as_array(to_numpy(column, key), feature.dtype)
    try:
        return array.reshape(rows, *feature.shape)
    except ValueError:
        raise InvalidInputError(
            f"feature {key!r}: column of shape {list(array.shape)} for a feature of shape {list(feature.shape)}"
        ) from None


def _set(feature: example_pb2.Feature, value: object) -> None:
    values: Sequence[Any] = value if isinstance(value, list | tuple) else [value]
    first = next((v for v in values if v is not None), None)
    if isinstance(first, bytes | str):
        feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
    elif isinstance(first, bool | int):
        feature.int64_list.value.extend(int(v) for v in values)
    elif isinstance(first, float):
        feature.float_list.value.extend(values)
    elif first is not None:
        raise InvalidInputError(f"cannot turn {type(first).__name__} into a tf.Example feature")


def serialize_rows(batch: pa.RecordBatch, columns: Sequence[str]) -> np.ndarray:
    """One serialized tf.Example per row, each column a feature (floats as float_list, integers as
    int64_list, strings and bytes as bytes_list, lists as lists); nulls and NaNs are left out.

    A Python loop over rows: for the column types `cluster.batch_predict.examples` does not handle.
    """
    lists = {c: batch.column(c).to_pylist() for c in columns}
    out = np.empty(batch.num_rows, dtype=object)
    for i in range(batch.num_rows):
        example = example_pb2.Example()
        for name, values in lists.items():
            value = values[i]
            if value is None or (isinstance(value, float) and value != value):
                continue
            _set(example.features.feature[name], value)
        out[i] = example.SerializeToString()
    return out
