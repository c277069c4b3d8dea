"""Feature specs and tf.Example parsing, checked against TensorFlow's own outputs (parse_example.json)."""

from __future__ import annotations

import base64
import json
import pathlib
from typing import Any

import numpy as np
import pytest

from exporter import attrs as attr_codec
from exporter import dtypes
from exporter.errors import GraphError, InvalidInputError
from exporter.example_parser import parse_example
from exporter.feature_attrs import spec_from_attrs, spec_to_attrs
from exporter.features import FixedLenFeature, SparseFeature, SparseTensorValue, VarLenFeature, output_layout
from exporter.ops.registry import LoadContext, TensorType, get_op
from protos.tessera import example_pb2


def _load(testdata_dir: pathlib.Path) -> dict[str, Any]:
    return json.loads((testdata_dir / "parse_example.json").read_text())


def _spec(raw: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for key, f in raw.items():
        if f["kind"] == "fixed":
            default = f.get("default")
            if default is not None and f["dtype"] == "string":
                default = base64.b64decode(default)
            spec[key] = FixedLenFeature(f["shape"], f["dtype"], default)
        elif f["kind"] == "varlen":
            spec[key] = VarLenFeature(f["dtype"])
        else:
            spec[key] = SparseFeature(f["index_key"], f["value_key"], f["dtype"], f["size"])
    return spec


def _expected_array(raw: dict[str, Any]) -> np.ndarray:
    if raw["dtype"] == "string":
        values = dtypes.as_array([base64.b64decode(v) for v in raw["b64"]], dtypes.STRING)
    else:
        values = np.array(raw["values"], dtype=raw["dtype"])
    return values.reshape(raw["shape"])


def _assert_same(actual: np.ndarray, raw: dict[str, Any]) -> None:
    expected = _expected_array(raw)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def _ok_cases(testdata_dir: pathlib.Path) -> list[dict[str, Any]]:
    cases = [c for c in _load(testdata_dir)["cases"] if "expected" in c]
    assert len(cases) >= 2
    return cases


def _check_against_tf(result: dict[str, Any], expected: dict[str, Any]) -> None:
    assert sorted(result) == sorted(expected)
    for key, exp in expected.items():
        if exp["sparse"]:
            assert isinstance(result[key], SparseTensorValue)
            for part in ("indices", "values", "dense_shape"):
                _assert_same(getattr(result[key], part), exp[part])
        else:
            _assert_same(result[key], exp["dense"])


def test_every_tf_case_gives_tf_arrays(testdata_dir: pathlib.Path) -> None:
    for case in _ok_cases(testdata_dir):
        examples = [base64.b64decode(e) for e in case["examples_b64"]]
        _check_against_tf(parse_example(examples, _spec(case["spec"])), case["expected"])
        # An object ndarray (what the runtime feeds) parses the same.
        batch = dtypes.as_array(examples, dtypes.STRING)
        _check_against_tf(parse_example(batch, _spec(case["spec"])), case["expected"])


def test_every_tf_case_through_the_op_after_an_attr_round_trip(testdata_dir: pathlib.Path) -> None:
    op = get_op("ParseExample")
    for case in _ok_cases(testdata_dir):
        spec = _spec(case["spec"])
        stored = attr_codec.decode_map(attr_codec.encode_map(spec_to_attrs(spec)))
        assert spec_from_attrs(stored) == spec
        state = op.prepare(stored, LoadContext())
        batch = dtypes.as_array([base64.b64decode(e) for e in case["examples_b64"]], dtypes.STRING)
        outputs = op.kernel([batch], state)
        types = op.infer([TensorType(dtypes.STRING, (None,))], stored)
        layout = output_layout(spec)
        assert len(outputs) == len(types) == len(layout)
        for (key, part), out, typ in zip(layout, outputs, types, strict=True):
            exp = case["expected"][key]
            _assert_same(out, exp["dense"] if part == "dense" else exp[part])
            assert dtypes.from_numpy(out.dtype) == typ.dtype
            assert typ.shape is not None and len(typ.shape) == out.ndim


def test_tf_refusals_are_refused_naming_feature_and_index(testdata_dir: pathlib.Path) -> None:
    errors = [e for c in _load(testdata_dir)["cases"] for e in c.get("errors", [])]
    assert {e["name"] for e in errors} == {"missing_required", "wrong_type", "wrong_length"}
    for err in errors:
        good = example_pb2.Example()
        good.features.feature["x"].float_list.value.extend([1.0] * _spec(err["spec"])["x"].shape[0])
        batch = [good.SerializeToString(), base64.b64decode(err["example_b64"])]
        with pytest.raises(InvalidInputError) as info:
            parse_example(batch, _spec(err["spec"]))
        message = str(info.value)
        assert "Key: x, Index: 1." in message  # the feature and the bad example's index
        # TF's wording: its message (without its own "Key/Index" prefix) appears in ours.
        tf_tail = err["tf_message"].split("Index: 0.")[-1].split("Feature: x")[-1]
        assert tf_tail.strip() in message


def _example(**features: Any) -> bytes:
    ex = example_pb2.Example()
    for key, value in features.items():
        feature = ex.features.feature[key]
        if value is None:
            continue  # present, but no list set
        values = list(value)
        if values and isinstance(values[0], bytes):
            feature.bytes_list.value.extend(values)
        elif values and isinstance(values[0], float):
            feature.float_list.value.extend(values)
        else:
            feature.int64_list.value.extend(values)
    return ex.SerializeToString()


def test_fixed_len_multi_dim_defaults_and_feature_without_list() -> None:
    spec = {
        "m": FixedLenFeature([2, 2], dtypes.INT64, default_value=[1, 2, 3, 4]),
        "s": FixedLenFeature([], "string", default_value=b"?"),
    }
    out = parse_example([_example(m=[5, 6, 7, 8], s=[b"a"]), _example(m=None), _example()], spec)
    assert out["m"].dtype == np.int64 and out["m"].shape == (3, 2, 2)
    np.testing.assert_array_equal(out["m"], [[[5, 6], [7, 8]], [[1, 2], [3, 4]], [[1, 2], [3, 4]]])
    assert out["s"].tolist() == [b"a", b"?", b"?"]
    with pytest.raises(InvalidInputError, match=r"Key: r, Index: 0\..*required"):
        parse_example([_example(r=None)], {"r": FixedLenFeature([1], "float32")})


def test_empty_batch_and_varlen_without_values() -> None:
    spec = {"d": FixedLenFeature([3], "float32"), "v": VarLenFeature("string")}
    out = parse_example([], spec)
    assert out["d"].shape == (0, 3) and out["d"].dtype == np.float32
    assert out["v"].indices.shape == (0, 2) and out["v"].indices.dtype == np.int64
    assert out["v"].values.shape == (0,) and out["v"].values.dtype == object
    np.testing.assert_array_equal(out["v"].dense_shape, [0, 0])
    out = parse_example([_example(d=[1.0, 2.0, 3.0]), _example(d=[0.0] * 3, v=None)], spec)
    np.testing.assert_array_equal(out["v"].dense_shape, [2, 0])


def test_varlen_wrong_type_and_undecodable_are_refused_with_index() -> None:
    with pytest.raises(
        InvalidInputError, match=r"Key: v, Index: 1\..*Data type: float but expected type: int64"
    ):
        parse_example([_example(v=[1]), _example(v=[1.0])], {"v": VarLenFeature("int64")})
    with pytest.raises(InvalidInputError, match=r"Index: 1\. Could not parse"):
        parse_example([_example(v=[1]), b"\xff\xff\xff"], {"v": VarLenFeature("int64")})
    with pytest.raises(InvalidInputError, match="vector"):
        parse_example(np.array([[b""]], dtype=object), {"v": VarLenFeature("int64")})


def test_sparse_feature_sorts_and_checks() -> None:
    spec = {"sp": SparseFeature("i", "w", "float32", 10), "i": VarLenFeature("int64")}
    out = parse_example([_example(i=[7, 2], w=[0.5, 1.5]), _example()], spec)
    np.testing.assert_array_equal(out["sp"].indices, [[0, 2], [0, 7]])
    np.testing.assert_array_equal(out["sp"].values, np.array([1.5, 0.5], np.float32))
    np.testing.assert_array_equal(out["sp"].dense_shape, [2, 10])
    np.testing.assert_array_equal(out["i"].values, [7, 2])  # the index feature itself, unsorted
    kept = parse_example(
        [_example(i=[7, 2], w=[0.5, 1.5])], {"sp": SparseFeature("i", "w", "float32", 10, True)}
    )
    np.testing.assert_array_equal(kept["sp"].indices, [[0, 7], [0, 2]])
    with pytest.raises(InvalidInputError, match=r"Key: sp, Index: 1\..*2 indices.*1 values"):
        parse_example([_example(i=[1], w=[1.0]), _example(i=[1, 2], w=[1.0])], spec)
    with pytest.raises(
        InvalidInputError, match=r"Key: sp, Index: 0\..*index 10 from 'i' is out of range \[0, 10\)"
    ):
        parse_example([_example(i=[10], w=[1.0])], spec)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="default value of 1 elements"):
        FixedLenFeature([2], "float32", default_value=0.0)
    with pytest.raises(ValueError, match="float32, int64 or string"):
        VarLenFeature("float64")
    with pytest.raises(ValueError, match="two different specs"):
        spec_to_attrs({"a": FixedLenFeature([1], "int64"), "s": SparseFeature("a", "v", "float32", 3)})
    with pytest.raises(GraphError, match="malformed"):
        spec_from_attrs({"dense_keys": ["a"]})
    assert FixedLenFeature([1], "float32", [1.0]) != FixedLenFeature([1], "float32", [2.0])
    assert FixedLenFeature([1], "float32") != FixedLenFeature([1], "float32", [2.0])


