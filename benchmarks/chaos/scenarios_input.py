"""Hostile input against a real `tessera serve` (issue 9, points 1, 2 and 8), one line each.

One server per module (embedded Ray, loopback, REST on, a 3 s REST timeout), started on first use
and stopped, by its session, when the runner exits. Two models: `bench` (the benchmark DNN) takes
a steady stream of normal Predicts from one client thread while each scenario sends its hostile
requests to `target` (a predict signature x float32 [-1, 2], and classify over features a, b).

Each line: normal Predicts sent during the scenario; failed = normal requests that failed or took
over 1 s, plus hostile requests answered otherwise than expected (the note says how); the worst
normal latency; the gateway process's peak RSS (the conversion process, when one runs, is not in
it: its peak is in the note). The note ends with the worst of a probe of the gateway's event loop
alone: gRPC health checks, back to back on a connection of their own (a Predict on `bench` also
waits for its replica host, which may be the one busy with the hostile request).

`TESSERA_CHAOS_SERVE_FLAGS` (space-separated) adds flags to the `tessera serve` command line, e.g.
`--gateway_retained_heap_bytes=0` for a before/after of one setting.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from benchmarks.chaos import Outcome, Scenario
from benchmarks.servers import ServerProcess, free_port, session_pids
from benchmarks.wire import predict_request

SLOW_S = 1.0
HUGE = 2**31 - 1
TESSERA = str(pathlib.Path(sys.executable).parent / "tessera")


def _target_bundle(base: pathlib.Path) -> None:
    """`target`: predict x [-1, 2] -> y = 2x, classify/regress over the float features a and b."""
    from exporter import bundle, dtypes, storage
    from exporter.features import FixedLenFeature
    from exporter.graph import GraphBuilder
    from exporter.ops import core, math
    from exporter.ops.parsing import parse_example
    from exporter.outputs import ClassificationOutput, PredictOutput
    from protos.tessera import bundle_pb2

    g = GraphBuilder()
    s = g.variable(np.array([2.0], np.float32), "scale")
    x = g.placeholder(dtypes.FLOAT, (None, 2), name="x")
    serialized = g.placeholder(dtypes.STRING, (None,), name="examples")
    feats = parse_example(serialized, {"a": FixedLenFeature((1,), dtypes.FLOAT), "b": FixedLenFeature((1,), dtypes.FLOAT)})
    scores = math.softmax(math.mul(core.concat([feats["a"], feats["b"]], axis=1), s))
    classes = core.broadcast_to_batch(g.constant(["a", "b"]), scores)
    y = math.mul(x, s)
    meta = bundle_pb2.MetaGraph(format_version=1, graph=g.to_proto(), tags=["serve"])
    meta.signatures["serving_default"].CopyFrom(PredictOutput({"y": y}).as_signature_def({"x": x}))
    meta.signatures["classify"].CopyFrom(
        ClassificationOutput(scores=scores, classes=classes).as_signature_def({"inputs": serialized})
    )
    with tempfile.TemporaryDirectory() as staging:
        bundle.write_bundle(staging, meta, g.variables, {}, {})
        storage.publish(staging, str(base), 1)


@dataclass
class _Cluster:
    server: ServerProcess
    rest_port: int
    root: pathlib.Path
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        big = 2**31 - 1
        self.channel = grpc.insecure_channel(
            self.server.target, options=[("grpc.max_send_message_length", big), ("grpc.max_receive_message_length", big)]
        )

    def gateway_rss(self) -> int:
        assert self.server.proc is not None
        return _rss(self.server.proc.pid)

    def others_rss(self) -> int:
        """The RSS of the gateway's conversion process (a spawned child), 0 when none runs."""
        assert self.server.proc is not None
        leader = self.server.proc.pid
        children = [p for p in session_pids(leader) if _parent(p) == leader and _spawned(p)]
        return max((_rss(p) for p in children), default=0)


def _rss(pid: int) -> int:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _spawned(pid: int) -> bool:
    try:
        return b"multiprocessing.spawn" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _parent(pid: int) -> int:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat[stat.rindex(")") + 2 :].split()[1])


_CLUSTER: _Cluster | None = None


