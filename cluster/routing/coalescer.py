"""Gateway-side coalescing: concurrent requests bound for the same replica, version, signature
and output filter leave the gateway as ONE call to the replica, and their outputs are split back.

A replica target is anything with `async run(version, signature, requests, output_filter,
timeouts) -> [outputs | error, ...]`: in production a `ReplicaChannel` (the data plane).

No timer: while fewer than `max_calls_in_flight` calls to a key are running, a request leaves at
once (no added latency when idle); requests that arrive while the calls are busy wait and leave
together in the next call. Under load, batches therefore grow by themselves, and one call's fixed
overhead is paid per batch instead of per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster import errors

Outputs = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class _Request:
    feeds: Mapping[str, np.ndarray]
    deadline: float | None  # time.monotonic() seconds
    future: asyncio.Future[Outputs]


@dataclass
class _Lane:
    handle: Any
    version: int
    signature: str
    output_filter: tuple[str, ...]
    pending: list[_Request] = field(default_factory=list)
    in_flight: int = 0


class Coalescer:
    """Merges concurrent requests per (replica, version, signature, output filter) into one call."""

    def __init__(self, *, max_calls_in_flight: int = 2, max_requests_per_call: int = 256) -> None:
        self._max_calls = max_calls_in_flight
        self._max_requests = max_requests_per_call
        self._lanes: dict[Hashable, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(
        self,
        handle: Any,
        version: int,
        signature: str,
        feeds: Mapping[str, np.ndarray],
        output_filter: tuple[str, ...] = (),
        deadline: float | None = None,
    ) -> asyncio.Future[Outputs]:
        """Queues one request; the future resolves to its outputs or fails with its own error."""
        key = (handle, version, signature, output_filter)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(handle, version, signature, output_filter)
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        lane.pending.append(_Request(feeds, deadline, future))
        if lane.in_flight < self._max_calls:
            self._send(key, lane)
        return future

    def _send(self, key: Hashable, lane: _Lane) -> None:
        batch = lane.pending[: self._max_requests]
        del lane.pending[: self._max_requests]
        lane.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._call(key, lane, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, key: Hashable, lane: _Lane, batch: list[_Request]) -> None:
        try:
            live = [r for r in batch if not r.future.done()]  # cancelled or timed out: skip
            if live:
                now = time.monotonic()
                # Seconds left, not deadlines: clocks of other hosts are not ours.
                timeouts = [None if r.deadline is None else r.deadline - now for r in live]
                try:
                    results = await lane.handle.run(
                        lane.version, lane.signature, [r.feeds for r in live], lane.output_filter,
                        timeouts if any(t is not None for t in timeouts) else None,
                    )
                except Exception as exc:  # noqa: BLE001 - the replica died or the call broke
                    failure = errors.Unavailable(f"replica call failed: {type(exc).__name__}: {exc}")
                    for r in live:
                        if not r.future.done():
                            r.future.set_exception(failure)
                else:
                    for fut, result in zip((r.future for r in live), results, strict=True):
                        if fut.done():
                            continue
                        if isinstance(result, BaseException):
                            fut.set_exception(result)
                        else:
                            fut.set_result(result)
        finally:
            lane.in_flight -= 1
            if lane.pending:
                self._send(key, lane)
            elif lane.in_flight == 0:
                self._lanes.pop(key, None)

    def queued(self) -> int:
        """Requests waiting for a call (not counting those in calls already sent)."""
        return sum(len(lane.pending) for lane in self._lanes.values())
