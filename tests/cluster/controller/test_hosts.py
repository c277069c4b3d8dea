"""The controller over a pool of fake replica hosts (no Ray): packing, spreading, a host that
dies with its models, eviction through the resize path, adoption after a restart.

The controller's clock is a FakeClock (no autoscaling delay passes unless a test says); what it
did is read from the routing table, the metrics snapshot and the fake hosts themselves."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

from cluster.autoscaler.load import Load
from cluster.config import ModelAutoscaling, ModelConfig, ServerConfig
from cluster.controller.controller import Controller
from cluster.controller.hosts import HostPool
from cluster.controller.member import HealthOptions
from cluster.controller.options import ControllerOptions
from cluster.controller.packing import PlacementOptions
from cluster.routing.table import RoutingTable
from cluster.stats import ReplicaStats
from tests.cluster.controller.controller_testlib import (
    FakeClock,
    model_stats,
    routing_table,
    table_holds,
    until,
)

FAST = HealthOptions(period_s=0.02, timeout_s=0.1, report_unplaced_after_s=0.05, restart_backoff_s=0.01)


class _Remote:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeHost:
    """A replica host: slots of many models (model -> loaded versions); `dead` fails every call."""

    def __init__(self, index: int, own: str | None = None) -> None:
        self.index, self.own = index, own
        self.dead = self.killed = False
        self.slots: dict[str, set[int]] = {}
        self.sizes: dict[str, int] = {}  # model -> resident bytes its versions report
        self.idle: dict[str, float] = {}
        self.ids: dict[str, str] = {}  # model -> the slot id it was last loaded for
        self.pings = 0  # pings answered (one per health round)
        self.stats_calls = 0  # statistics calls answered
        for name in ("ping", "node_id", "load", "unload", "remove", "data_address", "stats", "memory", "describe"):
            setattr(self, name, _Remote(getattr(self, f"_{name}")))

    async def _answer(self) -> None:
        if self.dead or self.killed:
            raise RuntimeError("actor died")

    async def _ping(self) -> dict[str, tuple[int, float]]:
        await self._answer()
        self.pings += 1
        return {m: (self.sizes.get(m, 0), self.idle.get(m, 0.0)) for m in self.slots}

    async def _node_id(self) -> str:
        return f"node{self.index % 2}"

    async def _describe(self) -> dict[str, Any]:
        return {"own": self.own, "node": await self._node_id(), "slots": await self._ping()}

    async def _load(self, model: str, version: int, path: str, platform: str, batching: Any, slot_id: str) -> dict:
        await self._answer()
        self.slots.setdefault(model, set()).add(version)
        self.ids[model] = slot_id
        return {"serving_default": f"sig-{model}-v{version}"}

    async def _unload(self, model: str, version: int, drain_timeout_s: float = 30.0) -> None:
        self.slots.get(model, set()).discard(version)

    async def _remove(self, model: str, drain_timeout_s: float = 30.0, slot_id: str | None = None) -> int:
        if slot_id is None or self.ids.get(model) == slot_id:
            self.slots.pop(model, None)
        return 0

    async def _data_address(self) -> tuple[str, int]:
        await self._answer()
        return ("127.0.0.1", 9000 + self.index)

    async def _stats(self, model: str | None = None) -> list[Any]:
        await self._answer()
        self.stats_calls += 1
        return [ReplicaStats(f"host{self.index}/{m}", m, in_flight_requests=self.index) for m in self.slots if model in (None, m)]

    async def _memory(self, model: str) -> dict[str, int]:
        return {"pid": self.index}


def _setup(
    tmp_path: pathlib.Path, names: list[str], placement: PlacementOptions, clock: FakeClock | None = None,
    **options: Any,
) -> tuple[Controller, HostPool, list[FakeHost]]:
    for name in names:
        (tmp_path / name / "1").mkdir(parents=True, exist_ok=True)
    hosts: list[FakeHost] = []

    def new_host(index: int, model: str, own: bool) -> FakeHost:
        hosts.append(FakeHost(index, model if own else None))
        return hosts[-1]

    def kill(host: FakeHost) -> None:
        host.killed = True

    pool = HostPool(placement, new_host, kill, ping_timeout_s=FAST.timeout_s * 0.8)
    entries = options.pop("model_autoscaling", {})

    def place(model: ModelConfig, index: int) -> Any:
        entry = entries.get(model.name)
        return pool.place(model.name, own=bool(entry and entry.own_hosts))

    opts = ControllerOptions(drain_seconds=0.01, poll_seconds=0.05, tick_seconds=0.05, health=FAST,
                             placement=placement, model_autoscaling=entries, **options)
    return Controller(opts, place, pool.release, hosts=pool, clock=clock or FakeClock()), pool, hosts


def _config(tmp_path: pathlib.Path, names: list[str], **model: Any) -> ServerConfig:
    return ServerConfig(tuple(ModelConfig(n, str(tmp_path / n), **model) for n in names))


def _addresses_in(table: RoutingTable, name: str) -> set[tuple[str, int]]:
    route = table.models.get(name)
    return {r.address for r in route.replicas} if route is not None and route.available else set()


async def _addresses(controller: Controller, name: str) -> set[tuple[str, int]]:
    """The data-plane addresses the routing table sends model `name`'s requests to."""
    return _addresses_in(await routing_table(controller), name)


