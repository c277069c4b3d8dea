"""`--rest_max_connection_age_ms`: a keep-alive connection older than its age closes after its next
response (`Connection: close`), and the client's next request goes out on a new connection.

A real RestServer on loopback in front of the REST tests' FakeAPI, with a fake clock that moves only
when a request is handled (the `/tick` route), so what is counted (connections, per client) does
not depend on how fast this machine runs: age 1 s, no jitter, each request 0.4 s, so every third
request on a connection is the one past its age. The server counts the connections it saw (their
client ports); the clients are aiohttp's ClientSession, requests.Session and curl, each keeping its
connection alive and reconnecting on its own.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import requests
from aiohttp import web

from cluster.config import ServeOptions
from cluster.gateway.connection_age import ConnectionAge
from cluster.gateway.rest_server import RestServer
from tests.cluster.gateway.rest_testlib import FakeAPI

pytestmark = pytest.mark.timeout(60)

AGE_MS = 1000
STEP_S = 0.4  # what one request costs on the fake clock: requests 1, 2 keep, 3 closes
REQUESTS = 9


class Connection:
    """Stands for a transport: weakly referenceable."""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Served:
    """A RestServer with `/tick`: advances the clock by STEP_S, answers the client's port."""

    def __init__(self, age: ConnectionAge | None, clock: Clock) -> None:
        self.clock = clock
        self.server = RestServer(FakeAPI(), ServeOptions(), connection_age=age)
        self.server.add_get_route("/tick", self._tick)
        self.client_ports: list[int] = []  # per request, the client's port: one per connection
        self.port = 0

    async def _tick(self, request: web.Request) -> web.StreamResponse:
        self.clock.now += STEP_S
        assert request.transport is not None
        port = request.transport.get_extra_info("peername")[1]
        self.client_ports.append(port)
        return web.Response(text=str(port))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def served(age_ms: int | None = AGE_MS) -> AsyncIterator[Served]:
    clock = Clock()
    age = None if age_ms is None else ConnectionAge(age_ms, jitter=0.0, clock=clock)
    s = Served(age, clock)
    s.port = await s.server.start("127.0.0.1", 0)
    try:
        yield s
    finally:
        await s.server.stop(1.0)


def _connections(ports: list[int]) -> int:
    return len(set(ports))


async def _aiohttp_gets(url: str, paths: list[str]) -> tuple[list[int], list[str | None], int]:
    """GETs on one ClientSession with one connection at most: statuses, Connection headers, and
    how many connections the session opened (its own trace, not the server's count)."""
    opened = 0

    async def on_create(*_: object) -> None:
        nonlocal opened
        opened += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    statuses, connection = [], []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]) as session:
        for path in paths:
            async with session.get(url + path) as reply:
                await reply.read()
                statuses.append(reply.status)
                connection.append(reply.headers.get("Connection"))
    return statuses, connection, opened


def test_an_aged_connection_closes_after_its_next_response_and_the_client_reconnects() -> None:
    async def main() -> None:
        async with served() as s:
            statuses, connection, opened = await _aiohttp_gets(s.url, ["/tick"] * REQUESTS)
            assert statuses == [200] * REQUESTS
            # Every third response is past the age: it says close, and the next request is on a new connection.
            assert connection == [None, None, "close"] * 3
            assert opened == 3 and _connections(s.client_ports) == 3
            ports = s.client_ports
            assert ports[0] == ports[1] == ports[2] != ports[3] == ports[4] == ports[5] != ports[6]
            assert s.server.connection_age is not None and s.server.connection_age.closed == 3

    asyncio.run(main())


def test_without_an_age_a_keep_alive_client_keeps_its_one_connection() -> None:
    async def main() -> None:
        async with served(age_ms=None) as s:
            assert s.server.connection_age is None  # ServeOptions' default: 0, off (TF Serving's behaviour)
            statuses, connection, opened = await _aiohttp_gets(s.url, ["/tick"] * REQUESTS)
            assert statuses == [200] * REQUESTS and connection == [None] * REQUESTS
            assert opened == 1 and _connections(s.client_ports) == 1

    asyncio.run(main())


