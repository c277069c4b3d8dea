"""The requests a batch queue holds, grouped by what may share a batch, and which form the next one.

Requests queue per group (`merge.shape_key`: same dtypes and non-batch dims), in arrival order. A
group's batch is ready when it holds a full batch of rows, when its oldest request has waited the
batch timeout, or when the queue is closing; of several ready groups the one with the oldest head
goes first. Taking a batch skips (and fails) requests whose deadline passed or whose caller gave
up. No asyncio here beyond the requests' futures, no clock: `now` is passed in
(`cluster.batching.queue` runs the batches).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Hashable
from typing import NamedTuple

import numpy as np

from cluster.errors import DeadlineExceeded, Internal
from exporter.signature import Tensors

# Timeouts are set in microseconds: a batch due within one is due now (and float rounding of
# `enqueued_at + timeout - now` never leaves the scheduler sleeping for a few nanoseconds).
_TIMER_SLACK_S = 1e-6


class Pending:
    """One submitted request while it waits; with splitting it may leave in several chunks."""

    __slots__ = ("inputs", "rows", "future", "deadline", "enqueued_at", "seq", "taken", "done_rows", "parts")

    def __init__(self, inputs: Tensors, rows: int, future: asyncio.Future[dict[str, np.ndarray]], deadline: float | None,
                 enqueued_at: float, seq: int) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.deadline = deadline
        self.enqueued_at = enqueued_at
        self.seq = seq
        self.taken = 0  # rows already placed in a batch
        self.done_rows = 0  # rows whose outputs came back (splitting only)
        self.parts: dict[int, dict[str, np.ndarray]] = {}  # chunk start row -> outputs

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Member(NamedTuple):
    """Rows [start, stop) of a queued request, placed in a batch (a NamedTuple: one per request
    per batch, and a frozen dataclass's __init__ sets each field through object.__setattr__)."""

    entry: Pending
    start: int
    stop: int


class QueuedGroups:
    """The queued requests of one batch queue, per group (see the module doc)."""

    def __init__(self) -> None:
        self._groups: dict[Hashable, deque[Pending]] = {}
        self._group_rows: dict[Hashable, int] = {}  # rows not yet placed in a batch, per group
        self.rows = 0  # rows not yet placed in a batch, in all
        self._seq = itertools.count()

    def add(
        self,
        key: Hashable,
        inputs: Tensors,
        rows: int,
        future: asyncio.Future[dict[str, np.ndarray]],
        deadline: float | None,
        now: float,
    ) -> None:
        """Queues a request of `rows` rows in group `key`; its outputs go to `future`."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = deque()
            self._group_rows[key] = 0
        group.append(Pending(inputs, rows, future, deadline, now, next(self._seq)))
        self._group_rows[key] += rows
        self.rows += rows

    def ready(self, now: float, timeout_s: float, batch_rows: int, *, flush: bool = False) -> tuple[Hashable | None, float | None]:
        """The group whose batch should close now (full, its head waited `timeout_s`, or `flush`:
        the queue is closing), oldest head first; else None and how long to wait (None: forever)."""
        ready_key: Hashable | None = None
        ready_seq = -1
        wait_s: float | None = None
        for key, group in self._groups.items():
            head = group[0]
            remaining = head.enqueued_at + timeout_s - now
            if flush or remaining < _TIMER_SLACK_S or self._group_rows[key] >= batch_rows:
                if ready_key is None or head.seq < ready_seq:
                    ready_key, ready_seq = key, head.seq
            elif wait_s is None or remaining < wait_s:
                wait_s = remaining
        return ready_key, wait_s

    def take(self, key: Hashable, now: float, batch_rows: int, *, split: bool) -> list[Member]:
        """The next batch of group `key`: up to `batch_rows` rows in arrival order (with `split`, a
        request's rows may span batches); requests expired or cancelled meanwhile fail, untaken."""
        group = self._groups[key]
        room = batch_rows
        members: list[Member] = []
        while group and room > 0:
            entry = group[0]
            remaining = entry.rows - entry.taken
            if entry.future.done() or (entry.deadline is not None and now >= entry.deadline):
                # Expired, cancelled by its caller, or failed by an earlier chunk: never computed.
                entry.fail(DeadlineExceeded("Deadline exceeded while the request was queued for batching"))
                group.popleft()
                self._dequeue(key, remaining)
                continue
            if remaining <= room:
                take = remaining
                group.popleft()
            elif split:
                take = room
            elif members:
                break  # it heads the next batch
            else:
                # Cannot happen (submit bounds a request by the batch size), but a request that can
                # never fit must fail rather than spin the scheduler.
                entry.fail(Internal(f"Request of {remaining} rows does not fit a batch of {room}"))
                group.popleft()
                self._dequeue(key, remaining)
                continue
            members.append(Member(entry, entry.taken, entry.taken + take))
            entry.taken += take
            room -= take
            self._dequeue(key, take)
        if not group:
            del self._groups[key], self._group_rows[key]
        return members

    def _dequeue(self, key: Hashable, rows: int) -> None:
        self._group_rows[key] -= rows
        self.rows -= rows

    def fail_all(self, error: BaseException) -> None:
        """Fails every queued request with `error` and forgets them (the queue is closing or broken)."""
        for group in self._groups.values():
            for entry in group:
                entry.fail(error)
        self._groups.clear()
        self._group_rows.clear()
        self.rows = 0
