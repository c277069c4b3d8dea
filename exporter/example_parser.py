"""tf.Example parsing: `ExampleParser` (one spec, reused per batch) and `parse_example` turn serialized
Examples into arrays and SparseTensorValues as TensorFlow's parse_example does, with its checks and
messages. One pass over the wire format in C (exporter/_example_scan.c); `with_context` merges a
Classify/Regress context into its examples without copying it onto each."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exporter import dtypes
from exporter.dtypes import DType
from exporter.errors import InvalidInputError
from exporter.features import (
    TF_NAMES,
    FeatureSpec,
    FixedLenFeature,
    SparseFeature,
    SparseTensorValue,
    VarLenFeature,
    list_keys,
)
from exporter.protobuf_wire import encode_varint, length_delimited_fields

try:
    from exporter import _example_scan
except ImportError as _missing:  # a checkout whose C part was not compiled by its install
    raise ImportError(
        "exporter._example_scan is not built: reinstall the package (`make .venv/.installed-test`, or "
        "`pip install -e .`) to compile exporter/_example_scan.c"
    ) from _missing

_UNDECODABLE, _WRONG_TYPE, _MISSING, _WRONG_LENGTH = 1, 2, 3, 4  # error codes of the scan


_SCAN_KIND = {dtypes.STRING: 1, dtypes.FLOAT: 2, dtypes.INT64: 3}  # the Feature oneof's field numbers


_SCAN_DTYPE = {code: dtype for dtype, code in _SCAN_KIND.items()}


def _to_array(values: list[Any] | bytearray, dtype: DType) -> np.ndarray:
    """The scanned values of one key as an array: bytes objects, or the raw float32/int64 bytes."""
    if dtype == dtypes.STRING:
        out = np.empty(len(values), dtype=object)
        out[:] = values  # slice assignment keeps each bytes object whole
        return out
    assert isinstance(values, bytearray)  # the scan's contract for float32 / int64 lists
    return np.frombuffer(values, dtype=dtypes.to_numpy(dtype))  # writable, no copy


class ExampleWithContext(bytes):
    """A serialized Example (its own bytes) that shares the serialized Example `context` with others.

    Parsed by `parse_example` as `context + self` would be. Anything else that reads the bytes sees
    the example alone: build these only for the parser (see `with_context`).
    """

    context: bytes


def with_context(context: bytes, examples: Sequence[bytes]) -> np.ndarray:
    """What the parser gets for examples that share `context`: a vector of ExampleWithContext.

    O(number of examples): the context is referenced by each item, never copied.
    """
    out = np.empty(len(examples), dtype=object)
    for i, example in enumerate(examples):
        item = ExampleWithContext(example)
        item.context = context
        out[i] = item
    return out


def _kept_entries(context: bytes, names: frozenset[bytes]) -> bytes:
    """`context` as one serialized Example holding only the feature-map entries named in `names`,
    verbatim and in their order: for those keys, it reads exactly as the whole context does."""
    kept = []
    for field, features in length_delimited_fields(context):
        if field != 1:  # Example.features
            continue
        for entry_field, entry in length_delimited_fields(features):
            if entry_field != 1:  # Features.feature (a map entry: key = 1, value = 2)
                continue
            keys = [value for number, value in length_delimited_fields(entry) if number == 1]
            if (keys[-1] if keys else b"") in names:
                kept.append(b"\x0a" + encode_varint(len(entry)) + entry)
    body = b"".join(kept)
    return b"\x0a" + encode_varint(len(body)) + body if body else b""


def _where(key: str, index: int) -> str:
    return f"Name: <unknown>, Key: {key}, Index: {index}."


def _scan_key(key: str, dtype: DType, feature: FixedLenFeature | None) -> tuple[bytes, int, int, Any]:
    """How the C scan is told to read one key: (name, list kind, dense size or -1, default or None)."""
    if feature is None:
        return key.encode(), _SCAN_KIND[dtype], -1, None
    size = int(np.prod(feature.shape))
    default: Any = None
    if feature.default_value is not None:
        flat = feature.default_value.reshape(-1)
        default = tuple(flat.tolist()) if dtype == dtypes.STRING else flat.tobytes()
    return key.encode(), _SCAN_KIND[dtype], size, default


class ExampleParser:
    """`parse_example` with the spec decoded once: how the C scan reads each key, in TF's check order
    (dense features, then lists). A servable's ParseExample node holds one for its whole life."""

    def __init__(self, spec: Mapping[str, FeatureSpec]) -> None:
        self.spec = dict(spec)
        dense = {k: f for k, f in self.spec.items() if isinstance(f, FixedLenFeature)}
        wanted: dict[str, DType] = {**{k: f.dtype for k, f in dense.items()}, **list_keys(self.spec)}
        self._keys = tuple(wanted)
        self._wanted = tuple(wanted.values())
        self._scan_keys = tuple(_scan_key(k, d, dense.get(k)) for k, d in wanted.items())
        self._order = sorted(self.spec)
        self._names = frozenset(k.encode() for k in self._keys)

    def __call__(self, serialized: Sequence[bytes] | np.ndarray) -> dict[str, np.ndarray | SparseTensorValue]:
        batch = serialized if isinstance(serialized, list) else np.asarray(serialized, dtype=object)
        if isinstance(batch, np.ndarray):
            if batch.ndim != 1:
                raise InvalidInputError(
                    f"parse_example takes a vector of serialized Examples, got shape {batch.shape}"
                )
            batch = batch.tolist()
        batch = self._with_contexts(batch)
        # One pass over the wire format in C (exporter/_example_scan.c), checks and defaults included.
        error, per_key = _example_scan.parse(batch, self._scan_keys)
        if error is not None:
            raise _error(error, self._keys, self._wanted, self.spec)
        n = len(batch)
        scanned = dict(zip(self._keys, per_key, strict=True))
        result: dict[str, np.ndarray | SparseTensorValue] = {}
        for key in self._order:
            feature = self.spec[key]
            if isinstance(feature, FixedLenFeature):
                result[key] = _to_array(scanned[key][0], feature.dtype).reshape((n, *feature.shape))
            elif isinstance(feature, VarLenFeature):
                values, _, indices, width = scanned[key]
                assert indices is not None  # the scan gives indices for every list key
                result[key] = SparseTensorValue(
                    np.frombuffer(indices, np.int64).reshape(-1, 2),
                    _to_array(values, feature.dtype),
                    np.array([n, width], dtype=np.int64),
                )
            else:
                result[key] = _sparse(key, feature, scanned, n)
        return result


    def _with_contexts(self, batch: list[Any]) -> list[Any]:
        """Each ExampleWithContext as `context + example`, the context cut down (once per distinct
        context) to the entries of the keys this parser reads: the scan sees what the whole
        concatenation holds for those keys, and the unread rest of a context is never copied."""
        cut: dict[int, bytes] = {}
        out = batch
        for i, blob in enumerate(batch):
            context = getattr(blob, "context", None)
            if context is None:
                continue
            if out is batch:
                out = list(batch)
            prefix = cut.get(id(context))
            if prefix is None:
                error, _ = _example_scan.parse([context], ())  # the context must decode, whatever it holds
                try:
                    if error is not None:
                        raise ValueError("undecodable")
                    prefix = cut[id(context)] = _kept_entries(context, self._names)
                except ValueError:
                    raise InvalidInputError(f"Name: <unknown>, Index: {i}. Could not parse example input") from None
            out[i] = prefix + blob
        return out


