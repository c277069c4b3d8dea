"""The batch queue, driven by a fake clock: no test waits on real time."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping

import numpy as np
import pytest

from cluster import errors
from cluster.batching.queue import QUEUE_FULL_MESSAGE, BatchQueue
from cluster.config import BatchingConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self._sleepers: list[tuple[float, asyncio.Future]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        await settle()  # let everything due at the current time happen first
        self.now += seconds
        for wake_at, future in self._sleepers:
            if wake_at <= self.now and not future.done():
                future.set_result(None)
        self._sleepers = [(t, f) for t, f in self._sleepers if not f.done()]
        await settle()


async def settle(rounds: int = 30) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


class Model:
    """Doubles `x`, echoes `id`; records each batch; can be held to keep batches in flight."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.batches: list[dict[str, np.ndarray]] = []
        self.gate: asyncio.Event | None = None
        self.fail_with = fail_with
        self.running = 0
        self.max_running = 0

    async def __call__(self, inputs: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.batches.append(inputs)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
            return {"y": inputs["x"] * 2, "id": inputs["id"]}
        finally:
            self.running -= 1

    @property
    def batch_rows(self) -> list[int]:
        return [b["x"].shape[0] for b in self.batches]


def req(rows: int, start: int = 0, width: int = 2) -> dict[str, np.ndarray]:
    x = np.arange(start * width, (start + rows) * width, dtype=np.float32).reshape(rows, width)
    return {"x": x, "id": np.arange(start, start + rows, dtype=np.int64)}


def check(request: dict[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(outputs["y"], request["x"] * 2)
    np.testing.assert_array_equal(outputs["id"], request["id"])


def async_test(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), timeout=2))

    return wrapper


def make(config: BatchingConfig, model: Model | None = None, **kwargs) -> tuple[BatchQueue, Model, FakeClock]:
    clock = FakeClock()
    model = model or Model()
    return BatchQueue(model, config, clock=clock, sleep=clock.sleep, **kwargs), model, clock


def spawn(queue: BatchQueue, request: dict[str, np.ndarray], deadline: float | None = None) -> asyncio.Task:
    return asyncio.ensure_future(queue.submit(request, deadline=deadline))


@async_test
async def test_size_trigger_closes_a_full_batch_without_waiting_for_the_timeout():
    queue, model, _ = make(BatchingConfig(max_batch_size=4, batch_timeout_micros=1_000_000))
    requests = [req(1, start=i) for i in range(4)]
    tasks = [spawn(queue, r) for r in requests]
    await settle()
    assert model.batch_rows == [4]
    for r, t in zip(requests, tasks, strict=True):
        check(r, await t)


@async_test
async def test_timeout_trigger_runs_an_underfull_batch_when_the_oldest_request_has_waited():
    queue, model, clock = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=5_000))
    first = spawn(queue, req(2))
    await clock.advance(0.003)
    second = spawn(queue, req(1, start=2))
    await clock.advance(0.0019)
    assert model.batches == []
    await clock.advance(0.0001)  # 5 ms after the first request, not the second
    assert model.batch_rows == [3]
    check(req(2), await first)
    check(req(1, start=2), await second)


@async_test
async def test_zero_timeout_runs_at_once():
    queue, model, _ = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=0))
    check(req(3), await queue.submit(req(3)))
    assert model.batch_rows == [3]


@async_test
async def test_padding_to_allowed_batch_sizes_never_leaks():
    queue, model, clock = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=1_000, allowed_batch_sizes=(2, 4, 8)))
    requests = [req(2, start=0), req(1, start=2), req(2, start=3)]
    tasks = [spawn(queue, r) for r in requests]
    await clock.advance(0.001)
    assert model.batch_rows == [8]  # 5 rows padded up to 8
    np.testing.assert_array_equal(model.batches[0]["id"][5:], [0, 0, 0])  # copies of row 0
    for r, t in zip(requests, tasks, strict=True):
        check(r, await t)


@async_test
async def test_invalid_allowed_batch_sizes_are_rejected():
    with pytest.raises(errors.InvalidArgument):
        make(BatchingConfig(max_batch_size=8, allowed_batch_sizes=(2, 4)))


