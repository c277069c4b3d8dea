"""The controller tests' fakes: `FakeHandle`, a replica actor handle without Ray (hung, dead, placed or
not), `FakeClock`, the controller's injected clock, which stands still until a test advances it,
`make_controller` over such handles and clock, `until`, which awaits a condition, and the reads a
caller of the controller makes (`routing_table`, `table_holds`, `routed`, `model_stats`)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from cluster import stats
from cluster.config import ModelConfig
from cluster.controller.controller import Controller
from cluster.controller.options import ControllerOptions
from cluster.routing.table import RoutingTable


class FakeClock:
    """The controller's clock (`Controller(clock=...)`): time moves only by `advance`, so the
    delays of autoscaling, scale to zero, load retries and storage polling pass when a test says."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Remote:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeHandle:
    """A replica actor: `hung` makes every call wait (a stopped process, or one Ray has not placed);
    `dead` makes every call fail (a killed process)."""

    def __init__(self, index: int, *, dead: bool = False, bad_version: int | None = None, hung: bool = False) -> None:
        self.index, self.dead, self.bad_version, self.hung = index, dead, bad_version, hung
        self.loaded: set[int] = set()
        self.platforms: dict[int, str] = {}  # version -> the platform it was loaded with
        self.killed = False
        self.events: list[str] = []
        self.ping = _Remote(self._ping)
        self.load = _Remote(self._load)
        self.unload = _Remote(self._unload)
        self.data_address = _Remote(self._address)
        self.drain = _Remote(self._drain)
        self.stats = _Remote(self._stats)
        self.pings = 0  # pings answered

    async def _answer(self) -> None:
        while self.hung and not self.killed:
            await asyncio.sleep(0.005)
        if self.dead or self.killed:
            raise RuntimeError("actor died")

    async def _ping(self) -> str:
        await self._answer()
        self.pings += 1
        return "ok"

    async def _load(self, version: int, path: str, platform: str = "tensorflow") -> dict:
        await self._answer()
        if version == self.bad_version:
            raise ValueError(f"bad bundle {path}")
        self.loaded.add(version)
        self.platforms[version] = platform
        return {"serving_default": f"sig-v{version}"}

    async def _unload(self, version: int, drain_timeout_s: float = 30.0) -> None:
        self.loaded.discard(version)

    async def _address(self) -> tuple[str, int]:
        await self._answer()
        return ("127.0.0.1", 9000 + self.index)

    async def _stats(self) -> None:
        await self._answer()
        raise RuntimeError("no statistics in a fake")

    async def _drain(self, timeout_s: float = 30.0) -> int:
        self.events.append("drain")
        return 0


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Returns once `predicate()` holds (it may return an awaitable, awaited); fails the test after
    `timeout` s of the event loop's clock (a bound on a hang, not a measured time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def routing_table(controller: Controller) -> RoutingTable:
    """The controller's routing table now, as a gateway gets it (the long-poll, at once)."""
    return await controller.get_routing_table()


async def table_holds(controller: Controller, predicate: Callable[[RoutingTable], bool]) -> bool:
    """Whether `predicate` holds for the routing table now (for `until`)."""
    return predicate(await routing_table(controller))


async def routed(controller: Controller, name: str) -> int:
    """How many replicas of model `name` the routing table routes to."""
    return len((await routing_table(controller)).models[name].replicas)


async def model_stats(controller: Controller, name: str) -> stats.ModelStats:
    """Model `name`'s entry of the metrics snapshot (replica count, scale-to-zero and cold-start
    counters); fake replicas have no statistics of their own, so they are asked briefly."""
    return {s.model: s for s in await controller.cluster_stats(timeout=0.2)}[name]


def make_controller(started: list[FakeHandle], clock: FakeClock | None = None, **options: Any) -> Controller:
    """A Controller whose new replicas are FakeHandles (appended to `started`); kill marks them.
    Its clock is `clock` (a new FakeClock if none)."""

    def new_replica(model: ModelConfig, index: int) -> FakeHandle:
        handle = FakeHandle(index)
        started.append(handle)
        return handle

    def kill(handle: FakeHandle) -> None:
        handle.killed = True

    return Controller(ControllerOptions(drain_seconds=0.01, **options), new_replica, kill, clock=clock or FakeClock())
