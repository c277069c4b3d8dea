"""The replica without Ray: loading, warmup, batched runs with per-request error isolation."""

from __future__ import annotations

import asyncio
import pathlib

import numpy as np
import pytest

from cluster import errors
from cluster.client.examples import make_example
from cluster.config import BatchingConfig
from cluster.replica.batched import BatchedRunner
from cluster.replica.replica import Replica
from exporter import warmup
from exporter.errors import BundleError
from tests.bundles_testlib import corrupt_version, write_version


@pytest.fixture
def base(tmp_path: pathlib.Path) -> pathlib.Path:
    write_version(tmp_path / "m", 1, 2.0)
    return tmp_path / "m"


def test_load_run_unload(base: pathlib.Path) -> None:
    replica = Replica("m")
    signatures = replica.load(1, str(base / "1"))
    assert set(signatures) == {"serving_default", "classify", "regress"}
    results = replica.run(1, "serving_default", [{"x": np.ones((2, 2), np.float32)}, {"x": np.zeros((1, 2), np.float32)}])
    np.testing.assert_array_equal(results[0]["y"], np.full((2, 2), 2.0, np.float32))
    np.testing.assert_array_equal(results[1]["y"], np.zeros((1, 2), np.float32))
    replica.unload(1)
    (error,) = replica.run(1, "serving_default", [{"x": np.ones((1, 2), np.float32)}])
    assert isinstance(error, errors.NotFound)


def test_bad_request_fails_alone(base: pathlib.Path) -> None:
    replica = Replica("m")
    replica.load(1, str(base / "1"))
    good = {"x": np.ones((1, 2), np.float32)}
    results = replica.run(1, "serving_default", [good, {"x": np.ones((1, 2), np.float64)}, good])
    assert isinstance(results[1], errors.InvalidArgument)
    assert results[0]["y"].shape == (1, 2) and results[2]["y"].shape == (1, 2)


def test_data_dependent_error_in_merged_batch_is_isolated(base: pathlib.Path) -> None:
    replica = Replica("m")
    replica.load(1, str(base / "1"))

    def column(*examples: bytes) -> dict[str, np.ndarray]:
        arr = np.empty(len(examples), dtype=object)
        arr[:] = list(examples)
        return {"inputs": arr}

    ok = make_example({"a": 1.0, "b": 2.0}).SerializeToString()
    missing_b = make_example({"a": 1.0}).SerializeToString()
    results = replica.run(1, "regress", [column(ok), column(ok, missing_b), column(ok)])
    assert isinstance(results[1], errors.InvalidArgument)
    assert "Index: 1" in str(results[1])  # the index within its own request, not the merged batch
    np.testing.assert_allclose(results[0]["outputs"], [6.0])
    np.testing.assert_allclose(results[2]["outputs"], [6.0])


def test_corrupt_bundle_fails_to_load(tmp_path: pathlib.Path) -> None:
    corrupt_version(tmp_path / "m", 3)
    with pytest.raises(BundleError, match="checksum|size"):
        Replica("m").load(3, str(tmp_path / "m" / "3"))


