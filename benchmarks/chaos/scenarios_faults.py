"""Fault scenarios (issue 9, points 3-7 and 9): crowded hosts, hung and killed replicas, retirement
under load, a lost node, a stranger on the data plane.

Each starts `tessera serve` (embedded Ray, its own session, stopped by PID) or, for the lost node,
a two-node Ray on 127.0.0.1, streams Predict calls at it while the fault happens, and reports what
the clients saw. Models are the integration tests' small bundles, written to a temporary directory.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import numpy as np

from benchmarks.chaos import Outcome, Scenario
from benchmarks.chaos.stream import Stream
from benchmarks.servers import ServerProcess, _label, free_port, session_pids, session_rss_mb

TESSERA = str(pathlib.Path(sys.executable).with_name("tessera"))


def _write_models(root: pathlib.Path, names: list[str]) -> pathlib.Path:
    from tests.bundles_testlib import write_version

    lines = []
    for name in names:
        write_version(root / name, 1, 2.0)
        lines.append(f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "tensorflow" }}')
    config = root / "models.config"
    config.write_text("model_config_list {\n" + "\n".join(lines) + "\n}\n")
    return config


class _RssPeak:
    """Samples the resident memory of some sessions every 0.5 s while it runs."""

    def __init__(self, sessions: Callable[[], list[int]]) -> None:
        self.peak = 0.0
        self._sessions = sessions
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(session_rss_mb(s) for s in self._sessions()))
            self._stop.wait(0.5)

    def __enter__(self) -> _RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@contextmanager
def _serve(names: list[str], *flags: str, ready_timeout: float = 180.0) -> Iterator[tuple[ServerProcess, _RssPeak]]:
    """`tessera serve` on fresh models, ready (every model answers), with its RSS sampled."""
    with tempfile.TemporaryDirectory(prefix="tessera-chaos-") as tmp:
        config = _write_models(pathlib.Path(tmp), names)
        port = free_port()
        server = ServerProcess(
            "tessera", [TESSERA, "serve", f"--port={port}", "--host=127.0.0.1", f"--model_config_file={config}",
                        *flags], port, pathlib.Path(tmp) / "serve.log",
        )
        server.start()
        try:
            with _RssPeak(lambda: [server.proc.pid] if server.proc else []) as rss:
                _wait_models(server, names, ready_timeout)
                yield server, rss
        finally:
            server.stop(grace=30)


def _wait_models(server: ServerProcess, names: list[str], timeout: float) -> None:
    from cluster.client.tensors import make_tensor_proto
    from protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    deadline = time.monotonic() + timeout
    pending = list(names)
    with grpc.insecure_channel(server.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while pending:
            if server.proc is None or server.proc.poll() is not None:
                raise RuntimeError(f"tessera serve exited; see {server.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} of {len(names)} models not serving after {timeout:.0f}s")
            request = predict_pb2.PredictRequest()
            request.model_spec.name = pending[0]
            request.inputs["x"].CopyFrom(make_tensor_proto(np.ones((1, 2), np.float32)))
            try:
                stub.Predict(request, timeout=5)
                pending.pop(0)
            except grpc.RpcError:
                time.sleep(0.2)


def _replica_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    return sorted(p for p in session_pids(server.proc.pid) if _label(p) == "ray::ReplicaHost")


def _outcome(load: Stream, rss: _RssPeak, note: str, extra_failed: int = 0) -> Outcome:
    codes = {k: v for k, v in load.codes.items() if k != "OK"}
    first = "; ".join(f"{code}: {message[:160]}" for code, message in load.messages.items())
    return Outcome(load.sent, load.failed + extra_failed, load.worst_s, int(rss.peak * 2**20),
                   note + (f"; failures {codes} (first: {first})" if codes else ""))


def _until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not seen in {timeout:.0f}s")
        time.sleep(0.2)


# -- the scenarios ------------------------------------------------------------------------------
def fifty_models_default_flags() -> Outcome:
    """Point 3: `tessera serve`'s defaults on the embedded 2-CPU Ray serve 50 small models."""
    names = [f"m{i}" for i in range(50)]
    started = time.monotonic()
    with _serve(names, ready_timeout=300) as (server, rss):
        ready = time.monotonic() - started
        with Stream(server.target, models=names, clients=4, timeout_s=30) as load:
            time.sleep(5.0)
        return _outcome(load, rss, f"all 50 serving {ready:.0f}s after start, {len(_replica_pids(server))} replicas")