async def _all_routed(controller: Controller, names: list[str], count: int | None = None) -> bool:
    """Every model in `names` routed (to `count` distinct addresses, if given)."""
    table = await routing_table(controller)
    return all(_addresses_in(table, n) and (count is None or len(_addresses_in(table, n)) == count) for n in names)


def test_models_are_packed_into_hosts_and_one_model_s_replicas_are_spread(tmp_path: pathlib.Path) -> None:
    names = [f"m{i}" for i in range(5)]

    async def main() -> None:
        controller, pool, hosts = _setup(tmp_path, names, PlacementOptions(max_models_per_host=2))
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: _all_routed(controller, names))
        assert len(hosts) == 3 and sorted(len(h.slots) for h in hosts) == [1, 2, 2]
        # Each route names its model; models on one host share its data-plane address.
        refs = [r for n in names for r in (await routing_table(controller)).models[n].replicas]
        assert {r.model for r in refs} == set(names) and len({r.address for r in refs}) == 3
        # Two replicas of one model: two hosts.
        await controller.set_config(_config(tmp_path, names, num_replicas=2))
        await until(lambda: _all_routed(controller, names, 2))
        assert all(sum(n in h.slots for h in hosts if not h.killed) == 2 for n in names)
        # Back to one each, then models removed: empty hosts stop.
        await controller.set_config(_config(tmp_path, names[:1]))
        await until(lambda: sum(not h.killed for h in hosts) == 1)
        await controller.shutdown()
        assert all(h.killed for h in hosts)

    asyncio.run(main())


def test_a_scrape_asks_each_host_once_for_every_slot_on_it(tmp_path: pathlib.Path) -> None:
    names = [f"m{i}" for i in range(7)]

    async def main() -> None:
        controller, pool, hosts = _setup(tmp_path, names, PlacementOptions(max_models_per_host=4))
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: _all_routed(controller, names))
        calls = [h.stats_calls for h in hosts]
        snapshot = await controller.cluster_stats()
        assert [h.stats_calls - before for h, before in zip(hosts, calls, strict=True)] == [1, 1]  # 7 slots, 2 calls
        by_model = {m.model: m.replicas for m in snapshot}
        where = {name: host.index for host in hosts for name in host.slots}
        assert all([(r.model, r.in_flight_requests) for r in by_model[n]] == [(n, where[n])] for n in names)
        hosts[where["m0"]].dead = True  # a host that fails the call: its slots are left out, the others answer
        snapshot = await controller.cluster_stats()
        assert {m.model for m in snapshot if m.replicas} == {n for n in names if where[n] != where["m0"]}
        await controller.shutdown()

    asyncio.run(main())


def test_a_host_that_dies_takes_its_slots_and_they_are_placed_again(tmp_path: pathlib.Path) -> None:
    names = ["a", "b", "c"]

    async def main() -> None:
        controller, pool, hosts = _setup(tmp_path, names, PlacementOptions(max_models_per_host=2))
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: _all_routed(controller, names))
        victim = next(h for h in hosts if len(h.slots) == 2)
        lost = set(victim.slots)
        victim.dead = True
        dead_address = ("127.0.0.1", 9000 + victim.index)
        await until(lambda: victim.killed)
        await until(lambda: table_holds(controller, lambda t: all(_addresses_in(t, n) - {dead_address} for n in names)))
        for name in lost:  # placed again, with their versions, never on the dead host
            assert dead_address not in await _addresses(controller, name)
            assert any(h.slots.get(name) == {1} for h in hosts if not h.killed)
        await controller.shutdown()

    asyncio.run(main())


