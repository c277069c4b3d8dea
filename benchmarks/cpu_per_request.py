"""CPU per Predict on each side of a Tessera server, over a fixed number of requests (issue 12).

The inputs of the capacity figures in docs/capacity.md: how many microseconds of CPU the gateway
process and the replica process each spend per batch-1 Predict of the benchmark model, read from
the processes' own counters (/proc/<pid>/stat utime + stime) before and after exactly `--requests`
answered calls at each concurrency. CPU per request depends little on how crowded the machine is
(unlike req/s, which the other helpers' work moves by 10-20%), so these figures carry over to a
node with cores of its own; the load average is printed beside them all the same. The plain
grpc.aio server (one process: gRPC and the model together) is measured the same way as the floor
of a Python gRPC front end.

    python -m benchmarks.cpu_per_request [--requests 20000] [--levels 1 32 128] [--servers plain tessera-1]

Loopback only; each server in its own session, stopped by PID (benchmarks.servers).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pathlib
import shutil
import tempfile
import threading
import time
from typing import Any

from benchmarks import model
from benchmarks.run import SPECS, Context, _loadavg, _tessera_flags
from benchmarks.servers import _TICK, ServerProcess, free_port, session_cpu_ticks

GATEWAY_LABELS = ("tessera", "cluster.cli")
REPLICA_LABEL = "ray::ReplicaHost"


def _client(target: str, payload: bytes, calls: int, threads: int, ready: Any, go: Any, out: Any) -> None:
    """`threads` closed-loop callers sharing `calls` Predicts on one channel; reports failures."""
    import grpc

    from benchmarks.wire import PREDICT_METHOD

    channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    call = channel.unary_unary(PREDICT_METHOD)  # bytes in, bytes out: the client parses nothing
    grpc.channel_ready_future(channel).result(timeout=30)
    ready.release()
    go.wait(60)
    left = [calls]
    failed = [0]
    lock = threading.Lock()

    def caller() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            try:
                call(payload, timeout=10.0)
            except grpc.RpcError:
                with lock:
                    failed[0] += 1

    pool = [threading.Thread(target=caller, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    channel.close()
    out.put(failed[0])


def drive(target: str, payload: bytes, requests: int, concurrency: int) -> tuple[float, int]:
    """Sends exactly `requests` Predicts at `concurrency`; returns (wall seconds, failures)."""
    procs = max(1, min(concurrency, os.cpu_count() or 2))
    threads = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    calls = [requests // procs + (1 if i < requests % procs else 0) for i in range(procs)]
    ctx = mp.get_context("forkserver")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_client, args=(target, payload, n, t, ready, go, out), daemon=True)
               for n, t in zip(calls, threads, strict=True)]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            if not ready.acquire(timeout=60):
                raise RuntimeError(f"clients could not connect to {target}")
        start = time.monotonic()
        go.set()
        failed = sum(out.get(timeout=600) for _ in workers)
        return time.monotonic() - start, failed
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()


def split_cpu(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, float]:
    """CPU seconds between two snapshots: gateway, replica(s), and the rest (Ray's daemons...)."""
    out = {"gateway": 0.0, "replica": 0.0, "other": 0.0}
    for pid, (label, ticks) in after.items():
        used = (ticks - before.get(pid, (label, 0))[1]) / _TICK
        side = "gateway" if label in GATEWAY_LABELS else "replica" if label.startswith(REPLICA_LABEL) else "other"
        out[side] += used
    return out


def measure(spec_name: str, ctx: Context, levels: list[int], requests: int, payload: bytes) -> list[dict[str, Any]]:
    spec = SPECS[spec_name]
    port = free_port()
    server = ServerProcess(spec.name, spec.argv(ctx, port), port, ctx.scratch / f"{spec.name}.log")
    server.start()
    rows = []
    try:
        server.wait_ready(spec.ready_timeout_s)
        drive(server.target, payload, min(2000, requests), 8)  # warm: connections, caches, plans
        for c in levels:
            assert server.proc is not None
            load = _loadavg()
            before = session_cpu_ticks(server.proc.pid)
            wall, failed = drive(server.target, payload, requests, c)
            cpu = split_cpu(before, session_cpu_ticks(server.proc.pid))
            if spec_name == "plain":  # one process does it all: count it as the gateway
                cpu = {"gateway": cpu["gateway"] + cpu["other"], "replica": 0.0, "other": 0.0}
            rows.append({
                "server": spec.label, "concurrency": c, "requests": requests, "failed": failed,
                "wall_s": wall, "rps": requests / wall, "loadavg": load,
                **{f"{side}_us_per_request": 1e6 * s / requests for side, s in cpu.items()},
            })
            print(format_row(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def format_row(r: dict[str, Any]) -> str:
    return (f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['rps']:.0f} | "
            f"{r['gateway_us_per_request']:.0f} | {r['replica_us_per_request']:.0f} | {r['other_us_per_request']:.0f} | "
            f"{r['failed']} | {r['loadavg']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", choices=sorted(SPECS), default=["plain", "tessera-1"])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    from benchmarks.wire import predict_request

    payload = predict_request(batch=1, seed=0).SerializeToString()
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="tessera-cpu-"))
    try:
        model.export(scratch / "model")
        ctx = Context(base=scratch / "model", scratch=scratch, tessera_flags=_tessera_flags())
        print("| server | c | requests | req/s | gateway CPU µs/Predict | replica CPU µs/Predict | "
              "other (Ray) µs/Predict | failed | load avg |\n|---|---|---|---|---|---|---|---|---|", flush=True)
        for name in args.servers:
            measure(name, ctx, args.levels, args.requests, payload)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
