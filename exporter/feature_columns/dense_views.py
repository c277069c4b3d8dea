"""Dense views of categorical columns: multi-hot indicators and trained embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from exporter.feature_columns.base import CategoricalColumn, DenseColumn, Features, safe_name
from exporter.features import FeatureSpec
from exporter.graph import GraphBuilder, Tensor
from exporter.ops import embedding


@dataclass(frozen=True)
class IndicatorColumn(DenseColumn):
    categorical_column: CategoricalColumn

    @property
    def name(self) -> str:
        return f"{self.categorical_column.name}_indicator"

    @property
    def dimension(self) -> int:
        return self.categorical_column.num_buckets

    def parse_spec(self) -> dict[str, FeatureSpec]:
        return self.categorical_column.parse_spec()

    def dense(self, g: GraphBuilder, features: Features) -> Tensor:
        ids = self.categorical_column.sparse_ids(g, features)
        return embedding.sparse_to_indicator(ids, self.dimension)


def indicator_column(categorical_column: CategoricalColumn) -> IndicatorColumn:
    """Multi-hot [batch, num_buckets]: a key seen twice counts twice; missing keys add nothing."""
    return IndicatorColumn(categorical_column)


@dataclass(frozen=True)
class EmbeddingColumn(DenseColumn):
    categorical_column: CategoricalColumn
    weights: np.ndarray = field(repr=False)
    combiner: str = "mean"

    @property
    def name(self) -> str:
        return f"{self.categorical_column.name}_embedding"

    @property
    def dimension(self) -> int:
        return int(self.weights.shape[1])

    def parse_spec(self) -> dict[str, FeatureSpec]:
        return self.categorical_column.parse_spec()

    def dense(self, g: GraphBuilder, features: Features) -> Tensor:
        params = g.variable(self.weights, f"{safe_name(self.name)}_weights")
        ids = self.categorical_column.sparse_ids(g, features)
        return embedding.embedding_combine(params, ids, combiner=self.combiner)


def embedding_column(
    categorical_column: CategoricalColumn, dimension: int, weights: np.ndarray, combiner: str = "mean"
) -> EmbeddingColumn:
    """Trained embeddings `weights` [num_buckets, dimension], combined per row (sum, mean or sqrtn)."""
    array = np.asarray(weights, dtype=np.float32)
    if array.shape != (categorical_column.num_buckets, dimension):
        raise ValueError(
            f"embedding_column {categorical_column.name!r}: weights must be "
            f"[{categorical_column.num_buckets}, {dimension}], got {list(array.shape)}"
        )
    if combiner not in ("sum", "mean", "sqrtn"):
        raise ValueError(f"embedding_column combiner must be sum, mean or sqrtn, got {combiner!r}")
    return EmbeddingColumn(categorical_column, array, combiner)