def test_every_route_and_error_closes_an_aged_connection() -> None:
    # /v1 replies, errors (one raised as aiohttp's 404), the probes: each can be "the next response".
    paths = ["/nowhere", "/v1/models/half", "/v1/models/nope", "/healthz", "/v1/models/half:predict"]

    async def main() -> None:
        async with served() as s, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for path in paths:
                async with session.get(s.url + "/tick") as reply:  # a connection's first request
                    assert reply.headers.get("Connection") is None
                s.clock.now += 2.0  # past its age
                async with session.get(s.url + path) as reply:
                    assert reply.status in (200, 400, 404) and reply.headers.get("Connection") == "close", path
            assert _connections(s.client_ports) == len(paths)

    asyncio.run(main())


def test_a_requests_session_reconnects_by_itself_and_no_request_fails() -> None:
    async def main() -> None:
        async with served() as s:
            def gets() -> list[int]:
                with requests.Session() as session:
                    return [int(session.get(s.url + "/tick", timeout=10).text) for _ in range(REQUESTS)]

            answered = await asyncio.to_thread(gets)
            assert answered == s.client_ports and _connections(answered) == 3

    asyncio.run(main())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_reconnects_by_itself() -> None:
    async def main() -> None:
        async with served() as s:
            # One curl, nine URLs: it keeps its connection alive between them until told to close.
            argv = ["curl", "-sS", "--fail", *[s.url + "/tick"] * REQUESTS]
            done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            assert len(s.client_ports) == REQUESTS and _connections(s.client_ports) == 3

    asyncio.run(main())


def _responses(data: bytes) -> list[bytes]:
    """The status lines and headers of the responses in `data`."""
    return re.findall(rb"HTTP/1\.1 [^\r]*\r\n(?:[^\r]+\r\n)*\r\n", data)


def test_pipelined_requests_already_read_are_answered_before_the_close() -> None:
    # A client that pipelines: B and C in one write after the age. Closing after B would drop C,
    # which aiohttp had read; the close waits for C's response.
    async def main() -> None:
        async with served() as s:
            request = f"GET /tick HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode()

            def exchange() -> tuple[bytes, bytes]:
                with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
                    sock.sendall(request)
                    first = sock.recv(65536)
                    s.clock.now += 10.0  # past the age (the server's clock, not time)
                    sock.sendall(request * 2)
                    rest = b""
                    while chunk := sock.recv(65536):  # until the server closes
                        rest += chunk
                    return first, rest

            first, rest = await asyncio.to_thread(exchange)
            assert len(_responses(first)) == 1 and b"Connection: close" not in first
            second, third = _responses(rest)
            assert b"200 OK" in second and b"Connection: close" not in second
            assert b"200 OK" in third and b"Connection: close" in third
            assert _connections(s.client_ports) == 1 and len(s.client_ports) == 3

    asyncio.run(main())


@pytest.mark.parametrize(("draw", "first_expired"), [(0.9, 4), (1.1, 5)])
def test_each_connection_draws_its_jitter_once(draw: float, first_expired: int) -> None:
    # Asked at 0, 0.25, 0.5 ... s: an age of 1 s times 0.9 has passed at 1.0 s (the 5th call),
    # times 1.1 at 1.25 s (the 6th). The factor is drawn once per connection, within gRPC's +-10 %.
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return draw

    clock = Clock()
    age = ConnectionAge(AGE_MS, clock=clock, uniform=uniform)
    connection = Connection()
    expired = []
    for _ in range(7):
        expired.append(age.expired(connection))
        clock.now += 0.25
    assert draws == [(0.9, 1.1)]
    assert expired.index(True) == first_expired and all(expired[first_expired:])
    assert age.expired(Connection()) is False and len(draws) == 2  # a new connection, a new draw


@pytest.mark.parametrize("bad", [0, -1])
def test_an_age_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        ConnectionAge(bad)


def test_the_option_turns_it_on() -> None:
    assert RestServer(FakeAPI(), ServeOptions()).connection_age is None
    assert isinstance(RestServer(FakeAPI(), ServeOptions(rest_max_connection_age_ms=5)).connection_age, ConnectionAge)
