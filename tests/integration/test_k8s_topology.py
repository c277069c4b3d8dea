"""k8s/'s topology as processes on this machine: what the manifests run, without Kubernetes.

A Ray head with no CPUs and Ray Client's server (the RayCluster's head pod), a worker node with
CPUs for the replicas (its worker group), `tessera serve --gateway_processes=0` joined to the head
(the head pod's controller container) and `tessera gateway --ray_address=ray://...`: a gateway
off Ray, through Ray Client (k8s/'s gateway pods are Ray nodes of their own now, whose gateway is a
driver of its node, as the extra gateway processes of tests/integration/test_gateways.py are). The
gateway pod's own `ray start` and `tessera gateway` commands, read from k8s/base/gateway.yaml, run
too: a third node with no CPUs, and a gateway serving as a driver. The gateway answers Predicts; killed, a new one
joins and answers at once. Every process is stopped by PID.

Slow (a minute or two, two Ray nodes): not in `make test`; run it with
`.venv/bin/python -m pytest -m slow tests/integration/test_k8s_topology.py`.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import yaml

from benchmarks.chaos.two_node import TwoNodeCluster
from benchmarks.servers import free_port, session_pids
from cluster.client import TesseraClient
from tests.bundles_testlib import write_version
from tests.integration.serving_testlib import wait_until
from tests.k8s.test_manifests import K8S, script_commands

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
TESSERA = str(pathlib.Path(sys.executable).with_name("tessera"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodeCluster]:
    pytest.importorskip("ray")
    nodes = TwoNodeCluster(head_cpus=0, worker_cpus=2, log_dir=tmp_path_factory.mktemp("ray-logs"),
                           ray_client_port=free_port())
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


class Process:
    """One `tessera ...` command in a session of its own, its output in a log file."""

    def __init__(self, argv: list[str], log: pathlib.Path, env: dict[str, str]) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        for pid in session_pids(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _ready(rest_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _gateway(cluster: TwoNodeCluster, tmp_path: pathlib.Path, name: str) -> tuple[Process, int]:
    grpc_port, rest_port = free_port(), free_port()
    gateway = Process([TESSERA, "gateway", f"--ray_address=ray://127.0.0.1:{cluster.ray_client_port}",
                       f"--port={grpc_port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1"],
                      tmp_path / f"{name}.log", cluster.env())
    try:
        wait_until(lambda: _ready(rest_port), timeout=120, what=f"{name} ready")
    except BaseException:
        print(gateway.tail())
        gateway.stop()
        raise
    return gateway, grpc_port


def _gateway_pod_commands() -> list[list[str]]:
    (deployment,) = [d for d in yaml.safe_load_all((K8S / "base" / "gateway.yaml").read_text())
                     if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return script_commands(container)


def _nodes(cluster: TwoNodeCluster) -> list[dict[str, object]]:
    # A driver of its own (this test process never joins Ray): the nodes the GCS lists as alive.
    probe = (f"import json, ray; ray.init(address={cluster.address!r}, _node_ip_address='127.0.0.1', "
             "logging_level='ERROR'); print(json.dumps([n for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", probe], env=cluster.env(), capture_output=True, text=True,
                         timeout=120, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def _resources_of_node_with_object_store(cluster: TwoNodeCluster, size: int) -> dict[str, float] | None:
    for node in _nodes(cluster):
        resources = dict(node["Resources"])  # type: ignore[call-overload]
        if resources.get("object_store_memory") == size:
            return resources
    return None


def _controller(cluster: TwoNodeCluster, tmp_path: pathlib.Path) -> Process:
    """`tessera serve` with no gateway of its own, serving model "m" (one version) on 2 replicas:
    the head pod's command."""
    write_version(tmp_path / "m", 1, 2.0)
    (tmp_path / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" }} }}\n')
    return Process([TESSERA, "serve", f"--ray_address={cluster.address}", "--gateway_processes=0",
                    f"--model_config_file={tmp_path / 'models.config'}", "--num_replicas=2",
                    "--replica_num_cpus=0.5"], tmp_path / "serve.log", cluster.env())


def _predict(port: int) -> np.ndarray:
    with TesseraClient(f"127.0.0.1:{port}") as client:
        return np.asarray(client.predict("m", {"x": np.array([[1.0, 2.0]], np.float32)})["y"])


def test_a_gateway_outside_ray_joins_the_cluster_s_controller_through_ray_client(
    cluster: TwoNodeCluster, tmp_path: pathlib.Path
) -> None:
    controller = _controller(cluster, tmp_path)
    gateways: list[Process] = []
    try:
        first, port = _gateway(cluster, tmp_path, "gateway-1")
        gateways.append(first)
        np.testing.assert_allclose(_predict(port), [[2.0, 4.0]])
        # A gateway that dies takes nothing with it: a new one joins and serves at once.
        first.stop(signal.SIGKILL)
        second, port = _gateway(cluster, tmp_path, "gateway-2")
        gateways.append(second)
        np.testing.assert_allclose(_predict(port), [[2.0, 4.0]])
        assert controller.proc.poll() is None, controller.tail()
    finally:
        for gateway in gateways:
            gateway.stop()
        controller.stop()


def test_the_gateway_pod_s_ray_start_flags_make_a_node_with_no_cpus_and_its_gateway_serves(
    cluster: TwoNodeCluster, tmp_path: pathlib.Path
) -> None:
    """k8s/base/gateway.yaml's own `ray start` flags (its address made this cluster's GCS) start a
    real node with no CPUs, no GPUs and its small object store; its own `tessera gateway` flags
    (free ports, and this cluster's GCS for `auto`, which on one host could pick any of three nodes)
    serve Predicts as a Ray driver, not through Ray Client."""
    commands = _gateway_pod_commands()
    (ray_start,) = [c for c in commands if c[:2] == ["ray", "start"]]
    flags = [a for a in ray_start[2:] if not a.startswith("--address=")]
    assert "--object-store-memory=100000000" in flags  # how the node is told from the others below
    cluster.add_worker(flags)
    # The GCS lists a node a little after its raylet is up.
    resources = wait_until(lambda: _resources_of_node_with_object_store(cluster, 100_000_000), timeout=60,
                           interval=1.0, what="the gateway pod's node registered")
    assert resources.get("CPU", 0) == 0 and resources.get("GPU", 0) == 0, resources

    controller = _controller(cluster, tmp_path)
    grpc_port, rest_port = free_port(), free_port()
    replaced = {"--ray_address": cluster.address, "--port": str(grpc_port), "--rest_api_port": str(rest_port)}
    flags = [f"{a.split('=')[0]}={replaced[a.split('=')[0]]}" if a.split("=")[0] in replaced else a
             for a in commands[-1][2:]]
    gateway = Process([TESSERA, "gateway", *flags, "--host=127.0.0.1"], tmp_path / "gateway.log", cluster.env())
    try:
        wait_until(lambda: _ready(rest_port), timeout=120, what="the gateway ready")
        np.testing.assert_allclose(_predict(grpc_port), [[2.0, 4.0]])
    except BaseException:
        print(gateway.tail())
        raise
    finally:
        gateway.stop()
        controller.stop()
