"""Feature columns, like tf.feature_column: how raw features become the model's dense input.

Each column knows its parse spec (`parse_spec`, merged by `make_parse_example_spec`) and how to
turn the features a receiver produced into graph tensors. Dense columns (numeric, bucketized,
embedding, indicator) give a float32 [batch, d] block (`dense`); categorical columns (vocabulary
list/file, hash bucket, bucketized) give int64 ids as a SparseTensor (`sparse_ids`) in
[0, num_buckets). `input_layer` concatenates the dense blocks in sorted column-name order, as TF does.

Features may be parsed (FixedLenFeature -> dense, VarLenFeature -> SparseTensor) or fed raw: a
categorical column fed a dense [batch] or [batch, k] tensor drops b"" and -1 entries, as TF does.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exporter import dtypes
from exporter.dtypes import DType
from exporter.features import FeatureSpec, FixedLenFeature, SparseTensor, VarLenFeature
from exporter.graph import GraphBuilder, Tensor
from exporter.ops import categorical, core, extra
from exporter.ops import math as tfm

Features = Mapping[str, Any]


def safe_name(text: str) -> str:
    """A column name made fit for variable and asset names (letters, digits, _ . -)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)


def _feature(features: Features, key: str) -> Any:
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


# -- numeric and bucketized ------------------------------------------------------------------------
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
        x = _feature(features, self.key)
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
        x = _feature(features, self.source_column.key)
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


# -- categorical -----------------------------------------------------------------------------------
def _raw_ids(features: Features, key: str, dtype: DType) -> SparseTensor:
    x = _feature(features, key)
    if not isinstance(x, SparseTensor):
        x = extra.dense_to_sparse(x)
    if x.dtype != dtype:
        raise TypeError(f"feature {key!r} is {dtypes.name(x.dtype)}, its column expects {dtypes.name(dtype)}")
    return x


@dataclass(frozen=True)
class VocabularyColumn(CategoricalColumn):
    """Keys looked up in a vocabulary stored as a bundle asset (one key per line)."""

    key: str
    vocabulary: tuple[Any, ...]
    asset_name: str
    dtype: DType = dtypes.STRING
    default_value: int = -1
    num_oov_buckets: int = 0

    @property
    def name(self) -> str:
        return self.key

    @property
    def num_buckets(self) -> int:
        return len(self.vocabulary) + self.num_oov_buckets

    def parse_spec(self) -> dict[str, FeatureSpec]:
        return {self.key: VarLenFeature(self.dtype)}

    def sparse_ids(self, g: GraphBuilder, features: Features) -> SparseTensor:
        asset = g.add_asset(self.asset_name, categorical.vocabulary_file(self.vocabulary))
        keys = _raw_ids(features, self.key, self.dtype)
        return categorical.vocabulary_lookup(keys, asset, self.num_oov_buckets, self.default_value)


def _vocab_column(key: str, vocabulary: Iterable[Any], asset: str, dtype: DType | None, default: int,
                  num_oov: int) -> VocabularyColumn:  # fmt: skip
    vocab = tuple(v.encode() if isinstance(v, str) else v for v in vocabulary)
    if dtype is None:
        dtype = dtypes.STRING if all(isinstance(v, bytes) for v in vocab) else dtypes.INT64
    kind = bytes if dtype == dtypes.STRING else (int, np.integer)
    if dtype not in (dtypes.STRING, dtypes.INT64) or not all(isinstance(v, kind) for v in vocab):
        raise ValueError(f"categorical column {key!r}: keys are all strings or all int64")
    if dtype == dtypes.INT64:
        vocab = tuple(int(v) for v in vocab)
    if len(set(vocab)) != len(vocab) or not vocab:
        raise ValueError(f"categorical column {key!r}: the vocabulary must be non-empty and unique")
    if num_oov > 0 and default != -1:
        raise ValueError(f"categorical column {key!r}: default_value and num_oov_buckets exclude each other")
    if not -1 <= default < len(vocab):
        raise ValueError(f"categorical column {key!r}: default_value must be -1 or a vocabulary id")
    return VocabularyColumn(key, vocab, asset, dtype, default, num_oov)


def categorical_column_with_vocabulary_list(
    key: str,
    vocabulary_list: Sequence[str | bytes | int],
    dtype: DType | None = None,
    default_value: int = -1,
    num_oov_buckets: int = 0,
) -> VocabularyColumn:
    """Ids are positions in `vocabulary_list`; a miss -> default_value (-1: dropped) or an OOV bucket."""
    return _vocab_column(key, vocabulary_list, f"{safe_name(key)}_vocabulary.txt", dtype, default_value,
                         num_oov_buckets)  # fmt: skip


def categorical_column_with_vocabulary_file(
    key: str,
    vocabulary_file: str | os.PathLike[str],
    vocabulary_size: int | None = None,
    num_oov_buckets: int = 0,
    default_value: int = -1,
    dtype: DType = dtypes.STRING,
) -> VocabularyColumn:
    """Reads the file now (one key per line; the first `vocabulary_size` lines) and ships it as an asset."""
    path = pathlib.Path(vocabulary_file)
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if vocabulary_size is not None:
        if vocabulary_size > len(lines):
            raise ValueError(f"{path}: vocabulary_size {vocabulary_size} > {len(lines)} lines")
        lines = lines[:vocabulary_size]
    keys: list[Any] = lines if dtype == dtypes.STRING else [int(line) for line in lines]
    return _vocab_column(key, keys, safe_name(path.name), dtype, default_value, num_oov_buckets)


@dataclass(frozen=True)
class HashedColumn(CategoricalColumn):
    key: str
    hash_bucket_size: int
    dtype: DType = dtypes.STRING

    @property
    def name(self) -> str:
        return self.key

    @property
    def num_buckets(self) -> int:
        return self.hash_bucket_size

    def parse_spec(self) -> dict[str, FeatureSpec]:
        return {self.key: VarLenFeature(self.dtype)}

    def sparse_ids(self, g: GraphBuilder, features: Features) -> SparseTensor:
        return categorical.hash_bucket(_raw_ids(features, self.key, self.dtype), self.hash_bucket_size)


def categorical_column_with_hash_bucket(key: str, hash_bucket_size: int, dtype: DType = dtypes.STRING) -> HashedColumn:
    """Ids are `exporter.ops.categorical.fingerprint64` of the key modulo hash_bucket_size."""
    if hash_bucket_size < 1:
        raise ValueError(f"categorical_column_with_hash_bucket {key!r}: hash_bucket_size must be >= 1")
    if dtype != dtypes.STRING and dtype not in dtypes.INTEGER:
        raise ValueError(f"categorical_column_with_hash_bucket {key!r}: dtype must be string or integer")
    return HashedColumn(key, int(hash_bucket_size), dtype)


# -- dense views of categorical columns ------------------------------------------------------------
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
        return categorical.sparse_to_indicator(ids, self.dimension)


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
        return categorical.embedding_combine(params, ids, combiner=self.combiner)


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


# -- putting columns together ----------------------------------------------------------------------
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
