"""Memory of the first and the second replica of the same model (issue 3, point 4).

Exports a model with a 256 MiB weight matrix, serves it with two replicas on an embedded local
Ray, runs a request through each replica so every weight page is touched, and prints each
replica's RSS and PSS. Variables are memory-mapped from the bundle on local disk, so the two
replicas share one copy in the page cache: RSS counts the shared pages in both processes, PSS
splits them between the sharers. Run: `.venv/bin/python -m benchmarks.replica_memory`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import numpy as np

from cluster.app import TesseraServer, init_ray
from cluster.config import ModelConfig, ServeOptions, ServerConfig
from cluster.requests import ModelSpec, PredictRequest
from exporter import bundle, dtypes, storage
from exporter.graph import GraphBuilder
from exporter.ops import math
from exporter.outputs import PredictOutput
from protos.tessera import bundle_pb2

ROWS, COLS = 8192, 8192  # 256 MiB of float32


def export(base: str) -> None:
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, ROWS), name="x")
    w = g.variable(np.random.default_rng(0).standard_normal((ROWS, COLS), dtype=np.float32), "w")
    meta = bundle_pb2.MetaGraph(format_version=1, tags=["serve"])
    meta.signatures["serving_default"].CopyFrom(PredictOutput({"y": math.matmul(x, w)}).as_signature_def({"x": x}))
    meta.graph.CopyFrom(g.to_proto())
    with tempfile.TemporaryDirectory() as staging:
        bundle.write_bundle(staging, meta, g.variables, {}, {})
        storage.publish(staging, base, 1)


async def measure(base: str) -> list[dict[str, int]]:
    options = ServeOptions(host="127.0.0.1", grpc_port=0, num_replicas=2, replica_num_cpus=0.5)
    server = TesseraServer(options, ServerConfig((ModelConfig("big", base),)))
    await server.start()
    try:
        assert await server.wait_ready(300)
        request = PredictRequest(ModelSpec("big"), {"x": np.ones((1, ROWS), np.float32)})
        for _ in range(8):  # both replicas (power of two choices) touch every page of w
            await asyncio.gather(*(server.dispatcher.predict(request) for _ in range(4)))
        return await server.controller.replica_memory.remote("big")
    finally:
        await server.stop(grace=1)


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        base = os.path.join(root, "big")
        export(base)
        init_ray(ServeOptions(), num_cpus=2)
        stats = asyncio.run(measure(base))
    mib = 1024 * 1024
    print(f"weights: {ROWS * COLS * 4 / mib:.0f} MiB, memory-mapped from the bundle")
    for i, s in enumerate(stats, 1):
        print(f"replica {i} (pid {s['pid']}): RSS {s['rss'] / mib:.0f} MiB, PSS {s['pss'] / mib:.0f} MiB")
    total_rss = sum(s["rss"] for s in stats) / mib
    total_pss = sum(s["pss"] for s in stats) / mib
    print(f"both: RSS sum {total_rss:.0f} MiB, PSS sum {total_pss:.0f} MiB "
          f"(RSS - PSS = {total_rss - total_pss:.0f} MiB counted twice by RSS, i.e. shared)")


if __name__ == "__main__":
    main()