def _cluster() -> _Cluster:
    global _CLUSTER
    if _CLUSTER is None:
        from benchmarks.model import export

        root = pathlib.Path(tempfile.mkdtemp(prefix="tessera-chaos-input-"))
        export(root / "bench")
        _target_bundle(root / "target")
        config = root / "models.config"
        config.write_text(
            "model_config_list {\n"
            + "".join(f'  config {{ name: "{n}" base_path: "{root / n}" model_platform: "tensorflow" }}\n'
                      for n in ("bench", "target"))
            + "}\n"
        )
        port, rest_port = free_port(), free_port()
        argv = [TESSERA, "serve", f"--port={port}", f"--rest_api_port={rest_port}", "--host=127.0.0.1",
                f"--model_config_file={config}", "--rest_api_timeout_in_ms=3000",
                "--file_system_poll_wait_seconds=0.5", "--replica_num_cpus=0.25",
                *os.environ.get("TESSERA_CHAOS_SERVE_FLAGS", "").split()]
        server = ServerProcess("tessera-chaos-input", argv, port, root / "server.log")
        server.start()
        try:
            server.wait_ready(180)
        except BaseException:
            server.stop()
            raise
        _CLUSTER = _Cluster(server, rest_port, root)
        atexit.register(_stop)
        _wait_available(_CLUSTER, "target", 120)
    return _CLUSTER


def _wait_available(cluster: _Cluster, name: str, timeout: float) -> None:
    from protos.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    stub = model_service_pb2_grpc.ModelServiceStub(cluster.channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": name}))
            if any(s.state == 30 for s in status.model_version_status):  # AVAILABLE
                return
        except grpc.RpcError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"model {name} not AVAILABLE after {timeout:.0f} s; see {cluster.server.log_path}")


def _stop() -> None:
    global _CLUSTER
    if _CLUSTER is not None:
        _CLUSTER.channel.close()
        _CLUSTER.server.stop(grace=20)
        _CLUSTER = None


@dataclass
class _Stream:
    """Normal Predicts on `bench`, back to back from one thread, and the gateway's RSS every 20 ms."""

    cluster: _Cluster
    latencies: list[float] = field(default_factory=list)
    probes: list[tuple[float, float]] = field(default_factory=list)  # (started, seconds)
    failures: int = 0
    rss_peak: int = 0
    child_rss_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> _Stream:
        self._threads = [threading.Thread(target=target, daemon=True) for target in (self._send, self._sample, self._probe)]
        for thread in self._threads:
            thread.start()
        time.sleep(0.5)  # a baseline before the hostile requests
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.5)  # and after them
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _send(self) -> None:
        call = self.cluster.channel.unary_unary(
            "/tensorflow.serving.PredictionService/Predict", request_serializer=None, response_deserializer=None
        )
        request = predict_request(batch=1, seed=3).SerializeToString()
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                call(request, timeout=5.0)
                ok = True
            except grpc.RpcError:
                ok = False
            elapsed = time.perf_counter() - started
            self.latencies.append(elapsed)
            if not ok or elapsed > SLOW_S:
                self.failures += 1
            time.sleep(0.002)

    def _probe(self) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.cluster.server.target) as channel:  # a connection of its own
            check = health_pb2_grpc.HealthStub(channel).Check
            request = health_pb2.HealthCheckRequest()
            check(request, timeout=5.0)
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    check(request, timeout=5.0)
                except grpc.RpcError:
                    pass  # a failure shows as its time
                self.probes.append((started, time.perf_counter() - started))
                time.sleep(0.002)

    def probe_worst(self, since: float = 0.0, until: float = float("inf")) -> float:
        """The slowest health check that was in flight at some time between `since` and `until`
        (perf_counter: CLOCK_MONOTONIC, the same clock in every process of this machine)."""
        return max((t for started, t in self.probes if started <= until and started + t >= since), default=0.0)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.rss_peak = max(self.rss_peak, self.cluster.gateway_rss())
            self.child_rss_peak = max(self.child_rss_peak, self.cluster.others_rss())
            time.sleep(0.02)

    def outcome(self, unexpected: int, note: str) -> Outcome:
        child = f"; conversion process peak {self.child_rss_peak / 2**20:.0f} MiB" if self.child_rss_peak else ""
        probe = f"; loop probe worst {self.probe_worst() * 1000:.0f} ms"
        return Outcome(len(self.latencies), self.failures + unexpected, max(self.latencies, default=0.0),
                       self.rss_peak, note + child + probe)


