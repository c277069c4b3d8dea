"""A closed-loop gRPC load generator that does not starve the server on a small machine.

`concurrency` synchronous callers spread over a few worker processes (one gRPC channel each; a
blocking call releases the GIL, so threads in one process overlap their waits). Each caller sends
one pre-serialized batch-1 Predict, waits for the answer, sends the next. Bytes go out as they are
and answers are not parsed (a raw-bytes method): the client spends as little CPU as possible,
since on 2 cores every client cycle is taken from the server. Correctness is checked once, by the
runner's readiness probe, not per request.

Timeline per level: workers connect and report ready; then `warmup` seconds unmeasured, then
`duration` seconds measured (requests *completing* inside the window count), then every caller
stops issuing. Each call has a deadline, so a level ends by itself within duration + warmup +
deadline; the parent kills workers that outlive that. Loopback only.

    python -m benchmarks.loadgen --target 127.0.0.1:8600 --concurrency 1 8 32 128
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DEFAULT_LEVELS = (1, 8, 32, 128)
CALL_TIMEOUT_S = 10.0
_READY_TIMEOUT_S = 30.0


@dataclass
class LevelResult:
    """One concurrency level against one server."""

    concurrency: int
    duration_s: float
    requests: int  # answered OK inside the window
    errors: int  # answered with a non-OK status inside the window
    error_codes: dict[str, int] = field(default_factory=dict)
    rps: float = 0.0
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    client_cpu_pct: float = 0.0  # CPU the load generator itself used, % of one core

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_loopback(target: str) -> None:
    host = target.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the load generator only targets loopback, not {target!r}")


def _worker(
    target: str,
    method: str,
    payload: bytes,
    threads: int,
    ready: Any,
    go: Any,
    window: Any,
    out: Any,
    channels: int = 1,
) -> None:
    """One process: `threads` closed-loop callers on `channels` channels (each its own TCP
    connection; caller i uses channel i mod channels); sends its samples to `out`."""
    import grpc  # imported in the worker: the runner process needs no gRPC of its own

    opened = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
              for _ in range(max(1, channels))]
    calls = [channel.unary_unary(method) for channel in opened]  # no serializers: bytes in, bytes out
    for channel in opened:
        grpc.channel_ready_future(channel).result(timeout=_READY_TIMEOUT_S)
    ready.release()
    if not go.wait(_READY_TIMEOUT_S * 2):
        out.put(([], [], Counter(), 0.0))
        return
    t0, t1 = window[0], window[1]
    lock = threading.Lock()
    latencies: list[float] = []
    completions: list[float] = []
    errors: Counter[str] = Counter()

    def caller(call: Any) -> None:
        mine_lat: list[float] = []
        mine_done: list[float] = []
        mine_err: Counter[str] = Counter()
        while True:
            start = time.monotonic()
            if start >= t1:
                break
            try:
                call(payload, timeout=CALL_TIMEOUT_S)
                code = None
            except grpc.RpcError as e:
                code = e.code().name if e.code() is not None else "UNKNOWN"
            done = time.monotonic()
            if t0 <= done < t1:
                if code is None:
                    mine_lat.append(done - start)
                    mine_done.append(done)
                else:
                    mine_err[code] += 1
            if code is not None and done < t1:
                time.sleep(0.001)  # a failing server must not turn the loop into a spin
        with lock:
            latencies.extend(mine_lat)
            completions.extend(mine_done)
            errors.update(mine_err)

    cpu0 = os.times()
    pool = [threading.Thread(target=caller, args=(calls[i % len(calls)],), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=max(0.0, t1 - time.monotonic()) + CALL_TIMEOUT_S + 5)
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    with lock:
        out.put((list(latencies), list(completions), Counter(errors), cpu))
    for channel in opened:
        channel.close()


def run_level(
    target: str,
    concurrency: int,
    payload: bytes,
    duration: float = 5.0,
    warmup: float = 1.0,
    processes: int | None = None,
    method: str | None = None,
    on_window: Callable[[str], None] | None = None,
    channels: int = 1,
) -> LevelResult:
    """Drives `target` at `concurrency` for warmup + duration seconds; returns the window's stats.

    `channels` per worker process: more TCP connections, which a server of several processes on one
    port (SO_REUSEPORT) needs to spread the load (the kernel gives each connection to one of them).

    `on_window("start")` and `on_window("end")` are called (in this process, which is idle while
    the workers run) when the measured window opens and closes: for sampling the server's CPU.
    """
    from benchmarks.wire import PREDICT_METHOD

    _check_loopback(target)
    nproc = processes or max(2, os.cpu_count() or 2)
    nproc = max(1, min(concurrency, nproc))
    shares = [concurrency // nproc + (1 if i < concurrency % nproc else 0) for i in range(nproc)]
    # forkserver: workers start from a clean process (no inherited gRPC or Ray state).
    ctx = mp.get_context("forkserver")
    ready, go = ctx.Semaphore(0), ctx.Event()
    window = ctx.Array("d", 2)
    out = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(target, method or PREDICT_METHOD, payload, n, ready, go, window, out, min(channels, n)),
            daemon=True,
        )
        for n in shares
    ]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            if not ready.acquire(timeout=_READY_TIMEOUT_S + 30):
                raise RuntimeError(f"load generator workers could not connect to {target}")
        now = time.monotonic()
        window[0], window[1] = now + warmup, now + warmup + duration
        go.set()
        if on_window is not None:
            for edge, at in (("start", window[0]), ("end", window[1])):
                time.sleep(max(0.0, at - time.monotonic()))
                on_window(edge)
        deadline = now + warmup + duration + CALL_TIMEOUT_S + 20
        results = [out.get(timeout=max(1.0, deadline - time.monotonic())) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
                w.join(timeout=5)
    latencies = np.concatenate([np.asarray(r[0], dtype=np.float64) for r in results]) * 1000.0
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r[2])
    cpu = sum(r[3] for r in results)
    result = LevelResult(
        concurrency=concurrency,
        duration_s=duration,
        requests=int(latencies.size),
        errors=sum(errors.values()),
        error_codes=dict(errors),
        rps=latencies.size / duration,
        # warmup + duration is roughly how long the callers ran.
        client_cpu_pct=100.0 * cpu / (warmup + duration),
    )
    if latencies.size:
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        result.p50_ms, result.p90_ms, result.p99_ms = float(p50), float(p90), float(p99)
        result.mean_ms = float(latencies.mean())
    return result


def format_result(name: str, r: LevelResult) -> str:
    err = f" errors={r.errors} {r.error_codes}" if r.errors else ""
    return (
        f"{name:>12} c={r.concurrency:<4} {r.rps:8.1f} req/s  p50 {r.p50_ms:7.2f}  p90 {r.p90_ms:7.2f}  "
        f"p99 {r.p99_ms:7.2f} ms  client cpu {r.client_cpu_pct:4.0f}%{err}"
    )


def main() -> None:
    from benchmarks.wire import predict_request

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port on loopback")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_LEVELS))
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--model_name", default="bench")
    args = parser.parse_args()
    payload = predict_request(model_name=args.model_name).SerializeToString()
    for c in args.concurrency:
        print(format_result(args.target, run_level(args.target, c, payload, args.duration, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
