"""A maximum age for the REST gateway's HTTP/1.1 connections (`--rest_max_connection_age_ms`).

    age = ConnectionAge(30_000)
    app = web.Application(middlewares=[age.middleware])

An HTTP/1.1 client keeps its keep-alive connection for as long as it lives, and what spreads load
over gateways (SO_REUSEPORT on one host, a Kubernetes Service over pods) spreads connections, not
requests: without an age, a keep-alive client stays on the gateway that accepted it, and gateways
added later never see its traffic. HTTP/1.1 has no GOAWAY; what servers do instead (Envoy's
max_connection_duration, nginx's keepalive_time) is close the connection after a response: once a
connection is older than its age, its next response carries `Connection: close` and the connection
closes after that response is written. The client (requests.Session, aiohttp's ClientSession,
curl) sees the header, drops the connection and opens a new one for its next request, which may
land on another gateway.

Contracts:

* never mid-request: a connection closes only after a whole response (the one with the header);
  one that is idle is left alone (closing it could cross a request the client is sending; it
  carries no load, and its next response closes it);
* no request read is dropped: while a pipelined client has more requests queued on the
  connection, the header waits for the response to the last one aiohttp holds;
* each connection's age is the configured one times a factor drawn once, uniform in [0.9, 1.1]
  (gRPC's ±10 % jitter for grpc.max_connection_age_ms), so connections opened together do not
  all close together;
* the clock starts at a connection's first request (aiohttp tells a handler nothing earlier);
  for a keep-alive client that is when it connected.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

JITTER: Final = 0.1  # gRPC's MAX_CONNECTION_AGE_JITTER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionAge:
    """Ends each HTTP/1.1 connection after `max_age_ms` (± `jitter`): see the module docstring.

    `clock` (seconds, monotonic) and `uniform` (random.uniform's contract) are for tests.
    """

    def __init__(
        self,
        max_age_ms: int,
        *,
        jitter: float = JITTER,
        clock: Callable[[], float] = time.monotonic,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if max_age_ms <= 0:
            raise ValueError(f"a connection age must be positive, got {max_age_ms} ms")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self._age_s = max_age_ms / 1000.0
        self._jitter = jitter
        self._clock = clock
        self._uniform = uniform
        # Keyed by the connection's transport, which lives exactly as long as the connection
        # (aiohttp's RequestHandler has __slots__ and no weak references): nothing to clean up.
        self._deadlines: weakref.WeakKeyDictionary[object, float] = weakref.WeakKeyDictionary()
        self.closed = 0  # connections told to close so far

    def expired(self, connection: object) -> bool:
        """Whether `connection` has outlived its age; the first call for a connection starts its
        clock (and draws its jitter)."""
        now = self._clock()
        deadline = self._deadlines.get(connection)
        if deadline is None:
            deadline = now + self._age_s * self._uniform(1.0 - self._jitter, 1.0 + self._jitter)
            self._deadlines[connection] = deadline
        return now >= deadline

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """aiohttp middleware: the response (or raised HTTPException, a response too) of a request
        on an expired connection says `Connection: close`, and aiohttp closes the connection after
        writing it."""
        transport = request.transport
        if transport is None:  # the client has gone already
            return await handler(request)
        self.expired(transport)  # starts the clock before the handler runs
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self._close_if_old(request, transport, exc)
            raise
        self._close_if_old(request, transport, response)
        return response

    def _close_if_old(self, request: web.Request, transport: object, response: web.StreamResponse) -> None:
        if response.prepared or not self.expired(transport) or _pipelined(request):
            return
        # Before prepare(): aiohttp then writes `Connection: close` and ends its keep-alive loop
        # (closing the transport) once this response is written.
        response.force_close()
        self.closed += 1


def _pipelined(request: web.Request) -> bool:
    """Whether aiohttp holds more requests read from this connection, not yet handled (a
    pipelining client): closing after this response would drop them. `_messages` is private to
    aiohttp's RequestHandler (a deque since 3.x); without it, nothing is assumed queued."""
    return bool(getattr(request.protocol, "_messages", None))
