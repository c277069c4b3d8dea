"""What every feature column is, and how columns are put together into the model's dense input.

A column knows its parse spec (`parse_spec`, merged by `make_parse_example_spec`) and how to turn
the features a receiver produced into graph tensors: dense columns give float32 [batch, d]
(`dense`), categorical columns int64 ids in [0, num_buckets) as a SparseTensor (`sparse_ids`).
`input_layer` concatenates the dense blocks in sorted column-name order, as TF does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from exporter.features import FeatureSpec, SparseTensor
from exporter.graph import GraphBuilder, Tensor
from exporter.ops import core

Features = Mapping[str, Any]


def safe_name(text: str) -> str:
    """A column name made fit for variable and asset names (letters, digits, _ . -)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)


def feature(features: Features, key: str) -> Any:
    if key not in features:
        raise KeyError(f"feature {key!r} is not among the receiver's features {sorted(features)}")
    return features[key]


class FeatureColumn:
    """Base of every column: a unique `name` and the parse spec of the raw features it reads."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    def parse_spec(self) -> dict[str, FeatureSpec]:
        raise NotImplementedError


class DenseColumn(FeatureColumn):
    """A column with a float32 [batch, dimension] representation."""

    @property
    def dimension(self) -> int:
        raise NotImplementedError

    def dense(self, g: GraphBuilder, features: Features) -> Tensor:
        raise NotImplementedError


class CategoricalColumn(FeatureColumn):
    """A column of int64 ids in [0, num_buckets)."""

    @property
    def num_buckets(self) -> int:
        raise NotImplementedError

    def sparse_ids(self, g: GraphBuilder, features: Features) -> SparseTensor:
        raise NotImplementedError


def make_parse_example_spec(columns: Iterable[FeatureColumn]) -> dict[str, FeatureSpec]:
    """The union of the columns' parse specs; two columns reading one key must agree on its spec."""
    spec: dict[str, FeatureSpec] = {}
    for column in columns:
        for key, feature in column.parse_spec().items():
            if key in spec and spec[key] != feature:
                raise ValueError(f"feature {key!r} parsed two ways: {spec[key]} and {feature}")
            spec[key] = feature
    return dict(sorted(spec.items()))


def sorted_columns(columns: Iterable[FeatureColumn]) -> list[FeatureColumn]:
    """Columns in name order (TF's order in input_layer and linear models); names must be unique."""
    ordered = sorted(columns, key=lambda c: c.name)
    names = [c.name for c in ordered]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate feature column names in {names}")
    return ordered


def dense_columns(columns: Iterable[FeatureColumn]) -> list[DenseColumn]:
    """`columns` in name order, each a DenseColumn (TypeError naming the first that is not)."""
    ordered = sorted_columns(columns)
    dense = [c for c in ordered if isinstance(c, DenseColumn)]
    for column in ordered:
        if not isinstance(column, DenseColumn):
            raise TypeError(f"input_layer takes dense columns; wrap {column.name!r} in indicator/embedding_column")
    return dense


def input_layer(features: Features, columns: Iterable[FeatureColumn]) -> Tensor:
    """float32 [batch, sum of dimensions]: the dense columns' blocks concatenated by column name."""
    ordered = dense_columns(columns)
    if not ordered:
        raise ValueError("input_layer needs at least one column")
    g = _graph_of(features)
    blocks = [column.dense(g, features) for column in ordered]
    return blocks[0] if len(blocks) == 1 else core.concat(blocks, axis=1)


def _graph_of(features: Features) -> GraphBuilder:
    for value in features.values():
        return value.graph
    raise ValueError("no features")
