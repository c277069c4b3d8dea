"""A big Classify's conversion in a worker thread, as the gateway runs it: the event loop's worst gap
and the conversion's time, the examples cut by hand (`examples_bytes`) against protobuf's parse.

    python -m benchmarks.examples_cut --examples 1000000 --rounds 3

The message: ModelSpec + Input.example_list of `--examples` serialized examples of 100 bytes (about
100 MB for a million). Both paths run alternately in one process, beside one copy of the message.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time

from cluster.gateway import converters
from cluster.gateway.converters import examples_bytes
from exporter.protobuf_wire import field


async def _convert(raw: bytes) -> tuple[float, float]:
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await asyncio.to_thread(converters.examples_request, raw)
    elapsed = time.perf_counter() - started
    done.set()
    await task
    return max(gaps), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    body = b"".join(field(1, b"ex%07d" % i + b"z" * 90) for i in range(args.examples))
    raw = field(1, field(1, b"m")) + field(2, field(1, body))
    del body
    cut_bytes = examples_bytes.CUT_BYTES
    gc.collect()
    gc.freeze()  # as tessera serve does: a full collection of this process is not the conversion's
    print(f"{len(raw) / 2**20:.0f} MiB, {args.examples} examples")
    for _ in range(args.rounds):
        started = time.perf_counter()
        copy = raw[1:]
        one_copy = time.perf_counter() - started
        del copy
        for label, threshold in (("cut", cut_bytes), ("protobuf", len(raw) + 1)):
            examples_bytes.CUT_BYTES = threshold
            worst, elapsed = asyncio.run(_convert(raw))
            print(f"  {label:<8} loop's worst gap {worst * 1000:6.0f} ms  conversion {elapsed * 1000:6.0f} ms  "
                  f"(one copy {one_copy * 1000:.0f} ms, load {os.getloadavg()[0]:.2f})")
    examples_bytes.CUT_BYTES = cut_bytes


if __name__ == "__main__":
    main()
