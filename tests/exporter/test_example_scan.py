"""The C wire scan behind parse_example, against protobuf's own reading of the same bytes.

A reference parser here reads each Example with protobuf (upb) and applies TF's rules, the way
parse_example did before the scan was written in C; random examples in every encoding a writer may
use (packed or not, fields repeated, Examples concatenated) must give the same arrays and the same
first error from both.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from exporter import dtypes
from exporter.errors import InvalidInputError
from exporter.example_parser import parse_example
from exporter.features import FixedLenFeature, SparseTensorValue, VarLenFeature
from protos.tessera import example_pb2

KINDS = {dtypes.FLOAT: "float_list", dtypes.INT64: "int64_list", dtypes.STRING: "bytes_list"}


def reference(serialized: list[bytes], spec: Mapping[str, Any]) -> dict[str, Any]:
    """parse_example with protobuf's parser (dense and var-len features), raising the same errors."""
    dense_out: dict[str, list[Any]] = {k: [] for k, f in spec.items() if isinstance(f, FixedLenFeature)}
    lists: dict[str, list[list[Any]]] = {k: [] for k, f in spec.items() if isinstance(f, VarLenFeature)}
    names = {dtypes.FLOAT: "float", dtypes.INT64: "int64", dtypes.STRING: "string"}
    for i, blob in enumerate(serialized):
        try:
            fmap = example_pb2.Example.FromString(blob).features.feature
        except DecodeError:
            raise InvalidInputError(f"Name: <unknown>, Index: {i}. Could not parse example input") from None
        for key, feature in [*((k, spec[k]) for k in dense_out), *((k, spec[k]) for k in lists)]:
            kind = fmap[key].WhichOneof("kind") if key in fmap else None
            if kind is not None and kind != KINDS[feature.dtype]:
                found = {v: k for k, v in KINDS.items()}[kind]
                raise InvalidInputError(
                    f"Name: <unknown>, Key: {key}, Index: {i}.  Data types don't match. Data type: "
                    f"{names[found]} but expected type: {names[feature.dtype]}"
                )
            values = [] if kind is None else list(getattr(fmap[key], kind).value)
            if key in lists:
                lists[key].append(values)
            elif kind is None:
                if feature.required:
                    raise InvalidInputError(f"Name: <unknown>, Key: {key}, Index: {i}.  Feature: {key} "
                                            f"(data type: {names[feature.dtype]}) is required but could not be found.")
                dense_out[key].extend(feature.default_value.reshape(-1).tolist())
            elif len(values) != int(np.prod(feature.shape)):
                raise InvalidInputError("length")
            else:
                dense_out[key].extend(values)
    out: dict[str, Any] = {}
    for key, values in dense_out.items():
        feature = spec[key]
        out[key] = dtypes.as_array(values, feature.dtype).reshape((len(serialized), *feature.shape))
    for key, rows in lists.items():
        flat = [v for r in rows for v in r]
        idx = [[i, j] for i, r in enumerate(rows) for j in range(len(r))]
        out[key] = (np.array(idx, np.int64).reshape(-1, 2), dtypes.as_array(flat, spec[key].dtype),
                    [len(rows), max((len(r) for r in rows), default=0)])
    return out


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    tag = _varint(number << 3 | wire_type)
    return tag + (_varint(len(payload)) + payload if wire_type == 2 else payload)


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _list(dtype: int, values: list[Any], rng: np.random.Generator) -> bytes:
    """A FloatList / Int64List / BytesList body, packed or not, maybe split in two runs."""
    if dtype == dtypes.STRING:
        return b"".join(_field(1, 2, v) for v in values)
    split = int(rng.integers(0, len(values) + 1))
    parts = [values[:split], values[split:]]
    out = b""
    for part in parts:
        if not part:
            continue
        if dtype == dtypes.FLOAT:
            if rng.random() < 0.5:
                out += _field(1, 2, struct.pack(f"<{len(part)}f", *part))
            else:
                out += b"".join(_field(1, 5, struct.pack("<f", v)) for v in part)
        elif rng.random() < 0.5:
            out += _field(1, 2, b"".join(_varint(v) for v in part))
        else:
            out += b"".join(_field(1, 0, _varint(v)) for v in part)
    return out