def test_warmup_replays_and_a_bad_record_fails_the_load(base: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from cluster.replica.warmup import replay_warmup
    from exporter.runtime import Runtime
    from tests.bundles_testlib import build_meta_graph

    runtime = Runtime(*build_meta_graph(1.0))
    good = tmp_path / "good"
    good.write_bytes(warmup.encode_warmup([warmup.predict_log("serving_default", {"x": np.ones((1, 2), np.float32)})]))
    assert replay_warmup(runtime, good) == 1
    bad = tmp_path / "bad"
    bad.write_bytes(warmup.encode_warmup([warmup.predict_log("serving_default", {"x": np.ones((1, 3), np.float32)})]))
    with pytest.raises(Exception, match="shape"):
        replay_warmup(runtime, bad)


def test_batched_runner_merges_across_calls_and_isolates_errors(base: pathlib.Path) -> None:
    replica = Replica("m")
    replica.load(1, str(base / "1"))
    runner = BatchedRunner(replica, BatchingConfig(max_batch_size=8, batch_timeout_micros=2000))

    async def main() -> list:
        calls = [
            runner.run(1, "serving_default", [{"x": np.full((1, 2), i, np.float32)}]) for i in range(5)
        ] + [runner.run(1, "serving_default", [{"x": np.ones((1, 2), np.int64)}])]
        return await asyncio.gather(*calls)

    results = asyncio.run(main())
    for i in range(5):
        np.testing.assert_array_equal(results[i][0]["y"], np.full((1, 2), 2.0 * i, np.float32))
    assert isinstance(results[5][0], errors.InvalidArgument)


def test_batched_runner_sheds_load_when_queue_is_full(base: pathlib.Path) -> None:
    replica = Replica("m")
    replica.load(1, str(base / "1"))
    config = BatchingConfig(max_batch_size=2, batch_timeout_micros=50_000, max_enqueued_batches=1)
    runner = BatchedRunner(replica, config)

    async def main() -> list:
        return await runner.run(1, "serving_default", [{"x": np.ones((1, 2), np.float32)}] * 5)

    results = asyncio.run(main())
    assert sum(isinstance(r, errors.ResourceExhausted) for r in results) == 3
    assert sum(isinstance(r, dict) for r in results) == 2


def test_batched_runner_queues_a_coalesced_call_without_a_task_per_request(base: pathlib.Path) -> None:
    """A call of 16 requests costs the loop a few tasks (the scheduler, the batches), not one per
    request: at 2-3 requests per call every task was ~10 % of the replica's CPU per Predict."""
    replica = Replica("m")
    replica.load(1, str(base / "1"))
    runner = BatchedRunner(replica, BatchingConfig(max_batch_size=32, batch_timeout_micros=0))
    created = 0

    async def main() -> list:
        nonlocal created
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro, **kwargs):  # noqa: ANN001, ANN202
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(factory)
        requests = [{"x": np.full((1, 2), i, np.float32)} for i in range(15)] + [{"x": np.ones((1, 3), np.float32)}]
        results = await runner.run(1, "serving_default", requests)
        loop.set_task_factory(None)
        return results

    results = asyncio.run(main())
    for i in range(15):
        np.testing.assert_array_equal(results[i]["y"], np.full((1, 2), 2.0 * i, np.float32))
    assert isinstance(results[15], errors.InvalidArgument)  # refused alone, in its place
    assert created <= 3  # the scheduler and one batch (16 before: a task per request)


def test_batched_runner_expired_deadline_is_not_computed(base: pathlib.Path) -> None:
    replica = Replica("m")
    replica.load(1, str(base / "1"))
    runner = BatchedRunner(replica, BatchingConfig(max_batch_size=4, batch_timeout_micros=1000))
    (result,) = asyncio.run(runner.run(1, "serving_default", [{"x": np.ones((1, 2), np.float32)}], timeouts=[-1.0]))
    assert isinstance(result, errors.DeadlineExceeded)


def test_warmup_examples_share_their_context_as_live_requests_do() -> None:
    """A warmup record's context reaches the parser as a live request's does (merged while parsing,
    not copied onto each example), and parses as TF's context + example concatenation."""
    from cluster.replica.warmup import serialized_examples
    from exporter import dtypes
    from exporter.example_parser import parse_example
    from exporter.features import FixedLenFeature
    from protos.tessera import warmup_pb2

    context = make_example({"c": [1.0], "x": [9.0]}).SerializeToString()
    rows = [make_example({"x": [float(i)]}).SerializeToString() for i in range(3)]
    serialized = warmup_pb2.SerializedInput()
    serialized.example_list_with_context.context = context
    serialized.example_list_with_context.examples.extend(rows)

    fed = serialized_examples(serialized)
    assert [bytes(item) for item in fed] == rows  # the examples themselves, context not copied in
    spec = {"c": FixedLenFeature((1,), dtypes.FLOAT), "x": FixedLenFeature((1,), dtypes.FLOAT)}
    parsed = parse_example(fed, spec)
    expected = parse_example([context + row for row in rows], spec)
    np.testing.assert_array_equal(parsed["c"], expected["c"])
    np.testing.assert_array_equal(parsed["x"], [[0.0], [1.0], [2.0]])  # the example's own value wins
    np.testing.assert_array_equal(parsed["x"], expected["x"])

    empty = warmup_pb2.SerializedInput()
    empty.example_list_with_context.context = context
    with pytest.raises(errors.InvalidArgument, match="Input is empty"):
        serialized_examples(empty)
