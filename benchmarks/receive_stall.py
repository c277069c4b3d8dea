"""How long grpc.aio holds its event loop while it receives (and answers) one big message.

    python -m benchmarks.receive_stall --sizes 1 10 32 64 100 --repeat 4 [--echo]

A grpc.aio server (in a subprocess, so the client's own copies do not share its GIL) with one
method that takes the message's bytes as they come (no deserializer, as the gateway's handlers) and
answers either a few bytes or the message itself (`--echo`); a ticker on its loop records the
loop's worst gap while each call runs. Each size is sent `--repeat` times, the worst gap and the
median are printed, beside one copy of a message that size measured in the server at the same time
(the yardstick the loop-stall tests use). The first call of each size is the first message that
size the server's heap has seen (fresh pages); the later ones are what a busy gateway pays. Beside
each call's worst gap: the CPU time and page faults of the loop's thread over the call (its own
rusage), which a crowded machine disturbs far less than wall time.

Variants, side by side in one run (alternated, `--rounds` times): `--retained BYTES` runs the server
with `cluster.heap.retain_freed_memory(BYTES)`, as `tessera serve
--gateway_retained_heap_bytes` does (0: glibc's defaults); `--env NAME=VALUE[,...]` sets the
server's environment instead (e.g. glibc's `MALLOC_*` or `GLIBC_TUNABLES`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

MIB = 2**20
_BIG = 2**31 - 1
_OPTIONS = [("grpc.max_send_message_length", _BIG), ("grpc.max_receive_message_length", _BIG)]

_SERVER = r"""
import asyncio, gc, json, resource, sys, time
import grpc

gaps = []
mark = [None]
def usage():  # the loop's own thread: CPU seconds and page faults
    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime, r.ru_minflt
async def ticker():
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now

def copy_seconds(n):
    data = b"x" * n
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter(); c = data[1:]; best = min(best, time.perf_counter() - t); del c
    return best

async def main():
    echo = sys.argv[1] == "echo"
    from cluster import heap
    heap.retain_freed_memory(int(sys.argv[2]))
    async def big(request, context):
        return request if echo else b"ok"
    async def reset(request, context):
        gaps.clear()
        mark[0] = usage()
        return b""
    async def worst(request, context):
        cpu, faults = usage()
        return json.dumps({"worst": max(gaps, default=0.0), "cpu": cpu - mark[0][0],
                           "faults": faults - mark[0][1]}).encode()
    async def copy(request, context):
        return json.dumps(copy_seconds(int(request))).encode()
    handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in
                (("Big", big), ("Reset", reset), ("Worst", worst), ("Copy", copy))}
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 2**31 - 1),
                                      ("grpc.max_receive_message_length", 2**31 - 1)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gc.freeze()
    asyncio.get_running_loop().create_task(ticker())
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def _measure(env: dict[str, str], retained: int, sizes: list[int], repeat: int, echo: bool) -> dict[str, Any]:
    import grpc

    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, "echo" if echo else "small", str(retained)],
        stdout=subprocess.PIPE, env={**os.environ, **env}, text=True, cwd=pathlib.Path(__file__).parent.parent,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS)
        big = channel.unary_unary("/bench/Big")
        reset = channel.unary_unary("/bench/Reset")
        worst = channel.unary_unary("/bench/Worst")
        copy = channel.unary_unary("/bench/Copy")
        big(b"x", timeout=10)  # warm
        rows: dict[str, Any] = {}
        for size in sizes:
            body = os.urandom(1024) * (size * 1024)
            calls = []
            for _ in range(repeat):
                reset(b"", timeout=10)
                time.sleep(0.05)
                big(body, timeout=120)
                time.sleep(0.05)
                calls.append(json.loads(worst(b"", timeout=30)))
            # Measured after the calls: in the server it allocates (and, retained, warms) the heap.
            yardstick = json.loads(copy(str(len(body)).encode(), timeout=30))
            rows[str(size)] = {"worst_ms": [round(c["worst"] * 1000, 1) for c in calls],
                               "cpu_ms": [round(c["cpu"] * 1000) for c in calls],
                               "faults": [c["faults"] for c in calls],
                               "copy_ms": round(yardstick * 1000, 1)}
            del body
        channel.close()
        return rows
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 32, 64, 100], help="MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--echo", action="store_true", help="answer the message itself")
    parser.add_argument("--retained", type=int, nargs="+", default=[0, 1 << 30],
                        help="variants: retain_freed_memory(BYTES) in the server (0: glibc's defaults)")
    parser.add_argument("--env", action="append", default=[], help="more variants: NAME=VALUE[,NAME=VALUE]")
    parser.add_argument("--rounds", type=int, default=1, help="run every variant this many times, alternated")
    args = parser.parse_args()
    variants: list[tuple[str, dict[str, str], int]] = [(f"retained {r}", {}, r) for r in args.retained]
    variants += [(spec, dict(item.split("=", 1) for item in spec.split(",") if item), 0) for spec in args.env]
    for _ in range(args.rounds):
        for label, env, retained in variants:
            rows = _measure(env, retained, args.sizes, args.repeat, args.echo)
            load = os.getloadavg()
            print(f"{label}  echo={args.echo}  load {load[0]:.2f}")
            for size, row in rows.items():
                print(f"  {size:>4} MiB  worst gap ms {row['worst_ms']} (median of later "
                      f"{statistics.median(row['worst_ms'][1:] or row['worst_ms']):.1f})  loop thread CPU ms "
                      f"{row['cpu_ms']}  page faults {row['faults']}  one copy {row['copy_ms']} ms")


if __name__ == "__main__":
    main()
