"""Ops behind embedding and indicator columns: dense tensors from ids (`exporter.ops.categorical`
makes the ids from keys).

- `Gather` (embedding lookup: params [V, D...], integer ids of any shape -> ids.shape + [D...]).
- `SparseSegmentCombine` (params, sparse ids, optional weights -> [batch, D] with combiner sum,
  mean or sqrtn; like TF's safe_embedding_lookup_sparse: ids < 0 and weights <= 0 are dropped and
  an empty row is zeros).
- `SparseToIndicator` (sparse ids -> float32 multi-hot [batch, depth], duplicates counted and
  optional weights summed; ids outside [0, depth) add nothing, as TF's indicator column).

An id out of range is an InvalidInputError (the request's fault). Sparse inputs are the three
tensors of a SparseTensor (indices int64 [n, 2], values [n], dense_shape int64 [2]); the wrappers
take `exporter.features.SparseTensor`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.features import SparseTensor
from exporter.ops.registry import TensorType, attr_text, register_op, require

if TYPE_CHECKING:
    from exporter.graph import Tensor


# -- Gather -------------------------------------------------------------------------------------------
def _check_ids(ids: np.ndarray, size: int, op: str) -> None:
    bad = (ids < 0) | (ids >= size)
    if bad.any():
        raise InvalidInputError(f"{op}: id {int(ids[bad][0])} is out of range [0, {size})")


def _infer_gather(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    params, ids = inputs
    require(ids.dtype in dtypes.INTEGER, f"Gather ids must be integers, got {dtypes.name(ids.dtype)}")
    require(params.rank != 0, "Gather params need rank >= 1")
    shape = None if ids.shape is None or params.shape is None else (*ids.shape, *params.shape[1:])
    return [TensorType(params.dtype, shape)]


@register_op("Gather", infer=_infer_gather, num_inputs=2)
def _gather(inputs: list[np.ndarray], state: Any) -> list[np.ndarray]:
    params, ids = inputs
    _check_ids(ids, params.shape[0], "Gather")
    return [np.take(params, ids, axis=0)]


# -- sparse ids -> dense ------------------------------------------------------------------------------
def _check_sparse(inputs: Sequence[TensorType], op: str) -> None:
    indices, ids, dense_shape = inputs[:3]
    require(
        indices.dtype == dtypes.INT64 and dense_shape.dtype == dtypes.INT64, f"{op}: sparse indices are int64"
    )
    require(ids.dtype in dtypes.INTEGER, f"{op}: sparse ids must be integers, got {dtypes.name(ids.dtype)}")
    if len(inputs) > 3:
        require(inputs[3].dtype in dtypes.FLOATING, f"{op}: weights must be floats")


def _sparse_rows(indices: np.ndarray, ids: np.ndarray, dense_shape: np.ndarray, weights: Any, op: str) -> int:
    """Checks the sparse triple (and weights) agree; returns the batch size."""
    batch = int(dense_shape[0])
    if indices.shape != (ids.shape[0], 2) or (weights is not None and weights.shape != ids.shape):
        raise InvalidInputError(f"{op}: indices {indices.shape}, ids {ids.shape} and weights do not match")
    if indices.size and (indices[:, 0].min() < 0 or indices[:, 0].max() >= batch):
        raise InvalidInputError(f"{op}: a sparse row index is outside [0, {batch})")
    return batch


def _infer_combine(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    require(len(inputs) in (4, 5), "SparseSegmentCombine takes params, indices, ids, dense_shape[, weights]")
    params = inputs[0]
    _check_sparse(inputs[1:], "SparseSegmentCombine")
    require(
        params.dtype in dtypes.FLOATING and params.rank in (None, 2),
        "SparseSegmentCombine params: float [V, D]",
    )
    require(attr_text(attrs["combiner"]) in ("sum", "mean", "sqrtn"), "combiner is sum, mean or sqrtn")
    return [TensorType(params.dtype, (None, params.shape[1] if params.shape else None))]


@register_op("SparseSegmentCombine", infer=_infer_combine, min_inputs=4)
def _combine(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    params, indices, ids, dense_shape = inputs[:4]
    weights = inputs[4] if len(inputs) > 4 else None
    batch = _sparse_rows(indices, ids, dense_shape, weights, "SparseSegmentCombine")
    keep = ids >= 0 if weights is None else (ids >= 0) & (weights > 0)  # safe_embedding_lookup_sparse
    rows, ids = indices[keep, 0], ids[keep]
    _check_ids(ids, params.shape[0], "SparseSegmentCombine")
    w = np.ones(ids.shape, params.dtype) if weights is None else weights[keep].astype(params.dtype)
    out = np.zeros((batch, params.shape[1]), dtype=params.dtype)
    np.add.at(out, rows, params[ids] * w[:, None])
    combiner = attr_text(attrs["combiner"])
    if combiner != "sum":
        denom = np.bincount(rows, weights=w if combiner == "mean" else w * w, minlength=batch)
        denom = denom if combiner == "mean" else np.sqrt(denom)
        out /= np.where(denom > 0, denom, 1.0).astype(params.dtype)[:, None]  # empty rows stay zero
    return [out]


def _infer_indicator(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    require(len(inputs) in (3, 4), "SparseToIndicator takes indices, ids, dense_shape[, weights]")
    _check_sparse(inputs, "SparseToIndicator")
    require(int(attrs["depth"]) > 0, "SparseToIndicator needs depth > 0")
    return [TensorType(dtypes.FLOAT, (None, int(attrs["depth"])))]


@register_op("SparseToIndicator", infer=_infer_indicator, min_inputs=3)
def _indicator(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    indices, ids, dense_shape = inputs[:3]
    weights = inputs[3] if len(inputs) > 3 else None
    batch = _sparse_rows(indices, ids, dense_shape, weights, "SparseToIndicator")
    depth = int(attrs["depth"])
    valid = (ids >= 0) & (ids < depth)
    cells = indices[valid, 0] * depth + ids[valid]
    counts = np.bincount(cells, weights=None if weights is None else weights[valid], minlength=batch * depth)
    return [counts.astype(np.float32).reshape(batch, depth)]



# -- functional wrappers ------------------------------------------------------------------------------
def gather(params: Tensor, ids: Tensor, name: str | None = None) -> Tensor:
    return params.graph.apply("Gather", [params, ids], None, name)[0]


def embedding_combine(
    params: Tensor,
    ids: SparseTensor,
    weights: SparseTensor | None = None,
    combiner: str = "mean",
    name: str | None = None,
) -> Tensor:
    """[batch, D] embeddings of sparse ids; `weights` shares the ids' indices (a weighted column)."""
    inputs = [params, ids.indices, ids.values, ids.dense_shape] + ([weights.values] if weights else [])
    return params.graph.apply("SparseSegmentCombine", inputs, {"combiner": combiner}, name)[0]


def sparse_to_indicator(
    ids: SparseTensor, depth: int, weights: SparseTensor | None = None, name: str | None = None
) -> Tensor:
    """Multi-hot float32 [batch, depth] of sparse ids (counts, or summed weights)."""
    inputs = [ids.indices, ids.values, ids.dense_shape] + ([weights.values] if weights else [])
    return ids.values.graph.apply("SparseToIndicator", inputs, {"depth": depth}, name)[0]
