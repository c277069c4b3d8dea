"""The whole stack on a real local Ray: TF Serving's gRPC API, versions, labels, reloads, errors.

Clients here use the generated stubs directly, as an unchanged TF Serving client would.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from cluster.app import TesseraServer
from cluster.client.examples import make_example
from cluster.client.tensors import make_ndarray, make_tensor_proto
from cluster.config import ModelConfig, ServeOptions, ServerConfig, VersionPolicy
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
from protos.tensorflow_serving.config import model_server_config_pb2
from tests.bundles_testlib import build_meta_graph, corrupt_version, write_version
from tests.integration.serving_testlib import LoopThread, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("models")
    write_version(root / "m", 1, 2.0)
    write_version(root / "labelled", 1, 10.0)
    write_version(root / "labelled", 2, 20.0)
    write_version(root / "other", 1, 5.0)
    return root


def initial_config(root: pathlib.Path) -> ServerConfig:
    return ServerConfig((
        ModelConfig("m", str(root / "m")),
        ModelConfig(
            "labelled",
            str(root / "labelled"),
            version_policy=VersionPolicy("specific", versions=(1, 2)),
            version_labels=(("canary", 2), ("stable", 1)),
        ),
    ))


@pytest.fixture(scope="module")
def server(local_ray: None, loop_thread: LoopThread, model_dir: pathlib.Path) -> Iterator[TesseraServer]:
    options = ServeOptions(host="127.0.0.1", grpc_port=0, file_system_poll_wait_seconds=0.2, replica_num_cpus=0.25)
    srv = TesseraServer(options, initial_config(model_dir))
    loop_thread.run(srv.start())
    assert loop_thread.run(srv.wait_ready(60))
    yield srv
    loop_thread.run(srv.stop(grace=2))


@pytest.fixture(scope="module")
def channel(server: TesseraServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def predict_stub(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict(stub, name: str, x: np.ndarray, **spec) -> predict_pb2.PredictResponse:  # noqa: ANN001
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["x"].CopyFrom(make_tensor_proto(x))
    return stub.Predict(request, timeout=10)


def examples(*rows: dict[str, float]) -> list:
    return [make_example(r) for r in rows]


def test_predict_matches_local_runtime(predict_stub) -> None:  # noqa: ANN001
    from exporter.runtime import Runtime

    x = np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)
    response = predict_stub.Predict
    out = predict(predict_stub, "m", x)
    meta, variables = build_meta_graph(2.0)
    expected = Runtime(meta, variables).run("serving_default", {"x": x})["y"]
    np.testing.assert_array_equal(make_ndarray(out.outputs["y"]), expected)
    assert out.model_spec.name == "m"
    assert out.model_spec.version.value == 1
    assert out.model_spec.signature_name == "serving_default"
    assert response is not None


def test_classify_regress_and_multi_inference(predict_stub) -> None:  # noqa: ANN001
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "m"
    request.model_spec.signature_name = "classify"
    request.input.example_list.examples.extend(examples({"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 0.0}))
    result = predict_stub.Classify(request, timeout=10)
    assert len(result.result.classifications) == 2
    first = result.result.classifications[0].classes
    assert [c.label for c in first] == ["a", "b"]
    expected = np.exp([2.0, 4.0]) / np.exp([2.0, 4.0]).sum()
    np.testing.assert_allclose([c.score for c in first], expected, rtol=1e-5)
    assert result.model_spec.version.value == 1

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "m"
    regress.model_spec.signature_name = "regress"
    ctx = make_example({"b": 1.0})
    regress.input.example_list_with_context.context.CopyFrom(ctx)
    regress.input.example_list_with_context.examples.extend(examples({"a": 1.0}, {"a": 2.0}))
    values = [r.value for r in predict_stub.Regress(regress, timeout=10).result.regressions]
    np.testing.assert_allclose(values, [4.0, 6.0])

    multi = inference_pb2.MultiInferenceRequest()
    for sig, method in (("classify", "tensorflow/serving/classify"), ("regress", "tensorflow/serving/regress")):
        task = multi.tasks.add()
        task.model_spec.name = "m"
        task.model_spec.signature_name = sig
        task.method_name = method
    multi.input.example_list.examples.extend(examples({"a": 1.0, "b": 1.0}))
    response = predict_stub.MultiInference(multi, timeout=10)
    assert response.results[0].WhichOneof("result") == "classification_result"
    assert response.results[1].regression_result.regressions[0].value == pytest.approx(4.0)


def test_metadata_and_status(predict_stub, model_stub) -> None:  # noqa: ANN001
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "m"
    response = predict_stub.GetModelMetadata(request, timeout=10)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    assert set(sigs.signature_def) == {"serving_default", "classify", "regress"}
    assert sigs.signature_def["classify"].method_name == "tensorflow/serving/classify"
    assert response.model_spec.version.value == 1

    status = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "labelled"}))
    assert [(s.version, s.state) for s in status.model_version_status] == [(2, 30), (1, 30)]


def test_labels_route_to_their_versions(predict_stub) -> None:  # noqa: ANN001
    x = np.ones((1, 2), np.float32)
    assert make_ndarray(predict(predict_stub, "labelled", x, version_label="stable").outputs["y"])[0, 0] == 10.0
    canary = predict(predict_stub, "labelled", x, version_label="canary")
    assert canary.model_spec.version.value == 2
    assert make_ndarray(canary.outputs["y"])[0, 0] == 20.0
    assert predict(predict_stub, "labelled", x, version=1).model_spec.version.value == 1
    with pytest.raises(grpc.RpcError) as err:
        predict(predict_stub, "labelled", x, version_label="nightly")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unrecognized servable version label: nightly" in err.value.details()


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (lambda r: r.ClearField("model_spec"), grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"),
        (lambda r: setattr(r.model_spec, "name", ""), grpc.StatusCode.INVALID_ARGUMENT, "no name specified"),
        (lambda r: setattr(r.model_spec, "name", "ghost"), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(ghost)"),
        (lambda r: r.model_spec.version.__setattr__("value", 99), grpc.StatusCode.NOT_FOUND, "Specific(m, 99)"),
        (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "nope" not found.'),
        (lambda r: r.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 2), np.float64))),
         grpc.StatusCode.INVALID_ARGUMENT, "float32"),
        (lambda r: r.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 3), np.float32))),
         grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        (lambda r: r.inputs["zz"].CopyFrom(r.inputs.pop("x")), grpc.StatusCode.INVALID_ARGUMENT,
         "input tensor alias not found in signature: zz"),
        (lambda r: r.output_filter.append("nope"), grpc.StatusCode.INVALID_ARGUMENT,
         "output tensor alias not found in signature: nope"),
    ],
)
def test_bad_requests_get_tf_serving_errors_and_server_keeps_serving(predict_stub, mutate, code, message) -> None:  # noqa: ANN001
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 2), np.float32)))
    mutate(request)
    with pytest.raises(grpc.RpcError) as err:
        predict_stub.Predict(request, timeout=10)
    assert err.value.code() == code
    assert message in err.value.details()
    assert predict(predict_stub, "m", np.ones((1, 2), np.float32)).outputs["y"]


def test_oversized_tensor_is_refused(predict_stub) -> None:  # noqa: ANN001
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    # A tiny message that claims 2^40 elements: must be refused, never expanded in memory.
    request.inputs["x"].dtype = 1
    request.inputs["x"].tensor_shape.dim.add().size = 2**39
    request.inputs["x"].tensor_shape.dim.add().size = 2
    request.inputs["x"].float_val.append(1.0)
    with pytest.raises(grpc.RpcError) as err:
        predict_stub.Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_live_version_swap_and_corrupt_version(server, predict_stub, model_stub, model_dir) -> None:  # noqa: ANN001
    errors: list[Exception] = []
    versions: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        x = np.ones((1, 2), np.float32)
        while not stop.is_set():
            try:
                out = predict(predict_stub, "m", x)
                versions.append(out.model_spec.version.value)
                expected = {1: 2.0, 2: 3.0}[out.model_spec.version.value]
                assert make_ndarray(out.outputs["y"])[0, 0] == expected
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            time.sleep(0.005)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        wait_until(lambda: len(versions) > 20)
        write_version(model_dir / "m", 2, 3.0)
        wait_until(lambda: versions[-1] == 2, timeout=60)
        corrupt_version(model_dir / "m", 3)

        def v3_failed() -> bool:
            status = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "m"}))
            by_version = {s.version: s for s in status.model_version_status}
            return 3 in by_version and by_version[3].state == 50 and by_version[3].status.error_code != 0

        wait_until(v3_failed, timeout=60)
        count = len(versions)
        wait_until(lambda: len(versions) > count + 20)
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors[:3]
    assert versions[-1] == 2
    status = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "m"}))
    v3 = next(s for s in status.model_version_status if s.version == 3)
    assert "checksum" in v3.status.error_message or "size" in v3.status.error_message


def test_a_version_linked_out_of_the_base_path_is_refused_with_its_reason_in_status(
    predict_stub, model_stub, model_dir, tmp_path  # noqa: ANN001
) -> None:
    # Issue 9, point 8: a version directory that links to a bundle outside the base path was
    # loaded and served. It must fail to load, say why in GetModelStatus, and serve nothing.
    outside = pathlib.Path(write_version(tmp_path / "outside", 9, 9.0))
    link = model_dir / "m" / "9"
    link.symlink_to(outside, target_is_directory=True)
    try:
        def v9_refused() -> bool:
            status = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "m"}))
            by_version = {s.version: s for s in status.model_version_status}
            return 9 in by_version and by_version[9].state == 50 and by_version[9].status.error_code != 0

        wait_until(v9_refused, timeout=60)
        status = model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "m"}))
        v9 = next(s for s in status.model_version_status if s.version == 9)
        assert "outside the base path" in v9.status.error_message and "symbolic link" in v9.status.error_message
        out = predict(predict_stub, "m", np.ones((1, 2), np.float32))
        assert out.model_spec.version.value != 9 and make_ndarray(out.outputs["y"])[0, 0] != 9.0
    finally:
        link.unlink()


def test_config_reload_adds_and_removes_models(server, predict_stub, model_stub, model_dir) -> None:  # noqa: ANN001
    errors: list[Exception] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                predict(predict_stub, "labelled", np.ones((1, 2), np.float32), version_label="stable")
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            time.sleep(0.005)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        config = model_server_config_pb2.ModelServerConfig()
        for name in ("labelled", "other"):
            entry = config.model_config_list.config.add(name=name, base_path=str(model_dir / name))
            entry.model_platform = "tensorflow"
        labelled = config.model_config_list.config[0]
        labelled.model_version_policy.specific.versions.extend([1, 2])
        labelled.version_labels["stable"] = 1
        labelled.version_labels["canary"] = 2
        response = model_stub.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=30
        )
        assert response.status.error_code == 0

        def other_serves() -> bool:
            try:
                return predict(predict_stub, "other", np.ones((1, 2), np.float32)).model_spec.version.value == 1
            except grpc.RpcError:
                return False

        wait_until(other_serves, timeout=60)

        def m_gone() -> bool:
            try:
                predict(predict_stub, "m", np.ones((1, 2), np.float32))
            except grpc.RpcError as err:
                return err.code() == grpc.StatusCode.NOT_FOUND
            return False

        wait_until(m_gone, timeout=30)
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors[:3]


def test_reload_refuses_label_on_unavailable_version(model_stub, model_dir) -> None:  # noqa: ANN001
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add(name="labelled", base_path=str(model_dir / "labelled"))
    entry.model_version_policy.specific.versions.extend([1, 2])
    entry.version_labels["stable"] = 7
    with pytest.raises(grpc.RpcError) as err:
        model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
