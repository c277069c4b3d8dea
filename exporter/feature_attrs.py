"""A feature spec as node attributes, and back: how the ParseExample op stores its spec in a bundle.

Flat attributes, one list per field in sorted key order (like TF's ParseExampleV2 attributes):
dense_keys/dense_types/dense_ranks/dense_dims (dims of every dense shape, concatenated) and
dense_default_<i> (a tensor) for the i-th dense key when it has a default; varlen_keys/varlen_types;
sparse_keys/sparse_index_keys/sparse_value_keys/sparse_types/sparse_sizes/sparse_sorted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from exporter.errors import GraphError
from exporter.features import FeatureSpec, FixedLenFeature, SparseFeature, VarLenFeature, validate_spec


def spec_to_attrs(spec: Mapping[str, FeatureSpec]) -> dict[str, Any]:
    """Encodes a spec as node attributes (values exporter.attrs can store)."""
    validate_spec(spec)  # validates the spec
    ordered = sorted(spec.items())
    dense = {k: f for k, f in ordered if isinstance(f, FixedLenFeature)}
    varlen = {k: f for k, f in ordered if isinstance(f, VarLenFeature)}
    sparse = {k: f for k, f in ordered if isinstance(f, SparseFeature)}
    attrs: dict[str, Any] = {
        "dense_keys": list(dense),
        "dense_types": [f.dtype for f in dense.values()],
        "dense_ranks": [len(f.shape) for f in dense.values()],
        "dense_dims": [d for f in dense.values() for d in f.shape],
        "varlen_keys": list(varlen),
        "varlen_types": [f.dtype for f in varlen.values()],
        "sparse_keys": list(sparse),
        "sparse_index_keys": [f.index_key for f in sparse.values()],
        "sparse_value_keys": [f.value_key for f in sparse.values()],
        "sparse_types": [f.dtype for f in sparse.values()],
        "sparse_sizes": [f.size for f in sparse.values()],
        "sparse_sorted": [int(f.already_sorted) for f in sparse.values()],
    }
    for i, feature in enumerate(dense.values()):
        if not feature.required:
            attrs[f"dense_default_{i}"] = np.array(feature.default_value)
    return attrs


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def spec_from_attrs(attrs: Mapping[str, Any]) -> dict[str, FeatureSpec]:
    """Decodes `spec_to_attrs`'s attributes (raw or read back from a bundle); GraphError if malformed."""
    try:
        spec: dict[str, FeatureSpec] = {}
        dims = list(attrs["dense_dims"])
        for i, (key, dtype, rank) in enumerate(
            zip(attrs["dense_keys"], attrs["dense_types"], attrs["dense_ranks"], strict=True)
        ):
            shape, dims = tuple(dims[:rank]), dims[rank:]
            spec[_text(key)] = FixedLenFeature(shape, dtype, attrs.get(f"dense_default_{i}"))
        if dims:
            raise ValueError("dense_dims has more dims than dense_ranks")
        for key, dtype in zip(attrs["varlen_keys"], attrs["varlen_types"], strict=True):
            spec[_text(key)] = VarLenFeature(dtype)
        columns = ("sparse_keys", "sparse_index_keys", "sparse_value_keys", "sparse_types", "sparse_sizes")
        for key, index_key, value_key, dtype, size, ordered in zip(
            *(attrs[c] for c in columns), attrs["sparse_sorted"], strict=True
        ):
            spec[_text(key)] = SparseFeature(_text(index_key), _text(value_key), dtype, size, bool(ordered))
        validate_spec(spec)
    except (KeyError, ValueError, TypeError) as e:
        raise GraphError(f"malformed feature spec attributes: {e}") from None
    return spec
