"""Numeric columns and their bucketized (one-hot, or categorical ids) views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter import dtypes
from exporter.dtypes import DType
from exporter.feature_columns.base import CategoricalColumn, DenseColumn, Features, feature
from exporter.features import FeatureSpec, FixedLenFeature, SparseTensor
from exporter.graph import GraphBuilder, Tensor
from exporter.ops import categorical, core, extra
from exporter.ops import math as tfm


@dataclass(frozen=True)
class NumericColumn(DenseColumn):
    key: str
    shape: tuple[int, ...] = (1,)
    default_value: Any = None
    dtype: DType = dtypes.FLOAT

    @property
    def name(self) -> str:
        return self.key

    @property
    def dimension(self) -> int:
        return int(np.prod(self.shape))

    def parse_spec(self) -> dict[str, FeatureSpec]:
        default = None
        if self.default_value is not None:
            default = np.broadcast_to(np.asarray(self.default_value), self.shape)  # a scalar fills the shape
        return {self.key: FixedLenFeature(self.shape, self.dtype, default)}

    def dense(self, g: GraphBuilder, features: Features) -> Tensor:
        x = feature(features, self.key)
        if x.dtype != dtypes.FLOAT:
            x = core.cast(x, dtypes.FLOAT)
        return core.reshape(x, (-1, self.dimension))


def numeric_column(
    key: str, shape: int | Sequence[int] = (1,), default_value: Any = None, dtype: DType = dtypes.FLOAT
) -> NumericColumn:
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    if dtype not in dtypes.NUMERIC:
        raise ValueError(f"numeric_column {key!r}: dtype must be numeric, got {dtypes.name(dtype)}")
    return NumericColumn(key, shape, default_value, dtype)


@dataclass(frozen=True)
class BucketizedColumn(DenseColumn, CategoricalColumn):
    source_column: NumericColumn
    boundaries: tuple[float, ...]

    @property
    def name(self) -> str:
        return f"{self.source_column.name}_bucketized"

    @property
    def num_buckets(self) -> int:
        # Every element of the source has its own len(boundaries) + 1 buckets.
        return (len(self.boundaries) + 1) * self.source_column.dimension

    @property
    def dimension(self) -> int:
        return self.num_buckets

    def parse_spec(self) -> dict[str, FeatureSpec]:
        return self.source_column.parse_spec()

    def _bucket_ids(self, features: Features) -> Tensor:
        x = feature(features, self.source_column.key)
        return categorical.bucketize(core.reshape(x, (-1, self.source_column.dimension)), self.boundaries)

    def dense(self, g: GraphBuilder, features: Features) -> Tensor:
        # One one-hot block per source element, concatenated: [batch, elements * (len + 1)].
        one_hot = tfm.one_hot(self._bucket_ids(features), len(self.boundaries) + 1)
        return core.reshape(one_hot, (-1, self.dimension))

    def sparse_ids(self, g: GraphBuilder, features: Features) -> SparseTensor:
        ids = self._bucket_ids(features)
        per_element = len(self.boundaries) + 1
        offsets = g.constant(np.arange(self.source_column.dimension, dtype=np.int64) * per_element)
        return extra.dense_to_sparse(tfm.add(ids, offsets))


def bucketized_column(source_column: NumericColumn, boundaries: Sequence[float]) -> BucketizedColumn:
    bounds = tuple(float(b) for b in boundaries)
    if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:], strict=False)):
        raise ValueError("bucketized_column boundaries must be a non-empty increasing list")
    return BucketizedColumn(source_column, bounds)