def _scenario(hostile: Callable[[_Cluster, Any], tuple[int, str]], prepare: Callable[[], Any] = lambda: None) -> Callable[[], Outcome]:
    """`prepare()` builds the hostile payload before the stream starts: building 100 MB in this
    process would hold its GIL and stall our own client thread, not the server."""

    def run() -> Outcome:
        cluster = _cluster()
        payload = prepare()
        with _Stream(cluster) as stream:
            unexpected, note = hostile(cluster, payload)
        return stream.outcome(unexpected, note)

    return run


# ---------------------------------------------------------------------------------------------
# The hostile requests


def _raw(cluster: _Cluster, method: str, body: bytes, timeout: float = 30.0) -> tuple[grpc.StatusCode, str, float]:
    call = cluster.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    started = time.perf_counter()
    try:
        call(body, timeout=timeout)
        return grpc.StatusCode.OK, "", time.perf_counter() - started
    except grpc.RpcError as err:
        return err.code(), err.details() or "", time.perf_counter() - started


def _claiming(*claims: tuple[str, int, int, str]) -> bytes:
    """A Predict on `target` whose tensors each claim a shape with one value: (alias, dtype, size, field)."""
    from protos.tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "target"
    for alias, dtype, size, values in claims:
        tensor = request.inputs[alias]
        tensor.dtype = dtype
        tensor.tensor_shape.dim.add().size = size
        getattr(tensor, values).append(1)
    return request.SerializeToString()


PREDICT = "/tensorflow.serving.PredictionService/Predict"


