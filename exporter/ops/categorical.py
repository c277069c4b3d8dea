"""Ops behind categorical feature columns: ids from keys.

- `HashBucket` (string or integer -> int64 in [0, num_buckets)). Fingerprint, stable across
  processes and machines: the first 8 bytes of BLAKE2b (digest_size=8) of the key's bytes, read
  little-endian as an unsigned 64-bit int, modulo num_buckets. Integers are hashed through their
  decimal string (b"-12"), as TF's hashed categorical column does.
- `VocabularyLookup` (string or int64 key -> its line number in an asset file, one key per line,
  read once at load; a miss -> vocabulary size + HashBucket(num_oov_buckets) if num_oov_buckets > 0,
  else default_value, -1 by default).
- `Bucketize` (numeric -> int64 bucket; a value equal to a boundary goes to the upper bucket, as
  in TF; boundaries are float32 like TF's attribute). TF outputs int32; we give int64 ids.

The ids become dense tensors in `exporter.ops.embedding` (Gather, SparseSegmentCombine,
SparseToIndicator). A wrapper given a SparseTensor maps its values and keeps its indices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeVar, overload

import numpy as np

from exporter import dtypes
from exporter.errors import GraphError
from exporter.features import SparseTensor
from exporter.ops.registry import LoadContext, TensorType, attr_text, register_op, require

if TYPE_CHECKING:
    from exporter.graph import Tensor


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
    require(x.dtype == dtypes.STRING or x.dtype in dtypes.INTEGER, "HashBucket takes strings or integers")
    require(int(attrs["num_buckets"]) > 0, "HashBucket needs num_buckets > 0")
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
    require(key_dtype in (dtypes.STRING, dtypes.INT64), "VocabularyLookup keys are string or int64")
    require(
        x.dtype == key_dtype,
        f"VocabularyLookup has {dtypes.name(key_dtype)} keys, got {dtypes.name(x.dtype)} input",
    )
    require(int(attrs.get("num_oov_buckets", 0)) >= 0, "num_oov_buckets must be >= 0")
    return [TensorType(dtypes.INT64, x.shape)]


def _prepare_vocabulary(attrs: Mapping[str, Any], ctx: LoadContext) -> _Vocabulary:
    asset = attr_text(attrs["asset"])
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
    require(x.dtype in dtypes.NUMERIC, f"Bucketize takes numbers, got {dtypes.name(x.dtype)}")
    bounds = np.asarray(attrs["boundaries"], dtype=np.float32)
    require(bool(np.all(bounds[1:] >= bounds[:-1])), "Bucketize boundaries must be sorted")
    return [TensorType(dtypes.INT64, x.shape)]


def _prepare_bucketize(attrs: Mapping[str, Any], ctx: LoadContext) -> np.ndarray:
    # TF keeps boundaries as float32: round them the same way, then compare exactly in float64.
    return np.asarray(attrs["boundaries"], dtype=np.float32).astype(np.float64)


@register_op("Bucketize", infer=_infer_bucketize, num_inputs=1, prepare=_prepare_bucketize)
def _bucketize(inputs: list[np.ndarray], bounds: np.ndarray) -> list[np.ndarray]:
    x = inputs[0]
    return [np.searchsorted(bounds, x.astype(np.float64), side="right").astype(np.int64).reshape(x.shape)]


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