@async_test
async def test_large_request_is_split_across_batches_and_reassembled():
    config = BatchingConfig(
        max_batch_size=10, max_execution_batch_size=4, enable_large_batch_splitting=True,
        batch_timeout_micros=1_000, num_batch_threads=1,
    )
    queue, model, clock = make(config)
    small, large = req(3, start=0), req(10, start=3)
    tasks = [spawn(queue, small), spawn(queue, large)]
    await settle()
    assert model.batch_rows == [4, 4, 4]  # full batches leave at once; the large request filled batch 1
    await clock.advance(0.001)  # the last row waits for the timeout like any underfull batch
    assert model.batch_rows == [4, 4, 4, 1]
    check(small, await tasks[0])
    check(large, await tasks[1])


@async_test
async def test_request_larger_than_max_batch_size_is_rejected_on_its_own():
    queue, model, _ = make(BatchingConfig(max_batch_size=4))
    with pytest.raises(errors.InvalidArgument, match="Task size 5 is larger than maximum input batch size 4"):
        await queue.submit(req(5))
    check(req(4), await queue.submit(req(4)))


@async_test
async def test_many_requests_each_get_their_own_rows_back_in_order():
    queue, model, clock = make(BatchingConfig(max_batch_size=16, batch_timeout_micros=2_000, num_batch_threads=2))
    requests, start = [], 0
    for rows in [1, 5, 2, 7, 1, 3, 4, 2, 6, 1]:
        requests.append(req(rows, start=start))
        start += rows
    tasks = [spawn(queue, r) for r in requests]
    await clock.advance(0.002)
    await clock.advance(0.002)
    for r, t in zip(requests, tasks, strict=True):
        check(r, await t)
    # Batches take requests in arrival order and never exceed max_batch_size.
    ids = np.concatenate([b["id"] for b in model.batches])
    np.testing.assert_array_equal(ids, np.arange(start))
    assert all(rows <= 16 for rows in model.batch_rows)


@async_test
async def test_one_invalid_request_is_rejected_alone():
    def validate(inputs):
        if np.isnan(inputs["x"]).any():
            raise errors.InvalidArgument("x must not contain NaN")

    queue, model, clock = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=1_000), validate=validate)
    bad = req(1, start=1)
    bad["x"][0, 0] = np.nan
    good = [spawn(queue, req(1, start=0)), spawn(queue, bad), spawn(queue, req(1, start=2))]
    await clock.advance(0.001)
    with pytest.raises(errors.InvalidArgument, match="NaN"):
        await good[1]
    check(req(1, start=0), await good[0])
    check(req(1, start=2), await good[2])
    assert model.batch_rows == [2]


@async_test
async def test_a_failing_batch_fails_every_member_and_the_queue_keeps_working():
    model = Model(fail_with=errors.Internal("kernel exploded"))
    queue, model, clock = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=1_000), model)
    tasks = [spawn(queue, req(1, start=i)) for i in range(3)]
    await clock.advance(0.001)
    for t in tasks:
        with pytest.raises(errors.Internal, match="kernel exploded"):
            await t
    model.fail_with = None
    task = spawn(queue, req(2))
    await clock.advance(0.001)
    check(req(2), await task)


@async_test
async def test_outputs_without_the_batch_dimension_fail_the_batch():
    async def broken(inputs):
        return {"y": inputs["x"][:1]}

    queue = BatchQueue(broken, BatchingConfig(max_batch_size=8))
    with pytest.raises(errors.FailedPrecondition):
        await queue.submit(req(3))


@async_test
async def test_full_queue_is_refused_at_once():
    model = Model()
    model.gate = asyncio.Event()
    config = BatchingConfig(max_batch_size=2, max_enqueued_batches=2, num_batch_threads=1, batch_timeout_micros=0)
    queue, model, clock = make(config, model)
    running = spawn(queue, req(2, start=0))
    await settle()
    assert model.batch_rows == [2] and queue.queued_rows == 0
    queued = [spawn(queue, req(2, start=2)), spawn(queue, req(1, start=4)), spawn(queue, req(1, start=5))]
    await settle()
    assert queue.queued_rows == 4  # 2 batches of 2 rows: the limit
    with pytest.raises(errors.ResourceExhausted) as caught:
        await queue.submit(req(1, start=6))
    assert str(caught.value) == QUEUE_FULL_MESSAGE
    model.gate.set()
    for r, t in zip([req(2, 0), req(2, 2), req(1, 4), req(1, 5)], [running, *queued], strict=True):
        check(r, await t)


