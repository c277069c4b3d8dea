"""Data-plane calls in one process, for counting the instructions a call costs under valgrind.

A gateway's `ReplicaChannel` and a replica host's `DataPlaneServer` + `BatchedRunner` (the
benchmark model, `data_plane_cpu`'s batching parameters) share one event loop over loopback;
`--concurrency` callers each send calls of `--requests-per-call` requests back to back. CPU
figures on a shared 2-core machine move by ±10 % with its load; instruction counts do not:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m benchmarks.data_plane_calls --calls 400     # "Collected : N" at the end
    # ... and again with --calls 1600: (N1600 - N400) / 1200 is one call's instructions.

Both ends and the model are counted (not the kernel's side of the sockets); the coalescer,
servicer and gRPC are not in the path (`benchmarks.data_plane_cpu` has them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any


async def _calls(version_dir: str, calls: int, concurrency: int, per_call: int) -> None:
    from benchmarks.data_plane_cpu import BATCHING, SECRET
    from benchmarks.wire import SIGNATURE, decode_inputs, predict_request
    from cluster.config import BatchingConfig
    from cluster.replica.batched import BatchedRunner
    from cluster.replica.data_plane import DataPlaneServer
    from cluster.replica.replica import Replica
    from cluster.routing.channel import ReplicaChannel
    from exporter.servable import LoadOptions

    replica = Replica("bench", enable_warmup=False, options=LoadOptions(intra_op_threads=1))
    replica.load(1, version_dir)
    runner = BatchedRunner(replica, BatchingConfig(**BATCHING))

    async def run(model: str, version: int, signature: Any, requests: Sequence[Any], output_filter: Sequence[str],
                  timeouts: Sequence[float | None] | None) -> Any:
        return await runner.run(version, signature, requests, output_filter, timeouts)

    server = DataPlaneServer(run, SECRET)
    # Under valgrind a loop step can take seconds: no liveness timeout that would call the
    # replica hung and end the run early.
    channel = ReplicaChannel(await server.start("127.0.0.1"), SECRET, ping_interval_s=3600.0,
                             liveness_timeout_s=7200.0)
    feeds = [decode_inputs(predict_request(batch=1, seed=0))] * per_call

    async def caller(n: int) -> None:
        for _ in range(n):
            results = await channel.run(1, SIGNATURE, feeds, (), [10.0] * per_call, model="bench")
            if any(isinstance(r, BaseException) for r in results):
                raise RuntimeError(f"a call failed: {results}")

    await asyncio.gather(*(caller(50) for _ in range(concurrency)))  # warm: connection, queue
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    await channel.close()
    await server.close()
    print(f"{calls // concurrency * concurrency} calls of {per_call} requests answered", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--requests-per-call", type=int, default=1)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"
    from benchmarks import model

    scratch = pathlib.Path(tempfile.mkdtemp(prefix="tessera-dp-calls-"))
    try:
        model.export(scratch / "m")
        asyncio.run(_calls(str(scratch / "m" / "1"), args.calls, args.concurrency, args.requests_per_call))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
