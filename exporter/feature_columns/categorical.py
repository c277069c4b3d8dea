"""Categorical columns: keys looked up in a vocabulary (a list or a file, shipped as an asset) or hashed.

Fed raw (not parsed), a dense [batch] or [batch, k] tensor drops its b"" and -1 entries, as TF does.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter import dtypes
from exporter.dtypes import DType
from exporter.feature_columns.base import CategoricalColumn, Features, feature, safe_name
from exporter.features import FeatureSpec, SparseTensor, VarLenFeature
from exporter.graph import GraphBuilder
from exporter.ops import categorical, extra


def _raw_ids(features: Features, key: str, dtype: DType) -> SparseTensor:
    x = feature(features, key)
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
