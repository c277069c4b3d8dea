"""Starting, probing and stopping the servers under test, each in its own session.

Every server runs as a subprocess that leads a new session (setsid). Ray gives its actors their own
process groups but they stay in the session, so stopping is: SIGTERM to the leader (each server
shuts down cleanly on it), wait, then SIGKILL whatever is still in the session. Only processes of
sessions this module started are ever signalled.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    """The environment of every server: Ray workers can import `benchmarks`, no auth, no telemetry."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["RAY_AUTH_MODE"] = "disabled"  # local peers on loopback (Ray 2.60 enables token auth by default)
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # loopback only: no usage report leaves the machine
    # Ray otherwise binds and talks on the default route's address even on one node.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env.pop("RAY_ADDRESS", None)  # always an embedded Ray of our own
    return env


def _session_of(pid: int) -> int | None:
    """The session id of a live (non-zombie) process, or None."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name: state ppid pgrp session ...
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else int(fields[3])


def session_pids(sid: int) -> list[int]:
    """Every live (non-zombie) process in session `sid`."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit() and _session_of(int(entry.name)) == sid:
            pids.append(int(entry.name))
    return pids


def session_rss_mb(sid: int) -> float:
    """Resident memory of a whole session (server + Ray daemons + actors), in MiB."""
    total_kb = 0
    for pid in session_pids(sid):
        try:
            for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024.0


@dataclass
class ServerProcess:
    """One server under test: its command, its port and, once started, its session."""

    name: str
    argv: list[str]
    port: int
    log_path: pathlib.Path
    # A line the server prints once it is whole: `tessera serve` answers from its first gateway
    # process before the others have joined, and connections opened then all stay on that one.
    ready_line: str = ""
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_after_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it; closed in stop()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=server_env(), cwd=REPO, start_new_session=True
        )
        log.close()  # the child has its own descriptor

    def wait_ready(self, timeout: float) -> None:
        """Polls with a real Predict until the answer matches the numpy reference."""
        import grpc

        from benchmarks.model import INPUT, OUTPUT, reference_predict
        from benchmarks.wire import predict_request
        from exporter.tensor_codec import proto_to_array
        from protos.tensorflow_serving.apis import prediction_service_pb2_grpc

        assert self.proc is not None
        request = predict_request(batch=1, seed=7)
        expected = reference_predict(proto_to_array(request.inputs[INPUT]))
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        with grpc.insecure_channel(self.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
                try:
                    response = stub.Predict(request, timeout=5.0)
                    got = proto_to_array(response.outputs[OUTPUT])
                    if got.shape == expected.shape and np.allclose(got, expected, atol=1e-5):
                        if self.ready_line and self.ready_line not in self.log_path.read_text(errors="replace"):
                            last_error = f"answers, but has not printed {self.ready_line!r} yet"
                            time.sleep(0.2)
                            continue
                        self.ready_after_s = time.monotonic() - self.started_at
                        return
                    last_error = f"wrong answer {got!r}"
                except grpc.RpcError as e:
                    last_error = f"{e.code()}: {e.details()}"
                time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s ({last_error}); see {self.log_path}")

    def cpu_ticks(self) -> dict[int, tuple[str, int]]:
        return session_cpu_ticks(self.proc.pid) if self.proc is not None else {}

    def rss_mb(self) -> float:
        return session_rss_mb(self.proc.pid) if self.proc is not None else 0.0

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM, wait up to `grace`, then SIGKILL everything left in the session."""
        if self.proc is None:
            return
        sid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.notes.append(f"did not exit {grace:.0f}s after SIGTERM: killed")
        for attempt in range(10):
            left = [pid for pid in session_pids(sid) if pid != os.getpid()]
            if not left:
                break
            if attempt == 0:
                # Ray's daemons may take a moment after the driver exits; give them one second.
                time.sleep(1.0)
                continue
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if attempt == 1:
                self.notes.append(f"{len(left)} process(es) left in the session after exit: killed")
            time.sleep(0.5)
            self.proc.poll()  # reap the leader if it was among them
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self.proc = None


_TICK = os.sysconf("SC_CLK_TCK")


def _label(pid: int) -> str:
    """A readable name for a process: `ray::ReplicaHost`, `raylet`, `tessera`, `benchmarks.plain_server`."""
    try:
        argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [a.decode(errors="replace") for a in argv if a]
    if not args:
        return "?"
    if args[0].startswith("ray::"):
        return args[0].split(".")[0]  # drop the method an actor is running right now
    if "python" in os.path.basename(args[0]) and len(args) > 1:
        if args[1] == "-m" and len(args) > 2:
            return args[2]
        if args[1] == "-u" and len(args) > 2:
            return os.path.basename(args[2])
        return os.path.basename(args[1])
    return os.path.basename(args[0])


def session_cpu_ticks(sid: int) -> dict[int, tuple[str, int]]:
    """pid -> (label, user+system clock ticks so far) for every process in session `sid`."""
    out = {}
    for pid in session_pids(sid):
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[pid] = (_label(pid), int(fields[11]) + int(fields[12]))
    return out


def cpu_breakdown(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], seconds: float) -> dict[str, float]:
    """% of one core per process label between two snapshots (processes of one label summed)."""
    by_label: dict[str, float] = {}
    counts: dict[str, int] = {}
    for pid, (label, ticks) in after.items():
        used = ticks - before.get(pid, (label, 0))[1]
        by_label[label] = by_label.get(label, 0.0) + 100.0 * used / _TICK / seconds
        counts[label] = counts.get(label, 0) + 1
    named = {(f"{k} ×{counts[k]}" if counts[k] > 1 else k): v for k, v in by_label.items()}
    return dict(sorted(named.items(), key=lambda kv: -kv[1]))
