from __future__ import annotations

import random

import pytest

from cluster.errors import Unavailable
from cluster.routing.router import Router


def test_counts_in_flight_while_acquired_and_releases_on_exit():
    router = Router(["a", "b"], rng=random.Random(0))
    with router.acquire() as first:
        assert sum(router.in_flight_requests()) == 1
        with router.acquire() as second:
            assert second != first  # the idle one wins over the busy one
            assert router.in_flight_requests() == [1, 1]
    assert router.in_flight_requests() == [0, 0]


def test_releases_when_the_call_fails():
    router = Router(["a"])
    with pytest.raises(RuntimeError), router.acquire():
        raise RuntimeError("replica died")
    assert router.in_flight_requests() == [0]


def test_weight_counts_a_coalesced_call_as_several_requests():
    router = Router(["a", "b"], rng=random.Random(0))
    with router.acquire(weight=5) as busy:
        for _ in range(20):
            with router.acquire() as chosen:
                assert chosen != busy


def test_no_replica_is_unavailable():
    with pytest.raises(Unavailable), Router([]).acquire():
        pass


def test_set_replicas_keeps_counts_of_replicas_that_stay():
    router = Router(["a", "b"], rng=random.Random(0))
    with router.acquire() as held:
        router.set_replicas(["c", held])
        assert router.replicas == ["c", held]
        assert router.in_flight_requests() == [0, 1]
    assert router.in_flight_requests() == [0, 0]


def test_removed_replica_finishing_late_does_not_touch_the_new_set():
    router = Router(["a"])
    with router.acquire():
        router.set_replicas(["b"])
    assert router.in_flight_requests() == [0]


def test_key_identifies_unhashable_handles():
    class Handle:
        __hash__ = None  # type: ignore[assignment]

        def __init__(self, actor_id: str) -> None:
            self.actor_id = actor_id

    router = Router([Handle("x")], key=lambda h: h.actor_id)
    with router.acquire():
        router.set_replicas([Handle("x"), Handle("y")])
        assert router.in_flight_requests() == [1, 0]


def test_load_spreads_evenly_under_concurrency():
    router = Router(range(4), rng=random.Random(5))
    contexts = [router.acquire() for _ in range(40)]
    for ctx in contexts:
        ctx.__enter__()
    # Power of two choices keeps the spread tight: no replica is far from 10.
    assert max(router.in_flight_requests()) - min(router.in_flight_requests()) <= 2
    for ctx in contexts:
        ctx.__exit__(None, None, None)
    assert sum(router.in_flight_requests()) == 0
