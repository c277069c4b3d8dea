"""TesseraClient against an in-process fake TF Serving server (no Ray): requests and conversions."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from cluster.client import TesseraClient, make_ndarray, make_tensor_proto
from cluster.client.examples import example_to_dict
from protos.tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from protos.tensorflow_serving.apis.internal import serialized_input_pb2


class FakeServer(prediction_service_pb2_grpc.PredictionServiceServicer, model_service_pb2_grpc.ModelServiceServicer):
    """Echoes what it got in a way the tests can check."""

    def __init__(self) -> None:
        self.requests: list[object] = []

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        self.requests.append(request)
        if request.model_spec.name == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(missing)")
        response = predict_pb2.PredictResponse(model_spec=request.model_spec)
        # Like TF Serving, answer in the typed fields whatever form the request used.
        doubled = 2 * make_ndarray(request.inputs["x"])
        response.outputs["double"].CopyFrom(make_tensor_proto(doubled, use_tensor_content=False))
        return response

    def Classify(self, request, context):  # noqa: ANN001, ANN201 - generated servicer signature
        self.requests.append(request)
        result = classification_pb2.ClassificationResult()
        for i, _ in enumerate(serialized_input_pb2.SerializedInput.FromString(
                request.input.SerializeToString()).example_list.examples):
            result.classifications.add().classes.add(label=f"class{i}", score=0.5 + i)
        return classification_pb2.ClassificationResponse(result=result, model_spec=request.model_spec)

    def Regress(self, request, context):  # noqa: ANN001, ANN201
        self.requests.append(request)
        result = regression_pb2.RegressionResult()
        for example in request.input.example_list.examples:
            result.regressions.add(value=example.features.feature["x"].float_list.value[0] + 1)
        return regression_pb2.RegressionResponse(result=result)

    def MultiInference(self, request, context):  # noqa: ANN001, ANN201
        self.requests.append(request)
        response = inference_pb2.MultiInferenceResponse()
        for task in request.tasks:
            result = response.results.add(model_spec=task.model_spec)
            if task.method_name.endswith("classify"):
                result.classification_result.classifications.add().classes.add(label="a", score=1.0)
            else:
                result.regression_result.regressions.add(value=3.0)
        return response

    def GetModelMetadata(self, request, context):  # noqa: ANN001, ANN201
        self.requests.append(request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def["serving_default"].method_name = "tensorflow/serving/predict"
        signatures.signature_def["serving_default"].inputs["x"].CopyFrom(meta_graph_pb2.TensorInfo(name="x:0", dtype=1))
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=request.model_spec)
        response.metadata["signature_def"].Pack(signatures)
        return response

    def GetModelStatus(self, request, context):  # noqa: ANN001, ANN201
        self.requests.append(request)
        return get_model_status_pb2.GetModelStatusResponse(
            model_version_status=[get_model_status_pb2.ModelVersionStatus(version=2, state=30)]
        )

    def HandleReloadConfigRequest(self, request, context):  # noqa: ANN001, ANN201
        self.requests.append(request)
        return model_management_pb2.ReloadConfigResponse(status={"error_code": error_codes_pb2.OK})


@pytest.fixture
def served() -> Iterator[tuple[FakeServer, TesseraClient]]:
    fake = FakeServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(fake, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with TesseraClient(f"127.0.0.1:{port}", timeout=10) as client:
        yield fake, client
    server.stop(None)


def test_predict_converts_both_ways(served: tuple[FakeServer, TesseraClient]) -> None:
    fake, client = served
    out = client.predict("m", {"x": np.float32([1, 2, 3])}, signature_name="s", version=7, output_filter=["double"])
    np.testing.assert_array_equal(out["double"], np.float32([2, 4, 6]))
    request = fake.requests[-1]
    assert request.model_spec.version.value == 7 and request.model_spec.signature_name == "s"
    assert list(request.output_filter) == ["double"]
    # A ready TensorProto passes through unchanged; labels go to version_label.
    client.predict("m", {"x": make_tensor_proto([1.0], dtype="float32")}, label="canary")
    assert fake.requests[-1].model_spec.version_label == "canary"
    with pytest.raises(ValueError, match="not both"):
        client.predict("m", {}, version=1, label="stable")


def test_server_errors_surface_as_rpc_errors(served: tuple[FakeServer, TesseraClient]) -> None:
    _, client = served
    with pytest.raises(grpc.RpcError) as info:
        client.predict("missing", {"x": np.float32([1])})
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_classify_regress_multi_inference(served: tuple[FakeServer, TesseraClient]) -> None:
    fake, client = served
    assert client.classify("m", [{"x": 1.0}, {"x": 2.0}]) == [[("class0", 0.5)], [("class1", 1.5)]]
    assert client.regress("m", [{"x": 1.0}, {"x": 4.0}]) == [2.0, 5.0]
    out = client.multi_inference("m", [{"x": 1.0}], {"c": "classify", "r": "tensorflow/serving/regress"})
    assert out == {"c": [[("a", 1.0)]], "r": [3.0]}
    tasks = fake.requests[-1].tasks
    assert [(t.model_spec.signature_name, t.method_name) for t in tasks] == [
        ("c", "tensorflow/serving/classify"), ("r", "tensorflow/serving/regress"),
    ]
    client.classify("m", [{"x": 1.0}], context={"c": 2})
    sent = fake.requests[-1].input.example_list_with_context
    assert example_to_dict(sent.context) == {"c": [2]}


def test_metadata_status_and_reload(served: tuple[FakeServer, TesseraClient]) -> None:
    fake, client = served
    signatures = client.get_model_metadata("m", version=3)
    assert signatures.signature_def["serving_default"].inputs["x"].name == "x:0"
    assert list(fake.requests[-1].metadata_field) == ["signature_def"]
    statuses = client.get_model_status("m")
    assert [(s.version, s.state) for s in statuses] == [(2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    response = client.reload_config("model_config_list { config { name: 'a' base_path: '/models/a' } }")
    assert response.status.error_code == error_codes_pb2.OK
    assert fake.requests[-1].config.model_config_list.config[0].base_path == "/models/a"
