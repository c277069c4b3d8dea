"""One controller, many gateways, on a real local Ray: a `tessera gateway` process joins the
controller that a TesseraServer started; both serve the same replicas; killing one gateway's
process leaves the other serving and the replicas as they were; a new gateway joins and serves at
once; a config reloaded through one gateway is seen through the other; one scrape counts both."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from cluster.app import TesseraServer
from cluster.client.tensors import make_ndarray, make_tensor_proto
from protos.tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from protos.tensorflow_serving.config import model_server_config_pb2
from tests.bundles_testlib import write_version
from tests.integration.serving_testlib import LoopThread, config, free_port, serving, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("models")
    write_version(base / "a", 1, 2.0)
    write_version(base / "b", 1, 3.0)
    return base


def predict(port: int, model: str, timeout: float = 10.0) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(make_tensor_proto(np.float32([[1.0, 2.0]])))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
    return make_ndarray(reply.outputs["y"])


def serves(port: int, model: str, expected: list[float]) -> bool:
    try:
        return predict(port, model).tolist() == [expected]
    except grpc.RpcError:
        return False


class JoinedGateway:
    """`tessera gateway` in its own process, joining the test's Ray (and so its controller)."""

    def __init__(self, rest: bool = True) -> None:
        import ray

        self.port = free_port()
        self.rest_port = free_port() if rest else 0
        argv = [sys.executable, "-m", "cluster.cli", "gateway", f"--ray_address={ray.get_runtime_context().gcs_address}",
                "--host=127.0.0.1", f"--port={self.port}", f"--rest_api_port={self.rest_port}"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_serving(self, model: str, expected: list[float]) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.output()
            return serves(self.port, model, expected)

        wait_until(up, timeout=120, interval=0.3, what="the joined gateway serving")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def output(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")


@pytest.fixture
def joined() -> Iterator[list[JoinedGateway]]:
    gateways: list[JoinedGateway] = []
    try:
        yield gateways
    finally:
        for gateway in gateways:
            gateway.kill()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/monitoring/prometheus/metrics", timeout=10) as reply:
        return reply.read().decode()


def predicts_ok(text: str, model: str) -> float:
    """The cluster's count of successful gRPC Predicts of `model`, from a scrape."""
    labels = f'entrypoint="grpc",method="predict",model="{model}",signature="serving_default",status="OK"'
    prefix = "tessera_requests_total{" + labels + "} "
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


def test_two_gateways_share_one_controller_and_one_dying_takes_nothing_with_it(
    local_ray: None, loop_thread: LoopThread, root: pathlib.Path, joined: list[JoinedGateway]
) -> None:
    import ray

    with serving(loop_thread, config(root, ["a"]), rest_port=free_port()) as server:
        assert loop_thread.run(server.wait_ready(60))
        assert predict(server.grpc_port, "a").tolist() == [[2.0, 4.0]]
        def replica_pids() -> set[int]:
            return {r["pid"] for r in ray.get(server.controller.replica_memory.remote("a"))}

        replicas = replica_pids()
        assert len(replicas) == 1
        joined.append(JoinedGateway())
        joined[0].wait_serving("a", [2.0, 4.0])
        # The same replicas behind both: the joined gateway started none of its own.
        assert replica_pids() == replicas

        # One scrape of either gateway counts both gateways' requests.
        for _ in range(3):
            predict(joined[0].port, "a")
        for _ in range(2):
            predict(server.grpc_port, "a")
        wait_until(lambda: predicts_ok(scrape(server.rest_port), "a") >= 6, timeout=30,  # 1 + 5, + the joiner's probes
                   what="one scrape counting both gateways")
        assert predicts_ok(scrape(joined[0].rest_port), "a") == predicts_ok(scrape(server.rest_port), "a")

        # A gateway's process dies: the other serves on, the replicas stay, the counts stay.
        before = predicts_ok(scrape(server.rest_port), "a")
        joined[0].kill()
        for _ in range(5):
            assert predict(server.grpc_port, "a").tolist() == [[2.0, 4.0]]
        assert replica_pids() == replicas
        assert predicts_ok(scrape(server.rest_port), "a") >= before + 5

        # A new gateway joins and serves at once (the routing table is there when it starts).
        joined.append(JoinedGateway(rest=False))
        joined[1].wait_serving("a", [2.0, 4.0])


def test_a_reload_through_one_gateway_is_seen_through_the_other(
    local_ray: None, loop_thread: LoopThread, root: pathlib.Path, joined: list[JoinedGateway]
) -> None:
    with serving(loop_thread, config(root, ["a"])) as server:
        assert loop_thread.run(server.wait_ready(60))
        joined.append(JoinedGateway(rest=False))
        joined[0].wait_serving("a", [2.0, 4.0])
        reload = model_server_config_pb2.ModelServerConfig()
        for name in ("a", "b"):
            entry = reload.model_config_list.config.add(name=name, base_path=str(root / name))
            entry.model_platform = "tensorflow"
        with grpc.insecure_channel(f"127.0.0.1:{joined[0].port}") as channel:
            reply = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=reload), timeout=60)
        assert reply.status.error_code == 0
        # Applied once, for the whole cluster: the TesseraServer's gateway serves b too.
        wait_until(lambda: serves(server.grpc_port, "b", [3.0, 6.0]), timeout=60, what="b through the other gateway")
        wait_until(lambda: serves(joined[0].port, "b", [3.0, 6.0]), timeout=30, what="b through the one reloaded")
        # The controller keeps the newest config; the server never sends its older one back.
        assert [m.name for m in server_config(server).models] == ["a", "b"]


def server_config(server: TesseraServer) -> object:
    """The config the controller stored (what a restarted controller applies)."""
    import ray

    from cluster.controller.actor import CONTROLLER_NAME, _stored_config

    assert ray.get_actor(CONTROLLER_NAME) is not None
    config = _stored_config(CONTROLLER_NAME)
    assert config is not None
    return config


def test_a_gateway_with_no_controller_to_join_gives_up_with_a_message(local_ray: None) -> None:
    import ray

    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "gateway", f"--ray_address={ray.get_runtime_context().gcs_address}",
         "--host=127.0.0.1", "--port=0", "--controller_wait_seconds=1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "no Tessera controller" in proc.stderr
