"""Faults on a real local Ray (2 CPUs): a crowded host, a frozen replica, the only replica killed,
replicas retired under load, a stranger on the data plane. Each test runs its own server and
stops it, so the next one finds the CPUs free; loads are bounded in count and time."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import time

import grpc
import pytest

from benchmarks.chaos.stream import Stream
from cluster.app import TesseraServer
from cluster.replica import wire
from protos.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from tests.bundles_testlib import write_version
from tests.integration.serving_testlib import LoopThread, config, routed, serving, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("models")
    for i in range(20):
        write_version(base / f"m{i}", 1, 2.0)
    return base


def replica_pids(server: TesseraServer, model: str) -> set[int]:
    import ray

    return {m["pid"] for m in ray.get(server.controller.replica_memory.remote(model))}


def test_a_crowded_host_serves_what_fits_reports_the_rest_and_places_them_when_room_frees(
    local_ray: None, loop_thread: LoopThread, root: pathlib.Path
) -> None:
    import ray

    names = [f"m{i}" for i in range(20)]
    wait_until(lambda: ray.available_resources().get("CPU", 0) >= 1.99, what="free CPUs")
    hosts = int(ray.available_resources()["CPU"] / 0.5)  # 4 replica hosts on the 2-CPU test Ray ...
    fits = 2 * hosts  # ... of 2 models each
    with serving(loop_thread, config(root, names), replica_num_cpus=0.5, max_models_per_host=2) as server:
        wait_until(lambda: sum(routed(server, n) > 0 for n in names) == fits, what=f"{fits} models serving")
        waiting = [n for n in names if not routed(server, n)]
        assert len(waiting) == 20 - fits  # ... and the others are reported, not silently stuck
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)

            def status(name: str) -> str:
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.name = name
                return stub.GetModelStatus(request, timeout=10).model_version_status[0].status.error_message

            wait_until(lambda: all("no room" in status(n) for n in waiting), what="unplaced replicas reported")
        snapshot = ray.get(server.controller.cluster_stats.remote())
        assert sum(s.replicas_unplaced for s in snapshot) == 20 - fits  # the tessera_replicas_unplaced metric
        with Stream(f"127.0.0.1:{server.grpc_port}", models=[n for n in names if n not in waiting], clients=2) as load:
            time.sleep(1.0)
        assert load.sent and not load.failed, load.summary()  # those placed serve
        # Room frees up (models removed): replicas that waited in Ray's queue start and serve.
        keep = waiting[: 2 * fits]
        loop_thread.run(server._reload(config(root, keep)))  # noqa: SLF001
        wait_until(lambda: all(routed(server, n) for n in keep[:fits]), timeout=120, what="waiting replicas placed")


def test_the_only_replica_killed_under_load_fails_no_request(
    local_ray: None, loop_thread: LoopThread, root: pathlib.Path
) -> None:
    with serving(loop_thread, config(root, ["m0"])) as server:
        assert loop_thread.run(server.wait_ready(60))
        (pid,) = replica_pids(server, "m0")
        with Stream(f"127.0.0.1:{server.grpc_port}", models=["m0"], clients=4, timeout_s=60) as load:
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: routed(server, "m0") and replica_pids(server, "m0") - {pid}, what="a replacement")
            before = load.snapshot()[0]
            wait_until(lambda: load.snapshot()[0] > before + 20, what="requests served by the replacement")
        assert load.failed == 0, load.summary()  # they waited for the replacement instead


def test_a_frozen_replica_is_replaced_and_no_request_waits_on_it_for_long(
    local_ray: None, loop_thread: LoopThread, root: pathlib.Path
) -> None:
    with serving(loop_thread, config(root, ["m0"]), num_replicas=2) as server:
        wait_until(lambda: routed(server, "m0") == 2, what="two replicas")
        frozen = min(replica_pids(server, "m0"))
        addresses = lambda: {r.address for r in server.dispatcher.table.models["m0"].replicas}  # noqa: E731
        before_freeze = addresses()
        with Stream(f"127.0.0.1:{server.grpc_port}", models=["m0"], clients=4, timeout_s=None) as load:
            time.sleep(0.5)
            os.kill(frozen, signal.SIGSTOP)
            try:
                stopped = time.monotonic()
                wait_until(lambda: len(addresses() & before_freeze) == 1, timeout=30, what="the frozen one out")
                out_after = time.monotonic() - stopped
                wait_until(lambda: routed(server, "m0") == 2, what="a replacement")
            finally:
                try:
                    os.kill(frozen, signal.SIGCONT)  # if the controller has not killed it yet
                except ProcessLookupError:
                    pass
            before = load.snapshot()[0]
            wait_until(lambda: load.snapshot()[0] > before + 20, what="requests after the replacement")
        assert load.failed == 0, load.summary()
        # Detected in about two seconds (ping timeout 1 s every 1 s; slack for a shared 2-core box),
        # and no request, though it had no deadline, waited on it for the old 10 s.
        assert out_after < 6.0 and load.worst_s < 6.0, (out_after, load.summary())


def test_replicas_retired_and_added_back_under_load_fail_no_request(
    local_ray: None, loop_thread: LoopThread, root: pathlib.Path
) -> None:
    with serving(loop_thread, config(root, ["m0"], num_replicas=2)) as server:
        wait_until(lambda: routed(server, "m0") == 2, what="two replicas")
        with Stream(f"127.0.0.1:{server.grpc_port}", models=["m0"], clients=4, timeout_s=30) as load:
            time.sleep(0.5)
            loop_thread.run(server._reload(config(root, ["m0"], num_replicas=1)))  # noqa: SLF001 - 2 -> 1
            wait_until(lambda: routed(server, "m0") == 1, what="one replica")
            time.sleep(2.0)
            loop_thread.run(server._reload(config(root, ["m0"], num_replicas=2)))  # noqa: SLF001 - and back
            wait_until(lambda: routed(server, "m0") == 2, what="two again")
            time.sleep(1.0)
        assert load.sent > 50 and load.failed == 0, load.summary()


def test_a_stranger_on_the_data_plane_is_refused_and_it_listens_on_loopback(
    local_ray: None, loop_thread: LoopThread, root: pathlib.Path
) -> None:
    with serving(loop_thread, config(root, ["m0"])) as server:
        assert loop_thread.run(server.wait_ready(60))
        wait_until(lambda: routed(server, "m0"), what="a replica")
        (ref,) = server.dispatcher.table.models["m0"].replicas
        assert ref.address[0] == "127.0.0.1"
        with socket.create_connection(ref.address, timeout=10) as sock:
            assert sock.recv(len(wire.MAGIC)) == wire.MAGIC  # a challenge, not a service
            for chunk in wire.encode_call(1, "m0", 1, "serving_default", [{}], [], None):
                sock.sendall(bytes(chunk))  # a well-formed call, without the secret
            sock.settimeout(10)
            rest = b""
            while chunk := sock.recv(4096):
                rest += chunk
            assert len(rest) == wire.NONCE_BYTES  # the rest of the challenge, then closed: no answer
        with Stream(f"127.0.0.1:{server.grpc_port}", models=["m0"], clients=1) as load:
            time.sleep(0.5)
        assert load.sent and not load.failed, load.summary()  # our own gateway is let in


def test_a_version_swapped_under_load_fails_no_request(
    local_ray: None, loop_thread: LoopThread, tmp_path: pathlib.Path
) -> None:
    write_version(tmp_path / "m", 1, 2.0)
    with serving(loop_thread, config(tmp_path, ["m"]), num_replicas=2) as server:
        wait_until(lambda: routed(server, "m") == 2, what="two replicas")
        with Stream(f"127.0.0.1:{server.grpc_port}", models=["m"], clients=4, timeout_s=30) as load:
            time.sleep(0.5)
            write_version(tmp_path / "m", 2, 3.0)  # latest: v2 loads, then v1 leaves, drains, unloads
            wait_until(lambda: set(server.dispatcher.table.models["m"].available) == {2}, what="v2 alone")
            time.sleep(2.0)  # past the drain and the unload of v1
        assert load.sent > 50 and load.failed == 0, load.summary()
