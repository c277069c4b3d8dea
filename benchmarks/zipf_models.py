"""1,000 copies of iris under a memory budget that holds 100 of them, requests by a Zipf law (issue 11).

Setup (`many_models.write_models`): the iris model exported once and copied N times (default
1,000), each copy a model of its own, all served by `tessera serve` with `make serve`'s defaults
except:
- `--max_replica_hosts=H` (default 4) and `--replica_memory_budget_bytes=B` per host, where
  B = ceil(capacity x size / H): `size` is one model's resident bytes, measured here by loading
  the iris bundle in this process (`Servable.resident_bytes`, what a replica host reports for the
  model's slot), and `capacity` (default 100) is how many models the H hosts hold in all;
- every model at `min_replicas: 0` (an `--autoscaling_config_file` naming them all), so the
  memory budget may evict a model's last replica (LRU, none used in the last 10 s), and
  `--scale_to_zero_idle_s` (default 60) unloads a model nobody asked for in that long.

At start every model loads once (its versions become AVAILABLE: a model at zero replicas keeps
them and loads on demand), over the budget; once they have idled 10 s the hosts evict down to it.
The benchmark waits for that (the loaded models, summed `tessera_replicas`, at most 1.2 x
capacity), then sends Predicts for `--seconds` (default 120) in an OPEN loop at a fixed rate
(`--rate`, default 10/s, Poisson arrivals; no bound on concurrency, each call's deadline 60 s)
spread over all N models by a Zipf law: rank k (a fixed random permutation of the models,
numpy seed 0) drawn with probability proportional to k^-s (`--exponent`, default 1.1).

It prints:
- the hit rate seen by the client: a request answered faster than a threshold found its model
  loaded, a slower one waited for a cold start (a placement, a load and a routing-table publish);
  and p50/p99 of each class, with a latency histogram that shows the split. The threshold is
  `--cold_ms`, by default 5 times the median of the hottest model's requests (asked every
  fraction of a second, it is never evicted: its latencies are hits, measured in the same run).
  On a crowded machine the classes overlap (a hit may wait 300 ms for a CPU; a cold start of
  iris costs the controller ~20 ms), so the server's count below is the firmer figure;
- the same from the server's metrics, over the request phase: cold starts
  (`tessera_model_cold_start_latency_seconds_count`, one per model brought back, however many
  requests waited for it), evictions (`tessera_model_evictions_total`) and scale-to-zero
  (`tessera_model_scaled_to_zero_total`), beside the hit rate an ideal LRU cache of `capacity`
  models would have on the same requests;
- failed requests (any non-OK status) and wrong answers (outputs compared with the bundle run
  in this process), both goal 0;
- the models loaded (with a replica) before, during (sampled every 5 s) and after the phase,
  against the capacity;
- the total PSS of the server's session (every Tessera and Ray process) after startup (all
  loaded once) and at the end, and the load average.

Run: `.venv/bin/python -m benchmarks.zipf_models [--models 1000 --capacity 100 --hosts 4]`. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from benchmarks.many_models import expected_answer, session_pss_mb, wait_all_available, write_models
from benchmarks.servers import REPO, ServerProcess, free_port
from benchmarks.wire import PREDICT_METHOD

SAMPLE_S = 5.0  # between two scrapes of the metrics during the phase
SERVER_COUNTERS = {
    "cold starts": "tessera_model_cold_start_latency_seconds_count",
    "evictions": "tessera_model_evictions_total",
    "scaled to zero": "tessera_model_scaled_to_zero_total",
}


def one_model_bytes(bundle_base: pathlib.Path) -> int:
    """The resident bytes one copy's servable reports once loaded (what the budget counts)."""
    from exporter.servable import load_servable

    (version,) = [p for p in bundle_base.iterdir() if p.name.isdigit()]
    servable = load_servable("tensorflow", str(version))
    try:
        return int(servable.resident_bytes)
    finally:
        servable.close()