def sigstop_a_replica() -> Outcome:
    """Point 5: one of two replicas frozen for 10 s; clients send without a deadline."""
    with _serve(["m"], "--num_replicas=2") as (server, rss):
        with Stream(server.target, clients=4, timeout_s=None) as load:
            time.sleep(1.0)
            frozen = _replica_pids(server)[0]
            os.kill(frozen, signal.SIGSTOP)
            stopped = time.monotonic()
            _until(lambda: frozen not in _replica_pids(server) and len(_replica_pids(server)) == 2, 30,
                   "the frozen replica replaced")
            replaced = time.monotonic() - stopped
            time.sleep(max(0.0, 10.0 - replaced))
            if frozen in session_pids(server.proc.pid if server.proc else 0):
                os.kill(frozen, signal.SIGCONT)
            time.sleep(2.0)
        return _outcome(load, rss, f"replaced {replaced:.1f}s after SIGSTOP")


def sigkill_the_only_replica() -> Outcome:
    """Point 6: the only replica killed under load; 30 s client deadlines."""
    with _serve(["m"]) as (server, rss):
        with Stream(server.target, clients=4, timeout_s=30) as load:
            time.sleep(1.0)
            (victim,) = _replica_pids(server)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            _until(lambda: [p for p in _replica_pids(server) if p != victim], 60, "a replacement")
            before = load.snapshot()[0]
            _until(lambda: load.snapshot()[0] > before + 50, 60, "the replacement serving")
            back = time.monotonic() - killed
            time.sleep(2.0)
        return _outcome(load, rss, f"serving again {back:.1f}s after SIGKILL")