def _feature(dtype: int | None, values: list[Any], rng: np.random.Generator) -> bytes:
    if dtype is None:
        return b""  # a Feature with no list set
    kind = {dtypes.STRING: 1, dtypes.FLOAT: 2, dtypes.INT64: 3}[dtype]
    return _field(kind, 2, _list(dtype, values, rng))


def _values(dtype: int, n: int, rng: np.random.Generator) -> list[Any]:
    if dtype == dtypes.FLOAT:
        return [float(np.float32(v)) for v in rng.normal(size=n)]
    if dtype == dtypes.INT64:
        return [int(v) for v in rng.integers(-(2**62), 2**62, size=n)]
    return [bytes(rng.integers(0, 256, size=int(rng.integers(0, 5))).astype(np.uint8)) for _ in range(n)]


def _example(spec: Mapping[str, Any], rng: np.random.Generator) -> bytes:
    entries = []
    for key, feature in spec.items():
        roll = rng.random()
        if roll < 0.1:
            continue  # absent
        size = int(np.prod(feature.shape)) if isinstance(feature, FixedLenFeature) else int(rng.integers(0, 4))
        dtype = None if roll < 0.15 else feature.dtype
        entry = _field(1, 2, key.encode()) + _field(2, 2, _feature(dtype, _values(feature.dtype, size, rng), rng))
        if rng.random() < 0.2:  # the value before the key: fields of a message come in any order
            entry = _field(2, 2, _feature(dtype, _values(feature.dtype, size, rng), rng)) + _field(1, 2, key.encode())
        entries.append(_field(1, 2, entry))
    entries.append(_field(1, 2, _field(1, 2, b"unrequested") + _field(2, 2, _feature(dtypes.FLOAT, [1.0], rng))))
    order = rng.permutation(len(entries))
    features = b"".join(entries[i] for i in order)
    if rng.random() < 0.3:  # Example.features split in two: the maps merge
        cut = int(rng.integers(0, len(order) + 1))
        return _field(1, 2, b"".join(entries[i] for i in order[:cut])) + _field(
            1, 2, b"".join(entries[i] for i in order[cut:]))
    return _field(1, 2, features)


SPEC = {
    "f": FixedLenFeature((2,), dtypes.FLOAT, default_value=[0.5, -1.0]),
    "i": FixedLenFeature((), dtypes.INT64, default_value=7),
    "s": FixedLenFeature((1,), dtypes.STRING, default_value=[b"none"]),
    "vf": VarLenFeature(dtypes.FLOAT),
    "vi": VarLenFeature(dtypes.INT64),
    "vs": VarLenFeature(dtypes.STRING),
}


