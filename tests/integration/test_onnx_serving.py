"""An ONNX model in Triton's layout (`<version>/model.onnx`, model_platform "onnx") served on a real
local Ray through the real gRPC and REST gateways: Predict, metadata, status, warmup, batching,
a new version swapped in under traffic, a corrupt version and a SavedModel that fail alone."""

from __future__ import annotations

import json
import os
import pathlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from cluster.app import TesseraServer
from cluster.client.tensors import make_ndarray, make_tensor_proto
from cluster.config import BatchingConfig, ModelConfig, ServeOptions, ServerConfig
from protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tests.exporter.onnx_testlib import write_onnx_version
from tests.integration.serving_testlib import LoopThread, free_port, wait_until

pytestmark = pytest.mark.timeout(240)


def _finished(root: pathlib.Path) -> None:
    """Files written long ago: the source takes the version at its first poll."""
    for path in root.rglob("*"):
        os.utime(path, (0, 0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("onnx")
    _finished(write_onnx_version(root / "scale", 1, 2.0, warmup_rows=2))
    return root


@pytest.fixture(scope="module")
def server(local_ray: None, loop_thread: LoopThread, model_dir: pathlib.Path) -> Iterator[TesseraServer]:
    options = ServeOptions(
        host="127.0.0.1", grpc_port=0, rest_port=free_port(), file_system_poll_wait_seconds=0.2,
        replica_num_cpus=0.25, enable_batching=True, batching=BatchingConfig(batch_timeout_micros=1000),
    )
    config = ServerConfig((ModelConfig("scale", str(model_dir / "scale"), platform="onnx"),))
    srv = TesseraServer(options, config)
    loop_thread.run(srv.start())
    assert loop_thread.run(srv.wait_ready(60))
    yield srv
    loop_thread.run(srv.stop(grace=2))


@pytest.fixture(scope="module")
def channel(server: TesseraServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        yield ch


def predict(channel: grpc.Channel, x: np.ndarray, *output_filter: str) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "scale"
    request.inputs["x"].CopyFrom(make_tensor_proto(x))
    request.output_filter.extend(output_filter)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)


def status(channel: grpc.Channel) -> dict[int, object]:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    reply = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "scale"}), timeout=10)
    return {s.version: s for s in reply.model_version_status}


