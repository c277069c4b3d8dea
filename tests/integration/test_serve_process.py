"""`tessera serve` as a user runs it: a real process, TF Serving's flags, SIGTERM drains in-flight work."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
import requests

from cluster.client.tensors import make_ndarray, make_tensor_proto
from exporter import bundle, dtypes, storage
from exporter.graph import GraphBuilder
from exporter.ops import math
from exporter.outputs import PredictOutput
from protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from protos.tessera import bundle_pb2

pytestmark = pytest.mark.timeout(180)
REST_AGE_MS = 200

WIDTH, DEPTH = 512, 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_slow_model(base: pathlib.Path) -> np.ndarray:
    """A deep stack of 512x512 matmuls: a batch of a few thousand rows takes a good fraction of a
    second, so requests are still running when SIGTERM arrives."""
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, WIDTH), name="x")
    h = x
    weight = g.variable(w, "w")
    for _ in range(DEPTH):
        h = math.tanh(math.matmul(h, weight))
    meta = bundle_pb2.MetaGraph(format_version=1, tags=["serve"])
    meta.signatures["serving_default"].CopyFrom(PredictOutput({"y": h}).as_signature_def({"x": x}))
    meta.graph.CopyFrom(g.to_proto())
    with tempfile.TemporaryDirectory() as staging:
        bundle.write_bundle(staging, meta, g.variables, {}, {})
        storage.publish(staging, str(base), 1)
    return w


def _request(rows: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["x"].CopyFrom(make_tensor_proto(np.ones((rows, WIDTH), np.float32)))
    return request


def test_serve_answers_then_drains_on_sigterm(tmp_path: pathlib.Path) -> None:
    _write_slow_model(tmp_path / "slow")
    port = _free_port()
    tessera = pathlib.Path(sys.executable).parent / "tessera"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(tessera), "serve", f"--port={port}", "--host=127.0.0.1", "--model_name=slow",
         f"--model_base_path={tmp_path / 'slow'}", "--replica_num_cpus=0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 2**30)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        while True:
            assert proc.poll() is None, "".join(output)
            assert time.monotonic() - started < 120, "no answer within 120 s:\n" + "".join(output)
            try:
                stub.Predict(_request(1), timeout=5)
                break
            except grpc.RpcError:
                time.sleep(0.2)
        first_answer = time.monotonic() - started
        print(f"tessera serve -> first successful Predict: {first_answer:.1f}s")

        results: list[object] = []

        def call() -> None:
            try:
                results.append(make_ndarray(stub.Predict(_request(3000), timeout=60).outputs["y"]).shape)
            except grpc.RpcError as exc:
                results.append(exc)

        slow_calls = [threading.Thread(target=call) for _ in range(3)]
        for t in slow_calls:
            t.start()
        time.sleep(1.0)  # the requests are in the server now (0.3 s was too short at load 12: 6 MB each)
        proc.send_signal(signal.SIGTERM)  # to the server process alone, as Kubernetes does
        for t in slow_calls:
            t.join(60)
        assert results == [(3000, WIDTH)] * 3, results  # in-flight work finished, not dropped
        assert proc.wait(60) == 0, "".join(output)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(_request(1), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert "Shutting down" in "".join(output)


def test_contradictory_flags_exit_with_a_message() -> None:
    tessera = pathlib.Path(sys.executable).parent / "tessera"
    proc = subprocess.run(
        [str(tessera), "serve", "--port=8500", "--rest_api_port=8500", "--model_base_path=/tmp/x"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "rest_api_port" in proc.stderr


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def _listens_on(pid: int, port: int) -> bool:
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    try:
        fds = list(pathlib.Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    links = set()
    for fd in fds:
        try:
            links.add(os.readlink(fd))
        except OSError:
            continue
    return bool(wanted & links)


def _gateway_children(pid: int) -> list[int]:
    children = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and b"cluster.cli" in argv and b"gateway" in argv:
            children.append(int(entry.name))
    return children


def test_two_gateway_processes_share_the_ports_count_as_one_and_stop_on_sigterm(tmp_path: pathlib.Path) -> None:
    import urllib.request

    from tests.bundles_testlib import write_version

    write_version(tmp_path / "m", 1, 2.0)
    port, rest_port = _free_port(), _free_port()
    tessera = pathlib.Path(sys.executable).parent / "tessera"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [str(tessera), "serve", f"--port={port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1",
         "--model_name=m", f"--model_base_path={tmp_path / 'm'}", "--gateway_processes=2",
         f"--rest_max_connection_age_ms={REST_AGE_MS}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(make_tensor_proto(np.float32([[1.0, 2.0]])))

    def predict_on_a_new_connection() -> list[list[float]]:
        # A channel of its own: a new TCP connection, which the kernel gives to either process.
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            return make_ndarray(stub.Predict(request, timeout=10).outputs["y"]).tolist()  # type: ignore[no-any-return]

    try:
        deadline = time.monotonic() + 150
        while not any("(2 gateway processes)" in line for line in output):
            assert proc.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "not up within 150 s:\n" + "".join(output)
            time.sleep(0.2)
        children = _gateway_children(proc.pid)
        assert len(children) == 1, children
        # Both processes listen on the one gRPC port and the one REST port.
        for pid in (proc.pid, children[0]):
            assert _listens_on(pid, port) and _listens_on(pid, rest_port), pid
        while True:
            try:
                predict_on_a_new_connection()
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "no answer:\n" + "".join(output)
                time.sleep(0.3)
        answers = [predict_on_a_new_connection() for _ in range(20)]
        assert answers == [[[2.0, 4.0]]] * 20
        # REST keep-alive connections end after their age, in whichever process took them: one
        # session's requests past 200 ms get a `Connection: close` and go on, none failing.
        with requests.Session() as session:
            replies = []
            while not any(r.headers.get("Connection") == "close" for r in replies) and len(replies) < 500:
                replies.append(session.get(f"http://127.0.0.1:{rest_port}/v1/models/m", timeout=10))
                time.sleep(0.01)
        assert any(r.headers.get("Connection") == "close" for r in replies)
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200]

        def counted() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=10) as r:
                text = r.read().decode()
            prefix = 'tessera_requests_total{entrypoint="grpc",method="predict",model="m",signature="serving_default",status="OK"} '
            return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))

        # One scrape (of whichever process takes it) counts both processes' requests: 21 at least.
        while counted() < 21:
            assert time.monotonic() < deadline, f"scrape counts {counted()} of 21 Predicts"
            time.sleep(0.3)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, "".join(output)
        # `tessera serve` waited for its gateway process: gone (reaped), not left behind.
        assert not pathlib.Path(f"/proc/{children[0]}").exists()
        with pytest.raises(grpc.RpcError) as err:
            predict_on_a_new_connection()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = "".join(output)
    assert "Shutting down" in text and "Gateway gateway-" in text and "shutting down" in text
