"""Feature specs and tf.Example parsing in numpy, matching `tf.io.parse_example`.

Specs: `FixedLenFeature(shape, dtype, default_value=None)` (no default: the feature is required),
`VarLenFeature(dtype)` and `SparseFeature(index_key, value_key, dtype, size)`; dtypes float32, int64
and string (DT_STRING values are numpy object arrays of `bytes`). `parse_example` returns, per
feature name, a dense ndarray `[batch, *shape]` or a `SparseTensorValue(indices int64 [n, 2],
values [n], dense_shape int64 [2])`, exactly as TensorFlow does:

- a var-len feature has dense_shape `[batch, longest list]` and indices `[example, position]`;
- a sparse feature takes its column indices from the int64 feature `index_key` and its values from
  `value_key`, is sorted by (example, index) unless `already_sorted`, and has dense_shape
  `[batch, size]`; an index outside `[0, size)` is refused here (TF accepts it at parse time and
  every consumer of the SparseTensor then fails on it);
- a feature present in an example but with no list set counts as missing, as in TF.

Output order (the ParseExample op's outputs, see `output_layout`): feature names sorted; a dense
feature gives one output, a var-len or sparse feature three: indices, values, dense_shape.

Examples that share a context (TF Serving's ExampleListWithContext) come as `with_context(context,
examples)`: each item is the example's own bytes and carries the shared context. The parser reads
each as `context + example` (the example's features win), but cuts the context down first, once per
batch, to the entries of the keys it reads: a big context of other features costs its size once,
not once per example.

Symbolic sparse tensors of a graph are `SparseTensor(indices, values, dense_shape)`, defined here
so the parsing and categorical op wrappers share one type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from exporter import dtypes

try:
    from exporter import _example_scan
except ImportError as _missing:  # a checkout whose C part was not compiled by its install
    raise ImportError(
        "exporter._example_scan is not built: reinstall the package (`make .venv/.installed-test`, or "
        "`pip install -e .`) to compile exporter/_example_scan.c"
    ) from _missing
from exporter.dtypes import DType
from exporter.errors import InvalidInputError

if TYPE_CHECKING:
    from exporter.graph import Tensor

# The three dtypes a tf.Example can carry, with TF's names (used in messages) and the list field.
_TF_NAMES = {dtypes.FLOAT: "float", dtypes.INT64: "int64", dtypes.STRING: "string"}


def _check_dtype(dtype: DType | str) -> DType:
    dtype = dtypes.from_name(dtype) if isinstance(dtype, str) else int(dtype)
    if dtype not in _TF_NAMES:
        raise ValueError(f"a tf.Example feature is float32, int64 or string, not dtype {dtype}")
    return dtype


@dataclass(frozen=True, eq=False)
class FixedLenFeature:
    """A dense feature of a fixed `shape`; required unless `default_value` is given.

    The default must have exactly prod(shape) elements (TF reshapes it; it never broadcasts).
    """

    shape: tuple[int, ...]
    dtype: DType
    default_value: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"FixedLenFeature needs a fully defined shape, got {list(shape)}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))
        if self.default_value is not None:
            default = dtypes.as_array(self.default_value, self.dtype)
            if default.size != int(np.prod(shape)):
                raise ValueError(f"default value of {default.size} elements for shape {list(shape)}")
            default = default.reshape(shape)
            default.flags.writeable = False
            object.__setattr__(self, "default_value", default)

    @property
    def required(self) -> bool:
        return self.default_value is None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FixedLenFeature):
            return NotImplemented
        if (self.shape, self.dtype) != (other.shape, other.dtype):
            return False
        if self.default_value is None or other.default_value is None:  # required
            return self.default_value is None and other.default_value is None
        return bool(np.array_equal(self.default_value, other.default_value))

    # Unhashable: equality compares the default's values (an array, which has no hash). Setting
    # __hash__ to None is Python's way to say so; typeshed types object.__hash__ as a method only.
    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class VarLenFeature:
    """A list of any length per example, parsed into a SparseTensorValue [batch, longest]."""

    dtype: DType

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))


@dataclass(frozen=True)
class SparseFeature:
    """A sparse row of width `size`: column indices from int64 `index_key`, values from `value_key`."""

    index_key: str
    value_key: str
    dtype: DType
    size: int
    already_sorted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))
        if int(self.size) <= 0:
            raise ValueError(f"SparseFeature size must be positive, got {self.size}")
        object.__setattr__(self, "size", int(self.size))


FeatureSpec = FixedLenFeature | VarLenFeature | SparseFeature


class SparseTensorValue(NamedTuple):
    """A parsed sparse tensor: indices int64 [n, 2], values [n], dense_shape int64 [2]."""

    indices: np.ndarray
    values: np.ndarray
    dense_shape: np.ndarray


@dataclass(frozen=True)
class SparseTensor:
    """A symbolic sparse tensor in a graph: three Tensors, as ParseExample outputs them."""

    indices: Tensor
    values: Tensor
    dense_shape: Tensor

    @property
    def dtype(self) -> DType:
        return self.values.dtype

    @property
    def graph(self) -> Any:
        return self.values.graph


def output_layout(spec: Mapping[str, FeatureSpec]) -> list[tuple[str, str]]:
    """The ParseExample outputs in order: (feature name, 'dense' | 'indices' | 'values' | 'dense_shape')."""
    layout: list[tuple[str, str]] = []
    for key in sorted(spec):
        if isinstance(spec[key], FixedLenFeature):
            layout.append((key, "dense"))
        else:
            layout.extend((key, part) for part in ("indices", "values", "dense_shape"))
    return layout


def _varlen_keys(spec: Mapping[str, FeatureSpec]) -> dict[str, DType]:
    """Every feature read as a list (var-len features and the two halves of sparse features)."""
    lists: dict[str, DType] = {}

    def need(key: str, dtype: DType) -> None:
        if isinstance(spec.get(key), FixedLenFeature) or lists.get(key, dtype) != dtype:
            raise ValueError(f"feature {key!r} is used with two different specs")
        lists[key] = dtype

    for key, feature in spec.items():
        if isinstance(feature, VarLenFeature):
            need(key, feature.dtype)
        elif isinstance(feature, SparseFeature):
            need(feature.index_key, dtypes.INT64)
            need(feature.value_key, feature.dtype)
        elif not isinstance(feature, FixedLenFeature):
            raise ValueError(f"feature {key!r}: unknown spec {feature!r}")
    return lists


_SCAN_KIND = {dtypes.STRING: 1, dtypes.FLOAT: 2, dtypes.INT64: 3}  # the Feature oneof's field numbers
_SCAN_DTYPE = {code: dtype for dtype, code in _SCAN_KIND.items()}
_UNDECODABLE, _WRONG_TYPE, _MISSING, _WRONG_LENGTH = 1, 2, 3, 4  # error codes of the scan


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


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _length_delimited(data: bytes) -> list[tuple[int, bytes]]:
    """The (field number, bytes) of a message's length-delimited fields, in order; others skipped."""
    out, pos = [], 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            out.append((tag >> 3, data[pos : pos + size]))
            pos += size
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
    return out


