"""The same closed-loop level as `benchmarks.loadgen`, driven by h2load (nghttp2's C load generator).

On 2 cores every cycle of the load generator is taken from the server: the Python generator costs
50-80 % of a core at c=128, which a server of one process (the plain one) barely notices and a
server of several processes (gateways, replica hosts) pays in full. h2load costs a fraction of that,
so a server's own throughput shows. h2load speaks HTTP/2, not gRPC: each request is the pre-framed
Predict (gRPC's 5-byte length prefix and the message) POSTed with gRPC's headers, answered bytes are
not parsed, and a gRPC error (HTTP 200 with a non-zero grpc-status trailer) is not seen: correctness
is the runner's readiness probe's, before the level, as with the Python generator.

Needs `h2load` on PATH (Debian's nghttp2-client; `make bench` installs it).

    python -m benchmarks.gateways --client h2load
"""

from __future__ import annotations

import pathlib
import resource
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

from benchmarks.loadgen import LevelResult, _check_loopback


def available() -> bool:
    return shutil.which("h2load") is not None


def run_level(
    target: str,
    concurrency: int,
    payload: bytes,
    duration: float = 5.0,
    warmup: float = 1.0,
    on_window: Callable[[str], None] | None = None,
    connections: int = 16,
) -> LevelResult:
    """Drives `target` with `concurrency` streams over `connections` HTTP/2 connections for warmup +
    duration seconds; the result counts the requests that started and ended inside the window."""
    from benchmarks.wire import PREDICT_METHOD

    _check_loopback(target)
    connections = max(1, min(concurrency, connections))
    streams = max(1, concurrency // connections)
    with tempfile.TemporaryDirectory(prefix="h2load-") as scratch:
        body, log = pathlib.Path(scratch, "body"), pathlib.Path(scratch, "log")
        body.write_bytes(b"\0" + struct.pack(">I", len(payload)) + payload)
        argv = ["h2load", "-D", f"{warmup + duration:g}", "-c", str(connections), "-m", str(streams), "-t", "1",
                "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
                "--log-file", str(log), f"http://{target}{PREDICT_METHOD}"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if on_window is not None:
            def window() -> None:
                for edge, at in (("start", warmup), ("end", warmup + duration)):
                    time.sleep(max(0.0, started + at - time.time()))
                    on_window(edge)

            sampler = threading.Thread(target=window, daemon=True)
            sampler.start()
        output, _ = proc.communicate(timeout=warmup + duration + 60)
        if on_window is not None:
            sampler.join()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0 or not log.exists():
            raise RuntimeError(f"h2load failed ({proc.returncode}): {output[-500:]}")
        # Columns: start (µs since the epoch), HTTP status, µs to the end of the response.
        rows = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else np.zeros((0, 3), np.int64)
    begin, end = (started + warmup) * 1e6, (started + warmup + duration) * 1e6
    inside = rows[(rows[:, 0] >= begin) & (rows[:, 0] + rows[:, 2] <= end)]
    ok = inside[inside[:, 1] == 200]
    codes, counts = np.unique(inside[inside[:, 1] != 200][:, 1], return_counts=True)
    statuses = {f"HTTP {code}": int(n) for code, n in zip(codes, counts, strict=True)}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = LevelResult(
        concurrency=concurrency, duration_s=duration, requests=int(ok.shape[0]), errors=sum(statuses.values()),
        error_codes=statuses, rps=ok.shape[0] / duration, client_cpu_pct=100.0 * cpu / (warmup + duration),
    )
    if ok.shape[0]:
        latencies = ok[:, 2] / 1000.0
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        result.p50_ms, result.p90_ms, result.p99_ms = float(p50), float(p90), float(p99)
        result.mean_ms = float(latencies.mean())
    return result

