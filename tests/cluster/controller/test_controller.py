"""The controller over fake replica handles (no Ray): versions, health ticks, routing table.

Its clock is a FakeClock (time passes when a test advances it); what it does is read as a gateway
reads it, from the routing table (`get_routing_table`) and the metrics (`cluster_stats`)."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable
from typing import Any

from cluster.config import ModelConfig, ServerConfig
from cluster.controller.controller import Controller
from cluster.controller.member import HealthOptions
from cluster.controller.options import ControllerOptions
from cluster.routing.table import RoutingTable
from tests.cluster.controller.controller_testlib import (
    FakeClock,
    FakeHandle,
    make_controller,
    routing_table,
    table_holds,
    until,
)


def test_polled_once_yet_a_dead_replica_is_still_replaced(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        clock = FakeClock()
        controller = make_controller(started, clock, poll_seconds=0, tick_seconds=0.05)
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
        await until(lambda: table_holds(controller, RoutingTable.ready))
        table = await routing_table(controller)
        assert set(table.models["m"].available) == {1}
        (tmp_path / "m" / "2").mkdir()  # polled once: a new version is not picked up ...
        clock.advance(60.0)  # ... however long it waits ...
        started[0].dead = True  # ... but health checks still run
        await until(lambda: len(started) == 2)
        await until(lambda: 1 in started[1].loaded)  # the replacement loads v1 before routing
        # Between the dead replica leaving the table and its replacement entering it, "m" routes
        # to none: the predicate must hold for that table too.
        await until(lambda: table_holds(controller, lambda t: [r.handle for r in t.models["m"].replicas] == [started[1]]))
        assert set((await routing_table(controller)).models["m"].available) == {1}
        await controller.shutdown()

    asyncio.run(main())


def test_a_new_version_replaces_the_old_without_a_gap(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        clock = FakeClock()
        controller = make_controller(started, clock, poll_seconds=0.05, tick_seconds=0.05)
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
        await until(lambda: table_holds(controller, RoutingTable.ready))
        seen: list[set[int]] = []
        (tmp_path / "m" / "2").mkdir()

        async def watch() -> None:  # a gateway's long-poll: every table the controller publishes
            epoch = -1
            while True:
                table = await controller.get_routing_table(epoch, timeout=1.0)
                epoch = table.epoch
                seen.append(set(table.models["m"].available))

        watcher = asyncio.ensure_future(watch())
        clock.advance(0.05)  # the poll interval: the base path is listed again
        await until(lambda: table_holds(controller, lambda t: set(t.models["m"].available) == {2}))
        watcher.cancel()
        assert seen and all(s for s in seen)  # never a table without an available version
        await until(lambda: started[0].loaded == {2})  # then the old one is unloaded, after the drain
        await controller.shutdown()

    asyncio.run(main())


def _crowded_controller(started: list[FakeHandle], unplaced: set[str], **options: Any) -> Controller:
    """Replicas of the models in `unplaced` are never placed by 'Ray' (their calls never return)."""

    def new_replica(model: ModelConfig, index: int) -> FakeHandle:
        handle = FakeHandle(index, hung=model.name in unplaced)
        handle.model = model.name  # type: ignore[attr-defined]
        started.append(handle)
        return handle

    def kill(handle: FakeHandle) -> None:
        handle.killed = True

    async def probe(handle: FakeHandle) -> str | None:
        return "Ray has no room for it: it needs 0.5 CPU and the cluster has 0 free" if handle.hung else None

    health = HealthOptions(period_s=0.05, timeout_s=0.1, report_unplaced_after_s=0.05)
    return Controller(ControllerOptions(drain_seconds=0.01, health=health, **options), new_replica, kill,
                      placement_probe=probe, clock=FakeClock())


def test_a_model_whose_replica_cannot_be_placed_is_reported_and_holds_back_no_other(tmp_path: pathlib.Path) -> None:
    names = [f"m{i}" for i in range(6)]
    for name in names:
        (tmp_path / name / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = _crowded_controller(started, {"m2", "m4"}, poll_seconds=0.05, tick_seconds=0.05)
        await controller.set_config(ServerConfig(tuple(ModelConfig(n, str(tmp_path / n)) for n in names)))

        def table() -> Awaitable[RoutingTable]:
            return routing_table(controller)

        await until(lambda: table_holds(controller, lambda t: all(
            t.models[n].available for n in names if n not in ("m2", "m4"))))
        for name in ("m2", "m4"):
            route = (await table()).models[name]
            assert not route.available and not route.replicas
            await until(lambda n=name: table_holds(
                controller, lambda t: "no room" in (t.models[n].statuses[0].error_message or "")))
            assert (await table()).models[name].statuses[0].error_kind == "Unavailable"
        stats = {s.model: s for s in await controller.cluster_stats()}
        assert stats["m2"].replicas_unplaced == 1 and stats["m0"].replicas_unplaced == 0
        for handle in started:  # room frees up: the waiting replicas start, load, serve
            handle.hung = False
        await until(lambda: table_holds(controller, lambda t: t.ready() and all(t.models[n].replicas for n in names)))
        assert (await table()).models["m2"].statuses[0].error_message is None
        assert not any(h.killed for h in started)  # waited in Ray's queue: never killed and re-made
        await controller.shutdown()

    asyncio.run(main())


def test_a_hung_replica_leaves_the_routing_table_within_the_health_timeout(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "other" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = _crowded_controller(started, set(), poll_seconds=0.05, tick_seconds=0.05, num_replicas=2)
        await controller.set_config(ServerConfig((
            ModelConfig("m", str(tmp_path / "m")), ModelConfig("other", str(tmp_path / "other")),
        )))

        def table() -> Awaitable[RoutingTable]:
            return routing_table(controller)

        await until(lambda: table_holds(
            controller, lambda t: t.ready() and all(len(r.replicas) == 2 for r in t.models.values())))
        hung = (await table()).models["m"].replicas[0].handle
        other = (await table()).models["other"].replicas[0].handle
        hung.hung = True  # SIGSTOP
        pings_before = other.pings  # health rounds, counted by a replica that still answers

        await until(lambda: table_holds(controller, lambda t: all(r.handle is not hung for r in t.models["m"].replicas)))
        # Out within the health timeout: the round under way, the one whose ping times out (period
        # 0.05 + timeout 0.1), and the publish that follows it before the next round.
        assert other.pings - pings_before <= 3
        assert hung.killed

        await until(lambda: table_holds(controller, lambda t: len(t.models["m"].replicas) == 2))  # replaced
        assert len((await table()).models["other"].replicas) == 2  # the other model never noticed
        await controller.shutdown()

    asyncio.run(main())


def test_the_models_platform_reaches_every_replica_load(tmp_path: pathlib.Path) -> None:
    import os

    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"onnx")
    os.utime(version / "model.onnx", (0, 0))  # long finished: complete at the first poll
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = make_controller(started, poll_seconds=0.05, tick_seconds=0.05, num_replicas=2)
        config = ModelConfig("m", str(tmp_path / "m"), platform="onnx")
        await controller.set_config(ServerConfig((config,)))
        await until(lambda: table_holds(controller, RoutingTable.ready))
        assert [h.platforms for h in started] == [{1: "onnx"}, {1: "onnx"}]
        await controller.shutdown()

    asyncio.run(main())


def test_polled_once_a_version_still_being_written_is_looked_at_until_complete(tmp_path: pathlib.Path) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"just written")  # fresh: not complete at the first poll
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = make_controller(started, poll_seconds=0, tick_seconds=0.05)
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m"), platform="onnx"),)))
        await until(lambda: table_holds(controller, RoutingTable.ready))
        assert started[0].platforms == {1: "onnx"}
        await controller.shutdown()

    asyncio.run(main())
