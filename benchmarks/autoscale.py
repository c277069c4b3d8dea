"""Autoscaling under open-loop load: step, threshold and burst, against a real `tessera serve`.

Open loop (Poisson arrivals at a fixed rate, each request sent at its time whether or not the
earlier ones have been answered), because a fixed concurrency hides oscillation: with fewer
replicas the clients simply wait longer. The model is the benchmark DNN with enough rows per
request to cost a few milliseconds (calibrated at start). The replica count is read from the
gateway's Prometheus metrics (`tessera_replicas`) twice a second.

    python -m benchmarks.autoscale [--phases step threshold burst] [--out benchmarks/autoscale]

Prints, per phase: the replica count changes while the load is steady (after settling), the time
to scale up and down, and failed requests; writes `<out>.json` and `<out>.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import re
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field

import numpy as np

from benchmarks import servers
from benchmarks.model import export
from benchmarks.servers import REPO, ServerProcess, free_port
from benchmarks.wire import PREDICT_METHOD, predict_request

MODEL_MS = 3.0  # the model's cost per request (calibrated rows); --model_ms


@dataclass
class Phase:
    """A load shape: `rate(t)` requests/s for `seconds`; `steady` is the window judged for changes."""

    name: str
    seconds: float
    base: float
    peak: float = 0.0
    peak_from: float = 0.0
    peak_to: float = 0.0
    steady_from: float = 0.0  # changes counted from here to the end (after settling)

    def rate(self, t: float) -> float:
        return self.peak if self.peak_from <= t < self.peak_to else self.base


@dataclass
class PhaseResult:
    name: str
    sent: int = 0
    failed: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    counts: list[tuple[float, int]] = field(default_factory=list)  # (t, replicas) at each change
    changes_steady: int = 0
    scale_up_s: float | None = None  # from the load's rise to the first scale-up
    scale_down_s: float | None = None  # from the burst's end until back at the count before it


def calibrate_rows(target_ms: float) -> int:
    """Rows per request for which the model costs about `target_ms` on this machine."""
    from benchmarks.model import build_meta_graph
    from exporter.runtime import Runtime

    meta, variables = build_meta_graph()
    runtime = Runtime(meta, variables)
    rows = 16
    for _ in range(8):
        x = {"x": np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32)}
        runtime.run("serving_default", x)
        times = []
        for _ in range(20):  # the fastest run: other processes on a shared machine only add
            started = time.perf_counter()
            runtime.run("serving_default", x)
            times.append(time.perf_counter() - started)
        ms = min(times) * 1000
        rows = max(1, min(8192, round(rows * target_ms / max(ms, 1e-3))))
    return rows


def replicas(metrics_url: str) -> int | None:
    try:
        text = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
    except OSError:
        return None
    found = re.search(r'^tessera_replicas\{model="bench"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else None


async def drive(target: str, payload: bytes, phase: Phase, metrics_url: str, seed: int) -> PhaseResult:
    import grpc

    result = PhaseResult(phase.name)
    rng = random.Random(seed)
    latencies: list[float] = []
    codes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(PREDICT_METHOD)
        start = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()

        async def one() -> None:
            sent = time.monotonic()
            try:
                await call(payload, timeout=10.0)
                latencies.append(time.monotonic() - sent)
            except grpc.RpcError as e:
                codes[e.code().name] = codes.get(e.code().name, 0) + 1

        async def sample() -> None:
            last = None
            while True:
                count = await asyncio.to_thread(replicas, metrics_url)
                if count is not None and count != last:
                    result.counts.append((round(time.monotonic() - start, 2), count))
                    last = count
                await asyncio.sleep(0.5)

        sampler = asyncio.ensure_future(sample())
        at = 0.0
        while at < phase.seconds:
            rate = phase.rate(at)
            at += rng.expovariate(rate) if rate > 0 else 0.1
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if rate > 0 and at < phase.seconds:
                task = asyncio.ensure_future(one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                result.sent += 1
        if tasks:
            await asyncio.wait(set(tasks), timeout=15)
        await asyncio.sleep(1.0)
        sampler.cancel()
    result.failed = sum(codes.values())
    result.error_codes = codes
    if latencies:
        result.p50_ms, result.p99_ms = (float(v) * 1000 for v in np.percentile(latencies, [50, 99]))
        result.mean_ms = float(np.mean(latencies)) * 1000
    result.changes_steady = sum(1 for t, _ in result.counts[1:] if t >= phase.steady_from)
    rise = phase.peak_from if phase.peak else 0.0
    ups = [t for (t, c), (_, b) in zip(result.counts[1:], result.counts, strict=False) if c > b and t >= rise]
    result.scale_up_s = round(ups[0] - rise, 1) if ups else None
    if phase.peak:
        before = [c for t, c in result.counts if t < phase.peak_from][-1]
        back = [t for t, c in result.counts if t >= phase.peak_to and c <= before]
        result.scale_down_s = round(back[0] - phase.peak_to, 1) if back else None
    return result


def plot(results: list[PhaseResult], phases: list[Phase], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.6 * len(results)), squeeze=False)
    for ax, result, phase in zip(axes[:, 0], results, phases, strict=True):
        ts = [t for t, _ in result.counts] + [phase.seconds]
        cs = [c for _, c in result.counts] + [result.counts[-1][1] if result.counts else 0]
        ax.step(ts, cs, where="post", color="tab:blue", label="replicas")
        ax.set_ylabel("replicas")
        ax.set_ylim(0, max(cs + [1]) + 1)
        grid = np.arange(0, phase.seconds, 0.5)
        twin = ax.twinx()
        twin.plot(grid, [phase.rate(t) for t in grid], color="tab:gray", alpha=0.5, label="requests/s")
        twin.set_ylabel("requests/s")
        ax.axvline(phase.steady_from, color="tab:green", linestyle=":", linewidth=1)
        ax.set_title(f"{phase.name}: {result.changes_steady} change(s) after settling (dotted), "
                     f"{result.failed} failed of {result.sent}")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", nargs="+", default=["step", "threshold", "burst"])
    # Small on purpose: the machine is 2 shared cores, and the gateway, the load generator and the
    # replicas share them. A low target makes a light load need several replicas.
    parser.add_argument("--rate", type=float, default=75.0, help="the step's constant rate, requests/s")
    parser.add_argument("--model_ms", type=float, default=MODEL_MS)
    parser.add_argument("--rows", type=int, default=0, help="rows a request (default: calibrated to --model_ms)")
    parser.add_argument("--max_replicas", type=int, default=4)
    parser.add_argument("--target_ongoing_requests", type=float, default=0.25)
    parser.add_argument("--downscale_delay_s", type=float, default=30.0)
    parser.add_argument("--source", type=pathlib.Path, default=None,
                        help="serve from this source tree instead (e.g. `git archive main | tar -x -C DIR`), for a before/after")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "autoscale")
    args = parser.parse_args()

    rows = args.rows or calibrate_rows(args.model_ms)
    command = [str(pathlib.Path(sys.executable).parent / "tessera")]
    plain_env, extra = servers.server_env, {}
    # Ray's own directory: an embedded Ray without an address joins the cluster named in
    # <tmp>/ray/ray_current_cluster, and on a shared machine that may be someone else's.
    extra["RAY_TMPDIR"] = str(pathlib.Path(tempfile.gettempdir()) / "tsa-ray")
    # Ray kills workers when the *machine* is short of memory; on a shared machine that is
    # others' processes, and a killed controller would read as autoscaling failures.
    extra["RAY_memory_monitor_refresh_ms"] = "0"
    if args.source is not None:  # its modules first, in the server and in every Ray worker
        extra["PYTHONPATH"] = f"{args.source.resolve()}:{plain_env()['PYTHONPATH']}"
        command = [sys.executable, "-m", "cluster.cli"]
    servers.server_env = lambda: {**plain_env(), **extra}
    payload = predict_request(batch=rows).SerializeToString()
    d = args.downscale_delay_s
    catalog = {
        "step": Phase("step", 100.0, 0.0, args.rate, 10.0, 1e9, steady_from=40.0),
        # Right at the 1 -> 2 threshold: about target_ongoing_requests in flight on one replica.
        # Right at the 1 -> 2 threshold: target_ongoing_requests in flight on one replica, by
        # Little's law at the median latency a light probe measures first (base set then).
        "threshold": Phase("threshold", 100.0, 0.0, steady_from=30.0),
        "burst": Phase("burst", 40.0 + 10.0 + d + 30.0, args.rate / 2, args.rate * 2.5, 20.0, 30.0,
                       steady_from=30.0 + d + 25.0),
    }
    phases = [catalog[name] for name in args.phases]
    print(f"model: benchmark DNN, {rows} rows a request (~{args.model_ms:.0f} ms here); "
          f"--target_ongoing_requests={args.target_ongoing_requests} --max_replicas={args.max_replicas}", flush=True)
    results = []
    logs = pathlib.Path(tempfile.gettempdir()) / "tessera-autoscale-bench"  # kept: read them if a server fails
    logs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        base = pathlib.Path(scratch) / "bench"
        export(base)
        for index, phase in enumerate(phases):
            port, rest = free_port(), free_port()
            server = ServerProcess(phase.name, [
                *command, "serve", f"--port={port}", f"--rest_api_port={rest}", "--host=127.0.0.1",
                "--model_name=bench", f"--model_base_path={base}", "--num_replicas=1",
                f"--max_replicas={args.max_replicas}", f"--target_ongoing_requests={args.target_ongoing_requests}",
                f"--downscale_delay_s={d}", "--replica_num_cpus=0.25", "--file_system_poll_wait_seconds=0",
            ], port, logs / f"{phase.name}.log")
            server.start()
            try:
                server.wait_ready(120)
                metrics = f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics"
                if phase.name == "threshold":
                    probe = asyncio.run(drive(server.target, payload, Phase("probe", 5.0, 20.0), metrics, seed=99))
                    phase.base = args.target_ongoing_requests / (probe.p50_ms / 1000)
                    print(f"threshold: probe median latency {probe.p50_ms:.1f} ms -> {phase.base:.0f} requests/s",
                          flush=True)
                result = asyncio.run(drive(server.target, payload, phase, metrics, seed=index))
            finally:
                server.stop()
            results.append(result)
            print(f"{phase.name:>9}: replicas {' '.join(f'{c}@{t:.0f}s' for t, c in result.counts)}; "
                  f"{result.changes_steady} change(s) after settling (from {phase.steady_from:.0f}s); "
                  f"up after {result.scale_up_s}s; down after {result.scale_down_s}s; "
                  f"failed {result.failed}/{result.sent} {result.error_codes or ''}; "
                  f"p50 {result.p50_ms:.1f} ms p99 {result.p99_ms:.1f} ms", flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()},
         "phases": [asdict(p) for p in phases], "results": [asdict(r) for r in results]}, indent=1))
    plot(results, phases, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