def test_output_layout_and_infer() -> None:
    spec = {
        "z": VarLenFeature("string"),
        "a": FixedLenFeature([2], "int64"),
        "m": SparseFeature("i", "v", "float32", 4),
    }
    assert output_layout(spec) == [
        ("a", "dense"),
        ("m", "indices"),
        ("m", "values"),
        ("m", "dense_shape"),
        ("z", "indices"),
        ("z", "values"),
        ("z", "dense_shape"),
    ]
    op = get_op("ParseExample")
    types = op.infer([TensorType(dtypes.STRING, (8,))], spec_to_attrs(spec))
    assert types[0] == TensorType(dtypes.INT64, (8, 2))
    assert types[1:4] == [
        TensorType(dtypes.INT64, (None, 2)),
        TensorType(dtypes.FLOAT, (None,)),
        TensorType(dtypes.INT64, (2,)),
    ]
    assert types[5] == TensorType(dtypes.STRING, (None,))
    with pytest.raises(GraphError, match="string"):
        op.infer([TensorType(dtypes.FLOAT, (None,))], spec_to_attrs(spec))
    with pytest.raises(GraphError, match="vector"):
        op.infer([TensorType(dtypes.STRING, (None, 2))], spec_to_attrs(spec))


# ---------------------------------------------------------------------------------------------
# Examples that share a context (issue 9: the context is merged where the examples are parsed)


