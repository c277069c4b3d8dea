"""The controller tests' fakes: `FakeHandle`, a replica actor handle without Ray (hung, dead, placed or
not), `make_controller` over such handles, and `until`, which awaits a condition."""

from __future__ import annotations

import asyncio
from typing import Any

from cluster.config import ModelConfig
from cluster.controller.controller import Controller
from cluster.controller.options import ControllerOptions


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

    async def _answer(self) -> None:
        while self.hung and not self.killed:
            await asyncio.sleep(0.005)
        if self.dead or self.killed:
            raise RuntimeError("actor died")

    async def _ping(self) -> str:
        await self._answer()
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
    """Returns once `predicate()` holds; fails the test after `timeout` s of the loop's clock."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def make_controller(started: list[FakeHandle], **options: Any) -> Controller:
    """A Controller whose new replicas are FakeHandles (appended to `started`); kill marks them."""

    def new_replica(model: ModelConfig, index: int) -> FakeHandle:
        handle = FakeHandle(index)
        started.append(handle)
        return handle

    def kill(handle: FakeHandle) -> None:
        handle.killed = True

    return Controller(ControllerOptions(drain_seconds=0.01, **options), new_replica, kill)
