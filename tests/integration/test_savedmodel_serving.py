"""Drop-in serving of TensorFlow SavedModels: base paths whose versions are SavedModels, under
model_platform "tensorflow", served on a real local Ray through the real gRPC and REST gateways. The
controller imports each version (a subprocess, into a content-keyed cache) and the replicas load
the bundle; Tessera's answers equal TensorFlow's on the original SavedModel within 1e-5, and
Classify, Regress and MultiInference answer with TF Serving's response shapes."""

from __future__ import annotations

import json
import pathlib
import shutil
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from cluster.app import TesseraServer
from cluster.client.tensors import make_ndarray, make_tensor_proto
from cluster.config import ModelConfig, ServeOptions, ServerConfig, VersionPolicy
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tests.exporter.savedmodel_testlib import Built, build, skip_without_the_extra
from tests.integration.serving_testlib import LoopThread, free_port, wait_until

skip_without_the_extra()
pytestmark = pytest.mark.timeout(300)
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def import_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    # Set before the module's Ray starts: the controller (a Ray worker) inherits it.
    cache = tmp_path_factory.mktemp("import-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TESSERA_IMPORT_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def saved(import_cache: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """SavedModels and TensorFlow's answers, made in a TensorFlow subprocess; not imported here:
    the server imports them itself."""
    return build(tmp_path_factory.mktemp("savedmodels"), ["conv", "estimator", "two", "two_v2"], do_import=False)


@pytest.fixture(scope="module")
def server(local_ray: None, loop_thread: LoopThread, saved: dict[str, pathlib.Path]) -> Iterator[TesseraServer]:
    options = ServeOptions(
        host="127.0.0.1", grpc_port=0, rest_port=free_port(), file_system_poll_wait_seconds=0.5, replica_num_cpus=0.25,
        enable_model_warmup=True,
    )  # fmt: skip
    config = ServerConfig(tuple(
        ModelConfig(name, str(saved[name].base), platform="tensorflow", version_policy=VersionPolicy(kind="latest"))
        for name in ("conv", "estimator", "two")
    ))  # fmt: skip
    srv = TesseraServer(options, config)
    loop_thread.run(srv.start())
    assert loop_thread.run(srv.wait_ready(240))
    yield srv
    loop_thread.run(srv.stop(grace=2))


@pytest.fixture(scope="module")
def stub(server: TesseraServer) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _predict(stub, name: str, inputs: dict[str, np.ndarray], signature: str = "") -> dict[str, np.ndarray]:  # noqa: ANN001
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(make_tensor_proto(value))
    response = stub.Predict(request, timeout=30)
    return {alias: make_ndarray(t) for alias, t in response.outputs.items()}


def _add_examples(target, serialized: np.ndarray) -> None:  # noqa: ANN001
    for blob in serialized:
        target.examples.add().ParseFromString(blob)


def _close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch", [1, 9, 64])
def test_conv2d_predict_equals_tensorflow(stub, saved, batch: int) -> None:  # noqa: ANN001
    case = saved["conv"].cases[f"serving_default@{batch}"]
    got = _predict(stub, "conv", case.inputs)
    assert set(got) == set(case.outputs)
    for key, want in case.outputs.items():
        _close(got[key], want)


def test_two_outputs_and_output_filter(stub, saved) -> None:  # noqa: ANN001
    case = saved["two"].cases["serving_default@17"]
    got = _predict(stub, "two", case.inputs)
    for key in ("probs", "value"):
        _close(got[key], case.outputs[key])
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "two"
    request.inputs["features"].CopyFrom(make_tensor_proto(case.inputs["features"]))
    request.output_filter.append("value")
    assert set(stub.Predict(request, timeout=30).outputs) == {"value"}


def _metadata(stub, name: str) -> get_model_metadata_pb2.SignatureDefMap:  # noqa: ANN001
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    sigs = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(sigs)
    return sigs


def test_metadata_shows_the_saved_models_signatures(stub, saved) -> None:  # noqa: ANN001
    got = _metadata(stub, "estimator").signature_def
    declared = saved["estimator"].declared
    assert set(got) == set(declared) == {"serving_default", "classification", "regression", "predict"}
    for key, sig in declared.items():
        assert got[key].method_name == sig["method"], key
        for kind in ("inputs", "outputs"):
            mine = getattr(got[key], kind)
            assert set(mine) == set(sig[kind]), (key, kind)
            for alias, (dtype, dims) in sig[kind].items():
                assert mine[alias].dtype == dtype, (key, alias)
                assert [d.size for d in mine[alias].tensor_shape.dim] == dims, (key, alias)


def test_classify_answers_with_tf_servings_shape(stub, saved) -> None:  # noqa: ANN001
    case = saved["estimator"].cases["serving_default@17"]  # serving_default is a classify signature
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "estimator"  # no signature name: serving_default
    _add_examples(request.input.example_list, case.inputs["inputs"])
    response = stub.Classify(request, timeout=30)
    assert response.model_spec.signature_name == "serving_default" and response.model_spec.version.value == 1
    result = response.result
    assert len(result.classifications) == 17
    for i, classification in enumerate(result.classifications):
        assert [c.label.encode() for c in classification.classes] == list(case.outputs["classes"][i])
        _close(np.array([c.score for c in classification.classes]), case.outputs["scores"][i])


def test_regress_and_multi_inference(stub, saved) -> None:  # noqa: ANN001
    regression = saved["estimator"].cases["regression@17"]
    classification = saved["estimator"].cases["classification@17"]
    examples = regression.inputs["inputs"]
    assert list(examples) == list(classification.inputs["inputs"])
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "estimator"
    request.model_spec.signature_name = "regression"
    _add_examples(request.input.example_list, examples)
    values = [r.value for r in stub.Regress(request, timeout=30).result.regressions]
    _close(np.array(values), regression.outputs["outputs"].reshape(-1))

    multi = inference_pb2.MultiInferenceRequest()
    for key, method in (("classification", "tensorflow/serving/classify"), ("regression", "tensorflow/serving/regress")):
        task = multi.tasks.add()
        task.model_spec.name = "estimator"
        task.model_spec.signature_name = key
        task.method_name = method
    _add_examples(multi.input.example_list, examples)
    results = stub.MultiInference(multi, timeout=30).results
    assert [r.WhichOneof("result") for r in results] == ["classification_result", "regression_result"]
    scores = [[c.score for c in cl.classes] for cl in results[0].classification_result.classifications]
    _close(np.array(scores), classification.outputs["scores"])
    _close(np.array([r.value for r in results[1].regression_result.regressions]), regression.outputs["outputs"].reshape(-1))


def _as_json(serialized: bytes) -> dict:
    """A serialized tf.Example as TF Serving's REST API takes it: feature name -> list of values."""
    from protos.tessera import example_pb2

    out = {}
    for key, feature in example_pb2.Example.FromString(serialized).features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        out[key] = [v.decode() for v in values] if kind == "bytes_list" else values
    return out


def _rest(server: TesseraServer, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_rest_classify_and_regress_answer_as_tf_serving(server, saved) -> None:  # noqa: ANN001
    case = saved["estimator"].cases["serving_default@17"]
    examples = [_as_json(blob) for blob in case.inputs["inputs"]]
    results = _rest(server, "/v1/models/estimator:classify", {"examples": examples})["results"]
    assert [[label.encode() for label, _ in row] for row in results] == case.outputs["classes"].tolist()
    _close(np.array([[score for _, score in row] for row in results]), case.outputs["scores"])
    regression = saved["estimator"].cases["regression@17"]
    body = {"signature_name": "regression", "examples": examples}
    _close(np.array(_rest(server, "/v1/models/estimator:regress", body)["results"]), regression.outputs["outputs"].reshape(-1))


def test_predict_on_the_parsing_signature(stub, saved) -> None:  # noqa: ANN001
    case = saved["estimator"].cases["predict@17"]
    got = _predict(stub, "estimator", case.inputs, signature="predict")
    for key in ("logits", "scores"):
        _close(got[key], case.outputs[key])


def test_a_new_version_is_imported_and_swapped_in(server, stub, saved, import_cache) -> None:  # noqa: ANN001
    shutil.move(str(saved["two_v2"].base / "1"), str(saved["two"].base / "2"))  # appears whole, as TF Serving expects
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    status_stub = model_service_pb2_grpc.ModelServiceStub(channel)

    def available() -> list[int]:
        reply = status_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "two"}))
        return sorted(s.version for s in reply.model_version_status if s.state == 30)

    served: list[int] = []

    def answered_by_v2() -> bool:
        served.append(stub.Predict(_request_two(saved), timeout=30).model_spec.version.value)  # no request fails meanwhile
        return available() == [2]

    wait_until(answered_by_v2, timeout=180, interval=0.5)
    case = saved["two_v2"].cases["serving_default@17"]
    _close(_predict(stub, "two", case.inputs)["value"], case.outputs["value"])
    assert set(served) <= {1, 2}
    assert len(list(import_cache.rglob("MANIFEST.pb"))) == 4  # conv, estimator, two v1 and v2: once each
    channel.close()


def _request_two(saved) -> predict_pb2.PredictRequest:  # noqa: ANN001
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "two"
    request.inputs["features"].CopyFrom(make_tensor_proto(saved["two"].cases["serving_default@17"].inputs["features"]))
    return request