def zipf_ranks(count: int, exponent: float, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`size` draws of model indices: rank k with probability k^-exponent (normalized over
    `count` ranks), ranks mapped to models by a seeded permutation; each rank's probability; and
    the permutation (the model at each rank)."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, count + 1, dtype=np.float64) ** -exponent
    p = weights / weights.sum()
    order = rng.permutation(count)  # order[k]: the model at rank k+1
    return order[rng.choice(count, size=size, p=p)], p, order


def lru_hit_rate(picks: list[int], capacity: int) -> float:
    """The hit rate of an ideal least-recently-used cache of `capacity` models on these requests
    (starting empty, loads instant, one request at a time): what the eviction policy aims at."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for model in picks:
        if model in cache:
            hits += 1
            cache.move_to_end(model)
        else:
            cache[model] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / max(len(picks), 1)


def scrape(url: str) -> tuple[dict[str, float], int] | None:
    """Each server counter summed over the models, and the models with a replica."""
    try:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    except OSError:
        return None
    totals = {}
    for label, name in SERVER_COUNTERS.items():
        totals[label] = sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))
    loaded = sum(1 for v in re.findall(r"^tessera_replicas\{[^}]*\} (\S+)$", text, re.M) if float(v) > 0)
    return totals, loaded


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)  # answered OK, seconds
    models: list[int] = field(default_factory=list)  # the model of each answered request
    sent_at: list[float] = field(default_factory=list)  # when each answered request left, s into the phase
    codes: dict[str, int] = field(default_factory=dict)
    wrong: int = 0
    sent: int = 0
    lag: list[float] = field(default_factory=list)  # how late each request left (the generator's own lag)
    loaded: list[int] = field(default_factory=list)  # models with a replica, every SAMPLE_S
    scrapes: list[float] = field(default_factory=list)  # how long each metrics scrape took, s


def _requests(names: list[str], x: np.ndarray) -> list[bytes]:
    from exporter import tensor_encode
    from protos.tensorflow_serving.apis import predict_pb2

    payloads = []
    for name in names:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = "predict"
        tensor_encode.array_to_proto(x, request.inputs["x"])
        payloads.append(request.SerializeToString())
    return payloads


async def drive(target: str, metrics: str, payloads: list[bytes], picks: np.ndarray, rate: float, seconds: float,
                want: dict[str, np.ndarray], seed: int) -> Phase:
    import grpc

    from exporter import tensor_codec
    from protos.tensorflow_serving.apis import predict_pb2

    phase = Phase()
    rng = np.random.default_rng(seed + 1)
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(PREDICT_METHOD)

        async def one(model: int) -> None:
            sent = time.monotonic()
            offset = sent - start
            try:
                reply = await call(payloads[model], timeout=60.0)
            except grpc.RpcError as exc:
                phase.codes[exc.code().name] = phase.codes.get(exc.code().name, 0) + 1
                return
            phase.latencies.append(time.monotonic() - sent)
            phase.models.append(model)
            phase.sent_at.append(offset)
            got = predict_pb2.PredictResponse.FromString(reply).outputs
            if any(a not in got or not np.allclose(tensor_codec.proto_to_array(got[a]), v, atol=1e-5)
                   for a, v in want.items()):
                phase.wrong += 1

        async def sample() -> None:
            while True:
                began = time.monotonic()
                found = await asyncio.to_thread(scrape, metrics)
                phase.scrapes.append(time.monotonic() - began)
                if found is not None:
                    phase.loaded.append(found[1])
                await asyncio.sleep(SAMPLE_S)

        sampler = asyncio.ensure_future(sample())
        tasks: set[asyncio.Task[None]] = set()
        start, at = time.monotonic(), 0.0
        for pick in picks:
            at += float(rng.exponential(1.0 / rate))
            if at >= seconds:
                break
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            phase.lag.append(time.monotonic() - start - at)
            task = asyncio.ensure_future(one(int(pick)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            phase.sent += 1
        if tasks:
            await asyncio.wait(set(tasks), timeout=90)
        sampler.cancel()
    return phase


def _ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.0f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--capacity", type=int, default=100, help="models the budget holds in all")
    parser.add_argument("--hosts", type=int, default=4, help="--max_replica_hosts")
    parser.add_argument("--rate", type=float, default=10.0, help="requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--exponent", type=float, default=1.1)
    parser.add_argument("--scale_to_zero_idle_s", type=float, default=60.0)
    parser.add_argument("--cold_ms", type=float, default=0.0,
                        help="slower than this: a cold start (default: 5x the hottest model's median)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every model")
    parser.add_argument("--keep", help="directory for the models and the server log (default: a temporary one)")
    args = parser.parse_args(argv)

    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="zipf-models-"))
    root.mkdir(parents=True, exist_ok=True)
    before = os.getloadavg()
    names, config, bundle_base = write_models(root, args.models)
    size = one_model_bytes(bundle_base)
    budget = math.ceil(args.capacity * size / args.hosts)
    autoscaling = root / "autoscaling.config"
    autoscaling.write_text("".join(f'model {{ name: "{n}" min_replicas: 0 }}\n' for n in names))
    x = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    want = expected_answer(bundle_base, x)
    picks, p, order = zipf_ranks(len(names), args.exponent, int(args.rate * args.seconds * 2) + 100, seed=0)
    print(f"{len(names)} copies of iris, {size} resident bytes each; --max_replica_hosts={args.hosts} "
          f"--replica_memory_budget_bytes={budget} (holds {args.capacity} in all); Zipf s={args.exponent}: "
          f"the top {args.capacity} ranks get {p[:args.capacity].sum():.1%} of requests", flush=True)
    print(f"load average before: {before[0]:.2f} {before[1]:.2f} {before[2]:.2f}", flush=True)
    port, rest = free_port(), free_port()
    server = ServerProcess("tessera", [
        str(REPO / ".venv" / "bin" / "tessera"), "serve", f"--port={port}", f"--rest_api_port={rest}",
        f"--model_config_file={config}", f"--autoscaling_config_file={autoscaling}",
        f"--max_replica_hosts={args.hosts}", f"--replica_memory_budget_bytes={budget}",
        f"--scale_to_zero_idle_s={args.scale_to_zero_idle_s}",
    ], port, root / "serve.log")
    metrics = f"http://127.0.0.1:{rest}/monitoring/prometheus/metrics"
    server.start()
    assert server.proc is not None
    try:
        available_s = wait_all_available(server, args.timeout)
        pss_start, _ = session_pss_mb(server.proc.pid)
        settled = time.monotonic()
        while True:  # the start's over-budget loads evicted (they idle 10 s first)
            found = scrape(metrics)
            if found is not None and found[1] <= 1.2 * args.capacity:
                break
            if time.monotonic() - settled > 300:
                raise TimeoutError(f"still {found and found[1]} models loaded 300 s after all were available")
            time.sleep(1.0)
        print(f"all AVAILABLE after {available_s:.1f}s (PSS {pss_start:.0f} MiB, all loaded once); "
              f"down to {found[1]} loaded {time.monotonic() - settled:.1f}s later", flush=True)
        counters_before, loaded_before = found
        load_start = os.getloadavg()
        phase = asyncio.run(drive(server.target, metrics, _requests(names, x), picks, args.rate, args.seconds,
                                  want, seed=0))
        after = scrape(metrics)
        pss_end, by_label = session_pss_mb(server.proc.pid)
        load_end = os.getloadavg()
    finally:
        server.stop()
    # The hottest model is asked every fraction of a second: after its first request it is never
    # idle long enough to be evicted, so its latencies are those of hits, measured in this run.
    hot = [t for m, t in zip(phase.models, phase.latencies, strict=True) if m == int(order[0])][1:]
    cold_s = args.cold_ms / 1000 if args.cold_ms else 5 * float(np.median(hot)) if hot else 0.05
    why = "--cold_ms" if args.cold_ms else "5x the hottest model's median"
    hits = [t for t in phase.latencies if t < cold_s]
    colds = [t for t in phase.latencies if t >= cold_s]
    (root / "latencies.json").write_text(json.dumps({"models": phase.models, "latencies": phase.latencies}))
    edges = [0, 5, 10, 20, 50, 100, 250, 500, 1000, 1e9]
    counts = np.histogram(np.array(phase.latencies) * 1000, bins=edges)[0]
    failed = sum(phase.codes.values())
    answered = len(phase.latencies)
    print(f"requests: {phase.sent} in {args.seconds:.0f}s at {args.rate:g}/s (open loop), to "
          f"{len(set(picks[:phase.sent].tolist()))} distinct models; generator lag p99 {_ms(phase.lag, 99)} ms")
    print(f"client side: hits {len(hits)} ({len(hits) / max(answered, 1):.1%}) p50 {_ms(hits, 50)} ms "
          f"p99 {_ms(hits, 99)} ms; cold starts {len(colds)} p50 {_ms(colds, 50)} ms p99 {_ms(colds, 99)} ms "
          f"(>= {cold_s * 1000:.0f} ms: {why})")
    print("latency histogram (ms): " + ", ".join(
        f"{lo:g}-{hi:g}: {n}" if hi < 1e9 else f"{lo:g}+: {n}" for lo, hi, n in zip(edges, edges[1:], counts, strict=False)))
    if after is not None:
        deltas = {k: after[0][k] - counters_before[k] for k in SERVER_COUNTERS}
        print("server side, during the phase: " + ", ".join(f"{k} {v:.0f}" for k, v in deltas.items())
              + f"; hit rate at most {1 - deltas['cold starts'] / max(phase.sent, 1):.1%} (each cold start "
              "was asked for by at least one request)")
        print(f"  an ideal LRU of {args.capacity} models (instant loads, starting empty) on the same requests: "
              f"{lru_hit_rate(picks[:phase.sent].tolist(), args.capacity):.1%}")
    for label, (t0, t1) in (("first", (0.0, args.seconds / 2)), ("second", (args.seconds / 2, args.seconds))):
        got = [t for t, at in zip(phase.latencies, phase.sent_at, strict=True) if t0 <= at < t1]
        print(f"  {label} half: {len(got)} answered, client hits {sum(t < cold_s for t in got) / max(len(got), 1):.1%}")
    print(f"failed requests: {failed} {phase.codes or ''}; wrong answers: {phase.wrong}")
    if after is not None:
        print(f"models loaded: {loaded_before} at the start, {after[1]} at the end, during the phase max "
              f"{max(phase.loaded, default=0)} mean {np.mean(phase.loaded) if phase.loaded else 0:.0f} (capacity "
              f"{args.capacity}; a scrape every {SAMPLE_S:g}s, {_ms(phase.scrapes, 50)} ms median)")
    hosts = by_label.get("ray::ReplicaHost", (0, 0.0))
    print(f"total PSS of the session: after startup {pss_start:.0f} MiB, at the end {pss_end:.0f} MiB "
          f"(replica hosts: {hosts[0]} processes, {hosts[1]:.0f} MiB)")
    print(f"load average: {load_start[0]:.2f} at the phase's start, {load_end[0]:.2f} {load_end[1]:.2f} "
          f"{load_end[2]:.2f} at its end (2 cores, shared)")
    return 1 if failed or phase.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
