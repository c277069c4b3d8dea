"""Dispatcher and coalescer without Ray: fake replica handles whose `run.remote` is a coroutine."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
import pytest

from cluster import errors
from cluster.client.examples import make_example
from cluster.config import ServerConfig
from cluster.replica.replica import Replica
from cluster.requests import ExamplesRequest, InferenceTask, ModelSpec, MultiInferenceRequest, PredictRequest
from cluster.routing.coalescer import Coalescer
from cluster.routing.dispatcher import Dispatcher
from cluster.routing.router import Router
from cluster.routing.table import ModelRoute, ReplicaRef, RoutingTable
from cluster.types import ServableState, VersionRequest, VersionStatus
from tests.bundles_testlib import write_version


class FakeReplica:
    """Runs on a real Replica in-process; records the size of each coalesced call it received."""

    def __init__(self, replica: Replica, *, delay: float = 0.01, fail: bool = False) -> None:
        self.calls: list[int] = []
        self._replica = replica
        self._delay = delay
        self._fail = fail

    async def run(self, version: int, signature: str, requests: list, output_filter: tuple, timeouts: Any) -> list:
        self.calls.append(len(requests))
        await asyncio.sleep(self._delay)
        if self._fail:
            raise RuntimeError("actor died")
        return self._replica.run(version, signature, requests, output_filter)


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Replica:
    base = tmp_path_factory.mktemp("m") / "m"
    write_version(base, 1, 2.0)
    write_version(base, 2, 3.0)
    r = Replica("m")
    r.load(1, str(base / "1"))
    r.load(2, str(base / "2"))
    return r


def _table(replicas: list[Any], signatures: Any) -> RoutingTable:
    route = ModelRoute(
        name="m",
        available={1: signatures, 2: signatures},
        labels={"stable": 1},
        replicas=tuple(ReplicaRef(r, ("fake", i)) for i, r in enumerate(replicas)),
        statuses=(VersionStatus(2, ServableState.AVAILABLE), VersionStatus(1, ServableState.AVAILABLE)),
    )
    return RoutingTable(epoch=1, models={"m": route})


async def _dispatcher(replicas: list[Any], replica: Replica, **kwargs: Any) -> Dispatcher:
    table = _table(replicas, replica.servable(1).signatures)

    async def poll(epoch: int, incarnation: str) -> RoutingTable:
        if epoch >= table.epoch:
            await asyncio.sleep(3600)
        return table

    async def reload(config: ServerConfig) -> None:
        raise errors.FailedPrecondition("no reloads here")

    d = Dispatcher(poll, reload, connect=lambda ref: ref.handle, **kwargs)
    await d.start()
    return d


def _x(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), value, np.float32)}


def test_concurrent_requests_leave_as_few_calls(replica: Replica) -> None:
    fake = FakeReplica(replica)

    async def main() -> list:
        d = await _dispatcher([fake], replica)
        results = await asyncio.gather(*(d.predict(PredictRequest(ModelSpec("m"), _x(i))) for i in range(50)))
        await d.stop()
        return results

    results = asyncio.run(main())
    assert len(fake.calls) < 10 and sum(fake.calls) == 50
    for i, result in enumerate(results):
        assert result.spec.version == 2  # latest
        np.testing.assert_array_equal(result.outputs["y"], np.full((1, 2), 3.0 * i, np.float32))



@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (ModelSpec("ghost"), errors.NotFound, "Servable not found for request: Latest(ghost)"),
        (ModelSpec("m", VersionRequest.specific(7)), errors.NotFound, "Specific(m, 7)"),
        (ModelSpec("m", VersionRequest.labelled("x")), errors.InvalidArgument, "Unrecognized servable version label: x"),
        (ModelSpec("m", signature_name="nope"), errors.FailedPrecondition, 'Serving signature key "nope" not found.'),
    ],
)
def test_predict_errors(replica: Replica, spec: ModelSpec, error: type, message: str) -> None:
    async def main() -> None:
        d = await _dispatcher([FakeReplica(replica)], replica)
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            await d.predict(PredictRequest(spec, _x()))

    asyncio.run(main())


def test_a_request_checked_where_it_entered_is_not_checked_again(replica: Replica) -> None:
    """The gRPC gateway checks a Predict's tensors against the signature before decoding them; the
    dispatcher repeats that check only when it resolves the request to another signature. The
    replica still checks what reaches it (it may be called by any gateway)."""
    signature = replica.servable(1).signatures["serving_default"]
    bad = {"x": np.zeros((1, 3), np.float32)}  # the signature wants [-1, 2]

    async def main() -> None:
        fake = FakeReplica(replica)
        d = await _dispatcher([fake], replica)
        with pytest.raises(errors.InvalidArgument, match="expected shape"):
            await d.predict(PredictRequest(ModelSpec("m"), bad))
        assert fake.calls == []  # refused in the gateway: no replica time spent
        other = dataclasses.replace(signature, key="another")
        with pytest.raises(errors.InvalidArgument, match="expected shape"):
            await d.predict(PredictRequest(ModelSpec("m"), bad, checked=other))
        assert fake.calls == []
        # Marked as checked against this very signature: trusted here, refused by the replica.
        with pytest.raises(errors.InvalidArgument, match="expected shape"):
            await d.predict(PredictRequest(ModelSpec("m"), bad, checked=signature))
        assert fake.calls == [1]
        # The output filter is never part of the entry's check: still refused here.
        with pytest.raises(errors.InvalidArgument, match="output tensor alias not found in signature: z"):
            await d.predict(PredictRequest(ModelSpec("m"), _x(), ("z",), checked=signature))
        await d.stop()

    asyncio.run(main())


def test_label_and_examples_calls(replica: Replica) -> None:
    ex = [make_example({"a": 1.0, "b": 2.0}).SerializeToString()]

    async def main() -> tuple:
        d = await _dispatcher([FakeReplica(replica)], replica)
        stable = await d.predict(PredictRequest(ModelSpec("m", VersionRequest.labelled("stable")), _x()))
        classify = await d.classify(ExamplesRequest(ModelSpec("m", signature_name="classify"), ex))
        regress = await d.regress(ExamplesRequest(ModelSpec("m", signature_name="regress"), ex))
        with pytest.raises(errors.InvalidArgument, match="No signature was found with the name: nope"):
            await d.classify(ExamplesRequest(ModelSpec("m", signature_name="nope"), ex))
        with pytest.raises(errors.InvalidArgument, match="one input|string"):
            await d.classify(ExamplesRequest(ModelSpec("m"), ex))
        multi = await d.multi_inference(MultiInferenceRequest(
            [InferenceTask(ModelSpec("m", signature_name="classify"), "tensorflow/serving/classify"),
             InferenceTask(ModelSpec("m", signature_name="regress"), "tensorflow/serving/regress")], ex))
        with pytest.raises(errors.Unimplemented):
            await d.multi_inference(MultiInferenceRequest([InferenceTask(ModelSpec("m"), "bogus")], ex))
        with pytest.raises(errors.InvalidArgument, match="Duplicate evaluation"):
            await d.multi_inference(MultiInferenceRequest(
                [InferenceTask(ModelSpec("m", signature_name="regress"), "tensorflow/serving/regress")] * 2, ex))
        return stable, classify, regress, multi

    stable, classify, regress, multi = asyncio.run(main())
    assert stable.spec.version == 1 and stable.outputs["y"][0, 0] == 2.0
    assert classify.labels.tolist() == [[b"a", b"b"]]
    np.testing.assert_allclose(regress.values, [9.0])
    # One call for both tasks, answered as the separate Classify and Regress were.
    assert multi[0].spec.signature_key == "classify" and multi[1].spec.signature_key == "regress"
    np.testing.assert_array_equal(multi[0].scores, classify.scores)
    assert multi[0].labels.tolist() == classify.labels.tolist()
    np.testing.assert_array_equal(multi[1].values, regress.values)


def test_dead_replica_fails_over_to_another(replica: Replica) -> None:
    dead, alive = FakeReplica(replica, fail=True), FakeReplica(replica)

    async def main() -> int:
        d = await _dispatcher([dead, alive], replica)
        ok = 0
        for _ in range(20):
            await d.predict(PredictRequest(ModelSpec("m"), _x()))
            ok += 1
        return ok

    assert asyncio.run(main()) == 20
    assert alive.calls


def test_deadline_and_overload_shedding(replica: Replica) -> None:
    slow = FakeReplica(replica, delay=0.5)

    async def main() -> None:
        d = await _dispatcher([slow], replica, max_in_flight_per_replica=4)
        import time

        with pytest.raises(errors.DeadlineExceeded):
            await d.predict(PredictRequest(ModelSpec("m"), _x(), deadline=time.monotonic() + 0.05))
        tasks = [asyncio.ensure_future(d.predict(PredictRequest(ModelSpec("m"), _x()))) for _ in range(4)]
        await asyncio.sleep(0)
        with pytest.raises(errors.ResourceExhausted):
            await d.predict(PredictRequest(ModelSpec("m"), _x()))
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_coalescer_keeps_lanes_apart() -> None:
    class Echo:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        async def run(self, version: int, sig: str, requests: list, output_filter: tuple, timeouts: Any) -> list:
            self.calls.append((version, sig, len(requests)))
            await asyncio.sleep(0.01)
            return [{"v": np.array([version])} for _ in requests]

    echo = Echo()

    async def main() -> list:
        c = Coalescer(max_calls_per_replica=1)
        router = Router([ReplicaRef(echo, ("echo", 0))])
        futures = [
            c.submit("m", router, lambda ref: ref.handle, 1 + i % 2, "s", {"x": np.zeros(1)}) for i in range(10)
        ]
        return await asyncio.gather(*futures)

    results = asyncio.run(main())
    assert [int(r["v"][0]) for r in results] == [1 + i % 2 for i in range(10)]
    # Submitted in one step of the loop, each lane's 5 requests leave in one call (4 calls before:
    # the first of each lane alone, then the other 4).
    assert sorted(echo.calls) == [(1, "s", 5), (2, "s", 5)]


def test_two_replicas_each_take_whole_batches(replica: Replica) -> None:
    first, second = FakeReplica(replica), FakeReplica(replica)

    async def main() -> None:
        d = await _dispatcher([first, second], replica)
        await asyncio.gather(*(d.predict(PredictRequest(ModelSpec("m"), _x(i))) for i in range(60)))
        await d.stop()

    asyncio.run(main())
    assert first.calls and second.calls  # both replicas worked ...
    assert len(first.calls) + len(second.calls) < 12  # ... on batches, not on single requests
    assert sum(first.calls) + sum(second.calls) == 60


def test_reports_the_time_averaged_load_of_each_period(replica: Replica) -> None:
    # One request of ~0.2 s at a time, back to back: about 1 in flight all the time. A once-a-period
    # sample would see 0 or 1; the report is the integral over the period.
    slow = FakeReplica(replica, delay=0.2)
    reports: list[tuple[float, dict]] = []

    async def report(period: float, loads: dict) -> None:
        reports.append((period, loads))

    async def main() -> None:
        d = await _dispatcher([slow], replica, report_load=report, report_interval_s=0.5)
        end = asyncio.get_running_loop().time() + 1.6
        while asyncio.get_running_loop().time() < end:
            await d.predict(PredictRequest(ModelSpec("m"), _x()))
        await asyncio.sleep(1.2)  # a whole idle period after the load
        await d.stop()

    asyncio.run(main())
    assert len(reports) >= 3
    period, busy = reports[1]
    assert period == pytest.approx(0.5, abs=0.15)
    assert busy["m"].in_flight_requests == pytest.approx(1.0, abs=0.1)
    assert busy["m"].rate == pytest.approx(1 / 0.2, rel=0.4)
    assert reports[-1][1]["m"].in_flight_requests == pytest.approx(0.0, abs=0.05)
