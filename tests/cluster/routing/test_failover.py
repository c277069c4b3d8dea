"""Gateway-side failover without Ray: hung and dead replicas, waiting for a replacement, shedding."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from cluster import errors
from cluster.config import ServerConfig
from cluster.requests import ModelSpec, PredictRequest
from cluster.routing.coalescer import Coalescer
from cluster.routing.dispatcher import Dispatcher
from cluster.routing.router import Router
from cluster.routing.table import ModelRoute, ReplicaRef, RoutingTable
from cluster.types import ServableState, VersionStatus
from exporter import dtypes
from exporter.signature import PREDICT_METHOD, Signature, TensorInfo


class Target:
    """A replica's data-plane end: `gone` fails every call as a lost connection does; `hang_s`
    makes a call fail only after that long (the channel's liveness timeout, for a stopped process)."""

    def __init__(self, name: str, *, gone: bool = False, hang_s: float = 0.0) -> None:
        self.name, self.gone, self.hang_s = name, gone, hang_s
        self.calls: list[int] = []

    async def run(self, version: int, sig: str, requests: list, output_filter: tuple, timeouts: Any) -> list:
        self.calls.append(len(requests))
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
            raise errors.Unavailable(f"replica {self.name} sent nothing for {self.hang_s}s")
        if self.gone:
            raise errors.Unavailable(f"connection to replica {self.name} lost")
        await asyncio.sleep(0.005)
        return [{"y": r["x"] * 2} for r in requests]


def _refs(*targets: Target) -> list[ReplicaRef]:
    return [ReplicaRef(t, (t.name, 0)) for t in targets]


def _x(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((1,), value, np.float32)}


def _submit(c: Coalescer, router: Router[Any], deadline: float | None = None) -> asyncio.Future[Any]:
    return c.submit("m", router, lambda ref: ref.handle, 1, "s", _x(), (), deadline)


def test_a_hung_replica_s_calls_are_re_sent_and_it_is_set_aside() -> None:
    hung, healthy = Target("hung", hang_s=0.2), Target("ok")

    async def main() -> None:
        c = Coalescer()
        router = Router(_refs(hung, healthy))
        started = time.monotonic()
        for _ in range(5):
            results = await asyncio.gather(*(_submit(c, router) for _ in range(8)))
            assert all(float(r["y"][0]) == 2.0 for r in results)
        assert time.monotonic() - started < 1.0  # waited on the hung one once at most
        assert len(hung.calls) <= 1 and healthy.calls

    asyncio.run(main())


def test_when_the_only_replica_dies_requests_wait_for_its_replacement() -> None:
    dead, replacement = Target("dead", gone=True), Target("new")

    async def main() -> None:
        c = Coalescer()
        router = Router(_refs(dead))
        futures = [_submit(c, router, time.monotonic() + 10) for _ in range(50)]
        futures += [_submit(c, router) for _ in range(50)]  # no client deadline: bounded by max_wait_s
        await asyncio.sleep(0.3)  # the controller notices, starts another, publishes a new table
        assert not any(f.done() for f in futures)
        router.set_replicas(_refs(replacement))
        results = await asyncio.gather(*futures)  # zero failures
        assert len(results) == 100 and sum(replacement.calls) == 100

    asyncio.run(main())


def test_waiting_for_a_replica_is_bounded_without_a_deadline() -> None:
    async def main() -> None:
        c = Coalescer(max_wait_s=0.2)
        router: Router[Any] = Router([])
        started = time.monotonic()
        with pytest.raises(errors.Unavailable, match="No replica"):
            await _submit(c, router)
        assert 0.2 <= time.monotonic() - started < 1.0

    asyncio.run(main())


def _route(replicas: tuple[ReplicaRef, ...], epoch: int) -> RoutingTable:
    signature = Signature("serving_default", PREDICT_METHOD, inputs={"x": TensorInfo("x", dtypes.FLOAT, (None,))},
                          outputs={"y": TensorInfo("y", dtypes.FLOAT, (None,))})
    route = ModelRoute("m", {1: {"serving_default": signature}}, {}, replicas,
                       (VersionStatus(1, ServableState.AVAILABLE),))
    return RoutingTable(epoch=epoch, models={"m": route})


def test_deadlines_hold_and_a_full_waiting_queue_sheds_at_once() -> None:
    async def main() -> None:
        tables = [_route(tuple(_refs(Target("dead", gone=True))), 1)]

        async def poll(epoch: int, incarnation: str) -> RoutingTable:
            while tables[-1].epoch <= epoch:
                await asyncio.sleep(0.01)
            return tables[-1]

        async def reload(config: ServerConfig) -> None:
            raise errors.FailedPrecondition("no reloads here")

        d = Dispatcher(poll, reload, connect=lambda ref: ref.handle, max_in_flight_per_replica=8)
        await d.start()
        request = lambda deadline=None: d.predict(PredictRequest(ModelSpec("m"), _x(), deadline=deadline))  # noqa: E731
        waiting = [asyncio.ensure_future(request(time.monotonic() + 10)) for _ in range(7)]
        short = asyncio.ensure_future(request(time.monotonic() + 0.1))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(errors.ResourceExhausted):  # 8 waiting: the queue is full
            await request(time.monotonic() + 10)
        assert time.monotonic() - started < 0.05  # shed at once, not queued
        with pytest.raises(errors.DeadlineExceeded):
            await short  # its own deadline, not the replacement, decides
        tables.append(_route(tuple(_refs(Target("new"))), 2))
        assert len(await asyncio.gather(*waiting)) == 7
        await d.stop()

    asyncio.run(main())


def test_a_request_for_a_model_at_zero_reports_demand_at_once_and_waits_for_its_cold_start() -> None:
    async def main() -> None:
        tables = [_route((), 1)]  # scaled to zero: versions available, no replica
        reports: list[dict[str, Any]] = []

        async def poll(epoch: int, incarnation: str) -> RoutingTable:
            while tables[-1].epoch <= epoch:
                await asyncio.sleep(0.01)
            return tables[-1]

        async def reload(config: ServerConfig) -> None:
            raise errors.FailedPrecondition("no reloads here")

        async def report(period: float, loads: dict[str, Any]) -> None:
            reports.append(loads)

        d = Dispatcher(poll, reload, connect=lambda ref: ref.handle, max_in_flight_per_replica=8,
                       report_load=report, report_interval_s=60.0)  # the periodic report never comes
        await d.start()
        request = lambda: d.predict(PredictRequest(ModelSpec("m"), _x(), deadline=time.monotonic() + 10))  # noqa: E731
        waiting = [asyncio.ensure_future(request()) for _ in range(8)]
        await asyncio.sleep(0.1)
        assert reports and reports[0]["m"].rate > 0  # demand, reported without waiting for the period
        assert len(reports) == 1  # one early report for the eight, not one each
        with pytest.raises(errors.ResourceExhausted):  # the waiting queue is bounded even at zero
            await request()
        assert not any(f.done() for f in waiting)
        tables.append(_route(tuple(_refs(Target("new"))), 2))  # the controller started one
        results = await asyncio.gather(*waiting)  # zero failures
        assert [float(r.outputs["y"][0]) for r in results] == [2.0] * 8
        await d.stop()

    asyncio.run(main())