def retire_under_load() -> Outcome:
    """Point 7: the autoscaler adds a replica under load, retires it (2 -> 1) when load drops, and adds
    one back when it rises again, all while requests flow."""
    flags = ("--num_replicas=1", "--max_replicas=2", "--target_ongoing_requests=1", "--upscale_delay_s=0.5",
             "--downscale_delay_s=1")
    seen: list[int] = []
    with _serve(["m"], *flags) as (server, rss):
        with Stream(server.target, clients=1, timeout_s=30) as light:
            for clients, seconds in ((8, 8.0), (0, 8.0), (8, 8.0)):
                with Stream(server.target, clients=clients, timeout_s=30) if clients else _nothing() as heavy:
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        count = len(_replica_pids(server))
                        if not seen or seen[-1] != count:
                            seen.append(count)
                        time.sleep(0.2)
                if heavy is not None:
                    light.sent += heavy.sent
                    light.failed += heavy.failed
                    light.worst_s = max(light.worst_s, heavy.worst_s)
                    light.codes.update(heavy.codes)
        return _outcome(light, rss, f"replica counts seen {seen}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def stranger_on_the_data_plane() -> Outcome:
    """Point 9: a process on the node tries every port the replica listens on with a well-formed
    call frame, and with a 2 GiB length header after a correct-looking prefix."""
    from cluster.replica import wire

    with _serve(["m"]) as (server, rss):
        (replica,) = _replica_pids(server)
        ports = _listening_ports(replica)
        answered = challenged = 0
        with Stream(server.target, clients=2, timeout_s=30) as load:
            for port in ports:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                        sock.settimeout(5)
                        hello = sock.recv(wire.CHALLENGE_BYTES)
                        challenged += hello.startswith(wire.MAGIC)
                        for chunk in wire.encode_call(1, "m", 1, "serving_default", [{"x": np.ones((1, 2), np.float32)}],
                                                      [], None):
                            sock.sendall(bytes(chunk))
                        sock.sendall(wire.FRAME_LENGTH.pack(2**31 - 1))
                        reply = b""
                        while chunk := sock.recv(65536):
                            reply += chunk
                        answered += b"results" in reply  # a run answered: the data plane let it in
                except OSError:
                    pass  # Ray's own ports may reset or time out: not ours to judge
            time.sleep(1.0)
        note = (f"{len(ports)} listening ports tried, {challenged} asked for the secret, {answered} ran the call; "
                "our gateway kept serving")
        return _outcome(load, rss, note, extra_failed=answered + (challenged != 1))


def _listening_ports(pid: int) -> list[int]:
    """TCP ports process `pid` listens on (from /proc: its socket inodes in the LISTEN table)."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(set(ports))


def lost_node() -> Outcome:
    """Point 4: a two-node Ray on 127.0.0.1 (one CPU each, a replica on each), the worker's raylet
    SIGKILLed under load; then a new node brings room for the replacement."""
    import ray

    from benchmarks.chaos.two_node import TwoNodeCluster
    from cluster.app import TesseraServer
    from cluster.config import ModelConfig, ServeOptions, ServerConfig
    from tests.bundles_testlib import write_version
    from tests.integration.serving_testlib import LoopThread

    with tempfile.TemporaryDirectory(prefix="tessera-chaos-") as tmp:
        root = pathlib.Path(tmp)
        write_version(root / "m", 1, 2.0)
        nodes = TwoNodeCluster(1, 1, log_dir=root / "ray")
        loop = LoopThread()
        try:
            nodes.start()
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            nodes.connect(namespace="tessera", logging_level="ERROR", log_to_driver=False)
            options = ServeOptions(host="127.0.0.1", grpc_port=0, num_replicas=2, replica_num_cpus=1,
                                   ray_address=nodes.address)
            server = TesseraServer(options, ServerConfig((ModelConfig("m", str(root / "m")),)))
            loop.run(server.start())
            sessions = lambda: [n.pid for n in nodes._nodes]  # noqa: E731, SLF001
            try:
                routed = lambda: len(server.dispatcher.table.models["m"].replicas)  # noqa: E731
                _until(lambda: routed() == 2, 120, "two replicas")
                with _RssPeak(sessions) as rss, Stream(f"127.0.0.1:{server.grpc_port}", clients=4) as load:
                    time.sleep(1.0)
                    nodes.lose_worker()
                    lost = time.monotonic()
                    _until(lambda: routed() == 1, 30, "the lost replica out of the table")
                    out = time.monotonic() - lost
                    time.sleep(3.0)  # the survivor carries the load; the replacement waits for room
                    nodes.add_worker()
                    _until(lambda: routed() == 2, 120, "a replacement placed on the new node")
                    back = time.monotonic() - lost
                    time.sleep(2.0)
                return _outcome(load, rss, f"out of the table {out:.1f}s after, two replicas again after {back:.0f}s")
            finally:
                loop.run(server.stop(grace=5))
        finally:
            ray.shutdown()
            loop.close()
            nodes.stop()


SCENARIOS = [
    Scenario("faults/SIGKILL the only replica", sigkill_the_only_replica, fast=True),
    Scenario("faults/SIGSTOP a replica for 10 s", sigstop_a_replica, fast=True),
    Scenario("faults/stranger on the data plane", stranger_on_the_data_plane, fast=True),
    Scenario("faults/retire and add back under load", retire_under_load),
    Scenario("faults/50 models on 2 CPUs, defaults", fifty_models_default_flags),
    Scenario("faults/lost node (two-node Ray)", lost_node),
]
