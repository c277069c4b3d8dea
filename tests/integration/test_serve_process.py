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

from cluster.client.tensors import make_ndarray, make_tensor_proto
from exporter import bundle, dtypes, storage
from exporter.graph import GraphBuilder
from exporter.ops import math
from exporter.outputs import PredictOutput
from protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from protos.tessera import bundle_pb2

pytestmark = pytest.mark.timeout(180)

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
        time.sleep(0.3)  # the requests are in the server now
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
