"""REST JSON <-> domain: TF Serving's typing rules (spec §8.5-8.7), float formatting, every refusal."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from cluster import errors
from cluster.gateway import rest_converters as convert
from cluster.gateway import rest_examples, rest_json
from cluster.requests import ClassifyResult, ModelMetadata, PredictResult, RegressResult, ResolvedSpec
from cluster.types import ServableState, VersionChoice, VersionRequest, VersionStatus
from exporter import dtypes
from exporter.signature import Signature, TensorInfo
from protos.tensorflow.core.example import example_pb2

SPEC = ResolvedSpec("m", 7, "serving_default")


def _sig(key: str = "serving_default", **inputs: int) -> Signature:
    return Signature(
        key,
        "tensorflow/serving/predict",
        {alias: TensorInfo(f"{alias}:0", dtype, None) for alias, dtype in inputs.items()},
        {"y": TensorInfo("y:0", dtypes.FLOAT, (None,))},
    )


def _metadata(*signatures: Signature) -> ModelMetadata:
    return ModelMetadata(ResolvedSpec("m", 7, ""), {s.key: s for s in signatures})


def _predict(body: Any, *signatures: Signature) -> dict[str, np.ndarray]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = convert.predict_request(convert.predict_body(raw), "m", _metadata(*signatures), deadline=12.5)
    assert request.spec.version == VersionRequest.specific(7)  # pinned to the version typed by
    assert request.deadline == 12.5
    return dict(request.inputs)


def _invalid(message: str, call: Any, *args: Any, kind: type[Exception] = errors.InvalidArgument) -> None:
    with pytest.raises(kind) as info:
        call(*args)
    assert message in str(info.value), str(info.value)


# ---------------------------------------------------------------------------------------------
# Predict requests


def test_row_format_one_input_plain_values_and_named_objects() -> None:
    sig = _sig(x=dtypes.FLOAT)
    x = _predict({"instances": [[1, 2], [3.5, 4]]}, sig)["x"]
    assert x.dtype == np.float32 and x.shape == (2, 2)
    np.testing.assert_array_equal(x, [[1, 2], [3.5, 4]])
    named = _predict({"instances": [{"x": [1, 2]}, {"x": [3, 4]}]}, sig)["x"]
    np.testing.assert_array_equal(named, [[1, 2], [3, 4]])


def test_row_format_several_inputs_typed_by_signature() -> None:
    sig = _sig(a=dtypes.INT64, s=dtypes.STRING, flag=dtypes.BOOL)
    body = {"instances": [{"a": 1, "s": "héllo", "flag": True}, {"a": -2, "s": {"b64": "AAE="}, "flag": False}]}
    inputs = _predict(body, sig)
    assert inputs["a"].dtype == np.int64 and inputs["a"].tolist() == [1, -2]
    assert inputs["s"].dtype == object and inputs["s"].tolist() == ["héllo".encode(), b"\x00\x01"]
    assert inputs["flag"].dtype == np.bool_ and inputs["flag"].tolist() == [True, False]


def test_columnar_format_scalars_lists_extra_keys_and_shorthand() -> None:
    sig = _sig(a=dtypes.DOUBLE, b=dtypes.INT32)
    inputs = _predict({"inputs": {"a": 2.5, "b": [[1, 2, 3]], "ignored": "x"}}, sig)
    assert inputs["a"].shape == () and inputs["a"].dtype == np.float64 and float(inputs["a"]) == 2.5
    assert inputs["b"].shape == (1, 3) and inputs["b"].dtype == np.int32
    assert set(inputs) == {"a", "b"}
    one = _predict({"inputs": [[1, 2]], "signature_name": "other"}, _sig("other", x=dtypes.UINT8))["x"]
    assert one.dtype == np.uint8 and one.shape == (1, 2)
    b64_value = _predict({"inputs": {"b64": base64.b64encode(b"\xff").decode()}}, _sig(x=dtypes.STRING))["x"]
    assert b64_value.shape == () and b64_value.item() == b"\xff"


def test_nan_and_infinity_tokens_including_inf() -> None:
    x = _predict(b'{"instances": [NaN, Infinity, -Infinity, Inf, -Inf, 1]}', _sig(x=dtypes.FLOAT))["x"]
    assert np.isnan(x[0]) and x[1:5].tolist() == [np.inf, -np.inf, np.inf, -np.inf] and x[5] == 1
    # "Inf" inside a string stays text.
    s = _predict(b'{"instances": ["Inf", "-Inf"]}', _sig(x=dtypes.STRING))["x"]
    assert s.tolist() == [b"Inf", b"-Inf"]


def test_empty_lists_take_the_signature_dtype() -> None:
    assert _predict({"inputs": [[], []]}, _sig(x=dtypes.INT64))["x"].shape == (2, 0)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Missing 'inputs' or 'instances' key"),
        ({"inputs": [1], "instances": [1]}, "only one of 'inputs' or 'instances'"),
        ({"instances": [1], "signature_name": 3}, "'signature_name' key must be a string value."),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_predict_body_refusals(body: Any, message: str) -> None:
    _invalid(message, convert.predict_body, json.dumps(body).encode())


def test_unparsable_json_and_bad_base64() -> None:
    _invalid("JSON Parse error", convert.predict_body, b'{"instances": [1,')
    _invalid("JSON Parse error", convert.predict_body, b'{"instances": [Infx]}')
    _invalid("Unable to base64 decode", convert.predict_body, b'{"instances": [{"b64": "@@@"}]}')


@pytest.mark.parametrize(
    ("body", "inputs", "message"),
    [
        ({"instances": []}, {"x": dtypes.FLOAT}, "non-empty JSON array"),
        ({"instances": {"x": 1}}, {"x": dtypes.FLOAT}, "non-empty JSON array"),
        ({"instances": [{"a": 1, "b": 2}, {"a": 1}]}, {"a": dtypes.FLOAT, "b": dtypes.FLOAT}, "at item 1"),
        ({"instances": [{"a": 1, "b": 2, "c": 3}]}, {"a": dtypes.FLOAT, "b": dtypes.FLOAT}, "at item 0"),
        ({"instances": [1, 2]}, {"a": dtypes.FLOAT, "b": dtypes.FLOAT}, "several inputs"),
        ({"instances": [[1, 2], [3]]}, {"x": dtypes.FLOAT}, "do not all have the same shape"),
        ({"inputs": [[1, 2], [3]]}, {"x": dtypes.FLOAT}, "not a rectangular list"),
        ({"inputs": [["a", "b"], ["c"]]}, {"x": dtypes.STRING}, "not a rectangular list"),
        ({"inputs": {"a": 1}}, {"a": dtypes.FLOAT, "b": dtypes.FLOAT}, "Missing named input: b in 'inputs' object."),
        ({"inputs": [1]}, {"a": dtypes.FLOAT, "b": dtypes.FLOAT}, "must be an object keyed"),
        ({"inputs": [1, 1.0]}, {"x": dtypes.INT64}, "not of expected type: int64"),
        ({"inputs": [2**31]}, {"x": dtypes.INT32}, "not of expected type: int32"),
        ({"inputs": [2**63]}, {"x": dtypes.INT64}, "not of expected type: int64"),
        ({"inputs": [-1]}, {"x": dtypes.UINT32}, "not of expected type: uint32"),
        ({"inputs": [2**64]}, {"x": dtypes.UINT64}, "not of expected type: uint64"),
        ({"inputs": [1, 0]}, {"x": dtypes.BOOL}, "not of expected type: bool"),
        ({"inputs": [True, False]}, {"x": dtypes.FLOAT}, "not of expected type: float32"),
        ({"inputs": ["1.5"]}, {"x": dtypes.FLOAT}, "not of expected type: float32"),
        ({"inputs": [1, None]}, {"x": dtypes.FLOAT}, "not of expected type: float32"),
        ({"inputs": [1]}, {"x": dtypes.STRING}, "not of expected type: string"),
        ({"inputs": [{"b64": "AA==", "x": 1}]}, {"x": dtypes.STRING}, "not of expected type: string"),
    ],
)
def test_predict_input_refusals(body: Any, inputs: dict[str, int], message: str) -> None:
    _invalid(message, _predict, body, _sig(**inputs))


def test_unsupported_input_dtype_is_unimplemented() -> None:
    _invalid("not supported", _predict, {"inputs": [1]}, _sig(x=dtypes.HALF), kind=errors.Unimplemented)


def test_unknown_signature_is_failed_precondition() -> None:
    _invalid('Serving signature key "nope" not found.', _predict,
             {"inputs": [1], "signature_name": "nope"}, _sig(x=dtypes.FLOAT), kind=errors.FailedPrecondition)


# ---------------------------------------------------------------------------------------------
# Predict responses and float formatting


def _out(result: dict[str, np.ndarray], row: bool) -> str:
    return convert.predict_response(PredictResult(SPEC, result), row).decode()


def test_float_formatting_shortest_round_trip_with_dot_zero_and_bare_tokens() -> None:
    y = np.array([3, 0.1, 2.5e-7, 1e20, np.nan, np.inf, -np.inf, -0.0, 16777217], dtype=np.float32)
    text = _out({"y": y}, row=False)
    assert text == '{"outputs": [3.0, 0.1, 2.5e-07, 1e+20, NaN, Infinity, -Infinity, -0.0, 16777216.0]}'
    assert _out({"y": np.array([0.1, 1 / 3])}, row=True) == '{"predictions": [0.1, 0.3333333333333333]}'


def test_shortest_floats_matches_numpy_shortest_repr_over_the_whole_range() -> None:
    rng = np.random.default_rng(5)
    with np.errstate(over="ignore"):
        values = (rng.standard_normal(200_000) * 10.0 ** rng.integers(-45, 39, 200_000)).astype(np.float32)
    values = np.concatenate([values, np.float32([1e-45, 3.4028235e38, 0.0, 1 / 3, 999999.94, 1e7])])
    expected = values.astype(str).astype(np.float64)  # numpy's shortest float32 text
    got = rest_json.shortest_floats(values)
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    assert same.all(), values[~same][:5]
    assert (got.astype(np.float32) == values).all()


def test_row_response_several_outputs_strings_and_bytes() -> None:
    outputs = {
        "score": np.array([[1, 2], [3, 4]], dtype=np.float32),
        "label": np.array([b"a", "é".encode()], dtype=object),
        "raw_bytes": np.array([b"\x00\xff", b""], dtype=object),
        "n": np.array([1, 2], dtype=np.int64),
        "ok": np.array([True, False]),
    }
    document = json.loads(_out(outputs, row=True))
    assert document == {
        "predictions": [
            {"score": [1.0, 2.0], "label": "a", "raw_bytes": {"b64": "AP8="}, "n": 1, "ok": True},
            {"score": [3.0, 4.0], "label": "é", "raw_bytes": {"b64": ""}, "n": 2, "ok": False},
        ]
    }


def test_columnar_response_several_outputs_and_scalar() -> None:
    document = json.loads(_out({"a": np.float64(2), "b": np.array([[1], [2]], dtype=np.int32)}, row=False))
    assert document == {"outputs": {"a": 2.0, "b": [[1], [2]]}}
    assert _out({"a": np.float32(2)}, row=False) == '{"outputs": 2.0}'


@pytest.mark.parametrize(
    ("outputs", "row", "message"),
    [
        ({}, True, "empty output map"),
        ({"a": np.float32(1)}, True, "Tensor name: a has no shape information"),
        ({"a": np.zeros(2), "b": np.zeros(3)}, True, "Tensor name: b has inconsistent batch size: 3 expecting: 2"),
        ({"c": np.zeros(2, dtype=np.complex64)}, False, "Failed to write JSON value for tensor type"),
    ],
)
def test_predict_response_refusals(outputs: dict[str, Any], row: bool, message: str) -> None:
    _invalid(message, _out, outputs, row)


# ---------------------------------------------------------------------------------------------
# Classify / Regress


def _examples(body: Any) -> list[example_pb2.Example]:
    request = rest_examples.examples_request(json.dumps(body).encode(), "m", VersionRequest.labelled("stable"), 3.0)
    assert request.spec.version.choice is VersionChoice.LABEL and request.deadline == 3.0
    assert request.spec.signature_name == body.get("signature_name", "")
    # The context travels once; parsed as the replica merges it: context + example, the example winning.
    return [example_pb2.Example.FromString(request.context + raw) for raw in request.examples]


def test_examples_feature_typing() -> None:
    (example,) = _examples({
        "signature_name": "tensorflow/serving/regress",
        "examples": [{"f": 1.0, "i": [1, 2], "b": True, "s": "txt", "raw": {"b64": "AAE="}, "e": 1e3, "none": []}],
    })
    feature = example.features.feature
    assert list(feature["f"].float_list.value) == [1.0] and list(feature["e"].float_list.value) == [1000.0]
    assert list(feature["i"].int64_list.value) == [1, 2] and list(feature["b"].int64_list.value) == [1]
    assert list(feature["s"].bytes_list.value) == [b"txt"] and list(feature["raw"].bytes_list.value) == [b"\x00\x01"]
    assert feature["none"].WhichOneof("kind") is None


def test_examples_with_context_merge_example_wins() -> None:
    examples = _examples({"context": {"c": "ctx", "x": 0.5}, "examples": [{"x": 1.5}, {"y": 2}]})
    assert [e.features.feature["c"].bytes_list.value[0] for e in examples] == [b"ctx", b"ctx"]
    assert examples[0].features.feature["x"].float_list.value[0] == 1.5
    assert examples[1].features.feature["x"].float_list.value[0] == 0.5
    assert examples[1].features.feature["y"].int64_list.value[0] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": []}, "key 'examples' is expected and was not found"),
        ({"examples": []}, "non-empty JSON array"),
        ({"examples": [1]}, "Expecting a JSON object of features at item 0"),
        ({"examples": [{"x": None}]}, "null is not a feature value"),
        ({"examples": [{"x": [[1]]}]}, "a nested array is not a feature value"),
        ({"examples": [{"x": [1, 1.5]}]}, "mixes value types"),
        ({"examples": [{"x": 2**63}]}, "does not fit int64"),
        ({"examples": [{"x": 1}], "context": [1]}, "Expecting a JSON object of features at 'context'"),
        ({"examples": [{"x": 1}], "signature_name": 1}, "'signature_name' key must be a string value."),
    ],
)
def test_examples_refusals(body: Any, message: str) -> None:
    _invalid(message, rest_examples.examples_request, json.dumps(body).encode(), "m", VersionRequest.latest())


def test_classify_and_regress_responses() -> None:
    labels = np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object)
    scores = np.array([[0.1, 0.9], [1, 0]], dtype=np.float32)
    both = json.loads(rest_examples.classify_response(ClassifyResult(SPEC, labels, scores)))
    assert both == {"results": [[["a", 0.1], ["b", 0.9]], [["c", 1.0], ["d", 0.0]]]}
    only_scores = json.loads(rest_examples.classify_response(ClassifyResult(SPEC, None, scores)))
    assert only_scores["results"][0] == [["", 0.1], ["", 0.9]]
    only_labels = json.loads(rest_examples.classify_response(ClassifyResult(SPEC, labels, None)))
    assert only_labels["results"][1] == [["c", 0.0], ["d", 0.0]]
    regress = rest_examples.regress_response(RegressResult(SPEC, np.array([[3.5], [4]], dtype=np.float32)))
    assert regress == b'{"results": [3.5, 4.0]}'
    _invalid("Cannot convert empty RegressionResults to JSON", rest_examples.regress_response,
             RegressResult(SPEC, np.zeros(0, np.float32)))
    _invalid("Cannot convert empty ClassificationResults to JSON", rest_examples.classify_response,
             ClassifyResult(SPEC, None, np.zeros((0, 2), np.float32)))
    # The shapes are checked once, as a result is made; the converter trusts the result.
    _invalid("[batch_size num_classes]", lambda: rest_examples.classify_response(ClassifyResult(SPEC, None, np.zeros(2))))


# ---------------------------------------------------------------------------------------------
# Status and metadata


def test_status_json_shape() -> None:
    statuses = [VersionStatus(1, ServableState.AVAILABLE), VersionStatus(2, ServableState.END, "bad bundle", "BundleError")]
    document = json.loads(convert.status_response(statuses))
    assert document == {
        "model_version_status": [
            {"version": "2", "state": "END", "status": {"error_code": "DATA_LOSS", "error_message": "bad bundle"}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }


def test_metadata_json_shape() -> None:
    sig = Signature("serving_default", "tensorflow/serving/predict",
                    {"x": TensorInfo("x:0", dtypes.FLOAT, (None, 3))}, {"y": TensorInfo("y:0", dtypes.STRING, None)})
    document = json.loads(convert.metadata_response(_metadata(sig)))
    assert document["model_spec"] == {"name": "m", "signature_name": "", "version": "7"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict" and signature["defaults"] == {}
    assert signature["inputs"]["x"] == {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}], "unknown_rank": False},
        "name": "x:0",
    }
    assert signature["outputs"]["y"]["tensor_shape"] == {"dim": [], "unknown_rank": True}
