"""Two models on one replica host: what a 100 MB call to one costs the other's small calls.

The host side of `make chaos`'s "100 MB gRPC Predicts" scenario without Ray or a gateway: a host
process serves the data plane (`DataPlaneServer`) for two slots, `bench` (the benchmark DNN) and
`target` (y = 2x over x float32 [-1, 2]), run as `ReplicaHost.run` runs them (`compute`); a client
process (a gateway's `ReplicaChannel`, one connection to the host) sends `--rounds` calls of
`--mib` MiB to `target` while Predicts of one row go to `bench` back to back.

Per round it prints the big call's time, how many `bench` calls were answered while it was in
flight, their worst latency and the big call's step(s) that worst call overlapped, the host loop's
worst gap (a ticker in the host, asked every
1 ms) and the step of the big call it fell in: `read` (the frame's body arriving), `decode`,
`run`, `encode`, `write` (the answer going out), or `-` (between steps), and the CPU time and page
faults of the host loop's thread in the round. `TESSERA_COHOST_RETAINED_HEAP_BYTES=N` gives the
host process the gateway's malloc settings (`cluster.heap.retain_freed_memory(N)`). Wall times on a shared
machine are noisy: quote the load average beside them.

    .venv/bin/python -m benchmarks.cohost --rounds 4 --mib 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SECRET = b"c" * 32
STEPS: list[tuple[str, float, float]] = []  # (step, started, ended) of big frames, host side


def _timed(name: str, fn: Callable[..., Any], big: Callable[..., bool]) -> Callable[..., Any]:
    """`fn`, recording its span in STEPS when `big(*args)` says the call concerns a big frame."""
    if asyncio.iscoroutinefunction(fn):
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                if big(*args):
                    STEPS.append((name, started, time.perf_counter()))
        return run_async

    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if big(*args):
                STEPS.append((name, started, time.perf_counter()))
    return run


def _host(root: pathlib.Path) -> None:
    """The host process: prints its port, then one JSON line per `report` line read on stdin."""
    from cluster.replica import data_plane, stream, wire
    from cluster.replica.replica import Replica, compute

    def big(tensor_sets: Any) -> bool:
        return stream.payload_bytes([t for t in tensor_sets if isinstance(t, dict)]) > stream.BIG

    # The steps a big call goes through, wrapped where the server looks them up.
    # A big frame's body comes in reads the parser copies into its buffer (merged below).
    feed = stream.FrameParser.feed

    def filling(parser: stream.FrameParser) -> bool:
        dest = parser._dest  # noqa: SLF001
        return parser._big is not None or (dest is not None and len(dest) > stream.BIG)  # noqa: SLF001

    def timed_feed(parser: stream.FrameParser, data: bytes) -> None:
        started, before = time.perf_counter(), filling(parser)
        try:
            feed(parser, data)
        finally:
            if before or filling(parser):
                STEPS.append(("read", started, time.perf_counter()))

    stream.FrameParser.feed = timed_feed  # type: ignore[method-assign]
    wire.decode_call = _timed("decode", wire.decode_call, lambda header, payload: payload.nbytes > stream.BIG)
    wire.encode_results = _timed("encode", wire.encode_results, lambda call_id, results, *_: big(results))
    send = stream.FrameWriter.send
    stream.FrameWriter.send = _timed(  # type: ignore[method-assign]
        "write", send, lambda self, frame: sum(len(p) for p in frame) > stream.BIG)

    if os.environ.get("TESSERA_COHOST_RETAINED_HEAP_BYTES"):  # the gateway's malloc settings, on the host
        from cluster.heap import retain_freed_memory

        retain_freed_memory(int(os.environ["TESSERA_COHOST_RETAINED_HEAP_BYTES"]))
    replicas = {name: Replica(name, enable_warmup=False) for name in ("bench", "target")}
    for name, replica in replicas.items():
        replica.load(1, str(root / name / "1"))

    async def run_call(model: str, version: int, signature: Any, requests: Any, output_filter: Any,
                       timeouts: Any) -> Any:
        replica = replicas[model]
        return await compute(lambda: replica.run(version, signature, requests, output_filter), *requests)

    async def main() -> None:
        server = data_plane.DataPlaneServer(_timed("run", run_call, lambda *a: big(a[3])), SECRET)
        _, port = await server.start("127.0.0.1")
        gaps: list[tuple[float, float]] = []

        async def tick() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append((last, now - last))
                last = now

        ticking = asyncio.get_running_loop().create_task(tick())
        print(port, flush=True)
        loop = asyncio.get_running_loop()
        usage = resource.getrusage(resource.RUSAGE_THREAD)  # the loop's thread (this one)
        process = resource.getrusage(resource.RUSAGE_SELF)
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "report":
            since = float((await loop.run_in_executor(None, sys.stdin.readline)).strip())
            window = [(t, g) for t, g in gaps if t + g >= since]
            start, worst = max(window, key=lambda tg: tg[1], default=(0.0, 0.0))
            steps = [s for s in STEPS if s[2] >= since and s[0] != "read"]
            reads = [s for s in STEPS if s[2] >= since and s[0] == "read"]
            if reads:  # one big call a round: its body's reads (whole or parts) are one step
                steps.insert(0, ("read", min(a for _, a, _ in reads), max(b for _, _, b in reads)))
            during = [n for n, a, b in steps if a < start + worst and b > start] or ["-"]
            now, now_process = resource.getrusage(resource.RUSAGE_THREAD), resource.getrusage(resource.RUSAGE_SELF)
            faults = {"loop_faults": now.ru_minflt - usage.ru_minflt,
                      "loop_cpu": now.ru_utime + now.ru_stime - usage.ru_utime - usage.ru_stime,
                      "process_faults": now_process.ru_minflt - process.ru_minflt}
            usage, process = now, now_process
            print(json.dumps({**faults, "worst_gap": worst, "step": "+".join(during),
                              "steps": steps}), flush=True)
            gaps.clear()
            STEPS.clear()
        ticking.cancel()
        await server.close()

    asyncio.run(main())


async def _client(port: int, host: subprocess.Popen[str], rounds: int, mib: int, with_small: bool) -> None:
    from cluster.routing.channel import ReplicaChannel

    assert host.stdin is not None and host.stdout is not None
    channel = ReplicaChannel(("127.0.0.1", port), SECRET, liveness_timeout_s=30.0)
    small = {"x": np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)}
    big = {"x": np.full((mib * 2**20 // 8, 2), 0.5, np.float32)}
    await channel.run(1, "serving_default", [small], model="bench")
    for n in range(rounds):
        await asyncio.sleep(0.3)
        since = time.perf_counter()
        big_call = asyncio.ensure_future(channel.run(1, "serving_default", [big], ["y"], model="target"))
        calls = []
        while not big_call.done() and with_small:
            started = time.perf_counter()
            await channel.run(1, "serving_default", [small], model="bench")
            calls.append((started, time.perf_counter()))
        latencies = [b - a for a, b in calls]
        (answer,) = await big_call
        elapsed = time.perf_counter() - since
        assert not isinstance(answer, BaseException) and answer["y"].shape == big["x"].shape
        host.stdin.write(f"report\n{since}\n")
        host.stdin.flush()
        report = json.loads(host.stdout.readline())
        worst_call = max(calls, key=lambda ab: ab[1] - ab[0], default=(0.0, 0.0))
        overlapped = "+".join(n for n, a, b in report["steps"] if a < worst_call[1] and b > worst_call[0]) or "-"
        steps = ", ".join(f"{n} {(b - a) * 1000:.0f}" for n, a, b in report["steps"])
        print(f"round {n + 1}: {mib} MiB call {elapsed * 1000:.0f} ms; bench calls meanwhile {len(latencies)}, "
              f"worst {max(latencies, default=0) * 1000:.0f} ms (during {overlapped}); host loop worst gap "
              f"{report['worst_gap'] * 1000:.0f} ms (in {report['step']}); big call's steps on the host (ms): {steps}; "
              f"host loop thread {report['loop_cpu'] * 1000:.0f} ms CPU, {report['loop_faults']} page faults "
              f"(process {report['process_faults']})",
              flush=True)
    await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--alone", action="store_true", help="no bench calls: the big call's own cost")
    parser.add_argument("--host", help=argparse.SUPPRESS)  # the host process's own entry point
    args = parser.parse_args()
    if args.host:
        _host(pathlib.Path(args.host))
        return
    from benchmarks.chaos.scenarios_input import _target_bundle
    from benchmarks.model import export

    root = pathlib.Path(tempfile.mkdtemp(prefix="tessera-cohost-"))
    export(root / "bench")
    _target_bundle(root / "target")
    host = subprocess.Popen([sys.executable, "-m", "benchmarks.cohost", "--host", str(root)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=pathlib.Path(__file__).parents[1])
    try:
        assert host.stdout is not None
        port = int(host.stdout.readline())
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
        asyncio.run(_client(port, host, args.rounds, args.mib, not args.alone))
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        host.kill()  # by its pid: ours
        host.wait(10)


if __name__ == "__main__":
    main()
