"""Proto <-> domain converters: every message, the SerializedInput trick, TF's error messages."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.errors import InvalidArgument
from cluster.gateway import converters, predict_bytes
from cluster.requests import ClassifyResult, ModelMetadata, PredictResult, RegressResult, ResolvedSpec
from cluster.types import ServableState, VersionChoice, VersionRequest, VersionStatus
from exporter import dtypes
from exporter.signature import Signature, TensorInfo
from protos.tensorflow.core.example import example_pb2
from protos.tensorflow.core.framework import tensor_pb2
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

SPEC = ResolvedSpec("half_plus_two", 123, "serving_default")


def _example(**features: float | bytes) -> example_pb2.Example:
    example = example_pb2.Example()
    for name, value in features.items():
        feature = example.features.feature[name]
        if isinstance(value, bytes):
            feature.bytes_list.value.append(value)
        else:
            feature.float_list.value.append(value)
    return example


def _float_tensor(values: list[float], shape: list[int]) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtypes.FLOAT, float_val=values)
    for size in shape:
        proto.tensor_shape.dim.add().size = size
    return proto


# ---------------------------------------------------------------------------------------------
# ModelSpec


def test_model_spec_latest_specific_label() -> None:
    latest = converters.model_spec(model_pb2.ModelSpec(name="m"))
    assert latest.version == VersionRequest.latest() and latest.signature_key == "serving_default"
    specific = converters.model_spec(model_pb2.ModelSpec(name="m", signature_name="s", version={"value": 7}))
    assert specific.version == VersionRequest.specific(7) and specific.signature_name == "s"
    labelled = converters.model_spec(model_pb2.ModelSpec(name="m", version_label="canary"))
    assert labelled.version == VersionRequest.labelled("canary")


def test_model_spec_version_zero_is_still_specific() -> None:
    spec = model_pb2.ModelSpec(name="m")
    spec.version.SetInParent()
    assert converters.model_spec(spec).version == VersionRequest.specific(0)


def test_empty_name_is_refused_with_tf_message() -> None:
    with pytest.raises(InvalidArgument, match=r"^ModelSpec has no name specified\.$"):
        converters.model_spec(model_pb2.ModelSpec(version_label="stable"))


@pytest.mark.parametrize(
    "call",
    [
        lambda: converters.predict_request(predict_pb2.PredictRequest()),
        lambda: converters.examples_request(classification_pb2.ClassificationRequest()),
        lambda: converters.examples_request(regression_pb2.RegressionRequest()),
        lambda: converters.metadata_request(
            get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        ),
        lambda: converters.status_request(get_model_status_pb2.GetModelStatusRequest()),
    ],
)
def test_missing_model_spec(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=r"^Missing ModelSpec$"):
        call()


# ---------------------------------------------------------------------------------------------
# Predict


def test_predict_request_typed_values_filter_and_deadline() -> None:
    request = predict_pb2.PredictRequest(output_filter=["y"])
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(_float_tensor([1.0, 2.0, 5.0], [3]))
    domain = converters.predict_request(request, deadline=12.5)
    assert domain.spec.name == "half_plus_two"
    assert domain.output_filter == ("y",)
    assert domain.deadline == 12.5
    np.testing.assert_array_equal(domain.inputs["x"], np.array([1.0, 2.0, 5.0], dtype=np.float32))
    assert domain.inputs["x"].dtype == np.float32


def test_predict_request_tensor_content_is_decoded_without_a_loop() -> None:
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    proto = request.inputs["ids"]
    proto.dtype = dtypes.INT64
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    proto.tensor_content = array.tobytes()
    decoded = converters.predict_request(request).inputs["ids"]
    np.testing.assert_array_equal(decoded, array)
    assert not decoded.flags.writeable  # a view of the request bytes, not a copy


@pytest.mark.parametrize(
    "bad",
    [
        # 3 floats announced, 8 bytes sent.
        tensor_pb2.TensorProto(
            dtype=dtypes.FLOAT, tensor_shape={"dim": [{"size": 3}]}, tensor_content=b"\x00" * 8
        ),
        tensor_pb2.TensorProto(dtype=dtypes.FLOAT, tensor_shape={"dim": [{"size": -1}]}, float_val=[1.0]),
        tensor_pb2.TensorProto(dtype=21, tensor_shape={"dim": [{"size": 1}]}),  # DT_VARIANT
    ],
)
def test_bad_tensor_is_a_tensor_parsing_error(bad: tensor_pb2.TensorProto) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(_float_tensor([1.0], [1]))
    request.inputs["broken"].CopyFrom(bad)
    with pytest.raises(InvalidArgument, match=r"^tensor parsing error: broken$"):
        converters.predict_request(request)


def test_predict_response_matches_the_golden_vector_of_spec_13() -> None:
    result = PredictResult(SPEC, {"y": np.array([2.5, 3.0, 4.5], dtype=np.float32)})
    response = converters.predict_response(result)
    golden = bytes.fromhex(
        "0a1b0a0179121608011204120208032a0c000020400000404000009040"
        "12240a0d68616c665f706c75735f74776f1202087b1a0f73657276696e675f64656661756c74"
    )
    assert response.SerializeToString() == golden
    assert list(response.outputs["y"].float_val) == [2.5, 3.0, 4.5]
    assert response.outputs["y"].tensor_content == b""


def test_predict_response_tensor_content_option_and_strings() -> None:
    outputs = {
        "scores": np.arange(6, dtype=np.float64).reshape(2, 3),
        "names": np.array([b"a", b"bc"], dtype=object),
    }
    response = converters.predict_response(PredictResult(SPEC, outputs), tensor_content=True)
    scores = response.outputs["scores"]
    assert scores.dtype == dtypes.DOUBLE and [d.size for d in scores.tensor_shape.dim] == [2, 3]
    assert scores.tensor_content == outputs["scores"].tobytes() and not scores.double_val
    assert list(response.outputs["names"].string_val) == [b"a", b"bc"]  # strings never use content
    assert response.model_spec.version.value == 123


# ---------------------------------------------------------------------------------------------
# Classify / Regress / MultiInference: the SerializedInput trick


def _classification_request(examples: list[example_pb2.Example], context: example_pb2.Example | None = None):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = "classify_x"
    if context is None:
        request.input.example_list.examples.extend(examples)
    else:
        request.input.example_list_with_context.examples.extend(examples)
        request.input.example_list_with_context.context.CopyFrom(context)
    return request


def test_examples_stay_serialized_bytes() -> None:
    examples = [_example(x=1.5), _example(x=-2.0), _example(name=b"\x00\xff")]
    raw = _classification_request(examples).SerializeToString()
    domain = converters.examples_request(raw, deadline=3.0)
    assert domain.spec.name == "iris" and domain.spec.signature_name == "classify_x"
    assert domain.deadline == 3.0
    assert list(domain.examples) == [e.SerializeToString() for e in examples]
    assert all(isinstance(e, bytes) for e in domain.examples)


def test_message_and_bytes_give_the_same_request() -> None:
    request = _classification_request([_example(x=1.0)])
    assert converters.examples_request(request) == converters.examples_request(request.SerializeToString())
    regress = regression_pb2.RegressionRequest(model_spec=request.model_spec, input=request.input)
    assert converters.examples_request(regress).examples == converters.examples_request(request).examples


def test_context_travels_once_and_examples_override_it() -> None:
    context = _example(shared=3.0, x=0.0)
    examples = [_example(x=1.0), _example(x=2.0)]
    domain = converters.examples_request(_classification_request(examples, context))
    # Not copied onto each example (issue 9: a 256 KB context and 4,000 examples cost 4.9 GB so).
    assert list(domain.examples) == [e.SerializeToString() for e in examples]
    # Compared as messages: a map of two features may serialize in either order after a parse.
    assert example_pb2.Example.FromString(domain.context) == context
    parsed = [example_pb2.Example.FromString(domain.context + e) for e in domain.examples]
    assert [p.features.feature["x"].float_list.value[0] for p in parsed] == [1.0, 2.0]
    assert all(p.features.feature["shared"].float_list.value[0] == 3.0 for p in parsed)


def test_repeated_model_spec_fields_merge_as_a_parser_would() -> None:
    first = classification_pb2.ClassificationRequest(model_spec={"name": "a", "signature_name": "s"})
    second = classification_pb2.ClassificationRequest(model_spec={"name": "b"})
    second.input.example_list.examples.add()
    raw = first.SerializeToString() + second.SerializeToString()
    expected = classification_pb2.ClassificationRequest.FromString(raw)
    domain = converters.examples_request(raw)
    assert (domain.spec.name, domain.spec.signature_name) == (expected.model_spec.name, "s") == ("b", "s")


@pytest.mark.parametrize(
    "request_",
    [
        _classification_request([]),
        _classification_request([], context=_example(x=1.0)),
        classification_pb2.ClassificationRequest(model_spec={"name": "iris"}),  # no input at all
    ],
)
def test_empty_input(request_: classification_pb2.ClassificationRequest) -> None:
    with pytest.raises(InvalidArgument, match=r"^Input is empty\.$"):
        converters.examples_request(request_.SerializeToString())


def test_garbage_bytes_are_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        converters.examples_request(b"\x0a\xff\xff\xff")


def test_multi_inference_request() -> None:
    request = inference_pb2.MultiInferenceRequest()
    request.tasks.add(
        model_spec={"name": "m", "signature_name": "c"}, method_name="tensorflow/serving/classify"
    )
    request.tasks.add(
        model_spec={"name": "m", "version": {"value": 2}}, method_name="tensorflow/serving/regress"
    )
    request.input.example_list.examples.extend([_example(x=1.0)])
    domain = converters.multi_inference_request(request.SerializeToString(), deadline=1.0)
    assert [t.method for t in domain.tasks] == ["tensorflow/serving/classify", "tensorflow/serving/regress"]
    assert domain.tasks[0].spec.signature_name == "c"
    assert domain.tasks[1].spec.version.choice is VersionChoice.SPECIFIC
    assert list(domain.examples) == [_example(x=1.0).SerializeToString()]
    assert domain.deadline == 1.0


def test_multi_inference_without_tasks_or_input() -> None:
    no_tasks = inference_pb2.MultiInferenceRequest()
    no_tasks.input.example_list.examples.add()
    with pytest.raises(InvalidArgument, match=r"^ModelSpec has no name specified\.$"):
        converters.multi_inference_request(no_tasks)
    no_input = inference_pb2.MultiInferenceRequest()
    no_input.tasks.add(model_spec={"name": "m"}, method_name="tensorflow/serving/regress")
    with pytest.raises(InvalidArgument, match=r"^Input is empty\.$"):
        converters.multi_inference_request(no_input)


def test_classification_response_labels_and_scores() -> None:
    labels = np.array([[b"setosa", b"versicolor"], [b"setosa", b"versicolor"]], dtype=object)
    scores = np.array([[0.875, 0.125], [0.25, 0.75]], dtype=np.float32)
    response = converters.classification_response(ClassifyResult(SPEC, labels, scores))
    got = [[(c.label, c.score) for c in entry.classes] for entry in response.result.classifications]
    assert got == [[("setosa", 0.875), ("versicolor", 0.125)], [("setosa", 0.25), ("versicolor", 0.75)]]
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 123


def test_classification_response_one_of_labels_or_scores() -> None:
    only_scores = converters.classification_response(ClassifyResult(SPEC, None, np.array([[0.5, 0.5]])))
    assert [(c.label, c.score) for c in only_scores.result.classifications[0].classes] == [
        ("", 0.5),
        ("", 0.5),
    ]
    labels = np.array([[b"a"], [b"\xff"]], dtype=object)
    only_labels = converters.classification_response(ClassifyResult(SPEC, labels, None))
    assert [e.classes[0].label for e in only_labels.result.classifications] == ["a", "\ufffd"]
    assert only_labels.result.classifications[0].classes[0].score == 0.0


def test_classification_response_without_classes_keeps_one_entry_per_example() -> None:
    response = converters.classification_response(ClassifyResult(SPEC, None, np.zeros((2, 0), np.float32)))
    assert len(response.result.classifications) == 2
    assert not response.result.classifications[0].classes


def test_classification_response_bad_shapes() -> None:
    with pytest.raises(InvalidArgument, match="batch_size num_classes"):
        converters.classification_response(ClassifyResult(SPEC, None, np.array([0.5, 0.5])))
    with pytest.raises(InvalidArgument, match="should match in shape"):
        converters.classification_response(
            ClassifyResult(SPEC, np.array([[b"a"]], dtype=object), np.array([[0.5, 0.5]]))
        )


@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_regression_response(shape: tuple[int, ...]) -> None:
    values = np.array([3.5, 4.0, -1.25], dtype=np.float32).reshape(shape)
    response = converters.regression_response(RegressResult(SPEC, values))
    assert [r.value for r in response.result.regressions] == [3.5, 4.0, -1.25]
    assert response.model_spec.name == "half_plus_two"


def test_regression_response_bad_shape() -> None:
    with pytest.raises(InvalidArgument, match=r"either \[batch_size\] or \[batch_size, 1\]"):
        converters.regression_response(RegressResult(SPEC, np.zeros((2, 2), dtype=np.float32)))


def test_multi_inference_response_in_task_order() -> None:
    classify = ClassifyResult(ResolvedSpec("m", 2, "c"), None, np.array([[0.5]], dtype=np.float32))
    regress = RegressResult(ResolvedSpec("m", 2, "r"), np.array([7.0], dtype=np.float32))
    response = converters.multi_inference_response([regress, classify])
    assert [r.WhichOneof("result") for r in response.results] == [
        "regression_result",
        "classification_result",
    ]
    assert [r.model_spec.signature_name for r in response.results] == ["r", "c"]
    assert response.results[0].regression_result.regressions[0].value == 7.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 0.5


# ---------------------------------------------------------------------------------------------
# Metadata and status


def test_metadata_request_checks_metadata_field() -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "m"})
    with pytest.raises(
        InvalidArgument, match=r"^GetModelMetadataRequest must specify at least one metadata_field$"
    ):
        converters.metadata_request(request)
    request.metadata_field.extend(["signature_def", "graph"])
    with pytest.raises(InvalidArgument, match=r"^Metadata field graph is not supported$"):
        converters.metadata_request(request)
    del request.metadata_field[1]
    assert converters.metadata_request(request).name == "m"


def test_metadata_response_packs_a_signature_def_map() -> None:
    signature = Signature(
        key="serving_default",
        method_name="tensorflow/serving/predict",
        inputs={
            "x": TensorInfo("x:0", dtypes.FLOAT, (None, 4)),
            "any": TensorInfo("a:0", dtypes.STRING, None),
        },
        outputs={"y": TensorInfo("y:0", dtypes.INT64, ())},
    )
    response = converters.metadata_response(
        ModelMetadata(ResolvedSpec("iris", 5, ""), {"serving_default": signature})
    )
    assert response.model_spec.name == "iris" and response.model_spec.version.value == 5
    assert response.model_spec.signature_name == ""
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    unpacked = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(unpacked)
    sig = unpacked.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert sig.inputs["x"].name == "x:0" and sig.inputs["x"].dtype == dtypes.FLOAT
    assert [d.size for d in sig.inputs["x"].tensor_shape.dim] == [-1, 4]
    assert sig.inputs["any"].tensor_shape.unknown_rank
    assert sig.outputs["y"].HasField("tensor_shape") and not sig.outputs["y"].tensor_shape.dim


def test_status_request_ignores_labels() -> None:
    assert converters.status_request(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "m"})
    ) == (
        "m",
        None,
    )
    labelled = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "m", "version_label": "stable"})
    assert converters.status_request(labelled) == ("m", None)
    specific = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "m", "version": {"value": 3}})
    assert converters.status_request(specific) == ("m", 3)


def test_status_response_descending_with_error_codes() -> None:
    statuses = [
        VersionStatus(1, ServableState.END),
        VersionStatus(3, ServableState.END, "manifest checksum mismatch", "BundleError"),
        VersionStatus(2, ServableState.AVAILABLE),
        VersionStatus(4, ServableState.END, "boom", "RuntimeError"),
    ]
    response = converters.status_response(statuses)
    entries = response.model_version_status
    assert [e.version for e in entries] == [4, 3, 2, 1]
    assert [e.state for e in entries] == [50, 50, 30, 50]
    assert [e.status.error_code for e in entries] == [13, 15, 0, 0]
    assert entries[1].status.error_message == "manifest checksum mismatch"
    assert entries[2].status.error_message == ""
    assert all(e.HasField("status") for e in entries)


def test_reload_response_is_ok_with_a_status() -> None:
    response = converters.reload_response()
    assert response.HasField("status") and response.status.error_code == 0


@pytest.mark.parametrize("tensor_content", [False, True])
def test_predict_response_bytes_is_the_serialized_predict_response(tensor_content: bool) -> None:
    """Big responses are written straight from the arrays (upb takes ~1 s for 100 MB, holding the
    GIL): what a client parses must be exactly the message predict_response builds."""
    outputs = {
        "f": np.linspace(0, 1, 50_000, dtype=np.float32).reshape(-1, 2),
        "d": np.arange(7, dtype=np.float64),
        "b": np.arange(9) % 2 == 0,
        "c": (np.arange(6) * (1 + 1j)).astype(np.complex64),
        "i": np.arange(12, dtype=np.int32).reshape(3, 4),
        "s": np.array([b"x", b"yz"], dtype=object),
        "h": np.arange(5, dtype=np.float16),
        "scalar": np.array(2.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }
    result = PredictResult(ResolvedSpec("m", 3, "serving_default"), outputs)
    expected = converters.predict_response(result, tensor_content=tensor_content)
    got = predict_pb2.PredictResponse.FromString(predict_bytes.predict_response_bytes(result, tensor_content=tensor_content))
    assert got == expected


@pytest.mark.parametrize("tensor_content", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(10, dtype=np.float32).reshape(1, 10),
        np.arange(3, dtype=np.float64),
        np.arange(4) % 2 == 0,
        (np.arange(4) * (1 + 1j)).astype(np.complex128),
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.array([b"x", b""], dtype=object),
        np.array(2.5, np.float32),
        np.zeros((0, 3), np.float32),
        np.zeros((1, 300), np.float32),
    ],
    ids=["float", "double", "bool", "complex128", "int64", "string", "scalar", "empty", "dim-300"],
)
def test_a_small_predict_response_bytes_are_upbs_own(array: np.ndarray, tensor_content: bool) -> None:
    """Every gRPC Predict's answer is written by hand: for one output, the very bytes upb writes."""
    for spec in (SPEC, ResolvedSpec("", 0, ""), ResolvedSpec("m", 2**40, "k"), ResolvedSpec("m", -1, "k")):
        result = PredictResult(spec, {"y": array})
        expected = converters.predict_response(result, tensor_content=tensor_content).SerializeToString()
        assert predict_bytes.predict_response_bytes(result, tensor_content=tensor_content) == expected
