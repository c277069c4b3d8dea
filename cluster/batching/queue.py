"""The batch queue of one (servable, signature): requests in, merged batches out (issue 4).

`submit` validates a request on its own, enqueues it and awaits its slice of a batch's outputs.
A scheduling step (a loop callback, see `_kick`) forms batches and runs up to `num_batch_threads`
of them at once through the injected `execute`, which answers at once (a small batch computed on
the loop) or with an awaitable (a worker thread). A batch closes when it is full
(`max_batch_size` rows, or `max_execution_batch_size` with splitting) or when its oldest request
has waited `batch_timeout_micros`. It waits for a free execution slot *before* it forms, so under load
batches grow by themselves. Requests whose tensors cannot share a batch (different dtypes or
non-batch dims) queue in separate groups and never meet (`groups.QueuedGroups`: which requests
form the next batch).

Clock and sleep are injected: unit tests drive the queue with a fake clock.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping

import numpy as np

from cluster.batching import merge
from cluster.batching.groups import Member, QueuedGroups
from cluster.config import BatchingConfig
from cluster.errors import DeadlineExceeded, Internal, InvalidArgument, ResourceExhausted, Unavailable
from exporter.signature import Tensors

# The batch's outputs, or an awaitable of them (a model computed in a worker thread).
Execute = Callable[[dict[str, np.ndarray]], Awaitable[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray]]
Validate = Callable[[Tensors], None]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]

QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"


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

        self._queued = QueuedGroups()
        self._threads = config.num_batch_threads
        self._busy = 0  # batches running (at most `num_batch_threads`)
        self._kick_due = False  # `_schedule` is queued on the loop
        self._timer: asyncio.Handle | asyncio.Task[None] | None = None  # wakes `_schedule` at a timeout
        self._timer_due = 0.0  # on the injected clock
        self._running: set[asyncio.Task[None]] = set()  # batches whose `execute` had to be awaited
        self._closed = False

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch (a load signal for the router and the autoscaler)."""
        return self._queued.rows

    async def submit(self, inputs: Tensors, deadline: float | None = None) -> dict[str, np.ndarray]:
        """Queue one request and return its outputs (dim 0 = its own rows, padding removed).

        `deadline` is a time on the queue's clock. Raises at once, without queueing:
        InvalidArgument (bad shapes, `validate` failed, too many rows), ResourceExhausted (queue
        full), DeadlineExceeded (deadline already passed), Unavailable (queue closed).
        """
        return await self.enqueue(inputs, deadline)

    def enqueue(self, inputs: Tensors, deadline: float | None = None) -> asyncio.Future[dict[str, np.ndarray]]:
        """`submit` without the coroutine: queues the request and returns the future of its
        outputs, or raises what `submit` raises, at once. A caller queueing many requests (a
        coalesced call) awaits their futures instead of a task per request. Cancelling the future
        drops the request (a batch skips requests whose future is done)."""
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
        if self._queued.rows + rows > self._capacity_rows:
            raise ResourceExhausted(QUEUE_FULL_MESSAGE)

        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        key = merge.shape_key(inputs, pad_variable_length=self._pad_variable)
        self._queued.add(key, inputs, rows, future, deadline, now)
        self._kick()
        return future

    async def close(self, *, drain: bool = True) -> None:
        """Refuse new requests; with `drain`, compute everything queued first, else fail it."""
        self._closed = True
        self._kick()
        while drain and (self._queued.rows or self._running):
            if self._running:
                await asyncio.wait(set(self._running))
            else:
                await asyncio.sleep(0)  # the scheduling step is about to take the rest
        self._disarm()
        self._queued.fail_all(Unavailable("The batch queue is closed"))
        if self._running:
            await asyncio.wait(set(self._running))

    # -- scheduling ---------------------------------------------------------------------------
    # No scheduler task: `_schedule` is a plain callback, queued once per loop step by whatever
    # may let a batch form (a request queued, a batch done, a timeout reached). The requests
    # queued in one step (a coalesced call's, every call read in that step) are there when it
    # runs, as they were when a scheduler task woke; it costs one callback, not a task's wake-up,
    # an Event's and a Semaphore's futures and a task per batch.

    def _kick(self) -> None:
        if not self._kick_due:
            self._kick_due = True
            asyncio.get_running_loop().call_soon(self._schedule)

    def _schedule(self) -> None:
        """Forms batches while an execution slot is free (a batch waits for a slot *before* it
        forms), or sets a timer for the oldest request's timeout."""
        self._kick_due = False
        try:
            while self._busy < self._threads:
                now = self._clock()
                key, wait_s = self._queued.ready(now, self._timeout_s, self._batch_rows, flush=self._closed)
                if key is None:
                    if wait_s is not None:
                        self._arm(now, wait_s)
                    return
                members = self._queued.take(key, now, self._batch_rows, split=self._split)
                if members and self._start(members):
                    # Computed in this step: its callers' answers go out before the next batch
                    # runs, and what arrives meanwhile joins it.
                    self._kick()
                    return
        except Exception as exc:  # noqa: BLE001 - a bug in scheduling must not leave callers waiting forever
            self._queued.fail_all(Internal(f"Batch scheduler failed: {exc!r}"))

    def _arm(self, now: float, wait_s: float) -> None:
        """`_schedule` runs again in `wait_s` seconds (a timer due sooner is kept)."""
        due = now + wait_s
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        if self._sleep is asyncio.sleep:  # the real clock: a timer handle, not a task
            self._timer = asyncio.get_running_loop().call_later(wait_s, self._timeout)
        else:
            self._timer = asyncio.get_running_loop().create_task(self._sleep_then_schedule(wait_s))

    async def _sleep_then_schedule(self, wait_s: float) -> None:
        await self._sleep(wait_s)
        self._timeout()

    def _timeout(self) -> None:
        self._timer = None
        self._schedule()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- execution ----------------------------------------------------------------------------

    def _start(self, members: list[Member]) -> bool:
        """Runs a batch: at once when `execute` answers without awaiting (True), else in a task
        of its own (False). Takes an execution slot; a task gives it back when done."""
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
            outputs = self._execute(batch.inputs)
            if inspect.isawaitable(outputs):
                self._busy += 1
                task = asyncio.get_running_loop().create_task(
                    self._finish(members, counts, batch.padding_rows, outputs)
                )
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                return False
            pieces = merge.split_outputs(outputs, counts, padding_rows=batch.padding_rows)
        except Exception as exc:  # the whole batch failed: every member gets the same error
            for m in members:
                m.entry.fail(exc)
            return True
        for m, piece in zip(members, pieces, strict=True):
            self._deliver(m, piece)
        return True

    async def _finish(
        self, members: list[Member], counts: list[int], padding_rows: int, outputs: Awaitable[Mapping[str, np.ndarray]]
    ) -> None:
        """A batch whose `execute` must be awaited (a worker thread, a test's model)."""
        try:
            pieces = merge.split_outputs(await outputs, counts, padding_rows=padding_rows)
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
            self._busy -= 1
            self._kick()

    @staticmethod
    def _deliver(member: Member, outputs: dict[str, np.ndarray]) -> None:
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
