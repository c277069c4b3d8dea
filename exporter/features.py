"""Feature specs and tf.Example parsing in numpy, matching `tf.io.parse_example`.

Specs: `FixedLenFeature(shape, dtype, default_value=None)` (no default: the feature is required),
`VarLenFeature(dtype)` and `SparseFeature(index_key, value_key, dtype, size)`; dtypes float32, int64
and string (DT_STRING values are numpy object arrays of `bytes`). `parse_example` returns, per
feature name, a dense ndarray `[batch, *shape]` or a `SparseTensorValue(indices int64 [n, 2],
values [n], dense_shape int64 [2])`, exactly as TensorFlow does:

- a var-len feature has dense_shape `[batch, longest list]` and indices `[example, position]`;
- a sparse feature takes its column indices from the int64 feature `index_key` and its values from
  `value_key`, is sorted by (example, index) unless `already_sorted`, and has dense_shape
  `[batch, size]`; an index outside `[0, size)` is refused here (TF accepts it at parse time and
  every consumer of the SparseTensor then fails on it);
- a feature present in an example but with no list set counts as missing, as in TF.

Output order (the ParseExample op's outputs, see `output_layout`): feature names sorted; a dense
feature gives one output, a var-len or sparse feature three: indices, values, dense_shape.

Symbolic sparse tensors of a graph are `SparseTensor(indices, values, dense_shape)`, defined here
so the parsing and categorical op wrappers share one type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from exporter import dtypes
from exporter.dtypes import DType
from exporter.errors import InvalidInputError
from protos.tessera import example_pb2

if TYPE_CHECKING:
    from exporter.graph import Tensor

# The three dtypes a tf.Example can carry, with TF's names (used in messages) and the list field.
_TF_NAMES = {dtypes.FLOAT: "float", dtypes.INT64: "int64", dtypes.STRING: "string"}
_KIND_TO_DTYPE = {"float_list": dtypes.FLOAT, "int64_list": dtypes.INT64, "bytes_list": dtypes.STRING}
_DTYPE_TO_KIND = {v: k for k, v in _KIND_TO_DTYPE.items()}


def _check_dtype(dtype: DType | str) -> DType:
    dtype = dtypes.from_name(dtype) if isinstance(dtype, str) else int(dtype)
    if dtype not in _TF_NAMES:
        raise ValueError(f"a tf.Example feature is float32, int64 or string, not dtype {dtype}")
    return dtype


@dataclass(frozen=True, eq=False)
class FixedLenFeature:
    """A dense feature of a fixed `shape`; required unless `default_value` is given.

    The default must have exactly prod(shape) elements (TF reshapes it; it never broadcasts).
    """

    shape: tuple[int, ...]
    dtype: DType
    default_value: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"FixedLenFeature needs a fully defined shape, got {list(shape)}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))
        if self.default_value is not None:
            default = dtypes.as_array(self.default_value, self.dtype)
            if default.size != int(np.prod(shape)):
                raise ValueError(f"default value of {default.size} elements for shape {list(shape)}")
            default = default.reshape(shape)
            default.flags.writeable = False
            object.__setattr__(self, "default_value", default)

    @property
    def required(self) -> bool:
        return self.default_value is None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FixedLenFeature):
            return NotImplemented
        if (self.shape, self.dtype, self.required) != (other.shape, other.dtype, other.required):
            return False
        return self.required or bool(np.array_equal(self.default_value, other.default_value))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class VarLenFeature:
    """A list of any length per example, parsed into a SparseTensorValue [batch, longest]."""

    dtype: DType

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))


@dataclass(frozen=True)
class SparseFeature:
    """A sparse row of width `size`: column indices from int64 `index_key`, values from `value_key`."""

    index_key: str
    value_key: str
    dtype: DType
    size: int
    already_sorted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))
        if int(self.size) <= 0:
            raise ValueError(f"SparseFeature size must be positive, got {self.size}")
        object.__setattr__(self, "size", int(self.size))


FeatureSpec = FixedLenFeature | VarLenFeature | SparseFeature


class SparseTensorValue(NamedTuple):
    """A parsed sparse tensor: indices int64 [n, 2], values [n], dense_shape int64 [2]."""

    indices: np.ndarray
    values: np.ndarray
    dense_shape: np.ndarray


@dataclass(frozen=True)
class SparseTensor:
    """A symbolic sparse tensor in a graph: three Tensors, as ParseExample outputs them."""

    indices: Tensor
    values: Tensor
    dense_shape: Tensor

    @property
    def dtype(self) -> DType:
        return self.values.dtype

    @property
    def graph(self) -> Any:
        return self.values.graph


def output_layout(spec: Mapping[str, FeatureSpec]) -> list[tuple[str, str]]:
    """The ParseExample outputs in order: (feature name, 'dense' | 'indices' | 'values' | 'dense_shape')."""
    layout: list[tuple[str, str]] = []
    for key in sorted(spec):
        if isinstance(spec[key], FixedLenFeature):
            layout.append((key, "dense"))
        else:
            layout.extend((key, part) for part in ("indices", "values", "dense_shape"))
    return layout


def _varlen_keys(spec: Mapping[str, FeatureSpec]) -> dict[str, DType]:
    """Every feature read as a list (var-len features and the two halves of sparse features)."""
    lists: dict[str, DType] = {}

    def need(key: str, dtype: DType) -> None:
        if isinstance(spec.get(key), FixedLenFeature) or lists.get(key, dtype) != dtype:
            raise ValueError(f"feature {key!r} is used with two different specs")
        lists[key] = dtype

    for key, feature in spec.items():
        if isinstance(feature, VarLenFeature):
            need(key, feature.dtype)
        elif isinstance(feature, SparseFeature):
            need(feature.index_key, dtypes.INT64)
            need(feature.value_key, feature.dtype)
        elif not isinstance(feature, FixedLenFeature):
            raise ValueError(f"feature {key!r}: unknown spec {feature!r}")
    return lists


def _to_array(values: list[Any], dtype: DType) -> np.ndarray:
    if dtype == dtypes.STRING:
        out = np.empty(len(values), dtype=object)
        out[:] = values  # slice assignment keeps each bytes object whole
        return out
    return np.array(values, dtype=dtypes.to_numpy(dtype))


def _where(key: str, index: int) -> str:
    return f"Name: <unknown>, Key: {key}, Index: {index}."


def _values(fmap: Any, key: str, dtype: DType, index: int) -> Any:
    """The repeated field of feature `key` (None if absent or no list is set); refuses a wrong type."""
    found = fmap.get(key)
    kind = None if found is None else found.WhichOneof("kind")
    if kind is None:
        return None
    if _KIND_TO_DTYPE[kind] != dtype:
        raise InvalidInputError(
            f"{_where(key, index)}  Data types don't match. Data type: "
            f"{_TF_NAMES[_KIND_TO_DTYPE[kind]]} but expected type: {_TF_NAMES[dtype]}"
        )
    return getattr(found, kind).value


def parse_example(
    serialized: Sequence[bytes] | np.ndarray, spec: Mapping[str, FeatureSpec]
) -> dict[str, np.ndarray | SparseTensorValue]:
    """Parses a batch of serialized tf.Examples like `tf.io.parse_example`.

    Raises InvalidInputError (naming the feature and the example's index) for an undecodable
    example, a missing required feature, a list of the wrong type or a dense list of the wrong length.
    """
    batch = np.asarray(serialized, dtype=object)
    if batch.ndim != 1:
        raise InvalidInputError(
            f"parse_example takes a vector of serialized Examples, got shape {batch.shape}"
        )
    dense = {k: f for k, f in spec.items() if isinstance(f, FixedLenFeature)}
    lists = _varlen_keys(spec)
    dense_bufs: dict[str, list[Any]] = {k: [] for k in dense}
    dense_sizes = {k: int(np.prod(f.shape)) for k, f in dense.items()}
    dense_defaults = {k: [] if f.required else f.default_value.reshape(-1).tolist() for k, f in dense.items()}
    list_bufs: dict[str, list[Any]] = {k: [] for k in lists}
    list_lens: dict[str, list[int]] = {k: [] for k in lists}

    # One Python loop over examples; values move list-to-list in C (list.extend on the repeated field).
    for i, blob in enumerate(batch):
        try:
            fmap = example_pb2.Example.FromString(blob).features.feature
        except (DecodeError, TypeError):
            raise InvalidInputError(f"Name: <unknown>, Index: {i}. Could not parse example input") from None
        for key, feature in dense.items():
            values = _values(fmap, key, feature.dtype, i)
            if values is None:  # absent, or present with no list set: TF treats both as missing
                if feature.required:
                    raise InvalidInputError(
                        f"{_where(key, i)}  Feature: {key} (data type: {_TF_NAMES[feature.dtype]}) "
                        "is required but could not be found."
                    )
                dense_bufs[key].extend(dense_defaults[key])
            elif len(values) != dense_sizes[key]:
                raise InvalidInputError(
                    f"{_where(key, i)}  Number of {_TF_NAMES[feature.dtype].replace('string', 'bytes')} "
                    f"values != expected.  Values size: {len(values)} but output shape: {list(feature.shape)}"
                )
            else:
                dense_bufs[key].extend(values)
        for key, dtype in lists.items():
            values = _values(fmap, key, dtype, i)
            list_lens[key].append(0 if values is None else len(values))
            if values is not None:
                list_bufs[key].extend(values)

    n = len(batch)
    result: dict[str, np.ndarray | SparseTensorValue] = {}
    for key, feature in dense.items():
        result[key] = _to_array(dense_bufs[key], feature.dtype).reshape((n, *feature.shape))
    for key, feature in spec.items():
        if isinstance(feature, VarLenFeature):
            result[key] = _varlen(list_bufs[key], list_lens[key], feature.dtype)
        elif isinstance(feature, SparseFeature):
            result[key] = _sparse(key, feature, list_bufs, list_lens)
    return {key: result[key] for key in sorted(result)}


def _rows_and_positions(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.asarray(lengths, dtype=np.int64)
    rows = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
    starts = np.cumsum(lens) - lens
    return rows, np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)


def _varlen(values: list[Any], lengths: list[int], dtype: DType) -> SparseTensorValue:
    rows, positions = _rows_and_positions(lengths)
    width = max(lengths, default=0)
    return SparseTensorValue(
        np.stack([rows, positions], axis=1).reshape(-1, 2),
        _to_array(values, dtype),
        np.array([len(lengths), width], dtype=np.int64),
    )


def _sparse(
    key: str, feature: SparseFeature, bufs: Mapping[str, list[Any]], lens: Mapping[str, list[int]]
) -> SparseTensorValue:
    index_lens, value_lens = lens[feature.index_key], lens[feature.value_key]
    for i, (a, b) in enumerate(zip(index_lens, value_lens, strict=True)):
        if a != b:
            raise InvalidInputError(
                f"{_where(key, i)}  SparseFeature has {a} indices in {feature.index_key!r} "
                f"but {b} values in {feature.value_key!r}"
            )
    rows, _ = _rows_and_positions(index_lens)
    columns = np.array(bufs[feature.index_key], dtype=np.int64)
    values = _to_array(bufs[feature.value_key], feature.dtype)
    bad = np.flatnonzero((columns < 0) | (columns >= feature.size))
    if bad.size:
        j = int(bad[0])
        raise InvalidInputError(
            f"{_where(key, int(rows[j]))}  SparseFeature index {int(columns[j])} from "
            f"{feature.index_key!r} is out of range [0, {feature.size})"
        )
    if not feature.already_sorted:
        order = np.lexsort((columns, rows))  # stable, like TF's sparse_reorder
        rows, columns, values = rows[order], columns[order], values[order]
    return SparseTensorValue(
        np.stack([rows, columns], axis=1).reshape(-1, 2),
        values,
        np.array([len(index_lens), feature.size], dtype=np.int64),
    )


def validate_spec(spec: Mapping[str, FeatureSpec]) -> None:
    """Raises GraphError for a spec parse_example cannot honour (e.g. clashing sparse keys)."""
    _varlen_keys(spec)
