"""ReplicaSet over fake replica handles (no Ray): starts, loads, health, placement, retirement."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cluster.controller.member import HealthOptions
from cluster.controller.replica_set import ReplicaSet
from tests.cluster.controller.controller_testlib import FakeHandle, until

FAST = HealthOptions(period_s=0.02, timeout_s=0.05, report_unplaced_after_s=0.05, restart_backoff_s=0.01)


def _set(count: int, wanted: dict[int, str] | None = None, **kwargs: Any) -> tuple[ReplicaSet, list[FakeHandle], list[int]]:
    """A set whose first replica gets `kwargs`; later ones (replacements too) are healthy."""
    started: list[FakeHandle] = []
    changes: list[int] = []

    def start(index: int) -> FakeHandle:
        handle = FakeHandle(index, **kwargs) if not started else FakeHandle(index)
        started.append(handle)
        return handle

    def kill(handle: FakeHandle) -> None:
        handle.events.append("kill")
        handle.killed = True

    async def probe(handle: FakeHandle) -> str | None:
        return "Ray has no room for it" if handle.hung else None

    replicas = ReplicaSet(
        "m", count, start, kill, wanted=lambda: dict(wanted or {}), on_change=lambda: changes.append(1),
        health=FAST, probe=probe,
    )
    return replicas, started, changes


def test_load_everywhere_or_nowhere() -> None:
    async def main() -> None:
        replicas, handles, _ = _set(2)
        await until(lambda: len(replicas.ready()) == 2)
        assert await replicas.load(1, "/m/1") == {"serving_default": "sig-v1"}
        assert all(h.loaded == {1} for h in handles)
        handles[1].bad_version = 2
        with pytest.raises(ValueError, match="bad bundle"):
            await replicas.load(2, "/m/2")
        assert all(h.loaded == {1} for h in handles)  # the partial load was undone
        assert len(replicas.refs(frozenset({1}))) == 2

    asyncio.run(main())


def test_a_replica_that_cannot_be_placed_is_reported_and_starts_once_there_is_room() -> None:
    async def main() -> None:
        replicas, handles, changes = _set(2, wanted={1: "/m/1"}, hung=True)  # Ray has no room for the first
        await until(lambda: len(replicas.ready()) == 1)
        assert [r.address[1] for r in replicas.refs(frozenset({1}))] == [9001]  # the placed one serves
        await until(lambda: replicas.unplaced() == ["Ray has no room for it"])
        handles[0].hung = False  # room frees up: Ray starts it, it loads v1, then it is routed
        await until(lambda: len(replicas.ready()) == 2)
        assert replicas.unplaced() == [] and handles[0].loaded == {1} and not handles[0].killed
        assert sorted(r.address[1] for r in replicas.refs(frozenset({1}))) == [9000, 9001]
        assert changes  # the controller was told to publish

    asyncio.run(main())


def test_a_hung_replica_leaves_at_the_first_unanswered_ping_and_is_replaced() -> None:
    async def main() -> None:
        replicas, handles, changes = _set(2, wanted={1: "/m/1"})
        await until(lambda: len(replicas.ready()) == 2)
        handles[0].hung = True  # SIGSTOP
        started = asyncio.get_running_loop().time()
        assert await replicas.check()  # one ping, bounded by the timeout
        assert asyncio.get_running_loop().time() - started < 0.5
        assert handles[0].killed
        assert [r.address[1] for r in replicas.refs(frozenset({1}))] == [9001]  # out of the table at once
        await until(lambda: len(replicas.ready()) == 2)  # the replacement, same index, loaded first
        assert handles[2].index == 0 and handles[2].loaded == {1}
        assert not await replicas.check()

    asyncio.run(main())


def test_a_replica_that_dies_while_starting_is_replaced() -> None:
    async def main() -> None:
        replicas, handles, _ = _set(1, dead=True)
        await until(lambda: len(replicas.ready()) == 1)
        assert handles[0].killed and replicas.ready()[0].handle is handles[1]

    asyncio.run(main())


def test_shrink_takes_out_first_then_retire_drains_then_kills() -> None:
    async def main() -> None:
        replicas, handles, _ = _set(1, wanted={3: "/m/3"})
        replicas.grow(3)
        await until(lambda: len(replicas.ready()) == 3)
        assert all(h.loaded == {3} for h in handles)
        leaving = replicas.shrink(1)
        assert len(replicas) == 1 and len(replicas.refs(frozenset({3}))) == 1  # out of the table first
        replicas.grow(2)  # a replica added while others drain does not take a draining one's name
        assert sorted(m.index for m in leaving) == [1, 2] and {m.index for m in replicas.members} == {0, 3}
        await replicas.retire(leaving, propagation_s=0.01)
        for member in leaving:
            assert member.handle.events == ["drain", "kill"]  # drained, then stopped

    asyncio.run(main())


def test_a_replica_not_placed_yet_leaves_first_when_shrinking() -> None:
    async def main() -> None:
        replicas, handles, _ = _set(2, hung=True)
        await until(lambda: len(replicas.ready()) == 1)
        leaving = replicas.shrink(1)
        assert [m.handle for m in leaving] == [handles[0]] and replicas.ready()[0].handle is handles[1]
        await replicas.retire(leaving, propagation_s=0.0)
        assert handles[0].events == ["kill"]  # never served: nothing to drain

    asyncio.run(main())
