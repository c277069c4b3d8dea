"""Metrics, health and lifecycle logs on a real local Ray with two replicas of one model."""

from __future__ import annotations

import json
import pathlib
import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from cluster.app import TesseraServer
from cluster.client.tensors import make_tensor_proto
from cluster.config import ModelConfig, ServeOptions, ServerConfig
from protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tests.bundles_testlib import write_version
from tests.integration.serving_testlib import LoopThread, free_port, routed, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("models") / "m"  # empty until a test writes a version


@pytest.fixture(scope="module")
def server(local_ray: None, loop_thread: LoopThread, base: pathlib.Path) -> Iterator[TesseraServer]:
    options = ServeOptions(
        host="127.0.0.1", grpc_port=0, rest_port=free_port(), num_replicas=2, replica_num_cpus=0.25,
        file_system_poll_wait_seconds=0.2,
    )
    srv = TesseraServer(options, ServerConfig((ModelConfig("m", str(base)),)))
    loop_thread.run(srv.start())
    yield srv
    loop_thread.run(srv.stop(grace=2))


def _health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _http(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_health_is_not_serving_until_a_model_loads_then_serving(server: TesseraServer, base: pathlib.Path) -> None:
    for service in ("", "tensorflow.serving.PredictionService", "PredictionService"):
        assert _health(server.grpc_port, service) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _http(server.rest_port, "/readyz")[0] == 503
    assert _http(server.rest_port, "/healthz")[0] == 200
    write_version(base, 1, 2.0)
    deadline = time.monotonic() + 60
    while _health(server.grpc_port, "") != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _health(server.grpc_port, "tensorflow.serving.ModelService") == health_pb2.HealthCheckResponse.SERVING
    assert _http(server.rest_port, "/readyz")[0] == 200


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_one_scrape_shows_the_whole_cluster(server: TesseraServer) -> None:
    grpc_requests, rest_requests, bad = 40, 10, 3
    # The model serves once one replica has it; the scrape is about both.
    wait_until(lambda: routed(server, "m") == 2, what="both replicas routed")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "m"
        request.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 2), np.float32)))
        futures = [stub.Predict.future(request, timeout=30) for _ in range(grpc_requests)]
        for f in futures:
            f.result()
        request.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 3), np.float32)))
        for _ in range(bad):
            with pytest.raises(grpc.RpcError):
                stub.Predict(request, timeout=30)
    for _ in range(rest_requests):
        body = json.dumps({"instances": [[1.0, 2.0]]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/m:predict", data=body)
        with urllib.request.urlopen(req, timeout=10) as response:
            assert response.status == 200

    status, text = _http(server.rest_port, "/monitoring/prometheus/metrics")
    assert status == 200
    samples = _samples(text.decode())

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    ok = dict(model="m", signature="serving_default", method="predict", status="OK")
    assert value("tessera_requests_total", entrypoint="grpc", **ok) == grpc_requests
    assert value("tessera_requests_total", entrypoint="rest", **ok) == rest_requests
    assert value("tessera_requests_total", model="m", signature="", method="predict",
                 status="INVALID_ARGUMENT", entrypoint="grpc") == bad
    assert value("tessera_request_latency_seconds_count", model="m", method="predict",
                 entrypoint="grpc") == grpc_requests + bad
    assert value("tessera_replicas", model="m") == 2
    assert value("tessera_model_version_state", model="m", version="1") == 30
    # Every row computed by either replica shows up in the batch-size histogram, once.
    assert value("tessera_batch_size_sum", model="m") == grpc_requests + rest_requests
    replicas = {labels for (name, labels) in samples if name == "tessera_replica_queue_depth"}
    assert len(replicas) == 2
    assert value("tessera_model_load_latency_seconds_count", model="m") >= 1


def test_the_embedded_cluster_stays_on_loopback(server: TesseraServer) -> None:
    import ray

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    addresses = {ref.address[0] for route in server.dispatcher.table.models.values() for ref in route.replicas}
    assert addresses == {"127.0.0.1"}


def test_a_killed_replica_is_replaced_and_no_request_fails(server: TesseraServer) -> None:
    import os
    import signal
    import threading

    import ray

    before = ray.get(server.controller.replica_memory.remote("m"))
    errors: list[Exception] = []
    done = threading.Event()
    sent = [0]

    def stream() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 2), np.float32)))
            while not done.is_set():
                try:
                    stub.Predict(request, timeout=30)
                    sent[0] += 1
                except grpc.RpcError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        os.kill(before[0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            after = ray.get(server.controller.replica_memory.remote("m"))
            if len(after) == 2 and before[0]["pid"] not in {a["pid"] for a in after}:
                break
            assert time.monotonic() < deadline, "the dead replica was not replaced"
            time.sleep(0.2)
        count = sent[0]
        time.sleep(1.0)
        assert sent[0] > count  # still serving on the new pair
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]


def test_a_killed_controller_restarts_adopts_its_replicas_and_no_request_fails(server: TesseraServer) -> None:
    import os
    import signal
    import threading

    import ray

    replica_pids = {m["pid"] for m in ray.get(server.controller.replica_memory.remote("m"))}
    old_incarnation = server.dispatcher.table.incarnation
    errors: list[Exception] = []
    done = threading.Event()

    def stream() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            request.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 2), np.float32)))
            while not done.is_set():
                try:
                    stub.Predict(request, timeout=30)
                except grpc.RpcError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=stream) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        os.kill(ray.get(server.controller.pid.remote()), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while server.dispatcher.table.incarnation in ("", old_incarnation):
            assert time.monotonic() < deadline, "the restarted controller's table never arrived"
            time.sleep(0.2)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert set(server.dispatcher.table.models) == {"m"}
    assert {m["pid"] for m in ray.get(server.controller.replica_memory.remote("m"))} == replica_pids