def _expect_invalid(cluster: _Cluster, bodies: list[bytes], what: str) -> tuple[int, str]:
    results: list[tuple[grpc.StatusCode, str, float]] = [None] * len(bodies)  # type: ignore[list-item]

    def one(i: int) -> None:
        results[i] = _raw(cluster, PREDICT, bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    unexpected = sum(r[0] != grpc.StatusCode.INVALID_ARGUMENT for r in results)
    slowest = max(r[2] for r in results)
    return unexpected, f"{what}: {len(bodies)} x {len(bodies[0])} B, {results[0][0].name} in <= {slowest * 1000:.0f} ms"


def _bool_2g(cluster: _Cluster, _: Any) -> tuple[int, str]:
    return _expect_invalid(cluster, [_claiming(("x", 10, HUGE, "bool_val"))] * 5, "bool [2^31-1]")


def _three_aliases(cluster: _Cluster, _: Any) -> tuple[int, str]:
    body = _claiming(*((alias, 4, HUGE, "int_val") for alias in ("a", "b", "c")))
    return _expect_invalid(cluster, [body] * 5, "3 unknown uint8 [2^31-1]")


def _two_at_once(cluster: _Cluster, _: Any) -> tuple[int, str]:
    bodies = [_claiming(("x", 10, HUGE, "bool_val")), _claiming(*((a, 4, HUGE, "int_val") for a in "abc"))] * 4
    return _expect_invalid(cluster, bodies, "8 at once (bool and uint8 claims)")


def _fill_past_budget(cluster: _Cluster, _: Any) -> tuple[int, str]:
    # Dtype and shape fit the signature (float [-1, 2]): only --max_request_fill_bytes stops 2 GB.
    from protos.tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "target"
    tensor = request.inputs["x"]
    tensor.dtype = 1
    tensor.tensor_shape.dim.add().size = 2**28
    tensor.tensor_shape.dim.add().size = 2
    tensor.float_val.append(1.0)
    return _expect_invalid(cluster, [request.SerializeToString()] * 3, "float [2^28, 2] fill")


def _context_body() -> bytes:
    from cluster.client.examples import make_example
    from protos.tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "target"
    request.model_spec.signature_name = "classify"
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(make_example({"a": 0.5, "blob": b"z" * 256 * 1024}))
    with_context.examples.extend(make_example({"b": float(i % 7)}) for i in range(4000))
    return request.SerializeToString()


def _context_classify(cluster: _Cluster, body: bytes) -> tuple[int, str]:
    code, details, elapsed = _raw(cluster, "/tensorflow.serving.PredictionService/Classify", body)
    return int(code != grpc.StatusCode.OK), f"{len(body) / 1024:.0f} KB on the wire: {code.name} in {elapsed * 1000:.0f} ms {details[:80]}"


def _rest(cluster: _Cluster, path: str, body: bytes, timeout: float = 60.0) -> tuple[int, str, float]:
    request = urllib.request.Request(f"http://127.0.0.1:{cluster.rest_port}{path}", data=body, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read(200).decode(errors="replace"), time.perf_counter() - started
    except urllib.error.HTTPError as err:
        return err.code, err.read(200).decode(errors="replace"), time.perf_counter() - started


def _body_100mb() -> bytes:
    return b'{"instances": [' + b",".join([b"[1.25,2.5]"] * 9_600_000) + b"]}"  # ~100 MB of JSON


def _rest_100mb(cluster: _Cluster, body: bytes) -> tuple[int, str]:
    status, text, elapsed = _rest(cluster, "/v1/models/target:predict", body)
    # After the 504 nothing may keep running: the gateway's children must be gone or idle.
    time.sleep(1.0)
    left = cluster.others_rss()
    unexpected = int(status not in (200, 504) or left > 0)
    return unexpected, (f"{len(body) / 2**20:.0f} MiB body: HTTP {status} after {elapsed:.1f} s "
                        f"(REST timeout 3 s); conversion process {'still running' if left else 'gone'} 1 s later")


def _grpc_100mb_bodies() -> list[bytes]:
    """Two valid ~100 MB Predicts on `target` (x float [N, 2]): typed float_val, and tensor_content."""
    from protos.tensorflow_serving.apis import predict_pb2

    x = np.full((12_500_000, 2), 0.5, np.float32)
    bodies = []
    for content in (False, True):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "target"
        request.output_filter.append("y")
        tensor = request.inputs["x"]
        tensor.dtype = 1
        tensor.tensor_shape.dim.add().size = x.shape[0]
        tensor.tensor_shape.dim.add().size = 2
        if content:
            tensor.tensor_content = x.tobytes()
        else:
            tensor.float_val.extend(x.ravel().tolist())
        bodies.append(request.SerializeToString())
    return bodies


# The 100 MB Predicts go from a process of their own, on a connection of their own: in the
# stream's process their copies (grpc's, with the GIL held) would stall its client thread, and on
# its connection they would queue its small requests behind 100 MB of HTTP/2 frames. Each body is
# sent twice: the gateway's first big message grows its heap (fresh pages), later ones reuse it.
# A sender script's start (benchmarks.predict_faults sends them too): the bodies built, `call` a
# raw-bytes Predict on a connection of its own to argv[1], the bodies' size printed when ready.
SENDER_PREAMBLE = """
import sys, time, grpc
from benchmarks.chaos.scenarios_input import _grpc_100mb_bodies
bodies = _grpc_100mb_bodies()
big = 2**31 - 1
channel = grpc.insecure_channel(sys.argv[1], options=[("grpc.max_send_message_length", big),
                                                      ("grpc.max_receive_message_length", big)])
call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
print(len(bodies[0]), flush=True)
"""
_SENDER = SENDER_PREAMBLE + """
sys.stdin.readline()
for body in (*bodies, *bodies):
    started = time.perf_counter()
    try:
        call(body, timeout=60)
        code = "OK"
    except grpc.RpcError as err:
        code = err.code().name
    print(code, started, time.perf_counter(), flush=True)
    time.sleep(0.5)
"""


@dataclass
class _Sender:
    """The process that sends the two 100 MB Predicts, its bodies built (`size` bytes each)."""

    proc: subprocess.Popen[str]
    size: int


def _start_sender() -> _Sender:
    proc = subprocess.Popen([sys.executable, "-c", _SENDER, _cluster().server.target], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=pathlib.Path(__file__).parents[2])
    assert proc.stdout is not None
    try:
        return _Sender(proc, int(proc.stdout.readline()))  # built and connected
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


def _grpc_100mb() -> Outcome:
    """Each 100 MB Predict's note gives the worst loop probe while it was in flight."""
    cluster = _cluster()
    sender = _start_sender()
    proc = sender.proc
    assert proc.stdin is not None and proc.stdout is not None
    notes, unexpected = [], 0
    try:
        with _Stream(cluster) as stream:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            for kind in ("float_val", "tensor_content") * 2:
                code, started, ended = proc.stdout.readline().split()
                unexpected += code != "OK"
                probe = stream.probe_worst(float(started), float(ended))
                notes.append(f"{kind} {code} in {float(ended) - float(started):.1f} s (probe {probe * 1000:.0f} ms)")
    finally:
        proc.kill()  # by its pid: it has sent what it had
        proc.wait(10)
    return stream.outcome(unexpected, f"{sender.size / 2**20:.0f} MiB Predicts (own process): " + ", ".join(notes))


def _undecodable(cluster: _Cluster, _: Any) -> tuple[int, str]:
    codes = [_raw(cluster, f"/tensorflow.serving.{m}", b"\x0a\xff\xff\xff\xff\x0f")[:2] for m in (
        "PredictionService/Predict", "PredictionService/Classify", "PredictionService/GetModelMetadata",
        "ModelService/GetModelStatus")]
    unexpected = sum(c != grpc.StatusCode.INVALID_ARGUMENT or "DecodeError" in d for c, d in codes)
    return unexpected, f"4 methods: {sorted({c.name for c, _ in codes})}"


def _bad_json(cluster: _Cluster, _: Any) -> tuple[int, str]:
    bodies = {
        "100,000 deep": b"[" * 100_000 + b"]" * 100_000,
        "5,000 digits": b'{"instances": [[' + b"1" * 5000 + b", 1]]}",
        "bad UTF-8": b'{"instances": ["\xff"]}',
        "lone surrogate": b'{"examples": [{"a": "\\ud800"}]}',
    }
    statuses = {name: _rest(cluster, "/v1/models/target:" + ("classify" if "surrogate" in name else "predict"), body)[0]
                for name, body in bodies.items()}
    return sum(s != 400 for s in statuses.values()), "HTTP " + ", ".join(f"{n}: {s}" for n, s in statuses.items())


def _symlinked_version(cluster: _Cluster, _: Any) -> tuple[int, str]:
    from protos.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    outside = pathlib.Path(tempfile.mkdtemp(prefix="tessera-chaos-outside-"))
    _target_bundle(outside)
    link = cluster.root / "target" / "5"
    link.symlink_to(outside / "1", target_is_directory=True)
    stub = model_service_pb2_grpc.ModelServiceStub(cluster.channel)
    message, deadline = "", time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            status = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "target"}))
            v5 = [s for s in status.model_version_status if s.version == 5]
            if v5 and v5[0].state == 50:
                message = v5[0].status.error_message
                break
            time.sleep(0.25)
    finally:
        link.unlink()
    refused = "outside the base path" in message
    return int(not refused), f"GetModelStatus v5: {message[-90:] or 'not refused within 30 s'}"


SCENARIOS = [
    Scenario("input: 39-byte Predict bool [2^31-1]", _scenario(_bool_2g), fast=True),
    Scenario("input: 3 unknown aliases uint8 [2^31-1]", _scenario(_three_aliases), fast=True),
    Scenario("input: hostile Predicts 8 at once", _scenario(_two_at_once), fast=True),
    Scenario("input: fill past --max_request_fill_bytes", _scenario(_fill_past_budget), fast=True),
    Scenario("input: Classify 256 KB context x 4000", _scenario(_context_classify, _context_body), fast=True),
    Scenario("input: undecodable gRPC bodies", _scenario(_undecodable), fast=True),
    Scenario("input: unacceptable REST JSON", _scenario(_bad_json), fast=True),
    Scenario("input: version linked out of base path", _scenario(_symlinked_version), fast=True),
    Scenario("input: 100 MB REST body", _scenario(_rest_100mb, _body_100mb), fast=False),
    Scenario("input: 100 MB gRPC Predicts", _grpc_100mb, fast=False),
]