def rest(server: TesseraServer, path: str, body: object | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_grpc_predict_runs_the_graph(channel: grpc.Channel) -> None:
    x = np.array([[1, 5], [4, 3]], np.float32)
    out = predict(channel, x)
    assert out.model_spec.version.value == 1 and out.model_spec.signature_name == "serving_default"
    np.testing.assert_array_equal(make_ndarray(out.outputs["y"]), 2 * x)
    np.testing.assert_array_equal(make_ndarray(out.outputs["ids"]), [1, 0])
    assert set(predict(channel, x, "ids").outputs) == {"ids"}


def test_bad_input_is_invalid_argument_and_serving_goes_on(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        predict(channel, np.ones((1, 3), np.float32))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "shape" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        predict(channel, np.ones((1, 2), np.float64))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert predict(channel, np.ones((1, 2), np.float32)).outputs["y"]


def test_rest_predict_metadata_and_status(server: TesseraServer) -> None:
    code, body = rest(server, "/v1/models/scale:predict", {"instances": [[1.0, 5.0], [4.0, 3.0]]})
    assert code == 200, body
    assert body["predictions"] == [{"y": [2.0, 10.0], "ids": 1}, {"y": [8.0, 6.0], "ids": 0}]
    code, body = rest(server, "/v1/models/scale:predict", {"inputs": {"x": [[1.0, 1.0]]}})
    assert code == 200 and body["outputs"] == {"y": [[2.0, 2.0]], "ids": [0]}, body
    code, body = rest(server, "/v1/models/scale:predict", {"instances": [[1.0, 1.0, 1.0]]})
    assert code == 400 and "shape" in body["error"], body
    code, body = rest(server, "/v1/models/scale/metadata")
    assert code == 200, body
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    x = signature["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT" and [int(d["size"]) for d in x["tensor_shape"]["dim"]] == [-1, 2]
    code, body = rest(server, "/v1/models/scale")
    assert code == 200 and body["model_version_status"][0]["state"] == "AVAILABLE", body


def test_grpc_metadata_and_status(channel: grpc.Channel) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "scale"
    reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    reply.metadata["signature_def"].Unpack(signatures)
    sig = signatures.signature_def["serving_default"]
    assert set(sig.inputs) == {"x"} and set(sig.outputs) == {"y", "ids"}
    assert sig.outputs["ids"].dtype == 9  # DT_INT64
    assert status(channel)[1].state == 30  # AVAILABLE


def test_a_new_version_swaps_in_and_broken_ones_fail_alone(channel: grpc.Channel, model_dir: pathlib.Path) -> None:
    failures: list[Exception] = []
    versions: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        x = np.ones((1, 2), np.float32)
        while not stop.is_set():
            try:
                out = predict(channel, x)
                versions.append(out.model_spec.version.value)
                expected = {1: 2.0, 2: 3.0}[out.model_spec.version.value]
                assert make_ndarray(out.outputs["y"])[0, 0] == expected
            except Exception as exc:  # noqa: BLE001 - collected and reported below
                failures.append(exc)
            time.sleep(0.005)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        wait_until(lambda: len(versions) > 20)
        write_onnx_version(model_dir / "scale", 2, 3.0)  # fresh files: taken once they stop changing
        wait_until(lambda: versions[-1] == 2, timeout=60)

        corrupt = model_dir / "scale" / "3"
        corrupt.mkdir()
        (corrupt / "model.onnx").write_bytes(b"\x08\x07 not an onnx model")
        wait_until(lambda: 3 in status(channel) and status(channel)[3].state == 50, timeout=60)
        assert "ONNX" in status(channel)[3].status.error_message

        savedmodel = model_dir / "scale" / "4"
        savedmodel.mkdir()
        (savedmodel / "saved_model.pb").write_bytes(b"\x00")
        wait_until(lambda: 4 in status(channel) and status(channel)[4].state == 50, timeout=60)
        count = len(versions)
        wait_until(lambda: len(versions) > count + 20)
    finally:
        stop.set()
        thread.join(10)
    assert not failures, failures[:3]
    assert versions[-1] == 2
    v4 = status(channel)[4].status
    assert v4.error_code != 0 and "TensorFlow SavedModel" in v4.error_message
    assert "tessera import SRC DEST" in v4.error_message


def test_metrics_cover_the_onnx_model(server: TesseraServer, channel: grpc.Channel) -> None:
    predict(channel, np.ones((1, 2), np.float32))
    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics", timeout=10) as r:
        text = r.read().decode()
    lines = text.splitlines()
    assert any(line.startswith("tessera_requests_total{") and 'model="scale"' in line and 'status="OK"' in line
               for line in lines)
    assert any(line.startswith("tessera_model_warmup_latency_seconds_count") and 'model="scale"' in line
               and not line.endswith(" 0.0") for line in lines)
    assert any(line.startswith("tessera_batch_size_count") and 'model="scale"' in line for line in lines)


def test_reload_with_a_version_policy_and_labels(channel: grpc.Channel, model_dir: pathlib.Path) -> None:
    """After the swap (1 unloaded, 2 serving): reload to serve 1 and 2, then label them."""
    from protos.tensorflow_serving.apis import model_management_pb2
    from protos.tensorflow_serving.config import model_server_config_pb2

    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    if not (model_dir / "scale" / "2").exists():  # this test run on its own
        _finished(write_onnx_version(model_dir / "scale", 2, 3.0))

    def reload(labels: dict[str, int]) -> None:
        config = model_server_config_pb2.ModelServerConfig()
        entry = config.model_config_list.config.add(name="scale", base_path=str(model_dir / "scale"))
        entry.model_platform = "onnx"
        entry.model_version_policy.specific.versions.extend([1, 2])
        for label, version in labels.items():
            entry.version_labels[label] = version
        reply = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=30)
        assert reply.status.error_code == 0, reply.status.error_message

    reload({})
    wait_until(lambda: all(v in status(channel) and status(channel)[v].state == 30 for v in (1, 2)), timeout=60)
    reload({"stable": 1, "canary": 2})

    def by_label(label: str) -> tuple[int, float]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "scale"
        request.model_spec.version_label = label
        request.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 2), np.float32)))
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
        return reply.model_spec.version.value, float(make_ndarray(reply.outputs["y"])[0, 0])

    assert wait_until(lambda: _or_none(by_label, "stable"), timeout=30) == (1, 2.0)
    assert by_label("canary") == (2, 3.0)


def _or_none(fn, *args):  # noqa: ANN001, ANN202 - a probe for wait_until
    try:
        return fn(*args)
    except grpc.RpcError:
        return None
