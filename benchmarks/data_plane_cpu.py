"""CPU per Predict of Tessera's own Python on the small-Predict path, without gRPC and without Ray.

This process runs the gateway's path from the request's bytes to the response's bytes (servicer,
metrics, dispatcher, coalescer, data-plane channel); a child process runs a replica host's end
(DataPlaneServer, BatchedRunner with the benchmark's batching parameters, the numpy runtime). Both
sides' CPU comes from their own counters (/proc/<pid>/stat utime + stime) over exactly `--requests`
answered Predicts. The concurrency sets how many requests each data-plane call carries (about 1 at
c=2, up to the batch size at c=128), which separates what a *call* costs from what a *request*
costs: under `benchmarks.gateways`' load a gateway sends ~3 requests per call, so the per-call part
dominates the replica host's CPU. The gRPC server's own cost (~200 us per Predict on this machine,
the same for the plain server) is not in these figures.

    python -m benchmarks.data_plane_cpu [--requests 20000] [--levels 2 8 128] [--rounds 2]

Loopback only; the child is stopped by its PID. BLAS runs one thread, as in a replica of 0.5 CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

SECRET = b"s" * 32
BATCHING = {"max_batch_size": 32, "batch_timeout_micros": 0, "max_enqueued_batches": 128, "num_batch_threads": 1}


def cpu_seconds(pid: int) -> float:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _replica_host(version_dir: str, out: Any) -> None:
    """The replica host's data plane over one model, as `ReplicaHost` runs it (without Ray)."""
    from cluster.config import BatchingConfig
    from cluster.replica.actor import examples_with_context
    from cluster.replica.batched import BatchedRunner
    from cluster.replica.data_plane import DataPlaneServer
    from cluster.replica.replica import Replica
    from exporter.servable import LoadOptions

    replica = Replica("bench", enable_warmup=False, options=LoadOptions(intra_op_threads=1))
    replica.load(1, version_dir)
    runner = BatchedRunner(replica, BatchingConfig(**BATCHING))

    async def run(model: str, version: int, signature: Any, requests: Any, output_filter: Any, timeouts: Any) -> Any:
        return await runner.run(version, signature, [examples_with_context(r) for r in requests], output_filter, timeouts)

    async def main() -> None:
        server = DataPlaneServer(run, SECRET)
        out.put(await server.start("127.0.0.1"))
        await asyncio.sleep(3600)

    asyncio.run(main())


class _Context:
    """What the servicer reads of a grpc.aio context on the success path."""

    def time_remaining(self) -> float:
        return 10.0

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")


async def _measure(address: tuple[str, int], signatures: Any, payload: bytes, levels: list[int], requests: int,
                   replica_pid: int) -> list[dict[str, Any]]:
    from cluster.gateway.instrumented import InstrumentedAPI
    from cluster.gateway.servicers import PredictionServicer
    from cluster.metrics import MetricsExporter
    from cluster.routing.channel import ReplicaChannel
    from cluster.routing.dispatcher import Dispatcher
    from cluster.routing.table import ModelRoute, ReplicaRef, RoutingTable
    from cluster.types import ServableState, VersionStatus

    route = ModelRoute(name="bench", available={1: signatures}, labels={},
                       replicas=(ReplicaRef(None, address, "bench"),),
                       statuses=(VersionStatus(1, ServableState.AVAILABLE),))
    table = RoutingTable(epoch=1, models={"bench": route})

    async def poll(epoch: int, incarnation: str) -> RoutingTable:
        if epoch >= table.epoch:
            await asyncio.sleep(3600)
        return table

    async def reload(config: Any) -> None:
        raise RuntimeError("no reloads here")

    dispatcher = Dispatcher(poll, reload, host_channel=lambda a: ReplicaChannel(a, SECRET))
    await dispatcher.start()
    api = InstrumentedAPI(dispatcher, MetricsExporter().gateway, "grpc", lambda name: True)
    servicer = PredictionServicer(api, metadata_lookup=dispatcher.model_metadata)
    context = _Context()

    async def caller(calls: int) -> None:
        for _ in range(calls):
            await servicer.Predict(payload, context)

    rows = []
    await asyncio.gather(*(caller(50) for _ in range(32)))  # warm: connection, queues, caches
    for c in levels:
        per_caller = max(1, requests // c)
        gateway0, replica0, start = cpu_seconds(os.getpid()), cpu_seconds(replica_pid), time.monotonic()
        await asyncio.gather(*(caller(per_caller) for _ in range(c)))
        wall = time.monotonic() - start
        n = per_caller * c
        rows.append({
            "concurrency": c, "requests": n, "rps": n / wall,
            "gateway_us_per_request": 1e6 * (cpu_seconds(os.getpid()) - gateway0) / n,
            "replica_us_per_request": 1e6 * (cpu_seconds(replica_pid) - replica0) / n,
            "loadavg": " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3]),
        })
    await dispatcher.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 8, 128])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"  # inherited by the child
    from benchmarks import model
    from benchmarks.wire import predict_request
    from exporter.servable import LoadOptions, load_servable

    scratch = pathlib.Path(tempfile.mkdtemp(prefix="tessera-dp-cpu-"))
    ctx = mp.get_context("forkserver")
    child = None
    try:
        model.export(scratch / "m")
        version_dir = str(scratch / "m" / "1")
        signatures = load_servable("tensorflow", version_dir, LoadOptions(intra_op_threads=1)).signatures
        payload = predict_request(batch=1, seed=0).SerializeToString()
        out = ctx.Queue()
        child = ctx.Process(target=_replica_host, args=(version_dir, out), daemon=True)
        child.start()
        address = out.get(timeout=120)
        print("| round | c | requests | req/s | gateway CPU µs/Predict | replica CPU µs/Predict | load avg |\n"
              "|---|---|---|---|---|---|---|", flush=True)
        for i in range(1, args.rounds + 1):
            assert child.pid is not None
            for r in asyncio.run(_measure(tuple(address), signatures, payload, args.levels, args.requests, child.pid)):
                print(f"| {i} | {r['concurrency']} | {r['requests']} | {r['rps']:.0f} | {r['gateway_us_per_request']:.0f} "
                      f"| {r['replica_us_per_request']:.0f} | {r['loadavg']} |", flush=True)
    finally:
        if child is not None and child.is_alive():
            child.kill()  # by its PID: this process started it
            child.join(5)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
