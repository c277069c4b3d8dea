"""Gateway-side coalescing: concurrent requests for the same model, version, signature and output
filter leave the gateway together, as one call to one replica, and their outputs are split back.

A lane sends at once when none of its calls is running (no added latency when idle); requests that
arrive while calls run wait and leave together in the next call. How many calls a lane keeps
running depends on how long its calls take:

- *Short* calls (the lane's recent mean under `long_call_s`, 5 ms; a new lane's count as long
  until one comes back; an idle lane's mean is remembered): one at a time. A call's fixed cost
  (~150 us of CPU over both ends, about what two requests cost) is then what matters. Under load
  every call carries what arrived during the one before: at c=128, 6.5 requests per call against
  2.6 while a lane kept one call per replica running. A request never waits longer than
  `spread_s` (2 ms) for a running call, though: past that (a slow outlier, a hung replica, a busy
  machine) what waits goes to the replicas with room, as for long calls. The two bounds differ so
  that a few slow calls spread what waits for them without turning the lane into one of long
  calls (smaller calls cost more CPU, which makes calls slower still).
- *Long* calls: up to `max_calls_per_replica` per replica, what waits spread evenly over the calls
  the lane has room for (idle replicas each take a share, as large as one replica alone would get).

A lane with room sends at the end of the event loop's current step, not from inside `submit`: the
requests that gRPC hands the loop together (one poller wake-up delivers many) then leave in one
call instead of one call each. The replica of each call is chosen by power of two choices on the
rows each replica has in flight, per *batch*.

A batch whose replica is gone or hung (Unavailable) is re-sent to another one; the replica is set
aside meanwhile. With no replica to send to (the only one died, its replacement is starting), the
batch waits for one, each request within its deadline and none longer than `max_wait_s`; the
dispatcher bounds how many requests may wait at all.

A replica target (from `connect`) is anything with `async run(version, signature, requests,
output_filter, timeouts) -> [outputs | error, ...]`: in production a `ReplicaChannel`. A
MultiInference's requests coalesce like any others, in the lane of their tuple of task signatures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from cluster import errors
from cluster.replica.contract import Target
from cluster.routing.router import Router
from exporter.signature import Tensors

Connect = Callable[[Any], Any]  # replica ref -> its call target
# Lanes are dropped when idle; their mean call duration is kept for this many recent lanes, so a
# lane that empties between two bursts does not start over as one of long calls.
REMEMBERED_LANES = 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Request:
    feeds: Tensors
    deadline: float | None  # time.monotonic() seconds
    future: asyncio.Future[Tensors]


@dataclass
class _Lane:
    router: Router[Any]
    connect: Connect
    version: int
    signature: Target
    output_filter: tuple[str, ...]
    pending: list[_Request] = field(default_factory=list)
    in_flight_calls: int = 0  # calls running (each carries one or more requests)
    flush_due: bool = False  # a send is scheduled for the end of the loop's current step
    call_s: float = 0.0  # the recent mean duration of the lane's calls (seconds; 0: none yet)
    overdue: bool = False  # requests waited `spread_s` for a running short call: they may spread
    spread_timer: asyncio.TimerHandle | None = None  # armed while requests wait for a short call


class Coalescer:
    """Merges concurrent requests per (model, version, signature, output filter) into calls."""

    def __init__(
        self,
        *,
        max_calls_per_replica: int = 1,
        max_requests_per_call: int = 256,
        max_wait_s: float = 30.0,
        down_s: float = 5.0,
        spread_s: float = 0.002,
        long_call_s: float = 0.005,
    ) -> None:
        self._max_calls = max_calls_per_replica
        self._spread = spread_s
        self._long_call = long_call_s
        self._max_requests = max_requests_per_call
        self._max_wait = max_wait_s
        self._down = down_s
        self._lanes: dict[Hashable, _Lane] = {}
        self._call_s: OrderedDict[Hashable, float] = OrderedDict()  # of dropped lanes, newest last
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(
        self,
        model: str,
        router: Router[Any],
        connect: Connect,
        version: int,
        signature: Target,
        feeds: Tensors,
        output_filter: tuple[str, ...] = (),
        deadline: float | None = None,
    ) -> asyncio.Future[Tensors]:
        """Queues one request; the future resolves to its outputs or fails with its own error."""
        key = (model, version, signature, output_filter)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(router, connect, version, signature, output_filter)
            lane.call_s = self._call_s.pop(key, 0.0)
        lane.router, lane.connect = router, connect  # the latest routing table's
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensors] = loop.create_future()
        lane.pending.append(_Request(feeds, deadline, future))
        if not lane.flush_due:
            self._schedule(key, lane, loop)
        return future

    def _spare(self, lane: _Lane) -> int:
        """How many more calls the lane's replicas could take."""
        return self._max_calls * max(len(lane.router.replicas), 1) - lane.in_flight_calls

    def _room(self, lane: _Lane) -> int:
        """How many more calls the lane may start now: its spare ones, but a lane of short calls
        runs one at a time until its requests have waited `spread_s`. Until one of its calls has
        come back a lane's calls count as long: a burst at an idle lane of a slow model spreads."""
        spare = self._spare(lane)
        if 0.0 < lane.call_s < self._long_call and not lane.overdue:
            return min(spare, 1 - lane.in_flight_calls)
        return spare

    def _schedule(self, key: Hashable, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        """What is pending leaves at the end of this step if the lane has room; if it waits for a
        short call while replicas have spare room, it waits `spread_s` at most."""
        if self._room(lane) > 0:
            lane.flush_due = True
            loop.call_soon(self._flush, key, lane)
        elif lane.spread_timer is None and self._spare(lane) > 0:
            lane.spread_timer = loop.call_later(self._spread, self._spread_out, key, lane)

    def _spread_out(self, key: Hashable, lane: _Lane) -> None:
        lane.spread_timer = None
        if lane.pending:
            lane.overdue = True
            self._flush(key, lane)

    def _flush(self, key: Hashable, lane: _Lane) -> None:
        """Sends what is pending, spread evenly over the calls the lane has room for (idle
        replicas each take a share, as large as one replica alone would get)."""
        lane.flush_due = False
        while lane.pending and (room := self._room(lane)) > 0:
            self._send(key, lane, -(-len(lane.pending) // room))
        self._forget_if_idle(key, lane)

    def _forget_if_idle(self, key: Hashable, lane: _Lane) -> None:
        if not lane.pending and lane.in_flight_calls == 0 and not lane.flush_due and self._lanes.get(key) is lane:
            if lane.spread_timer is not None:
                lane.spread_timer.cancel()
            del self._lanes[key]
            if lane.call_s:
                self._call_s[key] = lane.call_s
                if len(self._call_s) > REMEMBERED_LANES:
                    self._call_s.popitem(last=False)

    def _send(self, key: Hashable, lane: _Lane, size: int) -> None:
        size = min(size, self._max_requests)
        batch = [r for r in lane.pending[:size] if not r.future.done()]
        del lane.pending[:size]
        if not batch:
            return  # all expired while they waited
        lane.in_flight_calls += 1
        task = asyncio.get_running_loop().create_task(self._call(key, lane, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, key: Hashable, lane: _Lane, batch: list[_Request]) -> None:
        started = time.monotonic()
        try:
            await self._run_with_retry(lane, batch)
        finally:
            took = time.monotonic() - started
            lane.call_s = took if lane.call_s == 0.0 else lane.call_s + 0.25 * (took - lane.call_s)
            lane.in_flight_calls -= 1
            lane.overdue = False  # a call came back: what waits leaves with the next one
            # What waited for this call leaves now: it has waited a whole call already.
            while lane.pending and self._room(lane) > 0:
                self._send(key, lane, len(lane.pending))
            if lane.pending and not lane.flush_due:
                self._schedule(key, lane, asyncio.get_running_loop())  # still waits: bounded
            elif not lane.pending and lane.spread_timer is not None:
                lane.spread_timer.cancel()
                lane.spread_timer = None
            self._forget_if_idle(key, lane)

    async def _run_with_retry(self, lane: _Lane, batch: list[_Request]) -> None:
        """Runs the batch and settles every request's future. A replica that fails the whole call
        with Unavailable is set aside and the live requests go to another; with none to go to, they
        wait for one (within their deadlines, and `max_wait_s` at most)."""
        give_up = time.monotonic() + self._max_wait
        while True:
            batch = [r for r in batch if not r.future.done()]  # expired requests drop out
            if not batch:
                return
            try:
                with lane.router.acquire(len(batch)) as replica:
                    try:
                        results = await self._run_on(lane, replica, batch)
                    except errors.Unavailable:
                        lane.router.mark_down(replica, self._down)
                        raise
            except errors.Unavailable as exc:
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    _fail(batch, exc)
                    return
                if not lane.router.has_live():
                    await lane.router.wait_for_replica(min(remaining, 0.1))
                continue
            except errors.ServingError as exc:
                _fail(batch, exc)
                return
            for r, result in zip(batch, results, strict=True):
                if r.future.done():
                    continue
                if isinstance(result, BaseException):
                    r.future.set_exception(result)
                else:
                    r.future.set_result(result)
            return

    @staticmethod
    async def _run_on(lane: _Lane, replica: Any, batch: list[_Request]) -> list[Any]:
        now = time.monotonic()
        # Seconds left, not deadlines: clocks of other hosts are not ours.
        timeouts = [None if r.deadline is None else r.deadline - now for r in batch]
        try:
            return await lane.connect(replica).run(
                lane.version, lane.signature, [r.feeds for r in batch], lane.output_filter,
                timeouts if any(t is not None for t in timeouts) else None,
            )
        except errors.ServingError:
            raise
        except Exception as exc:  # noqa: BLE001 - the call broke: treat as the replica being gone
            # The client hears that the replica was lost; the exception's class is for the log.
            log.warning("call to replica %s failed: %r", getattr(replica, "address", replica), exc)
            raise errors.Unavailable(f"replica call failed: {exc or 'connection lost'}") from None


def _fail(batch: list[_Request], exc: BaseException) -> None:
    for r in batch:
        if not r.future.done():
            r.future.set_exception(exc)