def test_a_model_with_hosts_of_its_own_shares_them_with_nobody(tmp_path: pathlib.Path) -> None:
    names = ["big", "a", "b"]

    async def main() -> None:
        controller, pool, hosts = _setup(
            tmp_path, names, PlacementOptions(max_models_per_host=10),
            model_autoscaling={"big": ModelAutoscaling(min_replicas=2, own_hosts=True)},
        )
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: table_holds(controller, lambda t: all(_addresses_in(t, n) for n in names)
                                        and len(_addresses_in(t, "big")) == 2))
        own = [h for h in hosts if "big" in h.slots]
        assert len(own) == 2 and all(set(h.slots) == {"big"} and h.own == "big" for h in own)
        assert len([h for h in hosts if h.own is None]) == 1  # a and b packed together
        await controller.shutdown()

    asyncio.run(main())


def test_past_the_memory_budget_the_least_recently_used_extra_replica_is_evicted(tmp_path: pathlib.Path) -> None:
    names = ["hot", "cold"]

    async def main() -> None:
        placement = PlacementOptions(max_models_per_host=10, memory_budget_bytes=100, min_idle_s=60.0)
        clock = FakeClock()
        controller, pool, hosts = _setup(
            tmp_path, names, placement, clock, max_replicas=2, target_ongoing_requests=1.0, upscale_delay_s=0.0,
            downscale_delay_s=3600.0,  # the clock stands still: no scale-down
        )
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: _all_routed(controller, names))
        (first,) = hosts
        # A second replica each, from the autoscaler (2 in flight at 1 per replica): both go to a
        # second host. Then the load falls to what one replica takes, so none is added back.
        controller.report_load("g", 3.0, {n: Load(2.0, 10.0, 10.0) for n in names})
        clock.advance(3.1)  # the look-back (3 s) since the scalers began: the load is judged
        await controller.reconcile()
        controller.report_load("g", 3.0, {n: Load(1.0, 5.0, 5.0) for n in names})
        await until(lambda: _all_routed(controller, names, 2))
        (second,) = [h for h in hosts if h is not first]
        assert set(second.slots) == {"hot", "cold"}
        # Their sizes, once loaded, are over the budget: the idler one, above its minimum, goes.
        first.sizes.update(hot=10, cold=10)
        second.sizes.update(hot=60, cold=60)
        second.idle.update(hot=1.0, cold=120.0)
        await until(lambda: "cold" not in second.slots)  # drained, then removed from the host
        await until(lambda: table_holds(controller, lambda t: len(_addresses_in(t, "cold")) == 1))
        assert pool.evictions == 1 and (await model_stats(controller, "cold")).replica_count == 1  # its count went down
        snapshot = {s.model: s for s in await controller.cluster_stats()}
        assert (snapshot["cold"].evictions, snapshot["hot"].evictions) == (1, 0)  # tessera_model_evictions
        assert set(second.slots) == {"hot"} and len(await _addresses(controller, "hot")) == 2
        await controller.shutdown()

    asyncio.run(main())


def test_a_model_never_loaded_is_placed_by_its_estimate_then_by_what_its_host_reports(tmp_path: pathlib.Path) -> None:
    def write(name: str) -> None:
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "graph.pb").write_bytes(b"g" * 60)  # EstimateResources: 60 bytes

    names = ["a", "b"]
    for name in names:
        write(name)

    async def main() -> None:
        placement = PlacementOptions(max_models_per_host=10, memory_budget_bytes=100)
        controller, pool, hosts = _setup(tmp_path, names, placement)
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: _all_routed(controller, names))
        # 60 + 60 estimated bytes do not fit in 100: two hosts (counted as 0 bytes, one took both).
        assert sorted(len(h.slots) for h in hosts) == [1, 1]
        assert pool.bytes_of("a") == pool.bytes_of("b") == 60
        # Loaded, they report fewer resident bytes: the measured size replaces the estimate ...
        for host in hosts:
            host.sizes.update({m: 10 for m in host.slots})
        await until(lambda: pool.bytes_of("a") == pool.bytes_of("b") == 10)
        # ... so a third model (60 bytes estimated) fits beside one of them: no third host.
        write("c")
        await controller.set_config(_config(tmp_path, [*names, "c"]))
        await until(lambda: _addresses(controller, "c"))
        assert len(hosts) == 2 and sorted(len(h.slots) for h in hosts) == [1, 2]
        assert pool.bytes_of("c") == 60  # its fake host reports no size for it: the estimate stands
        await controller.shutdown()

    asyncio.run(main())