def parse_example(
    serialized: Sequence[bytes] | np.ndarray, spec: Mapping[str, FeatureSpec]
) -> dict[str, np.ndarray | SparseTensorValue]:
    """Parses a batch of serialized tf.Examples like `tf.io.parse_example`; returns the features by
    sorted name.

    Raises InvalidInputError (naming the feature and the example's index) for an undecodable
    example, a missing required feature, a list of the wrong type or a dense list of the wrong length;
    of several, the one TF's example-by-example, key-by-key reading meets first. To parse many batches
    with one spec, build an `ExampleParser` once.
    """
    return ExampleParser(spec)(serialized)


def _error(
    error: tuple[int, int, int, int, int], keys: Sequence[str], wanted: Sequence[DType], spec: Mapping[str, FeatureSpec]
) -> InvalidInputError:
    """TF's message for the first failure the scan met."""
    i, rank, code, found, count = error
    if code == _UNDECODABLE:
        return InvalidInputError(f"Name: <unknown>, Index: {i}. Could not parse example input")
    key, dtype = keys[rank], wanted[rank]
    if code == _WRONG_TYPE:
        return InvalidInputError(
            f"{_where(key, i)}  Data types don't match. Data type: "
            f"{TF_NAMES[_SCAN_DTYPE[found]]} but expected type: {TF_NAMES[dtype]}"
        )
    if code == _MISSING:
        return InvalidInputError(
            f"{_where(key, i)}  Feature: {key} (data type: {TF_NAMES[dtype]}) is required but could not be found."
        )
    feature = spec[key]
    assert isinstance(feature, FixedLenFeature)
    return InvalidInputError(
        f"{_where(key, i)}  Number of {TF_NAMES[dtype].replace('string', 'bytes')} values != expected.  "
        f"Values size: {count} but output shape: {list(feature.shape)}"
    )


def _sparse(key: str, feature: SparseFeature, scanned: Mapping[str, Any], n: int) -> SparseTensorValue:
    _, index_lens, index_pairs, _ = scanned[feature.index_key]
    _, value_lens, _, _ = scanned[feature.value_key]
    index_lens, value_lens = np.frombuffer(index_lens, np.int64), np.frombuffer(value_lens, np.int64)
    mismatched = np.flatnonzero(index_lens != value_lens)
    if mismatched.size:
        i = int(mismatched[0])
        raise InvalidInputError(
            f"{_where(key, i)}  SparseFeature has {int(index_lens[i])} indices in {feature.index_key!r} "
            f"but {int(value_lens[i])} values in {feature.value_key!r}"
        )
    rows = np.frombuffer(index_pairs, np.int64).reshape(-1, 2)[:, 0]
    columns = _to_array(scanned[feature.index_key][0], dtypes.INT64)
    values = _to_array(scanned[feature.value_key][0], feature.dtype)
    bad = np.flatnonzero((columns < 0) | (columns >= feature.size))
    if bad.size:
        j = int(bad[0])
        raise InvalidInputError(
            f"{_where(key, int(rows[j]))}  SparseFeature index {int(columns[j])} from "
            f"{feature.index_key!r} is out of range [0, {feature.size})"
        )
    if not feature.already_sorted:
        order = np.lexsort((columns, rows))  # stable, like TF's sparse_reorder
        rows, columns, values = rows[order], columns[order], values[order]
    return SparseTensorValue(
        np.stack([rows, columns], axis=1).reshape(-1, 2),
        values,
        np.array([n, feature.size], dtype=np.int64),
    )
