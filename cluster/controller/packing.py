"""Which host a model's replica goes to: the pure packing and eviction policy over replica hosts.

A replica host is one Ray actor process holding slots of many models. Placing a replica picks a
host for one more slot of a model; these functions decide from a snapshot of the hosts (what each
holds, its resident bytes, its load, its node) and the options, with no clock, I/O or Ray: the
pool (`hosts.py`) gathers the snapshot and applies the answer.

The rules, in order:
- a model never gets two slots on one host (its replicas are spread over processes), and hosts
  on nodes that do not hold it yet come first (spread over nodes);
- a model with hosts of its own (`own`) gets a host dedicated to it, holding nothing else;
- a shared host takes at most `max_models_per_host` slots and, with a memory budget, only what
  fits under it (the model's resident bytes, as its servables reported them wherever it was
  loaded; a model never loaded counts its estimate from storage, `estimates.py`, until then);
- among the hosts with room: one that already holds the model's versions (a restarted
  controller adopts what its hosts kept), then the least loaded, then the fewest bytes;
- no host has room: a new host (aimed at a node by `placement.choose_node`), unless `max_hosts`
  are up; then least-recently-used slots that may go (`evictable`: the caller says which models
  can lose a replica; none used within `min_idle_s`) are evicted from the host where that takes
  the fewest and least recently used; failing that, the host with
  the most room left takes it over its limits (said in the log: nothing else could take it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PlacementOptions:
    max_models_per_host: int = 100  # --max_models_per_host
    memory_budget_bytes: int = 0  # --replica_memory_budget_bytes per host; 0: no budget
    max_hosts: int = 0  # --max_replica_hosts; 0: as many as Ray can place
    # A slot used within this long is never evicted: a model placed (or asked for) a moment ago
    # must not go at once, or two models that do not fit together would take turns forever.
    min_idle_s: float = 10.0


@dataclass(frozen=True)
class HostView:
    """One host as placement sees it. `slots`: model -> (resident bytes, seconds since its last
    call); `held`: models whose versions the host kept from before (adoption), not placed yet."""

    index: int
    slots: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    load: float = 0.0  # requests in flight on it, summed over its models
    node: str | None = None
    own: str | None = None  # the model this host is dedicated to
    held: frozenset[str] = frozenset()

    @property
    def resident_bytes(self) -> int:
        return sum(size for size, _ in self.slots.values())


@dataclass(frozen=True)
class Placement:
    host: int | None  # the host's index; None: start a new host
    evict: tuple[str, ...] = ()  # models whose slot on that host leaves first (LRU)
    over_limits: bool = False  # nothing had room: this host goes over its limits


def _fits(host: HostView, need: int, options: PlacementOptions) -> bool:
    if len(host.slots) >= options.max_models_per_host:
        return False
    budget = options.memory_budget_bytes
    return budget <= 0 or host.resident_bytes + need <= budget


def lru_victims(
    slots: Mapping[str, tuple[int, float]],
    need: int,
    budget: int,
    evictable: Callable[[str], bool],
    *,
    max_models: int | None = None,
    keep: frozenset[str] = frozenset(),
    min_idle_s: float = 0.0,
) -> tuple[str, ...] | None:
    """The least recently used evictable slots whose leaving brings the host under `budget` with
    `need` more bytes (and, given `max_models`, one slot free): most idle first, no more than
    needed, none used within `min_idle_s`. () when it fits already; None when evicting every
    slot that may go would not do."""
    used = sum(size for size, _ in slots.values())
    count = len(slots)

    def fits() -> bool:
        return (budget <= 0 or used + need <= budget) and (max_models is None or count < max_models)

    victims: list[str] = []
    by_idle = sorted(
        (n for n in slots if n not in keep and slots[n][1] >= min_idle_s and evictable(n)),
        key=lambda n: (-slots[n][1], n),
    )
    for name in by_idle:
        if fits():
            break
        victims.append(name)
        used -= slots[name][0]
        count -= 1
    return tuple(victims) if fits() else None


def choose_host(
    hosts: Sequence[HostView],
    model: str,
    need_bytes: int,
    options: PlacementOptions,
    *,
    own: bool = False,
    evictable: Callable[[str], bool] = lambda name: False,
) -> Placement:
    """Where one more replica of `model` goes (see the module doc for the rules)."""
    mine = {h.node for h in hosts if model in h.slots}
    free = [h for h in hosts if model not in h.slots]
    if own:
        # Its own hosts hold nothing else: an adopted one that kept it, or a new one.
        adopted = [h for h in free if h.own == model and not h.slots]
        if adopted:
            return Placement(min(adopted, key=lambda h: (model not in h.held, h.node in mine, h.index)).index)
        return Placement(None)
    shared = [h for h in free if h.own is None]

    def rank(h: HostView) -> tuple[bool, bool, float, int, int, int]:
        return (model not in h.held, h.node in mine, h.load, h.resident_bytes, len(h.slots), h.index)

    room = [h for h in shared if _fits(h, need_bytes, options)]
    if room:
        return Placement(min(room, key=rank).index)
    if options.max_hosts <= 0 or len(hosts) < options.max_hosts:
        return Placement(None)
    # Every host is full and no new one may start: evict least recently used slots.
    plans = []
    for h in shared:
        victims = lru_victims(
            h.slots, need_bytes, options.memory_budget_bytes, evictable,
            max_models=options.max_models_per_host, min_idle_s=options.min_idle_s,
        )
        if victims is not None:
            idle = sum(h.slots[v][1] for v in victims)
            plans.append(((len(victims), -idle, *rank(h)), Placement(h.index, victims)))
    if plans:
        return min(plans, key=lambda plan: plan[0])[1]
    if shared:
        budget = options.memory_budget_bytes
        roomiest = min(shared, key=lambda h: (h.resident_bytes - budget if budget else 0, len(h.slots), *rank(h)))
        return Placement(roomiest.index, over_limits=True)
    return Placement(None, over_limits=True)  # only dedicated hosts are up: a shared one starts anyway


def over_budget(
    hosts: Sequence[HostView], budget: int, evictable: Callable[[str], bool], min_idle_s: float = 0.0
) -> list[tuple[int, str]]:
    """(host, model) slots to evict, least recently used first, from hosts whose servables
    outgrew the budget (a model's measured size may exceed its estimate); none used
    within `min_idle_s`, and none at all where that would not bring the host under it."""
    if budget <= 0:
        return []
    out: list[tuple[int, str]] = []
    for h in hosts:
        if h.resident_bytes > budget:
            victims = lru_victims(h.slots, 0, budget, evictable, min_idle_s=min_idle_s)
            out.extend((h.index, v) for v in victims or ())
    return out