def test_a_restarted_controller_adopts_the_hosts_and_their_models(tmp_path: pathlib.Path) -> None:
    names = ["a", "b", "c"]

    async def main() -> None:
        controller, pool, hosts = _setup(tmp_path, names, PlacementOptions(max_models_per_host=2))
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: _all_routed(controller, names))
        where = {n: await _addresses(controller, n) for n in names}
        # The controller process dies (its hosts do not): every task it runs ends at once, without
        # a shutdown. A new one finds the hosts by name.
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        survivors = [(h.index, h) for h in hosts]
        again, pool2, new_hosts = _setup(tmp_path, names, PlacementOptions(max_models_per_host=2))
        await pool2.adopt(survivors)
        await again.set_config(_config(tmp_path, ["a", "b"]))
        pool2.forget_unclaimed()
        await until(lambda: _all_routed(again, ["a", "b"]))
        assert not new_hosts  # no host started: each model went back where its versions were
        assert {n: await _addresses(again, n) for n in ["a", "b"]} == {n: where[n] for n in ["a", "b"]}
        # c, not configured any more, is removed: its host held nothing else, so it stops.
        await until(lambda: all(h.killed for h in hosts if "c" in h.slots))
        assert sum(h.killed for h in hosts) == 1
        await again.shutdown()

    asyncio.run(main())


def test_a_model_evicted_to_zero_replicas_comes_back_on_its_next_request(tmp_path: pathlib.Path) -> None:
    """Eviction and scale to zero end in one state: min_replicas 0, no replica, versions AVAILABLE;
    the next request's demand (a gateway's report) brings it back, placed under the budget."""
    names = ["busy", "rare"]

    async def main() -> None:
        placement = PlacementOptions(max_models_per_host=10, memory_budget_bytes=100, max_hosts=1, min_idle_s=10.0)
        controller, pool, hosts = _setup(
            tmp_path, names, placement, look_back_s=0.05, scale_to_zero_idle_s=3600.0,
            model_autoscaling={"rare": ModelAutoscaling(min_replicas=0)},
        )
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: _all_routed(controller, names))
        (host,) = hosts
        # Loaded, both are bigger than the budget together: rare (min 0, idle) is evicted, not busy.
        host.sizes.update(busy=60, rare=60)
        host.idle.update(busy=0.0, rare=30.0)
        await until(lambda: "rare" not in host.slots)
        await until(lambda: table_holds(controller, lambda t: not _addresses_in(t, "rare")))
        snapshot = {s.model: s for s in await controller.cluster_stats(timeout=0.2)}
        assert (snapshot["rare"].replica_count, snapshot["busy"].replica_count) == (0, 1)
        table = await routing_table(controller)
        assert table.ready()  # rare is still servable: AVAILABLE at zero
        (status,) = table.models["rare"].statuses  # GetModelStatus says why it has no replica
        assert "evicted from its replica host for the memory budget" in (status.error_message or "")
        # A request for rare waits in a gateway, which reports the demand: rare is placed again.
        # busy cannot be evicted (at its minimum), so the host goes over its budget, with a
        # warning; rare, just used, is not evicted again at once (min_idle_s).
        host.idle["rare"] = 0.0
        controller.report_load("g", 0.01, {"rare": Load(0.0, 10.0, 0.0)})
        await until(lambda: _addresses(controller, "rare"))
        assert host.slots.get("rare") == {1}
        pings = host.pings
        await until(lambda: host.pings >= pings + 10)  # ten health rounds, with the host over its budget
        assert await _addresses(controller, "rare") and pool.evictions == 1
        await controller.shutdown()

    asyncio.run(main())
