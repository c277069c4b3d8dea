"""The packing and eviction policy over replica hosts, as pure functions of a snapshot."""

from __future__ import annotations

from cluster.controller.packing import (
    HostView,
    Placement,
    PlacementOptions,
    choose_host,
    lru_victims,
    over_budget,
)

MB = 1 << 20


def _host(index: int, *models: str, size: int = MB, idle: float = 0.0, **kwargs: object) -> HostView:
    return HostView(index, {m: (size, idle) for m in models}, **kwargs)  # type: ignore[arg-type]


def test_no_host_yet_starts_one_and_a_host_with_room_is_filled() -> None:
    options = PlacementOptions(max_models_per_host=2)
    assert choose_host([], "a", MB, options) == Placement(None)
    assert choose_host([_host(0, "a")], "b", MB, options) == Placement(0)
    assert choose_host([_host(0, "a", "b")], "c", MB, options) == Placement(None)  # full by count


def test_one_model_never_gets_two_slots_on_one_host_and_other_nodes_come_first() -> None:
    options = PlacementOptions(max_models_per_host=10)
    hosts = [_host(0, "a", node="n1"), _host(1, "b", node="n1"), _host(2, "c", node="n2", load=5.0)]
    # Host 0 already holds a; host 1 has room but is on a's node: host 2 wins despite its load.
    assert choose_host(hosts, "a", MB, options) == Placement(2)
    assert choose_host([_host(0, "a")], "a", MB, options) == Placement(None)  # a second host for a


def test_the_least_loaded_then_the_smallest_host_takes_a_model() -> None:
    options = PlacementOptions(max_models_per_host=10)
    hosts = [_host(0, "a", load=3.0), _host(1, "b", load=1.0), _host(2, "c", size=2 * MB, load=1.0)]
    assert choose_host(hosts, "d", MB, options) == Placement(1)
    assert choose_host(hosts[:1] + hosts[2:], "d", MB, options) == Placement(2)


def test_the_memory_budget_decides_what_fits() -> None:
    options = PlacementOptions(max_models_per_host=10, memory_budget_bytes=10 * MB)
    hosts = [_host(0, "a", size=8 * MB), _host(1, "b", size=5 * MB)]
    assert choose_host(hosts, "c", 3 * MB, options) == Placement(1)
    assert choose_host(hosts, "c", 6 * MB, options) == Placement(None)  # fits nowhere: a new host


def test_own_hosts_hold_one_model_and_shared_models_stay_off_them() -> None:
    options = PlacementOptions(max_models_per_host=10)
    hosts = [_host(0, "big", own="big"), _host(1, "a")]
    assert choose_host(hosts, "big", MB, options, own=True) == Placement(None)  # another one of its own
    assert choose_host([_host(0, own="big")], "big", MB, options, own=True) == Placement(0)  # adopted, empty
    assert choose_host(hosts, "b", MB, options) == Placement(1)
    assert choose_host(hosts[:1], "b", MB, options) == Placement(None)


def test_a_restarted_controller_puts_a_model_back_on_the_host_that_kept_it() -> None:
    options = PlacementOptions(max_models_per_host=10)
    hosts = [_host(0, load=0.0), _host(1, "x", load=9.0, held=frozenset({"a"}))]
    assert choose_host(hosts, "a", MB, options) == Placement(1)


def test_lru_victims_are_the_most_idle_evictable_slots_and_no_more_than_needed() -> None:
    slots = {"a": (4 * MB, 50.0), "b": (4 * MB, 10.0), "c": (4 * MB, 90.0), "d": (4 * MB, 70.0)}
    evictable = lambda m: m != "c"  # noqa: E731 - c is at its minimum
    assert lru_victims(slots, 4 * MB, 20 * MB, evictable) == ()  # fits already
    assert lru_victims(slots, 4 * MB, 16 * MB, evictable) == ("d",)
    assert lru_victims(slots, 8 * MB, 16 * MB, evictable) == ("d", "a")
    assert lru_victims(slots, 16 * MB, 16 * MB, evictable) is None  # c cannot go: never enough
    assert lru_victims(slots, 0, 0, evictable, max_models=4) == ("d",)  # a free slot by count
    assert lru_victims(slots, 4 * MB, 16 * MB, evictable, min_idle_s=60.0) == ("d",)
    assert lru_victims(slots, 8 * MB, 16 * MB, evictable, min_idle_s=60.0) is None  # a is too recent


def test_with_every_host_up_and_full_the_lru_slot_is_evicted_else_a_host_goes_over() -> None:
    options = PlacementOptions(max_models_per_host=2, memory_budget_bytes=10 * MB, max_hosts=2, min_idle_s=0.0)
    hosts = [
        HostView(0, {"a": (4 * MB, 5.0), "b": (4 * MB, 100.0)}),
        HostView(1, {"c": (4 * MB, 50.0), "d": (4 * MB, 60.0)}),
    ]
    assert choose_host(hosts, "e", 4 * MB, options, evictable=lambda m: True) == Placement(0, ("b",))
    assert choose_host(hosts, "e", 4 * MB, options, evictable=lambda m: m in "cd") == Placement(1, ("d",))
    nothing = choose_host(hosts, "e", 4 * MB, options)
    assert nothing.over_limits and nothing.host is not None and nothing.evict == ()
    roomier = PlacementOptions(max_models_per_host=2, max_hosts=3)
    assert choose_host(hosts, "e", 4 * MB, roomier) == Placement(None)  # a third host may start


def test_hosts_over_their_budget_shed_lru_slots() -> None:
    hosts = [
        HostView(0, {"a": (6 * MB, 1.0), "b": (6 * MB, 30.0), "c": (6 * MB, 20.0)}),
        HostView(1, {"d": (6 * MB, 99.0)}),
    ]
    assert over_budget(hosts, 13 * MB, lambda m: True) == [(0, "b")]
    assert over_budget(hosts, 6 * MB, lambda m: m != "a") == [(0, "b"), (0, "c")]
    assert over_budget(hosts, 0, lambda m: True) == []  # no budget
    assert over_budget(hosts, 13 * MB, lambda m: True, min_idle_s=60.0) == []  # nothing idle enough
