"""A hot model scaling out among many cold ones, through the pure packing policy alone.

The pool (`hosts.py`) applies each `choose_host` answer to its hosts; `_Pool` below does the same
to `HostView`s, so a whole start (201 models) and a scale-out run through the policy as the pool
would run them, and what happens to every cold model's slot is checked after each step.
"""

from __future__ import annotations

from collections.abc import Callable

from cluster.controller.packing import HostView, Placement, PlacementOptions, choose_host

MB = 1 << 20
COLD = [f"cold{i:03d}" for i in range(200)]


class _Pool:
    """Hosts as views, updated by each placement the way HostPool.place updates its hosts."""

    def __init__(self, options: PlacementOptions, sizes: Callable[[str], int], idle: float = 1000.0) -> None:
        self.options, self.sizes, self.idle = options, sizes, idle
        self.hosts: dict[int, dict[str, tuple[int, float]]] = {}
        self.placements: list[tuple[str, Placement]] = []

    def views(self) -> list[HostView]:
        return [HostView(index, dict(slots)) for index, slots in self.hosts.items()]

    def place(self, model: str, evictable: Callable[[str], bool]) -> int:
        choice = choose_host(self.views(), model, self.sizes(model), self.options, evictable=evictable)
        self.placements.append((model, choice))
        index = choice.host if choice.host is not None else max(self.hosts, default=-1) + 1
        slots = self.hosts.setdefault(index, {})
        for victim in choice.evict:
            del slots[victim]
        slots[model] = (self.sizes(model), 0.0 if model == "hot" else self.idle)
        return index

    def where(self, model: str) -> set[int]:
        return {index for index, slots in self.hosts.items() if model in slots}


def _started(options: PlacementOptions, sizes: Callable[[str], int]) -> _Pool:
    pool = _Pool(options, sizes)
    for name in ["hot", *COLD]:  # the hot model first: its first replica shares a host with cold ones
        pool.place(name, evictable=lambda m: False)  # at start every model is at its minimum
    return pool


def test_the_hot_models_scale_out_puts_each_replica_on_another_process_and_leaves_cold_ones_in_place() -> None:
    options = PlacementOptions(max_models_per_host=100, memory_budget_bytes=200 * MB)
    sizes = lambda m: 20 * MB if m == "hot" else MB  # noqa: E731
    pool = _started(options, sizes)
    before = {name: pool.where(name) for name in COLD}
    assert sorted(len(slots) for slots in pool.hosts.values()) == [1, 100, 100]
    # Cold models with min_replicas 0 and idle for long may be evicted by the LRU rule; a hot
    # model's scale-out still takes none of them while a new host may start.
    for count in range(2, 9):
        pool.place("hot", evictable=lambda m: m != "hot")
        assert len(pool.where("hot")) == count  # never two slots of one model on one process
        assert {name: pool.where(name) for name in COLD} == before  # no cold slot moved or left
    assert all(choice.evict == () and not choice.over_limits for _, choice in pool.placements)
    # Its second replica took the host with room (one cold model on it), the rest hosts of their own.
    shared = [index for index in pool.where("hot") if len(pool.hosts[index]) > 1]
    assert len(shared) == 2


def test_with_every_host_up_a_hot_scale_out_evicts_no_cold_model_at_its_minimum() -> None:
    options = PlacementOptions(max_models_per_host=100, memory_budget_bytes=110 * MB, max_hosts=4, min_idle_s=10.0)
    sizes = lambda m: 20 * MB if m == "hot" else MB  # noqa: E731
    pool = _started(options, sizes)
    before = {name: pool.where(name) for name in COLD}
    at_minimum = lambda m: m == "hot"  # noqa: E731 - cold models have their one replica: not evictable
    pool.place("hot", evictable=at_minimum)  # the host with one cold model has room
    pool.place("hot", evictable=at_minimum)  # the fourth host starts
    last = pool.place("hot", evictable=at_minimum)  # all four up, all full: over the limits, no eviction
    assert pool.placements[-1][1].over_limits and pool.placements[-1][1].evict == ()
    assert {name: pool.where(name) for name in COLD} == before
    assert len(pool.where("hot")) == 4 and last in pool.where("hot")
