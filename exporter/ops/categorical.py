"""Ops behind feature columns: ids from keys, and dense tensors from sparse ids.

- `HashBucket` (string or integer -> int64 in [0, num_buckets)). Fingerprint, stable across
  processes and machines: the first 8 bytes of BLAKE2b (digest_size=8) of the key's bytes, read
  little-endian as an unsigned 64-bit int, modulo num_buckets. Integers are hashed through their
  decimal string (b"-12"), as TF's hashed categorical column does.
- `VocabularyLookup` (string or int64 key -> its line number in an asset file, one key per line,
  read once at load; a miss -> vocabulary size + HashBucket(num_oov_buckets) if num_oov_buckets > 0,
  else default_value, -1 by default).
- `Bucketize` (numeric -> int64 bucket; a value equal to a boundary goes to the upper bucket, as
  in TF; boundaries are float32 like TF's attribute). TF outputs int32; we give int64 ids.
- `Gather` (embedding lookup: params [V, D...], integer ids of any shape -> ids.shape + [D...]).
- `SparseSegmentCombine` (params, sparse ids, optional weights -> [batch, D] with combiner sum,
  mean or sqrtn; like TF's safe_embedding_lookup_sparse: ids < 0 and weights <= 0 are dropped and
  an empty row is zeros).
- `SparseToIndicator` (sparse ids -> float32 multi-hot [batch, depth], duplicates counted and
  optional weights summed; ids outside [0, depth) add nothing, as TF's indicator column).

Sparse inputs are the three tensors of a SparseTensor (indices int64 [n, 2], values [n],
dense_shape int64 [2]); the wrappers take `exporter.features.SparseTensor`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np

from exporter import dtypes
from exporter.errors import GraphError, InvalidInputError
from exporter.features import SparseTensor
from exporter.ops.registry import LoadContext, TensorType, register_op

if TYPE_CHECKING:
    from exporter.graph import Tensor


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise GraphError(message)


def fingerprint64(keys: np.ndarray) -> np.ndarray:
    """The documented fingerprint of each key (bytes, or integers via their decimal string): uint64."""
    flat = np.asarray(keys).reshape(-1)
    if flat.dtype.kind in "iu":
        flat = flat.astype("S")  # decimal text, vectorized
    blake = hashlib.blake2b
    return np.fromiter(
        (int.from_bytes(blake(bytes(k), digest_size=8).digest(), "little") for k in flat),
        dtype=np.uint64,
        count=flat.size,
    ).reshape(np.shape(keys))


def _buckets(keys: np.ndarray, num_buckets: int) -> np.ndarray:
    return (fingerprint64(keys) % np.uint64(num_buckets)).astype(np.int64)


# -- HashBucket --------------------------------------------------------------------------------------
def _infer_hash_bucket(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    (x,) = inputs
    _require(x.dtype == dtypes.STRING or x.dtype in dtypes.INTEGER, "HashBucket takes strings or integers")
    _require(int(attrs["num_buckets"]) > 0, "HashBucket needs num_buckets > 0")
    return [TensorType(dtypes.INT64, x.shape)]


@register_op("HashBucket", infer=_infer_hash_bucket, num_inputs=1)
def _hash_bucket(inputs: list[np.ndarray], attrs: Mapping[str, Any]) -> list[np.ndarray]:
    return [_buckets(inputs[0], int(attrs["num_buckets"]))]


# -- VocabularyLookup ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Vocabulary:
    key_dtype: int
    table: dict[bytes, int]  # string keys
    sorted_keys: np.ndarray  # int64 keys, sorted, with their ids beside them
    sorted_ids: np.ndarray
    size: int
    num_oov_buckets: int
    default_value: int


def _infer_vocabulary(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    (x,) = inputs
    key_dtype = int(attrs["key_dtype"])
    _require(key_dtype in (dtypes.STRING, dtypes.INT64), "VocabularyLookup keys are string or int64")
    _require(
        x.dtype == key_dtype,
        f"VocabularyLookup has {dtypes.name(key_dtype)} keys, got {dtypes.name(x.dtype)} input",
    )
    _require(int(attrs.get("num_oov_buckets", 0)) >= 0, "num_oov_buckets must be >= 0")
    return [TensorType(dtypes.INT64, x.shape)]


def _prepare_vocabulary(attrs: Mapping[str, Any], ctx: LoadContext) -> _Vocabulary:
    asset = _text(attrs["asset"])
    lines = ctx.asset_path(asset).read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it does not add an empty key
    key_dtype = int(attrs["key_dtype"])
    table: dict[bytes, int] = {}
    keys = np.empty(0, dtype=np.int64)
    if key_dtype == dtypes.STRING:
        table = {key: i for i, key in enumerate(lines)}
        unique = len(table)
    else:
        try:
            keys = np.array([int(line) for line in lines], dtype=np.int64)
        except (ValueError, OverflowError) as e:
            raise GraphError(f"vocabulary {asset!r} is not one int64 per line: {e}") from None
        unique = np.unique(keys).size
    if unique != len(lines):  # TF refuses a vocabulary file that maps one key to two ids
        raise GraphError(f"vocabulary {asset!r} has duplicate keys")
    order = np.argsort(keys, kind="stable")
    return _Vocabulary(
        key_dtype, table, keys[order], order.astype(np.int64), len(lines),
        int(attrs.get("num_oov_buckets", 0)), int(attrs.get("default_value", -1)),
    )  # fmt: skip


@register_op("VocabularyLookup", infer=_infer_vocabulary, num_inputs=1, prepare=_prepare_vocabulary)
def _vocabulary_lookup(inputs: list[np.ndarray], vocab: _Vocabulary) -> list[np.ndarray]:
    keys = inputs[0]
    flat = keys.reshape(-1)
    if vocab.key_dtype == dtypes.STRING:
        # dict.get driven by map() runs in C; -1 marks a miss (ids are >= 0).
        ids = np.fromiter(map(vocab.table.get, flat, repeat(-1)), dtype=np.int64, count=flat.size)
    else:
        ids = np.full(flat.size, -1, dtype=np.int64)
        if vocab.size:
            pos = np.minimum(np.searchsorted(vocab.sorted_keys, flat), vocab.size - 1)
            hit = vocab.sorted_keys[pos] == flat
            ids[hit] = vocab.sorted_ids[pos[hit]]
    miss = ids < 0
    if miss.any():
        if vocab.num_oov_buckets:
            ids[miss] = vocab.size + _buckets(flat[miss], vocab.num_oov_buckets)
        else:
            ids[miss] = vocab.default_value
    return [ids.reshape(keys.shape)]


# -- Bucketize ----------------------------------------------------------------------------------------
def _infer_bucketize(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    (x,) = inputs
    _require(x.dtype in dtypes.NUMERIC, f"Bucketize takes numbers, got {dtypes.name(x.dtype)}")
    bounds = np.asarray(attrs["boundaries"], dtype=np.float32)
    _require(bool(np.all(bounds[1:] >= bounds[:-1])), "Bucketize boundaries must be sorted")
    return [TensorType(dtypes.INT64, x.shape)]


def _prepare_bucketize(attrs: Mapping[str, Any], ctx: LoadContext) -> np.ndarray:
    # TF keeps boundaries as float32: round them the same way, then compare exactly in float64.
    return np.asarray(attrs["boundaries"], dtype=np.float32).astype(np.float64)


@register_op("Bucketize", infer=_infer_bucketize, num_inputs=1, prepare=_prepare_bucketize)
def _bucketize(inputs: list[np.ndarray], bounds: np.ndarray) -> list[np.ndarray]:
    x = inputs[0]
    return [np.searchsorted(bounds, x.astype(np.float64), side="right").astype(np.int64).reshape(x.shape)]


# -- Gather -------------------------------------------------------------------------------------------
def _check_ids(ids: np.ndarray, size: int, op: str) -> None:
    bad = (ids < 0) | (ids >= size)
    if bad.any():
        raise InvalidInputError(f"{op}: id {int(ids[bad][0])} is out of range [0, {size})")


def _infer_gather(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    params, ids = inputs
    _require(ids.dtype in dtypes.INTEGER, f"Gather ids must be integers, got {dtypes.name(ids.dtype)}")
    _require(params.rank != 0, "Gather params need rank >= 1")
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
    _require(
        indices.dtype == dtypes.INT64 and dense_shape.dtype == dtypes.INT64, f"{op}: sparse indices are int64"
    )
    _require(ids.dtype in dtypes.INTEGER, f"{op}: sparse ids must be integers, got {dtypes.name(ids.dtype)}")
    if len(inputs) > 3:
        _require(inputs[3].dtype in dtypes.FLOATING, f"{op}: weights must be floats")


def _sparse_rows(indices: np.ndarray, ids: np.ndarray, dense_shape: np.ndarray, weights: Any, op: str) -> int:
    """Checks the sparse triple (and weights) agree; returns the batch size."""
    batch = int(dense_shape[0])
    if indices.shape != (ids.shape[0], 2) or (weights is not None and weights.shape != ids.shape):
        raise InvalidInputError(f"{op}: indices {indices.shape}, ids {ids.shape} and weights do not match")
    if indices.size and (indices[:, 0].min() < 0 or indices[:, 0].max() >= batch):
        raise InvalidInputError(f"{op}: a sparse row index is outside [0, {batch})")
    return batch


def _infer_combine(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    _require(len(inputs) in (4, 5), "SparseSegmentCombine takes params, indices, ids, dense_shape[, weights]")
    params = inputs[0]
    _check_sparse(inputs[1:], "SparseSegmentCombine")
    _require(
        params.dtype in dtypes.FLOATING and params.rank in (None, 2),
        "SparseSegmentCombine params: float [V, D]",
    )
    _require(_text(attrs["combiner"]) in ("sum", "mean", "sqrtn"), "combiner is sum, mean or sqrtn")
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
    combiner = _text(attrs["combiner"])
    if combiner != "sum":
        denom = np.bincount(rows, weights=w if combiner == "mean" else w * w, minlength=batch)
        denom = denom if combiner == "mean" else np.sqrt(denom)
        out /= np.where(denom > 0, denom, 1.0).astype(params.dtype)[:, None]  # empty rows stay zero
    return [out]


def _infer_indicator(inputs: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    _require(len(inputs) in (3, 4), "SparseToIndicator takes indices, ids, dense_shape[, weights]")
    _check_sparse(inputs, "SparseToIndicator")
    _require(int(attrs["depth"]) > 0, "SparseToIndicator needs depth > 0")
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
# A dense input gives a dense result, a SparseTensor a SparseTensor over the same indices.
X = TypeVar("X", "Tensor", SparseTensor)


@overload
def _on_values(x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor: ...
@overload
def _on_values(x: SparseTensor, fn: Callable[[Tensor], Tensor]) -> SparseTensor: ...
def _on_values(x: Tensor | SparseTensor, fn: Callable[[Tensor], Tensor]) -> Tensor | SparseTensor:
    if isinstance(x, SparseTensor):
        return SparseTensor(x.indices, fn(x.values), x.dense_shape)
    return fn(x)


def hash_bucket(x: X, num_buckets: int, name: str | None = None) -> X:
    """Hashes strings or integers (of a dense tensor or a SparseTensor's values) into buckets."""
    return _on_values(x, lambda t: t.graph.apply("HashBucket", [t], {"num_buckets": num_buckets}, name)[0])


def vocabulary_file(keys: Iterable[str | bytes | int]) -> bytes:
    """The asset content for `keys`: one key per line, in id order."""
    lines = [k if isinstance(k, bytes) else str(k).encode() for k in keys]
    if any(b"\n" in line for line in lines):
        raise ValueError("a vocabulary key cannot contain a newline")
    return b"".join(line + b"\n" for line in lines)


def vocabulary_lookup(
    x: X,
    asset: str,
    num_oov_buckets: int = 0,
    default_value: int = -1,
    name: str | None = None,
) -> X:
    """Looks keys up in the graph's asset `asset` (see `vocabulary_file`, `GraphBuilder.add_asset`)."""
    attrs = {
        "asset": asset,
        "key_dtype": x.dtype,
        "num_oov_buckets": num_oov_buckets,
        "default_value": default_value,
    }
    return _on_values(x, lambda t: t.graph.apply("VocabularyLookup", [t], attrs, name)[0])


def bucketize(x: Tensor, boundaries: Sequence[float], name: str | None = None) -> Tensor:
    return x.graph.apply("Bucketize", [x], {"boundaries": [float(b) for b in boundaries]}, name)[0]


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
