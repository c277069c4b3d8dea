"""The batch queue of one (servable, signature): requests in, merged batches out (issue 4).

`submit` validates a request on its own, enqueues it and awaits its slice of a batch's outputs.
A single scheduler task forms batches and runs up to `num_batch_threads` of them at once through
the injected `execute`. A batch closes when it is full (`max_batch_size` rows, or
`max_execution_batch_size` with splitting) or when its oldest request has waited
`batch_timeout_micros`. It waits for a free execution slot *before* it forms, so under load
batches grow by themselves. Requests whose tensors cannot share a batch (different dtypes or
non-batch dims) queue in separate groups and never meet.

Clock and sleep are injected: unit tests drive the queue with a fake clock.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from cluster.batching import merge
from cluster.config import BatchingConfig
from cluster.errors import DeadlineExceeded, Internal, InvalidArgument, ResourceExhausted, Unavailable
from exporter.signature import Tensors

Execute = Callable[[dict[str, np.ndarray]], Awaitable[Mapping[str, np.ndarray]]]
Validate = Callable[[Tensors], None]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]

QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"
# Timeouts are set in microseconds: a batch due within one is due now (and float rounding of
# `enqueued_at + timeout - now` never leaves the scheduler sleeping for a few nanoseconds).
_TIMER_SLACK_S = 1e-6


class _Pending:
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


@dataclass(frozen=True, slots=True)
class _Member:
    entry: _Pending
    start: int
    stop: int


class BatchQueue:
    """An asyncio batch queue; create it inside the event loop that will use it."""

    def __init__(
        self,
        execute: Execute,
        config: BatchingConfig,
        *,
        validate: Validate | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(config, name) < 1:
                raise InvalidArgument(f"{name} must be positive, got {getattr(config, name)}")
        self._execute = execute
        self._validate = validate
        self._clock = clock
        self._sleep = sleep
        self._max_task_rows = config.max_batch_size
        self._split = config.enable_large_batch_splitting
        # With splitting, max_batch_size bounds a request and max_execution_batch_size a batch.
        self._batch_rows = (config.max_execution_batch_size or config.max_batch_size) if self._split \
            else config.max_batch_size
        self._allowed = tuple(config.allowed_batch_sizes)
        merge.check_allowed_batch_sizes(self._allowed, self._batch_rows)
        self._pad_variable = config.pad_variable_length_inputs
        self._timeout_s = config.batch_timeout_micros / 1e6
        self._capacity_rows = config.max_enqueued_batches * self._batch_rows

        self._groups: dict[Hashable, deque[_Pending]] = {}
        self._group_rows: dict[Hashable, int] = {}  # rows not yet placed in a batch, per group
        self._queued_rows = 0
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(config.num_batch_threads)
        self._scheduler: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch (a load signal for the router and the autoscaler)."""
        return self._queued_rows

    async def submit(self, inputs: Tensors, deadline: float | None = None) -> dict[str, np.ndarray]:
        """Queue one request and return its outputs (dim 0 = its own rows, padding removed).

        `deadline` is a time on the queue's clock. Raises at once, without queueing:
        InvalidArgument (bad shapes, `validate` failed, too many rows), ResourceExhausted (queue
        full), DeadlineExceeded (deadline already passed), Unavailable (queue closed).
        """
        if self._closed:
            raise Unavailable("The batch queue is closed")
        now = self._clock()
        if deadline is not None and now >= deadline:
            raise DeadlineExceeded("Deadline exceeded before the request was queued")
        rows = merge.row_count(inputs)
        if rows > self._max_task_rows:
            raise InvalidArgument(f"Task size {rows} is larger than maximum input batch size {self._max_task_rows}")
        if self._validate is not None:
            self._validate(inputs)
        if self._queued_rows + rows > self._capacity_rows:
            raise ResourceExhausted(QUEUE_FULL_MESSAGE)

        future = asyncio.get_running_loop().create_future()
        key = merge.shape_key(inputs, pad_variable_length=self._pad_variable)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = deque()
            self._group_rows[key] = 0
        group.append(_Pending(inputs, rows, future, deadline, now, next(self._seq)))
        self._group_rows[key] += rows
        self._queued_rows += rows
        self._wakeup.set()
        if self._scheduler is None:
            self._scheduler = asyncio.create_task(self._schedule())
            self._scheduler.add_done_callback(self._scheduler_done)
        return await future

    async def close(self, *, drain: bool = True) -> None:
        """Refuse new requests; with `drain`, compute everything queued first, else fail it."""
        self._closed = True
        self._wakeup.set()
        while drain and self._scheduler is not None and (self._queued_rows or self._running):
            if self._running:
                await asyncio.wait(set(self._running))
            else:
                await asyncio.sleep(0)  # the scheduler is about to take the rest
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
        self._fail_all_queued(Unavailable("The batch queue is closed"))
        if self._running:
            await asyncio.wait(set(self._running))

    # -- scheduling ---------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                members = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._run_batch(members))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _scheduler_done(self, task: asyncio.Task[None]) -> None:
        self._scheduler = None
        if not task.cancelled() and task.exception() is not None:
            # A bug in scheduling must not leave callers waiting forever.
            self._fail_all_queued(Internal(f"Batch scheduler failed: {task.exception()!r}"))

    async def _next_batch(self) -> list[_Member]:
        while True:
            self._wakeup.clear()
            now = self._clock()
            key, wait_s = self._ready_group(now)
            if key is not None:
                members = self._take(key, now)
                if members:
                    return members
                continue  # everything taken was stale; look again
            await self._wait(wait_s)

    def _ready_group(self, now: float) -> tuple[Hashable | None, float | None]:
        """The group whose batch should close now (oldest head first), else how long to wait."""
        ready_key: Hashable | None = None
        ready_seq = -1
        wait_s: float | None = None
        flush = self._closed  # on close, nothing waits for a timeout
        for key, group in self._groups.items():
            head = group[0]
            remaining = head.enqueued_at + self._timeout_s - now
            if flush or remaining < _TIMER_SLACK_S or self._group_rows[key] >= self._batch_rows:
                if ready_key is None or head.seq < ready_seq:
                    ready_key, ready_seq = key, head.seq
            elif wait_s is None or remaining < wait_s:
                wait_s = remaining
        return ready_key, wait_s

    def _take(self, key: Hashable, now: float) -> list[_Member]:
        group = self._groups[key]
        room = self._batch_rows
        members: list[_Member] = []
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
            elif self._split:
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
            members.append(_Member(entry, entry.taken, entry.taken + take))
            entry.taken += take
            room -= take
            self._dequeue(key, take)
        if not group:
            del self._groups[key], self._group_rows[key]
        return members

    def _dequeue(self, key: Hashable, rows: int) -> None:
        self._group_rows[key] -= rows
        self._queued_rows -= rows

    async def _wait(self, wait_s: float | None) -> None:
        """Until a request arrives, or `wait_s` seconds on the injected clock pass."""
        if wait_s is None:
            await self._wakeup.wait()
            return
        sleeper = asyncio.ensure_future(self._sleep(wait_s))
        waker = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    # -- execution ----------------------------------------------------------------------------

    async def _run_batch(self, members: list[_Member]) -> None:
        try:
            requests = [
                m.entry.inputs if m.stop - m.start == m.entry.rows else merge.slice_rows(m.entry.inputs, m.start, m.stop)
                for m in members
            ]
            counts = [m.stop - m.start for m in members]
            target = merge.next_allowed_batch_size(sum(counts), self._allowed)
            batch = merge.merge_inputs(
                requests, row_counts=counts, target_rows=target, pad_variable_length=self._pad_variable
            )
            outputs = await self._execute(batch.inputs)
            pieces = merge.split_outputs(outputs, counts, padding_rows=batch.padding_rows)
        except asyncio.CancelledError:
            for m in members:
                m.entry.fail(Unavailable("The batch queue is closed"))
            raise
        except Exception as exc:  # the whole batch failed: every member gets the same error
            for m in members:
                m.entry.fail(exc)
        else:
            for m, piece in zip(members, pieces, strict=True):
                self._deliver(m, piece)
        finally:
            self._slots.release()

    @staticmethod
    def _deliver(member: _Member, outputs: dict[str, np.ndarray]) -> None:
        entry = member.entry
        if entry.future.done():
            return
        if member.stop - member.start == entry.rows:
            entry.future.set_result(outputs)
            return
        entry.parts[member.start] = outputs
        entry.done_rows += member.stop - member.start
        if entry.done_rows == entry.rows:
            entry.future.set_result(merge.concat_outputs([entry.parts[s] for s in sorted(entry.parts)]))

    def _fail_all_queued(self, error: BaseException) -> None:
        for group in self._groups.values():
            for entry in group:
                entry.fail(error)
        self._groups.clear()
        self._group_rows.clear()
        self._queued_rows = 0
