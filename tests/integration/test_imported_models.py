"""Imported models served by the whole stack on a real local Ray: a scikit-learn pipeline with a
SimpleImputer (data with NaNs) and an ONNX file, through TF Serving's gRPC API and its REST API.
The answers equal scikit-learn's and onnxruntime's."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline

from cluster.app import TesseraServer
from cluster.client.examples import make_example
from cluster.client.tensors import make_ndarray, make_tensor_proto
from cluster.config import ModelConfig, ServeOptions, ServerConfig
from exporter.export import export_model
from exporter.importers.onnx import import_onnx
from exporter.importers.sklearn import convert
from protos.tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc
from tests.exporter.onnx_testlib import X as ONNX_X
from tests.exporter.onnx_testlib import mlp
from tests.integration.serving_testlib import LoopThread, free_port

pytestmark = pytest.mark.timeout(240)
NAMES = [f"f{i}" for i in range(6)]


@pytest.fixture(scope="module")
def fitted() -> tuple[object, np.ndarray]:
    X, y = make_classification(n_samples=240, n_features=6, n_informative=4, random_state=0)
    X[np.random.default_rng(0).random(X.shape) < 0.2] = np.nan
    X = X.astype(np.float32).astype(np.float64)
    est = make_pipeline(SimpleImputer(strategy="median"), RandomForestClassifier(n_estimators=5, random_state=0))
    return est.fit(X[:200], y[:200]), X[200:]


@pytest.fixture(scope="module")
def server(local_ray: None, loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory,
           fitted: tuple[object, np.ndarray]) -> Iterator[TesseraServer]:  # fmt: skip
    root = tmp_path_factory.mktemp("imported")
    model = convert(fitted[0], feature_names=NAMES, class_labels=["no", "yes"])
    export_model(str(root / "pipeline"), model.model_fn, None, signatures=model.signatures())
    onnx_model = import_onnx(mlp("x"), classify="probs")
    export_model(str(root / "mlp"), onnx_model.model_fn, None, signatures=onnx_model.signatures())
    options = ServeOptions(host="127.0.0.1", grpc_port=0, rest_port=free_port(), replica_num_cpus=0.25)
    srv = TesseraServer(options, ServerConfig((ModelConfig("pipeline", str(root / "pipeline")),
                                               ModelConfig("mlp", str(root / "mlp")))))  # fmt: skip
    loop_thread.run(srv.start())
    assert loop_thread.run(srv.wait_ready(90))
    yield srv
    loop_thread.run(srv.stop(grace=2))


@pytest.fixture(scope="module")
def stub(server: TesseraServer) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def rest(server: TesseraServer, path: str, body: dict) -> dict:
    """POST `body` as JSON; the decoded reply."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_pipeline_with_imputer_classifies_over_grpc_and_predicts_over_rest(server, stub, fitted) -> None:  # noqa: ANN001
    est, X = fitted
    expected = est.predict_proba(X)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "pipeline"
    for row in X:  # missing values travel as NaN floats in the Examples
        request.input.example_list.examples.append(make_example(dict(zip(NAMES, map(float, row), strict=True))))
    response = stub.Classify(request, timeout=30)
    scores = np.array([[c.score for c in cls.classes] for cls in response.result.classifications])
    labels = {c.label for cls in response.result.classifications for c in cls.classes}
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert labels == {"no", "yes"}
    # JSON has no NaN: over REST, rows without missing values.
    instances = [[float(v) for v in row] for row in X if not np.isnan(row).any()][:5]
    out = rest(server, "/v1/models/pipeline:predict", {"signature_name": "predict", "instances": instances})
    rows = np.array(instances)
    np.testing.assert_allclose([p["probabilities"] for p in out["predictions"]], est.predict_proba(rows),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert [p["class_ids"] for p in out["predictions"]] == est.predict(rows).tolist()


def test_onnx_file_over_grpc_predict_and_rest(server, stub) -> None:  # noqa: ANN001
    session = ort.InferenceSession(mlp("x"), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": ONNX_X}), strict=True))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mlp"
    request.model_spec.signature_name = "predict"
    request.inputs["x"].CopyFrom(make_tensor_proto(ONNX_X))
    response = stub.Predict(request, timeout=30)
    np.testing.assert_allclose(make_ndarray(response.outputs["probs"]), want["probs"], rtol=1e-6)
    assert make_ndarray(response.outputs["class_ids"]).tolist() == want["probs"].argmax(axis=1).tolist()
    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/v1/models/mlp/metadata", timeout=30) as r:
        out = json.loads(r.read())
    assert set(out["metadata"]["signature_def"]["signature_def"]) == {"predict", "serving_default"}
    bad = predict_pb2.PredictRequest()
    bad.CopyFrom(request)
    bad.inputs["x"].CopyFrom(make_tensor_proto(np.ones((2, 5), np.float32)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(bad, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Predict(request, timeout=30).outputs["probs"].tensor_shape.dim[0].size == len(ONNX_X)
