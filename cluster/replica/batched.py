"""The replica's batch queues: requests from every call (and every gateway) merged per servable,
signature and output filter, under TF Serving's BatchingParameters.

Each request is validated on its own (`Replica.validate`) before it joins a batch, so a bad one
never reaches the merge. A merged batch that fails because of its data (say, one malformed
tf.Example) is not blamed on the whole batch: each member goes through `Replica.execute` alone,
the replica's one execution path, so only the offending request fails, with an error about its
own rows. A MultiInference call (`Tasks`) skips the queues: it runs alone, its examples parsed once.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Sequence

import numpy as np

from cluster import errors
from cluster.batching import merge
from cluster.batching.queue import BatchQueue
from cluster.config import BatchingConfig
from cluster.replica.contract import RunResult, Target
from cluster.replica.replica import Replica, compute, is_small
from exporter.errors import InvalidInputError
from exporter.servable import Servable
from exporter.signature import Signature, Tensors, check_feeds

QueueKey = tuple[int, str, tuple[str, ...]]


class _BatchFailed(Exception):
    """A merged batch raised InvalidInputError: its members are retried alone."""

    def __init__(self, error: InvalidInputError) -> None:
        super().__init__(str(error))
        self.error = error


class BatchedRunner:
    """Runs requests of a Replica through one BatchQueue per (version, signature, output filter)."""

    def __init__(self, replica: Replica, config: BatchingConfig) -> None:
        self._replica = replica
        self._config = config
        self._queues: dict[QueueKey, BatchQueue] = {}

    def _queue(self, servable: Servable, signature: Signature, key: QueueKey) -> BatchQueue:
        queue = self._queues.get(key)
        if queue is None:
            _, signature_key, output_filter = key
            fetch = list(output_filter) or None

            def run(inputs: dict[str, np.ndarray]) -> Tensors:
                try:
                    return servable.run(signature_key, inputs, fetch)
                except InvalidInputError as e:
                    raise _BatchFailed(e) from None

            def execute(inputs: dict[str, np.ndarray]) -> Tensors | Awaitable[Tensors]:
                # A small batch is computed in the queue's own step (`compute`'s rule), a big one
                # in a worker thread the queue awaits.
                self._replica.batch_sizes.observe(merge.row_count(inputs))
                if is_small(inputs):
                    return run(inputs)
                return asyncio.to_thread(run, inputs)

            def validate(inputs: Tensors) -> None:
                # `Replica.validate` less its row count: the queue has just counted the rows.
                try:
                    check_feeds(signature, inputs)
                except InvalidInputError as e:
                    raise errors.InvalidArgument(str(e)) from None

            queue = self._queues[key] = BatchQueue(execute, self._config, validate=validate)
        return queue

    async def run(
        self,
        version: int,
        signature_key: Target,
        requests: Sequence[Tensors],
        output_filter: Sequence[str] = (),
        timeouts: Sequence[float | None] | None = None,
    ) -> list[RunResult]:
        if isinstance(signature_key, tuple):
            # A MultiInference runs as it arrives, as its own batch: merged into each task's queue,
            # its examples would be parsed once per task again.
            keys = signature_key
            return await compute(lambda: self._replica.run_tasks(version, keys, requests), *requests)
        try:
            servable, signature = self._replica.resolve(version, signature_key)
        except errors.ServingError as e:
            return [e] * len(requests)
        queue = self._queue(servable, signature, (version, signature_key, tuple(output_filter)))
        now = time.monotonic()
        deadlines = [None if t is None else now + t for t in (timeouts or [None] * len(requests))]
        outcomes = await _outcomes(queue, requests, deadlines)
        results: list[RunResult] = []
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, _BatchFailed):
                alone = await compute(
                    functools.partial(self._replica.execute, servable, signature_key, [request], output_filter),
                    request,
                )
                results.append(alone[0])
            else:
                results.append(_as_result(outcome))
        return results

    @property
    def queued_rows(self) -> int:
        return sum(q.queued_rows for q in self._queues.values())

    async def unload(self, version: int) -> None:
        """Drains and closes the queues of a version before it is unloaded."""
        closing = [q for (v, _, _), q in self._queues.items() if v == version]
        self._queues = {k: q for k, q in self._queues.items() if k[0] != version}
        await asyncio.gather(*(q.close(drain=True) for q in closing))


async def _outcomes(
    queue: BatchQueue, requests: Sequence[Tensors], deadlines: Sequence[float | None]
) -> list[Tensors | BaseException]:
    """Each request's outputs or error, as `gather(*(queue.submit(...)), return_exceptions=True)`
    gives them, without a task per request: the requests are queued at once and their futures
    awaited in turn (a batch settles many of them in one step, so most are done when reached)."""
    pending: list[asyncio.Future[dict[str, np.ndarray]] | BaseException] = []
    for request, deadline in zip(requests, deadlines, strict=True):
        try:
            pending.append(queue.enqueue(request, deadline))
        except Exception as exc:  # noqa: BLE001 - a refusal is that request's outcome
            pending.append(exc)
    outcomes: list[Tensors | BaseException] = []
    try:
        for item in pending:
            if isinstance(item, BaseException):
                outcomes.append(item)
                continue
            try:
                outcomes.append(await item)  # CancelledError: this call was cancelled (the queue fails, never cancels)
            except Exception as exc:  # noqa: BLE001 - the request's own error
                outcomes.append(exc)
    finally:
        for item in pending:  # the call is cancelled: its requests leave the queue
            if isinstance(item, asyncio.Future) and not item.done():
                item.cancel()
    return outcomes


def _as_result(outcome: Tensors | BaseException) -> RunResult:
    if not isinstance(outcome, BaseException):  # outputs: the common case first
        return outcome
    if isinstance(outcome, errors.ServingError):
        return outcome
    if isinstance(outcome, InvalidInputError):
        return errors.InvalidArgument(str(outcome))
    # No Python class name in what a client reads (issue 9).
    return errors.Internal(f"the servable failed: {outcome}" if str(outcome) else "the servable failed")