def _assert_same_parse(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for x, y in zip(np.atleast_1d(a[key]) if not isinstance(a[key], tuple) else a[key],
                        np.atleast_1d(b[key]) if not isinstance(b[key], tuple) else b[key], strict=True):
            np.testing.assert_array_equal(x, y)


def test_with_context_parses_as_the_concatenation_would() -> None:
    from exporter.example_parser import with_context

    spec = {
        "x": FixedLenFeature([1], "float32", default_value=[-1.0]),
        "c": FixedLenFeature([], "string", default_value=b"?"),
        "v": VarLenFeature("int64"),
        "n": FixedLenFeature([], "int64", default_value=7),
    }
    context = _example(x=[9.0], c=[b"ctx"], v=[1, 2, 3], n=[5])
    # An example's own list wins; an entry of its own with no list set leaves the context's be (TF).
    examples = [_example(x=[1.0]), _example(v=[4]), _example(n=None), _example()]
    merged = parse_example(with_context(context, examples), spec)
    _assert_same_parse(merged, parse_example([context + e for e in examples], spec))
    assert merged["x"].ravel().tolist() == [1.0, 9.0, 9.0, 9.0] and merged["n"].tolist() == [5, 5, 5, 5]

    # A batch that mixes two contexts and examples without one (the replica merges requests).
    other = _example(c=[b"other"])
    batch = np.concatenate([with_context(context, examples[:2]), with_context(other, examples[2:]),
                            np.array(examples[:1], dtype=object)])
    plain = [context + e for e in examples[:2]] + [other + e for e in examples[2:]] + examples[:1]
    _assert_same_parse(parse_example(batch, spec), parse_example(plain, spec))

    with pytest.raises(InvalidInputError, match="Index: 1. Could not parse example input"):
        parse_example(np.concatenate([np.array(examples[:1], dtype=object),
                                      with_context(b"\xff\xff\xff", examples[:1])]), spec)
    # A context full of features the parser does not read is cut down to nothing, once.
    noisy = _example(**{f"f{i}": [float(i)] for i in range(50)}, c=[b"kept"])
    out = parse_example(with_context(noisy, examples), spec)
    _assert_same_parse(out, parse_example([noisy + e for e in examples], spec))


def test_a_big_context_is_parsed_once_not_once_per_example() -> None:
    import tracemalloc

    from exporter.example_parser import with_context

    # 256 KB of context (a feature the model does not read) shared by 4,000 examples: merged by
    # concatenation this is 1 GB of strings to build and parse (issue 9 measured +4.9 GB, 13 s).
    context = _example(unused=[b"z" * 256 * 1024], c=[b"ctx"])
    examples = [_example(x=[float(i)]) for i in range(4000)]
    spec = {"x": FixedLenFeature([1], "float32"), "c": FixedLenFeature([], "string")}
    tracemalloc.start()
    try:
        out = parse_example(with_context(context, examples), spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out["x"].ravel().tolist() == [float(i) for i in range(4000)] and set(out["c"].tolist()) == {b"ctx"}
    assert peak < 16 * 1024 * 1024, peak
