"""The controller over a pool of fake replica hosts (no Ray): packing, spreading, a host that
dies with its models, eviction through the resize path, adoption after a restart."""

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
from tests.cluster.controller.controller_testlib import until

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
        for name in ("ping", "node_id", "load", "unload", "remove", "data_address", "stats", "memory", "describe"):
            setattr(self, name, _Remote(getattr(self, f"_{name}")))

    async def _answer(self) -> None:
        if self.dead or self.killed:
            raise RuntimeError("actor died")

    async def _ping(self) -> dict[str, tuple[int, float]]:
        await self._answer()
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

    async def _stats(self, model: str) -> list[Any]:
        return []

    async def _memory(self, model: str) -> dict[str, int]:
        return {"pid": self.index}


def _setup(
    tmp_path: pathlib.Path, names: list[str], placement: PlacementOptions, **options: Any
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
    return Controller(opts, place, pool.release, hosts=pool), pool, hosts


def _config(tmp_path: pathlib.Path, names: list[str], **model: Any) -> ServerConfig:
    return ServerConfig(tuple(ModelConfig(n, str(tmp_path / n), **model) for n in names))


def _addresses(controller: Controller, name: str) -> set[tuple[str, int]]:
    route = controller._tables.table.models.get(name)  # noqa: SLF001
    return {r.address for r in route.replicas} if route is not None and route.available else set()


def test_models_are_packed_into_hosts_and_one_model_s_replicas_are_spread(tmp_path: pathlib.Path) -> None:
    names = [f"m{i}" for i in range(5)]

    async def main() -> None:
        controller, pool, hosts = _setup(tmp_path, names, PlacementOptions(max_models_per_host=2))
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: all(_addresses(controller, n) for n in names))
        assert len(hosts) == 3 and sorted(len(h.slots) for h in hosts) == [1, 2, 2]
        # Each route names its model; models on one host share its data-plane address.
        refs = [r for n in names for r in controller._tables.table.models[n].replicas]  # noqa: SLF001
        assert {r.model for r in refs} == set(names) and len({r.address for r in refs}) == 3
        # Two replicas of one model: two hosts.
        await controller.set_config(_config(tmp_path, names, num_replicas=2))
        await until(lambda: all(len(_addresses(controller, n)) == 2 for n in names))
        assert all(sum(n in h.slots for h in hosts if not h.killed) == 2 for n in names)
        # Back to one each, then models removed: empty hosts stop.
        await controller.set_config(_config(tmp_path, names[:1]))
        await until(lambda: sum(not h.killed for h in hosts) == 1)
        await controller.shutdown()
        assert all(h.killed for h in hosts)

    asyncio.run(main())


def test_a_host_that_dies_takes_its_slots_and_they_are_placed_again(tmp_path: pathlib.Path) -> None:
    names = ["a", "b", "c"]

    async def main() -> None:
        controller, pool, hosts = _setup(tmp_path, names, PlacementOptions(max_models_per_host=2))
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: all(_addresses(controller, n) for n in names))
        victim = next(h for h in hosts if len(h.slots) == 2)
        lost = set(victim.slots)
        victim.dead = True
        dead_address = ("127.0.0.1", 9000 + victim.index)
        await until(lambda: victim.killed)
        await until(lambda: all(_addresses(controller, n) - {dead_address} for n in names))
        for name in lost:  # placed again, with their versions, never on the dead host
            assert dead_address not in _addresses(controller, name)
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
        await until(lambda: all(_addresses(controller, n) for n in names) and len(_addresses(controller, "big")) == 2)
        own = [h for h in hosts if "big" in h.slots]
        assert len(own) == 2 and all(set(h.slots) == {"big"} and h.own == "big" for h in own)
        assert len([h for h in hosts if h.own is None]) == 1  # a and b packed together
        await controller.shutdown()

    asyncio.run(main())