def _same(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert sorted(ours) == sorted(theirs)
    for key, expected in theirs.items():
        if isinstance(expected, tuple):
            got = ours[key]
            assert isinstance(got, SparseTensorValue)
            np.testing.assert_array_equal(got.indices, expected[0])
            assert got.values.dtype == expected[1].dtype
            np.testing.assert_array_equal(got.values, expected[1])
            np.testing.assert_array_equal(got.dense_shape, expected[2])
        else:
            assert ours[key].dtype == expected.dtype and ours[key].shape == expected.shape
            np.testing.assert_array_equal(ours[key], expected)


@pytest.mark.parametrize("seed", range(40))
def test_random_examples_in_every_encoding_match_protobuf(seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = [_example(SPEC, rng) for _ in range(int(rng.integers(0, 12)))]
    _same(parse_example(batch, SPEC), reference(batch, SPEC))


@pytest.mark.parametrize("seed", range(40))
def test_truncated_examples_fail_like_protobuf(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    required = {"r": FixedLenFeature((1,), dtypes.FLOAT), **SPEC}
    batch = [_example(required, rng) for _ in range(6)]
    victim = int(rng.integers(0, len(batch)))
    batch[victim] = batch[victim][: int(rng.integers(0, len(batch[victim])))]
    _same_outcome(batch, required, strict=True)


@pytest.mark.parametrize("seed", range(40))
def test_flipped_bytes_fail_like_protobuf_or_like_tf(seed: int) -> None:
    """A flipped byte inside a feature nobody asked for, or in a key's UTF-8, fails protobuf's full
    parse but not TF's, which reads only the features it is asked for: there we must still answer."""
    rng = np.random.default_rng(2000 + seed)
    required = {"r": FixedLenFeature((1,), dtypes.FLOAT), **SPEC}
    batch = [_example(required, rng) for _ in range(6)]
    victim = int(rng.integers(0, len(batch)))
    blob = bytearray(batch[victim])
    blob[int(rng.integers(0, len(blob)))] = int(rng.integers(0, 256))
    batch[victim] = bytes(blob)
    _same_outcome(batch, required, strict=False)


def _same_outcome(batch: list[bytes], spec: Mapping[str, Any], *, strict: bool) -> None:
    try:
        expected: dict[str, Any] | str = reference(batch, spec)
    except InvalidInputError as e:
        expected = str(e)
    try:
        ours: dict[str, Any] | str = parse_example(batch, spec)
    except InvalidInputError as e:
        ours = str(e)
    if isinstance(ours, str) or isinstance(expected, dict) or strict:
        if isinstance(expected, dict) and isinstance(ours, dict):
            _same(ours, expected)
        else:
            assert ours == expected
    else:  # protobuf refused bytes TF's reading accepts: our answer is still well formed
        assert "Could not parse" in expected
        assert ours["f"].shape == (len(batch), 2) and ours["vf"].dense_shape[0] == len(batch)


def test_a_later_copy_without_a_list_keeps_the_earlier_value_as_tf_does() -> None:
    first = example_pb2.Example()
    first.features.feature["x"].float_list.value.extend([1.0, 2.0])
    second = example_pb2.Example()
    second.features.feature["x"].SetInParent()  # present, no list set
    concatenated = first.SerializeToString() + second.SerializeToString()
    out = parse_example([concatenated], {"x": FixedLenFeature((2,), dtypes.FLOAT)})
    np.testing.assert_array_equal(out["x"], [[1.0, 2.0]])
    # A later copy that has a list replaces the earlier one, as protobuf's merge does.
    third = example_pb2.Example()
    third.features.feature["x"].float_list.value.extend([3.0, 4.0])
    out = parse_example([concatenated + third.SerializeToString()], {"x": FixedLenFeature((2,), dtypes.FLOAT)})
    np.testing.assert_array_equal(out["x"], [[3.0, 4.0]])


def test_the_earliest_error_wins_whatever_its_kind() -> None:
    good = example_pb2.Example()
    good.features.feature["x"].float_list.value.append(1.0)
    wrong = example_pb2.Example()
    wrong.features.feature["x"].int64_list.value.append(1)
    batch = [good.SerializeToString(), b"\x0a\xff", wrong.SerializeToString()]
    with pytest.raises(InvalidInputError, match=r"Index: 1\. Could not parse example input"):
        parse_example(batch, {"x": FixedLenFeature((1,), dtypes.FLOAT)})
    with pytest.raises(InvalidInputError, match=r"Key: x, Index: 1\.  Data types don't match"):
        parse_example([batch[0], batch[2], batch[1]], {"x": FixedLenFeature((1,), dtypes.FLOAT)})


def test_negative_int64s_and_non_bytes_items() -> None:
    ex = example_pb2.Example()
    ex.features.feature["n"].int64_list.value.extend([-1, -(2**63), 2**63 - 1])
    out = parse_example([ex.SerializeToString()], {"n": FixedLenFeature((3,), dtypes.INT64)})
    np.testing.assert_array_equal(out["n"], [[-1, -(2**63), 2**63 - 1]])
    with pytest.raises(InvalidInputError, match=r"Index: 1\. Could not parse example input"):
        parse_example(np.array([ex.SerializeToString(), "text"], dtype=object), {"n": VarLenFeature(dtypes.INT64)})


@pytest.mark.parametrize("seed", range(40))
def test_examples_with_a_shared_context_parse_as_their_concatenations(seed: int) -> None:
    """ExampleListWithContext: the parser cuts the context to the keys it reads, once; the result
    must be what parsing `context + example` gives, in every encoding the generator makes."""
    from exporter.example_parser import with_context

    rng = np.random.default_rng(3000 + seed)
    contexts = [_example(SPEC, rng) for _ in range(2)]
    groups = [[_example(SPEC, rng) for _ in range(int(rng.integers(1, 5)))] for _ in contexts]
    batch = np.concatenate([with_context(c, g) for c, g in zip(contexts, groups, strict=True)])
    plain = [c + e for c, g in zip(contexts, groups, strict=True) for e in g]
    _same(parse_example(batch, SPEC), parse_example(plain, SPEC))
