"""Autoscaling under open-loop load: step, threshold, burst and scale to zero, against a real `tessera serve`.

Open loop (Poisson arrivals at a fixed rate, each request sent at its time whether or not the
earlier ones have been answered), because a fixed concurrency hides oscillation: with fewer
replicas the clients simply wait longer. The model is the benchmark DNN with enough rows per
request to cost a few milliseconds (calibrated at start). The replica count and the autoscaler's
own signal (`tessera_replicas`, `tessera_autoscaler_load_in_flight`) are read from the gateway's
Prometheus metrics twice a second, so a late change can be told apart: a signal that stayed under
the threshold (the load), or one above it with no change (the policy).

Loads are in replicas' worth: each phase's server is first probed at a light load, and one
replica's worth is the rate at which one replica holds `--target_ongoing_requests` in flight at
the probe's median latency (Little's law). That overstates what a replica holds under load
(coalescing batches concurrent requests), so the step (2.5) lands inside a dead band, away from
any threshold (a fixed rate in requests/s had put it right at the 1 -> 2 line on a quiet machine,
which read as a late scale-up), and the threshold phase (1.0) at or just under the 1 -> 2 line.
The generator's lag (how late each request left against its schedule) is recorded: a busy
machine holds back the generator too.

The `zero` phase serves the model with `min_replicas: 0` and a short idle period: the time until
it scales to zero, then concurrent first requests (a cold start: all must succeed), warm latency
beside it, and a second cold start after the next scale to zero.

    python -m benchmarks.autoscale [--phases step threshold burst zero] [--out benchmarks/autoscale]

Prints, per phase: the replica count changes while the load is steady (after settling), the time
to scale up and down, and failed requests; writes `<out>.json` and `<out>.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    """A load shape: `rate(t)` requests/s for `seconds`; `steady` is the window judged for changes.

    `base` and `peak` are in replicas' worth until `scale` (one replica's worth in requests/s,
    from the probe) turns them into rates."""

    name: str
    seconds: float
    base: float
    peak: float = 0.0
    peak_from: float = 0.0
    peak_to: float = 0.0
    steady_from: float = 0.0  # changes counted from here to the end (after settling)
    per_replica: float = 0.0  # requests/s that one replica's worth is, once probed

    def scale(self, per_replica: float) -> None:
        self.per_replica = per_replica
        self.base, self.peak = self.base * per_replica, self.peak * per_replica

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
    # (t, replicas, autoscaler in-flight signal, its arrival rate), every half second
    signal: list[tuple[float, int, float, float]] = field(default_factory=list)
    lag_p99_ms: float = float("nan")  # how late the generator sent requests against its schedule
    lag_max_ms: float = float("nan")
    extra: dict[str, float | None] = field(default_factory=dict)  # the zero phase's figures


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


def scrape(metrics_url: str) -> dict[str, float] | None:
    """The model's replica count and the autoscaler's signal, from one scrape."""
    try:
        text = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
    except OSError:
        return None
    values = {}
    for name in ("tessera_replicas", "tessera_autoscaler_load_in_flight", "tessera_autoscaler_arrival_rate",
                 "tessera_model_scaled_to_zero_total", "tessera_model_cold_start_latency_seconds_sum",
                 "tessera_model_cold_start_latency_seconds_count"):
        found = re.search(rf'^{name}\{{model="bench"\}} (\S+)$', text, re.M)
        if found:
            values[name] = float(found.group(1))
    return values if "tessera_replicas" in values else None


def replicas(metrics_url: str) -> int | None:
    values = scrape(metrics_url)
    return None if values is None else int(values["tessera_replicas"])


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
                values = await asyncio.to_thread(scrape, metrics_url)
                if values is not None:
                    t, count = round(time.monotonic() - start, 2), int(values["tessera_replicas"])
                    result.signal.append((t, count, values.get("tessera_autoscaler_load_in_flight", 0.0),
                                          values.get("tessera_autoscaler_arrival_rate", 0.0)))
                    if count != last:
                        result.counts.append((t, count))
                        last = count
                await asyncio.sleep(0.5)

        sampler = asyncio.ensure_future(sample())
        at = 0.0
        lags: list[float] = []
        while at < phase.seconds:
            rate = phase.rate(at)
            at += rng.expovariate(rate) if rate > 0 else 0.1
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if rate > 0 and at < phase.seconds:
                lags.append(time.monotonic() - start - at)
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
    if lags:
        result.lag_p99_ms = float(np.percentile(lags, 99)) * 1000
        result.lag_max_ms = max(lags) * 1000
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


async def cold_starts(target: str, payload: bytes, metrics_url: str, idle_s: float, clients: int = 8) -> PhaseResult:
    """The model at min_replicas 0: time to zero, `clients` requests at once finding it there (all
    must succeed), warm latency, then time to zero again after the last request and one more cold
    start. Latencies as the clients see them, from send to answer."""
    import grpc

    result = PhaseResult("zero")
    codes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(PREDICT_METHOD)
        start = time.monotonic()

        async def one() -> float | None:
            sent = time.monotonic()
            result.sent += 1
            try:
                await call(payload, timeout=120.0)
                return time.monotonic() - sent
            except grpc.RpcError as e:
                codes[e.code().name] = codes.get(e.code().name, 0) + 1
                return None

        async def at_zero(since: float) -> float | None:
            limit = time.monotonic() + idle_s + 120
            while time.monotonic() < limit:
                values = await asyncio.to_thread(scrape, metrics_url)
                if values is not None:
                    t, count = round(time.monotonic() - start, 2), int(values["tessera_replicas"])
                    result.signal.append((t, count, values.get("tessera_autoscaler_load_in_flight", 0.0),
                                          values.get("tessera_autoscaler_arrival_rate", 0.0)))
                    if not result.counts or result.counts[-1][1] != count:
                        result.counts.append((t, count))
                    if count == 0:
                        return time.monotonic() - since
                await asyncio.sleep(0.25)
            return None

        first_zero = await at_zero(start)  # from the phase's start (the readiness probe's request)
        cold = await asyncio.gather(*(one() for _ in range(clients)))
        warm = [await one() for _ in range(40)]
        last = time.monotonic()
        second_zero = await at_zero(last)
        second = await one()
        values = await asyncio.to_thread(scrape, metrics_url) or {}
    result.failed = sum(codes.values())
    result.error_codes = codes
    ok_cold = [c for c in cold if c is not None]
    ok_warm = [w for w in warm if w is not None]
    count = values.get("tessera_model_cold_start_latency_seconds_count", 0.0)
    result.extra = {
        "to_zero_after_start_s": first_zero,
        "to_zero_after_last_request_s": second_zero,
        "cold_first_ms": min(ok_cold) * 1000 if ok_cold else None,  # the first answered of the burst
        "cold_last_ms": max(ok_cold) * 1000 if ok_cold else None,
        "cold_second_ms": None if second is None else second * 1000,
        "warm_p50_ms": float(np.percentile(ok_warm, 50)) * 1000 if ok_warm else None,
        "scaled_to_zero_total": values.get("tessera_model_scaled_to_zero_total"),
        "controller_cold_start_mean_s": values.get("tessera_model_cold_start_latency_seconds_sum", 0.0) / count
        if count else None,
        "cold_starts": count,
    }
    return result


def plot(results: list[PhaseResult], phases: list[Phase], path: pathlib.Path, target: float = 0.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.6 * len(results)), squeeze=False)
    for ax, result, phase in zip(axes[:, 0], results, phases, strict=True):
        ts = [t for t, _ in result.counts] + [phase.seconds]
        cs = [c for _, c in result.counts] + [result.counts[-1][1] if result.counts else 0]
        ax.step(ts, cs, where="post", color="tab:blue", label="replicas")
        if result.signal and target:  # the autoscaler's load, in replicas' worth at the target
            ax.plot([t for t, *_ in result.signal], [s / target for _, _, s, _ in result.signal],
                    color="tab:orange", linewidth=0.8, alpha=0.8, label="in flight / target")
        ax.set_ylabel("replicas")
        ax.set_ylim(0, max(cs + [1]) + 1)
        ax.legend(loc="upper left", fontsize=7)
        grid = np.arange(0, phase.seconds, 0.5)
        twin = ax.twinx()
        twin.plot(grid, [phase.rate(t) for t in grid] if phase.name != "zero" else [0.0] * len(grid),
                  color="tab:gray", alpha=0.5, label="requests/s")
        twin.set_ylabel("requests/s")
        ax.axvline(phase.steady_from, color="tab:green", linestyle=":", linewidth=1)
        ax.set_title(f"{phase.name}: {result.changes_steady} change(s) after settling (dotted), "
                     f"{result.failed} failed of {result.sent}")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _seconds(value: float | None) -> str:
    """A delay as printed; "-" where the phase had none (no scale-up, or no burst to come down from)."""
    return "-" if value is None else f"{value}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", nargs="+", default=["step", "threshold", "burst", "zero"])
    # Small on purpose: the machine is 2 shared cores, and the gateway, the load generator and the
    # replicas share them. A low target makes a light load need several replicas.
    parser.add_argument("--step_load", type=float, default=2.5,
                        help="the step's constant load, in replicas' worth (mid dead band of 3 at 2.5)")
    parser.add_argument("--model_ms", type=float, default=MODEL_MS)
    parser.add_argument("--rows", type=int, default=0, help="rows a request (default: calibrated to --model_ms)")
    parser.add_argument("--max_replicas", type=int, default=4)
    parser.add_argument("--target_ongoing_requests", type=float, default=0.25)
    parser.add_argument("--downscale_delay_s", type=float, default=30.0)
    parser.add_argument("--scale_to_zero_idle_s", type=float, default=5.0, help="the zero phase's idle period")
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
    catalog = {  # in replicas' worth (see the docstring), scaled to requests/s once probed
        "step": Phase("step", 100.0, 0.0, args.step_load, 10.0, 1e9, steady_from=40.0),
        "threshold": Phase("threshold", 100.0, 1.0, steady_from=30.0),  # right at the 1 -> 2 line
        "burst": Phase("burst", 40.0 + 10.0 + d + 30.0, 0.5, 2.5, 20.0, 30.0, steady_from=30.0 + d + 25.0),
        "zero": Phase("zero", 0.0, 0.0),
    }
    phases = [catalog[name] for name in args.phases]
    print(f"model: benchmark DNN, {rows} rows a request (~{args.model_ms:.0f} ms here); "
          f"--target_ongoing_requests={args.target_ongoing_requests} --max_replicas={args.max_replicas}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    logs = pathlib.Path(tempfile.gettempdir()) / "tessera-autoscale-bench"  # kept: read them if a server fails
    logs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        base = pathlib.Path(scratch) / "bench"
        export(base)
        zero_config = pathlib.Path(scratch) / "autoscaling.config"
        zero_config.write_text('model { name: "bench" min_replicas: 0 }\n')
        for index, phase in enumerate(phases):
            port, rest = free_port(), free_port()
            flags = [f"--autoscaling_config_file={zero_config}",
                     f"--scale_to_zero_idle_s={args.scale_to_zero_idle_s}"] if phase.name == "zero" else []
            server = ServerProcess(phase.name, [
                *command, "serve", f"--port={port}", f"--rest_api_port={rest}", "--host=127.0.0.1",
                "--model_name=bench", f"--model_base_path={base}", "--num_replicas=1",
                f"--max_replicas={args.max_replicas}", f"--target_ongoing_requests={args.target_ongoing_requests}",
                f"--downscale_delay_s={d}", "--replica_num_cpus=0.25", "--file_system_poll_wait_seconds=0", *flags,
            ], port, logs / f"{phase.name}.log")
            server.start()
            load_before = os.getloadavg()[0]
            try:
                server.wait_ready(120)
                metrics = f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics"
                if phase.name == "zero":
                    result = asyncio.run(cold_starts(server.target, payload, metrics, args.scale_to_zero_idle_s))
                else:
                    probe = asyncio.run(drive(server.target, payload, Phase("probe", 5.0, 20.0), metrics, seed=99))
                    # Little's law: one replica holds the target in flight at this rate.
                    phase.scale(args.target_ongoing_requests / (probe.p50_ms / 1000))
                    print(f"{phase.name:>9}: probe median latency {probe.p50_ms:.1f} ms -> one replica's worth "
                          f"{phase.per_replica:.0f} requests/s", flush=True)
                    result = asyncio.run(drive(server.target, payload, phase, metrics, seed=index))
            finally:
                server.stop()
            results.append(result)
            load = f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
            if phase.name == "zero":
                figures = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.extra.items())
                print(f"     zero: {figures}; failed {result.failed}/{result.sent} {result.error_codes or ''}; {load}",
                      flush=True)
                continue
            steady = [(c, sig) for t, c, sig, _ in result.signal if t >= phase.steady_from]
            # The median: a stall of the machine reads as a spike of the mean.
            ratio = (float(np.median([sig / (c * args.target_ongoing_requests) for c, sig in steady if c]))
                     if steady else float("nan"))
            print(f"{phase.name:>9}: replicas {' '.join(f'{c}@{t:.0f}s' for t, c in result.counts)}; "
                  f"{result.changes_steady} change(s) after settling (from {phase.steady_from:.0f}s); "
                  f"up after {_seconds(result.scale_up_s)}; down after {_seconds(result.scale_down_s)}; "
                  f"failed {result.failed}/{result.sent} {result.error_codes or ''}; "
                  f"p50 {result.p50_ms:.1f} ms p99 {result.p99_ms:.1f} ms; generator lag p99 "
                  f"{result.lag_p99_ms:.1f} ms max {result.lag_max_ms:.0f} ms; steady signal at "
                  f"{ratio:.2f}x the up threshold (median); {load}", flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()},
         "phases": [asdict(p) for p in phases], "results": [asdict(r) for r in results]}, indent=1))
    plot(results, phases, args.out.with_suffix(".png"), args.target_ongoing_requests)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