def test_past_the_memory_budget_the_least_recently_used_extra_replica_is_evicted(tmp_path: pathlib.Path) -> None:
    names = ["hot", "cold"]

    async def main() -> None:
        placement = PlacementOptions(max_models_per_host=10, memory_budget_bytes=100, min_idle_s=60.0)
        controller, pool, hosts = _setup(tmp_path, names, placement)
        await controller.set_config(_config(tmp_path, names))
        await until(lambda: all(_addresses(controller, n) for n in names))
        (first,) = hosts
        models = controller._models  # noqa: SLF001
        # A second replica each (as the autoscaler would add): both go to a second host.
        controller._resize(models["cold"], 2)  # noqa: SLF001
        controller._resize(models["hot"], 2)  # noqa: SLF001
        await until(lambda: all(len(_addresses(controller, n)) == 2 for n in names))
        (second,) = [h for h in hosts if h is not first]
        assert set(second.slots) == {"hot", "cold"}
        # Their sizes, once loaded, are over the budget: the idler one, above its minimum, goes.
        first.sizes.update(hot=10, cold=10)
        second.sizes.update(hot=60, cold=60)
        second.idle.update(hot=1.0, cold=120.0)
        await until(lambda: "cold" not in second.slots)  # drained, then removed from the host
        await until(lambda: len(_addresses(controller, "cold")) == 1)
        assert pool.evictions == 1 and len(models["cold"].replicas) == 1  # its count went down
        snapshot = {s.model: s for s in await controller.cluster_stats()}
        assert (snapshot["cold"].evictions, snapshot["hot"].evictions) == (1, 0)  # tessera_model_evictions
        assert set(second.slots) == {"hot"} and len(_addresses(controller, "hot")) == 2
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
        await until(lambda: all(_addresses(controller, n) for n in names))
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
        await until(lambda: all(_addresses(controller, n) for n in names))
        where = {n: _addresses(controller, n) for n in names}
        # The controller process dies (its hosts do not); a new one finds them by name.
        for task in (*controller._loops, *controller._tasks):  # noqa: SLF001
            if task is not None:
                task.cancel()
        survivors = [(h.index, h) for h in hosts]
        again, pool2, new_hosts = _setup(tmp_path, names, PlacementOptions(max_models_per_host=2))
        await pool2.adopt(survivors)
        await again.set_config(_config(tmp_path, ["a", "b"]))
        pool2.forget_unclaimed()
        await until(lambda: all(_addresses(again, n) for n in ["a", "b"]))
        assert not new_hosts  # no host started: each model went back where its versions were
        assert {n: _addresses(again, n) for n in ["a", "b"]} == {n: where[n] for n in ["a", "b"]}
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
        await until(lambda: all(_addresses(controller, n) for n in names))
        (host,) = hosts
        models = controller._models  # noqa: SLF001
        # Loaded, both are bigger than the budget together: rare (min 0, idle) is evicted, not busy.
        host.sizes.update(busy=60, rare=60)
        host.idle.update(busy=0.0, rare=30.0)
        await until(lambda: "rare" not in host.slots and not _addresses(controller, "rare"))
        assert len(models["rare"].replicas) == 0 and len(models["busy"].replicas) == 1
        assert controller._tables.table.ready()  # noqa: SLF001 - rare is still servable: AVAILABLE at zero
        # A request for rare waits in a gateway, which reports the demand: rare is placed again.
        # busy cannot be evicted (at its minimum), so the host goes over its budget, with a
        # warning; rare, just used, is not evicted again at once (min_idle_s).
        host.idle["rare"] = 0.0
        controller.report_load("g", 0.01, {"rare": Load(0.0, 10.0, 0.0)})
        await until(lambda: _addresses(controller, "rare"))
        assert host.slots.get("rare") == {1}
        await asyncio.sleep(0.3)  # health rounds, with the host over its budget
        assert _addresses(controller, "rare") and pool.evictions == 1
        await controller.shutdown()

    asyncio.run(main())
