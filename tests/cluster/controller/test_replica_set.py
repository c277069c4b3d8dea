"""ReplicaSet over fake replica handles (no Ray): loads, addresses, replacement, growth."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cluster.controller.replica_set import ReplicaSet


class _Remote:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeHandle:
    def __init__(self, index: int, *, dead: bool = False, bad_version: int | None = None) -> None:
        self.index, self.dead, self.bad_version = index, dead, bad_version
        self.loaded: set[int] = set()
        self.platforms: dict[int, str] = {}  # version -> the platform it was loaded with
        self.killed = False
        self.ping = _Remote(self._ping)
        self.load = _Remote(self._load)
        self.unload = _Remote(self._unload)
        self.data_address = _Remote(self._address)

    async def _ping(self) -> str:
        if self.dead:
            raise RuntimeError("actor died")
        return "ok"

    async def _load(self, version: int, path: str, platform: str = "tensorflow") -> dict:
        if version == self.bad_version:
            raise ValueError(f"bad bundle {path}")
        self.loaded.add(version)
        self.platforms[version] = platform
        return {"serving_default": f"sig-v{version}"}

    async def _unload(self, version: int) -> None:
        self.loaded.discard(version)

    async def _address(self) -> tuple[str, int]:
        if self.dead:
            raise RuntimeError("actor died")
        return ("127.0.0.1", 9000 + self.index)


def _set(count: int, **kwargs: Any) -> tuple[ReplicaSet, list[FakeHandle]]:
    started: list[FakeHandle] = []

    def start(index: int) -> FakeHandle:
        handle = FakeHandle(index, **kwargs) if not started else FakeHandle(index)
        started.append(handle)
        return handle

    def kill(handle: FakeHandle) -> None:
        handle.killed = True

    return ReplicaSet("m", count, start, kill, timeout=1.0), started


def test_load_everywhere_or_nowhere() -> None:
    replicas, handles = _set(2)
    assert asyncio.run(replicas.load(1, "/m/1")) == {"serving_default": "sig-v1"}
    assert all(h.loaded == {1} for h in handles)
    handles[1].bad_version = 2
    with pytest.raises(ValueError, match="bad bundle"):
        asyncio.run(replicas.load(2, "/m/2"))
    assert all(h.loaded == {1} for h in handles)  # the partial load was undone


def test_dead_replica_is_replaced_and_brought_up_before_routing() -> None:
    replicas, handles = _set(2, dead=True)  # the first one started is dead

    async def bring_up(fresh: list) -> None:
        for h in fresh:
            await h.load.remote(1, "/m/1")

    async def main() -> tuple:
        before = await replicas.refs()
        replaced = await replicas.replace_dead(bring_up)
        return before, replaced, await replicas.refs()

    before, replaced, after = asyncio.run(main())
    assert [r.address[1] for r in before] == [9001]  # a dead replica has no address: not routed
    assert replaced and handles[0].killed
    assert sorted(r.address[1] for r in after) == [9000, 9001]
    assert replicas.handles[0].loaded == {1}


def test_grow_and_shrink() -> None:
    replicas, handles = _set(1)

    async def bring_up(fresh: list) -> None:
        for h in fresh:
            await h.load.remote(3, "/m/3")

    assert asyncio.run(replicas.grow(3, bring_up)) and len(replicas) == 3
    assert all(h.loaded == {3} for h in replicas.handles[1:])
    retired = replicas.shrink(1)
    assert len(replicas) == 1 and len(retired) == 2

    async def failing(fresh: list) -> None:
        raise ValueError("no")

    assert not asyncio.run(replicas.grow(2, failing)) and len(replicas) == 1
    assert handles[-1].killed  # a replica that could not come up is stopped