def _kept_entries(context: bytes, names: frozenset[bytes]) -> bytes:
    """`context` as one serialized Example holding only the feature-map entries named in `names`,
    verbatim and in their order: for those keys, it reads exactly as the whole context does."""
    kept = []
    for field, features in _length_delimited(context):
        if field != 1:  # Example.features
            continue
        for entry_field, entry in _length_delimited(features):
            if entry_field != 1:  # Features.feature (a map entry: key = 1, value = 2)
                continue
            keys = [value for number, value in _length_delimited(entry) if number == 1]
            if (keys[-1] if keys else b"") in names:
                kept.append(b"\x0a" + _encode_varint(len(entry)) + entry)
    body = b"".join(kept)
    return b"\x0a" + _encode_varint(len(body)) + body if body else b""


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


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
        wanted: dict[str, DType] = {**{k: f.dtype for k, f in dense.items()}, **_varlen_keys(self.spec)}
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
            f"{_TF_NAMES[_SCAN_DTYPE[found]]} but expected type: {_TF_NAMES[dtype]}"
        )
    if code == _MISSING:
        return InvalidInputError(
            f"{_where(key, i)}  Feature: {key} (data type: {_TF_NAMES[dtype]}) is required but could not be found."
        )
    feature = spec[key]
    assert isinstance(feature, FixedLenFeature)
    return InvalidInputError(
        f"{_where(key, i)}  Number of {_TF_NAMES[dtype].replace('string', 'bytes')} values != expected.  "
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


def validate_spec(spec: Mapping[str, FeatureSpec]) -> None:
    """Raises GraphError for a spec parse_example cannot honour (e.g. clashing sparse keys)."""
    _varlen_keys(spec)