@async_test
async def test_request_whose_deadline_passed_while_queued_is_not_computed():
    queue, model, clock = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=10_000))
    doomed = spawn(queue, req(1, start=0), deadline=clock.now + 0.005)
    patient = spawn(queue, req(1, start=1), deadline=clock.now + 1.0)
    await clock.advance(0.010)
    with pytest.raises(errors.DeadlineExceeded):
        await doomed
    check(req(1, start=1), await patient)
    np.testing.assert_array_equal(np.concatenate([b["id"] for b in model.batches]), [1])


@async_test
async def test_deadline_already_passed_is_refused_without_queueing():
    queue, model, clock = make(BatchingConfig(max_batch_size=8))
    with pytest.raises(errors.DeadlineExceeded):
        await queue.submit(req(1), deadline=clock.now)
    assert queue.queued_rows == 0 and model.batches == []


@async_test
async def test_incompatible_shapes_go_to_separate_batches():
    queue, model, clock = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=1_000))
    narrow, wide, narrow2 = req(1, start=0, width=2), req(2, start=1, width=3), req(1, start=3, width=2)
    tasks = [spawn(queue, narrow), spawn(queue, wide), spawn(queue, narrow2)]
    await clock.advance(0.001)
    assert sorted(b["x"].shape for b in model.batches) == [(2, 2), (2, 3)]
    for r, t in zip([narrow, wide, narrow2], tasks, strict=True):
        check(r, await t)


@async_test
async def test_variable_length_inputs_share_a_batch_when_padding_is_on():
    async def row_sums(inputs):
        return {"s": inputs["t"].sum(axis=1)}

    clock = FakeClock()
    config = BatchingConfig(max_batch_size=8, batch_timeout_micros=1_000, pad_variable_length_inputs=True)
    queue = BatchQueue(row_sums, config, clock=clock, sleep=clock.sleep)
    short = {"t": np.array([[0, 5]], dtype=np.int64)}  # padded with its first element, 0
    long = {"t": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)}
    tasks = [spawn(queue, short), spawn(queue, long)]
    await clock.advance(0.001)
    np.testing.assert_array_equal((await tasks[0])["s"], [5])
    np.testing.assert_array_equal((await tasks[1])["s"], [6, 15])


@async_test
async def test_at_most_num_batch_threads_batches_run_at_once_and_waiting_requests_coalesce():
    model = Model()
    model.gate = asyncio.Event()
    queue, model, clock = make(BatchingConfig(max_batch_size=8, num_batch_threads=2, batch_timeout_micros=0), model)
    tasks = [spawn(queue, req(1, start=0))]
    await settle()
    tasks.append(spawn(queue, req(1, start=1)))
    await settle()
    tasks += [spawn(queue, req(1, start=i)) for i in range(2, 5)]
    await settle()
    assert model.running == 2 and queue.queued_rows == 3
    model.gate.set()
    for i, t in enumerate(tasks):
        check(req(1, start=i), await t)
    assert model.max_running == 2
    assert sorted(model.batch_rows) == [1, 1, 3]  # the three that waited left together


@async_test
async def test_cancelled_request_is_not_computed():
    queue, model, clock = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=1_000))
    gone = spawn(queue, req(1, start=0))
    stays = spawn(queue, req(1, start=1))
    await settle()
    gone.cancel()
    await clock.advance(0.001)
    check(req(1, start=1), await stays)
    np.testing.assert_array_equal(model.batches[0]["id"], [1])


@async_test
async def test_close_drains_then_refuses():
    queue, model, clock = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=1_000_000))
    task = spawn(queue, req(2))
    await settle()
    await queue.close()  # does not wait for the 1 s timeout
    check(req(2), await task)
    with pytest.raises(errors.Unavailable):
        await queue.submit(req(1))


@async_test
async def test_close_without_drain_fails_what_is_queued():
    queue, model, clock = make(BatchingConfig(max_batch_size=8, batch_timeout_micros=1_000_000))
    task = spawn(queue, req(2))
    await settle()
    await queue.close(drain=False)
    with pytest.raises(errors.Unavailable):
        await task
    assert model.batches == []
