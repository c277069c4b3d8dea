"""Feature specs of tf.Example parsing, as `tf.io.parse_example` takes them (the parser itself is
`exporter.example_parser`).

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

Examples that share a context (TF Serving's ExampleListWithContext) come as `with_context(context,
examples)`: each item is the example's own bytes and carries the shared context. The parser reads
each as `context + example` (the example's features win), but cuts the context down first, once per
batch, to the entries of the keys it reads: a big context of other features costs its size once,
not once per example.

Symbolic sparse tensors of a graph are `SparseTensor(indices, values, dense_shape)`, defined here
so the parsing and categorical op wrappers share one type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from exporter import dtypes
from exporter.dtypes import DType

if TYPE_CHECKING:
    from exporter.graph import Tensor

# The three dtypes a tf.Example can carry, with TF's names (used in messages) and the list field.
TF_NAMES = {dtypes.FLOAT: "float", dtypes.INT64: "int64", dtypes.STRING: "string"}


def _check_dtype(dtype: DType | str) -> DType:
    dtype = dtypes.from_name(dtype) if isinstance(dtype, str) else int(dtype)
    if dtype not in TF_NAMES:
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
        if (self.shape, self.dtype) != (other.shape, other.dtype):
            return False
        if self.default_value is None or other.default_value is None:  # required
            return self.default_value is None and other.default_value is None
        return bool(np.array_equal(self.default_value, other.default_value))

    # Unhashable: equality compares the default's values (an array, which has no hash). Setting
    # __hash__ to None is Python's way to say so; typeshed types object.__hash__ as a method only.
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


def list_keys(spec: Mapping[str, FeatureSpec]) -> dict[str, DType]:
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


def validate_spec(spec: Mapping[str, FeatureSpec]) -> None:
    """Raises GraphError for a spec parse_example cannot honour (e.g. clashing sparse keys)."""
    list_keys(spec)
