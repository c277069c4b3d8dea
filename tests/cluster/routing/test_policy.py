from __future__ import annotations

import random
from collections import Counter

import pytest

from cluster.routing.policy import choose_replica


def test_single_replica_is_always_chosen_without_drawing():
    class NoDraws(random.Random):
        def randrange(self, *args, **kwargs):  # pragma: no cover - must not be called
            raise AssertionError("drew a random number for one replica")

    assert choose_replica([42], NoDraws()) == 0


def test_no_replica_is_an_error():
    with pytest.raises(ValueError):
        choose_replica([], random.Random(0))


def test_two_replicas_always_pick_the_less_busy():
    rng = random.Random(1)
    assert {choose_replica([5, 2], rng) for _ in range(200)} == {1}
    assert {choose_replica([0, 9], rng) for _ in range(200)} == {0}


def test_ties_are_broken_randomly_and_fairly():
    rng = random.Random(7)
    counts = Counter(choose_replica([3, 3, 3, 3], rng) for _ in range(8000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(1800 < c < 2200 for c in counts.values()), counts


def test_the_busiest_replica_is_never_chosen_and_the_idlest_most_often():
    rng = random.Random(3)
    in_flight = [10, 0, 5, 5, 20]
    counts = Counter(choose_replica(in_flight, rng) for _ in range(10_000))
    assert counts[4] == 0  # it loses every pair
    # The idlest wins every pair it is drawn in: P = 2/5; the others share what is left.
    assert 0.37 < counts[1] / 10_000 < 0.43
    assert counts[1] > counts[2] and counts[1] > counts[3] and counts[2] > counts[0]


def test_pairs_are_distinct_replicas():
    # With two replicas and distinct loads, drawing the same one twice would sometimes pick the busy one.
    rng = random.Random(11)
    assert all(choose_replica([1, 0], rng) == 1 for _ in range(1000))
