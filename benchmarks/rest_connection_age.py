"""What `--rest_max_connection_age_ms` costs and what it buys (issue 12), in counts.

1. Cost: aiohttp's request handling (`Application._handle`: route, middlewares, handler) with and
   without the connection-age middleware, process CPU time over `--calls` requests, each round
   both ways; the difference is what the flag adds to every REST request while it is set (0: no
   middleware, nothing added).
2. Spread: two REST server processes on one port (SO_REUSEPORT; tests.cluster.gateway's
   reuseport_server_testlib: the gateway's own parser and RestServer, a fake cluster whose
   GetModelStatus answers the process's pid), one requests.Session making `--requests` GETs:
   how many each process answered and how many connections the session opened, without an age
   and with `--age_ms`, and each server's CPU µs per request (/proc/<pid>/stat).

    python -m benchmarks.rest_connection_age [--calls 100000] [--requests 2000] [--age_ms 200]

Loopback only; the servers are this script's children, stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import subprocess
import sys
import time
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


class _Transport:  # a weakly referenceable stand-in for a connection's transport
    def get_extra_info(self, *_: Any, **__: Any) -> None:
        return None

    def is_closing(self) -> bool:
        return False


async def _middleware_cost(calls: int, rounds: int = 5) -> list[float]:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from cluster.gateway.connection_age import ConnectionAge

    response = web.Response(body=b"{}")

    async def handler(request: web.Request) -> web.Response:
        return response

    apps = []
    for middlewares in ([], [ConnectionAge(3_600_000).middleware]):  # on, never reached
        app = web.Application(middlewares=middlewares)
        app.router.add_route("*", "/{tail:.*}", handler)
        app.freeze()
        apps.append(app)
    transport, added = _Transport(), []
    for _ in range(rounds):
        spent = []
        for app in apps:
            request = make_mocked_request("GET", "/v1/models/m", app=app, transport=transport)
            started = time.process_time()
            for _ in range(calls):
                await app._handle(request)  # noqa: SLF001 - aiohttp's per-request entry point
            spent.append(time.process_time() - started)
        added.append((spent[1] - spent[0]) / calls * 1e6)
    return added


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _server(flags: list[str]) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.gateway.reuseport_server_testlib", "--ray_address=auto",
         "--host=127.0.0.1", "--reuse_port", "--with_rest", *flags], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().split()[1])


def _spread(requests_n: int, age_flags: list[str]) -> str:
    import requests

    first, rest_port = _server(["--port=0", "--rest_api_port=0", *age_flags])
    # Each binds a gRPC port of its own (only REST is measured); the second shares the first's REST port.
    second, _ = _server(["--port=0", f"--rest_api_port={rest_port}", *age_flags])
    procs = [first, second]
    try:
        answered: collections.Counter[int] = collections.Counter()
        closes = failed = 0
        cpu = {p.pid: _cpu_s(p.pid) for p in procs}
        with requests.Session() as session:
            for _ in range(requests_n):
                reply = session.get(f"http://127.0.0.1:{rest_port}/v1/models/m", timeout=30)
                if reply.status_code != 200:
                    failed += 1
                    continue
                answered[int(reply.json()["model_version_status"][0]["version"])] += 1
                closes += reply.headers.get("Connection") == "close"
        us = sum(_cpu_s(p.pid) - cpu[p.pid] for p in procs) / requests_n * 1e6
        shares = "/".join(str(answered[p.pid]) for p in procs)
        return f"answered {shares} by the two processes, {closes + 1} connections, {failed} failed, {us:.0f} us CPU per request"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--age_ms", type=int, default=200)
    args = parser.parse_args()
    print(f"load average {_load()}")
    added = asyncio.run(_middleware_cost(args.calls))
    print(f"the middleware adds {statistics.median(added):.2f} us CPU per request (median of "
          f"{', '.join(f'{a:.2f}' for a in added)}; load {_load()})")
    for label, flags in (("no age", []), (f"age {args.age_ms} ms", [f"--rest_max_connection_age_ms={args.age_ms}"])):
        print(f"{label}: {_spread(args.requests, flags)} (load {_load()})")


if __name__ == "__main__":
    main()
