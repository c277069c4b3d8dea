"""One hot model among 200 cold ones under load (issue 11): the hot one scales out to more replica
processes; do the cold ones' latencies hold?

Serves 201 models with `tessera serve` at `make serve`'s defaults apart from the model config:
200 copies of the iris model (`benchmarks.many_models.write_models`: cold, one replica each, as
every model without an autoscaling entry) and one "hot" model, the benchmark DNN with enough rows
a request to cost a few milliseconds (`benchmarks.autoscale.calibrate_rows`), whose
`--autoscaling_config_file` entry lets it scale from 1 to `--max_replicas`. Two open-loop (Poisson)
generators share one asyncio loop: a light steady load spread uniformly over the cold models for
the whole run, and, after a baseline phase without it, a fixed rate on the hot model worth
`--hot_load` replicas (one replica's worth is the rate at which one replica holds the model's
target in flight at a probe's median latency, Little's law, as in `benchmarks/autoscale.py`).

Recorded every 2 s from the gateway's Prometheus metrics (what a user sees): the hot model's
replica count, the replica host processes its replicas sit on (the `replica` label of
`tessera_replica_in_flight_requests` is `<host>/<model>`), and where every cold model sits (a
cold model that changes host was moved or evicted). Per request: latency or status code. The
summary compares the cold models' p50/p99 in the baseline with those under hot load, overall and
split by whether the cold model shares a host process with a hot replica; failures (goal 0).

    python -m benchmarks.hot_model [--cold 200] [--baseline_s 30] [--hot_s 90] [--out benchmarks/hot_model]

Writes `<out>.json` and `<out>.png`. Not a test: the figures depend on the machine's load.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from benchmarks import servers
from benchmarks.autoscale import calibrate_rows
from benchmarks.many_models import write_models
from benchmarks.model import export
from benchmarks.servers import ServerProcess, free_port
from benchmarks.wire import PREDICT_METHOD, predict_request

HOT = "hot"
_IN_FLIGHT = re.compile(
    r'^tessera_replica_in_flight_requests\{model="([^"]+)",replica="([^"]+)"\} \S+$', re.M
)


@dataclass
class Sample:
    t: float
    replicas: int  # the hot model's, started or starting
    hosts: list[str]  # the replica hosts its answering replicas sit on
    signal: float  # the autoscaler's in-flight load for it
    placed: dict[str, str] = field(default_factory=dict)  # cold model -> its host
    scrape_s: float = 0.0  # how long the metrics endpoint took to answer


# One request: (seconds since the run's start when it was due, model, latency s or None, error code or None)
Record = tuple[float, str, float | None, str | None]


def scrape(url: str) -> Sample | None:
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None

    def gauge(name: str) -> float | None:
        found = re.search(rf'^{name}\{{model="{HOT}"\}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else None

    count = gauge("tessera_replicas")
    if count is None:
        return None
    hosts: set[str] = set()
    placed: dict[str, str] = {}
    for model, replica in _IN_FLIGHT.findall(text):
        host = replica.rsplit("/", 1)[0]
        if model == HOT:
            hosts.add(host)
        else:
            placed[model] = host  # a cold model has one replica
    return Sample(0.0, int(count), sorted(hosts), gauge("tessera_autoscaler_load_in_flight") or 0.0, placed)


async def open_loop(
    call: Any,
    pick: Callable[[random.Random], tuple[str, bytes]],
    rate: float,
    window: tuple[float, float],
    start: float,
    records: list[Record],
    rng: random.Random,
) -> None:
    """Poisson arrivals at `rate`/s from window[0] to window[1] (seconds after `start`), each sent at
    its time whether or not the earlier ones were answered."""
    import grpc

    async def one(due: float, name: str, payload: bytes) -> None:
        sent = time.monotonic()
        try:
            await call(payload, timeout=10.0)
            records.append((due, name, time.monotonic() - sent, None))
        except grpc.RpcError as e:
            records.append((due, name, None, e.code().name))

    tasks: set[asyncio.Future[None]] = set()
    at = window[0]
    while True:
        at += rng.expovariate(rate)
        if at >= window[1]:
            break
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(at, *pick(rng)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=15)


def cold_payloads(names: list[str]) -> dict[str, bytes]:
    from exporter import tensor_encode
    from protos.tensorflow_serving.apis import predict_pb2

    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
    out = {}
    for name in names:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = "predict"
        tensor_encode.array_to_proto(x, request.inputs["x"])
        out[name] = request.SerializeToString()
    return out


async def measure(
    target: str, metrics: str, hot: bytes, cold: dict[str, bytes], args: argparse.Namespace, hot_rate: float
) -> tuple[list[Record], list[Sample]]:
    import grpc

    records: list[Record] = []
    samples: list[Sample] = []
    names = sorted(cold)
    end = args.baseline_s + args.hot_s
    async with (
        grpc.aio.insecure_channel(target) as hot_channel,
        grpc.aio.insecure_channel(target) as cold_channel,
    ):
        start = time.monotonic()

        async def sample() -> None:
            while True:
                asked = time.monotonic()
                got = await asyncio.to_thread(scrape, metrics)
                if got is not None:
                    got.t, got.scrape_s = round(asked - start, 1), round(time.monotonic() - asked, 3)
                    samples.append(got)
                await asyncio.sleep(2.0)

        sampler = asyncio.ensure_future(sample())
        await asyncio.gather(
            open_loop(
                cold_channel.unary_unary(PREDICT_METHOD),
                lambda r: (n := r.choice(names), cold[n]),
                args.cold_rate,
                (0.0, end),
                start,
                records,
                random.Random(1),
            ),
            open_loop(
                hot_channel.unary_unary(PREDICT_METHOD),
                lambda r: (HOT, hot),
                hot_rate,
                (args.baseline_s, end),
                start,
                records,
                random.Random(2),
            ),
        )
        await asyncio.sleep(2.5)
        sampler.cancel()
    return records, samples


def percentiles(records: list[Record], keep: Callable[[Record], bool]) -> dict[str, float | int]:
    chosen = [r for r in records if keep(r)]
    ok = [r[2] for r in chosen if r[2] is not None]
    p50, p99 = (float(v) * 1000 for v in np.percentile(ok, [50, 99])) if ok else (float("nan"),) * 2
    return {
        "requests": len(chosen),
        "failed": len(chosen) - len(ok),
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
    }


def summarize(records: list[Record], samples: list[Sample], args: argparse.Namespace) -> dict[str, object]:
    b, end = args.baseline_s, args.baseline_s + args.hot_s
    settled = b + args.settle_s
    # Which cold models shared a host process with a hot replica, as placed under hot load.
    late = [s for s in samples if s.t >= settled] or samples[-1:]
    hot_hosts = {h for s in late for h in s.hosts}
    placed = late[-1].placed if late else {}
    beside = {m for m, h in placed.items() if h in hot_hosts}
    first_host = {m: h for s in reversed(samples) for m, h in s.placed.items()}  # the earliest seen
    moved = sorted(m for m, h in placed.items() if first_host.get(m, h) != h)
    cold = [r for r in records if r[1] != HOT]
    phases = {
        "baseline": lambda r: 5.0 <= r[0] < b,
        "hot_load": lambda r: b <= r[0] < end,
        "hot_settled": lambda r: settled <= r[0] < end,
    }
    out: dict[str, object] = {}
    for phase, keep in phases.items():
        out[phase] = {
            "cold": percentiles(cold, keep),
            "cold_beside_hot": percentiles(cold, lambda r, k=keep: k(r) and r[1] in beside),  # type: ignore[misc]
            "cold_elsewhere": percentiles(cold, lambda r, k=keep: k(r) and r[1] not in beside),  # type: ignore[misc]
            "hot": percentiles(records, lambda r, k=keep: k(r) and r[1] == HOT),  # type: ignore[misc]
        }
    # The metrics scrape (every 2 s, this benchmark's own observer) against the requests it overlaps.
    windows = [(x.t - 0.02, x.t + x.scrape_s) for x in samples]

    def during_scrape(r: Record) -> bool:
        return any(lo <= r[0] < hi for lo, hi in windows)

    out["scrapes"] = {
        "count": len(samples),
        "p50_s": round(float(np.median([x.scrape_s for x in samples])), 3) if samples else None,
        "max_s": max((x.scrape_s for x in samples), default=None),
        "cold_during": percentiles(cold, lambda r: 5.0 <= r[0] < end and during_scrape(r)),
        "cold_between": percentiles(cold, lambda r: 5.0 <= r[0] < end and not during_scrape(r)),
    }
    codes: dict[str, int] = {}
    for r in records:
        if r[3] is not None:
            codes[r[3]] = codes.get(r[3], 0) + 1
    changes = [
        (s.t, s.replicas, len(s.hosts))
        for i, s in enumerate(samples)
        if i == 0 or (s.replicas, len(s.hosts)) != (samples[i - 1].replicas, len(samples[i - 1].hosts))
    ]
    out.update(
        hot_hosts=sorted(hot_hosts),
        cold_beside_hot=len(beside),
        beside=sorted(beside),
        cold_placed=len(placed),
        cold_moved=moved,
        failed=sum(codes.values()),
        error_codes=codes,
        sent=len(records),
        hot_changes=changes,
        # The slowest cold requests (due time, model, ms): to tell a stall of everything from one host's.
        cold_slowest=sorted(
            ((round(r[0], 2), r[1], round(r[2] * 1000, 1)) for r in cold if r[2] is not None),
            key=lambda slow: -slow[2],
        )[:40],
        hot_max_replicas=max((s.replicas for s in samples), default=0),
        hot_max_hosts=max((len(s.hosts) for s in samples), default=0),
    )
    return out


def series(
    records: list[Record], beside: set[str], seconds: float, width: float = 5.0
) -> dict[str, list[float]]:
    """Cold latency percentiles in `width`-second bins (by due time): beside a hot replica or elsewhere."""
    out: dict[str, list[float]] = {"t": []}
    groups: dict[str, Callable[[Record], bool]] = {
        "beside": lambda r: r[1] in beside,
        "elsewhere": lambda r: r[1] not in beside and r[1] != HOT,
    }
    for key in groups:
        out[f"{key}_p50"], out[f"{key}_p99"] = [], []
    for lo in np.arange(0.0, seconds, width):
        out["t"].append(float(lo + width / 2))
        for key, keep in groups.items():
            ok = [r[2] for r in records if lo <= r[0] < lo + width and keep(r) and r[2] is not None]
            p50, p99 = (float(v) * 1000 for v in np.percentile(ok, [50, 99])) if ok else (float("nan"),) * 2
            out[f"{key}_p50"].append(round(p50, 2))
            out[f"{key}_p99"].append(round(p99, 2))
    return out


def plot(result: dict[str, Any], path: pathlib.Path) -> None:
    """The hot model's replicas and hosts over time, above the cold models' latency (from the JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, samples, bins = result["summary"], result["samples"], result["series"]
    hot_from = float(result["args"]["baseline_s"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    ts = [s["t"] for s in samples]
    top.step(ts, [s["replicas"] for s in samples], where="post", label="hot replicas")
    top.step(
        ts, [len(s["hosts"]) for s in samples], where="post", linestyle="--", label="distinct host processes"
    )
    top.axvline(hot_from, color="tab:gray", linestyle=":", linewidth=1)
    top.set_ylabel("hot model")
    top.set_ylim(0, int(result["args"]["max_replicas"]) + 1)
    top.legend(loc="upper left", fontsize=7)
    top.set_title(
        f"1 hot model among {result['args']['cold']} cold: {summary['failed']} failed of "
        f"{summary['sent']}; load average {result['load_average']['measure'][0]:.1f}"
        f"-{result['load_average']['end'][0]:.1f}",
        fontsize=9,
    )
    for key, label, color in (
        ("beside", "cold beside a hot replica", "tab:red"),
        ("elsewhere", "cold elsewhere", "tab:green"),
    ):
        for q, style in ((50, "-"), (99, ":")):
            bottom.plot(bins["t"], bins[f"{key}_p{q}"], style, color=color, label=f"{label} p{q}")
    bottom.axvline(hot_from, color="tab:gray", linestyle=":", linewidth=1)
    bottom.set_yscale("log")
    bottom.set_ylabel("cold latency, ms (5 s bins)")
    bottom.set_xlabel("seconds (hot load from the dotted line)")
    bottom.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cold", type=int, default=200, help="cold models (iris copies)")
    parser.add_argument(
        "--cold_rate", type=float, default=25.0, help="requests/s spread over the cold models"
    )
    parser.add_argument("--hot_load", type=float, default=2.5, help="the hot load, in replicas' worth")
    parser.add_argument(
        "--model_ms", type=float, default=3.0, help="the hot model's cost a request (calibrated rows)"
    )
    parser.add_argument(
        "--rows", type=int, default=160, help="rows a hot request (0: calibrated to --model_ms)"
    )
    parser.add_argument("--max_replicas", type=int, default=4, help="the hot model's autoscaling maximum")
    parser.add_argument("--target_ongoing_requests", type=float, default=0.25, help="the hot model's target")
    parser.add_argument("--own_hosts", action="store_true", help="the hot model's entry says own_hosts: true")
    parser.add_argument("--baseline_s", type=float, default=30.0)
    parser.add_argument("--hot_s", type=float, default=90.0)
    parser.add_argument(
        "--settle_s", type=float, default=30.0, help="into the hot phase, where 'settled' starts"
    )
    parser.add_argument("--out", type=pathlib.Path, default=servers.REPO / "benchmarks" / "hot_model")
    parser.add_argument("--plot_only", action="store_true", help="redraw <out>.png from <out>.json")
    args = parser.parse_args(argv)
    if args.plot_only:
        plot(json.loads(args.out.with_suffix(".json").read_text()), args.out.with_suffix(".png"))
        return 0

    loads = {"start": os.getloadavg()}
    rows = args.rows or calibrate_rows(args.model_ms)
    plain_env = servers.server_env
    # As benchmarks/autoscale.py: a Ray directory of our own, and no memory monitor killing
    # workers for other engineers' memory on a shared machine.
    extra = {
        "RAY_TMPDIR": str(pathlib.Path(tempfile.gettempdir()) / "tsh-ray"),
        "RAY_memory_monitor_refresh_ms": "0",
    }
    servers.server_env = lambda: {**plain_env(), **extra}
    print(
        f"hot model: benchmark DNN, {rows} rows a request{'' if args.rows else f' (~{args.model_ms:g} ms)'}; "
        f"{args.cold} cold iris copies; "
        f"load average {loads['start'][0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="hot-model-") as scratch:
        root = pathlib.Path(scratch)
        names, config, _ = write_models(root, args.cold)
        export(root / HOT)
        text = config.read_text()
        config.write_text(
            text.replace(
                "model_config_list {\n",
                "model_config_list {\n"
                f'  config {{ name: "{HOT}" base_path: "{root / HOT}" model_platform: "tensorflow" }}\n',
                1,
            )
        )
        autoscaling = root / "autoscaling.config"
        autoscaling.write_text(
            f'model {{ name: "{HOT}" max_replicas: {args.max_replicas} '
            f"target_ongoing_requests: {args.target_ongoing_requests}"
            f"{' own_hosts: true' if args.own_hosts else ''} }}\n"
        )
        port, rest = free_port(), free_port()
        server = ServerProcess(
            "tessera",
            [
                str(servers.REPO / ".venv" / "bin" / "tessera"),
                "serve",
                f"--port={port}",
                f"--rest_api_port={rest}",
                "--host=127.0.0.1",
                f"--model_config_file={config}",
                f"--autoscaling_config_file={autoscaling}",
            ],
            port,
            pathlib.Path(tempfile.gettempdir()) / "tessera-hot-model-bench.log",
        )
        server.start()
        assert server.proc is not None
        try:
            deadline = time.monotonic() + 300
            while b"All models available" not in server.log_path.read_bytes():
                if server.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tessera serve not ready; see {server.log_path}")
                time.sleep(0.5)
            available_s = time.monotonic() - server.started_at
            metrics = f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics"
            hot = predict_request(batch=rows, model_name=HOT).SerializeToString()
            cold = cold_payloads(names)
            probe_args = argparse.Namespace(
                **{**vars(args), "baseline_s": 0.0, "hot_s": 5.0, "cold_rate": 10.0}
            )
            probe, _ = asyncio.run(measure(server.target, metrics, hot, cold, probe_args, 10.0))
            p50 = float(np.median([r[2] for r in probe if r[1] == HOT and r[2] is not None]))
            per_replica = args.target_ongoing_requests / p50
            hot_rate = args.hot_load * per_replica
            print(
                f"up after {available_s:.1f}s; probe: hot p50 {p50 * 1000:.1f} ms -> one replica's worth "
                f"{per_replica:.0f}/s, hot load {hot_rate:.0f}/s; cold {args.cold_rate:g}/s",
                flush=True,
            )
            loads["measure"] = os.getloadavg()
            records, samples = asyncio.run(measure(server.target, metrics, hot, cold, args, hot_rate))
            loads["end"] = os.getloadavg()
        finally:
            server.stop()
    summary = summarize(records, samples, args)
    for phase in ("baseline", "hot_load", "hot_settled"):
        figures = summary[phase]
        assert isinstance(figures, dict)
        print(
            f"{phase:>12}: "
            + "; ".join(
                f"{k} p50 {v['p50_ms']:.1f} p99 {v['p99_ms']:.1f} ms ({v['failed']}/{v['requests']} failed)"
                for k, v in figures.items()
            )
        )
    scrapes = summary["scrapes"]
    assert isinstance(scrapes, dict)
    print(
        f"metrics scrapes: {scrapes['count']}, median {scrapes['p50_s']} s, max {scrapes['max_s']} s; cold requests "
        f"due during one: p50 {scrapes['cold_during']['p50_ms']:.1f} p99 {scrapes['cold_during']['p99_ms']:.1f} ms "
        f"({scrapes['cold_during']['requests']}), between: p50 {scrapes['cold_between']['p50_ms']:.1f} "
        f"p99 {scrapes['cold_between']['p99_ms']:.1f} ms ({scrapes['cold_between']['requests']})"
    )
    print(
        f"hot replicas/hosts over time: {' '.join(f'{c}/{h}@{t:.0f}s' for t, c, h in summary['hot_changes'])}; "  # type: ignore[attr-defined]
        f"hot hosts settled: {summary['hot_hosts']}; cold models beside a hot replica: {summary['cold_beside_hot']}"
        f"/{summary['cold_placed']}; cold models moved: {len(summary['cold_moved'])}; "  # type: ignore[arg-type]
        f"failed {summary['failed']}/{summary['sent']} {summary['error_codes'] or ''}"
    )
    print(
        "load average "
        + ", ".join(f"{k} {v[0]:.1f} {v[1]:.1f} {v[2]:.1f}" for k, v in loads.items())
        + " (2 cores, shared)"
    )
    result = {
        "rows": rows,
        "hot_rate": hot_rate,
        "per_replica": per_replica,
        "probe_p50_ms": p50 * 1000,
        "available_s": available_s,
        "load_average": loads,
        "args": {k: str(v) for k, v in vars(args).items()},
        "summary": summary,
        "samples": [asdict(s) | {"placed": len(s.placed)} for s in samples],
        "series": series(records, set(summary["beside"]), args.baseline_s + args.hot_s),  # type: ignore[call-overload]
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
