"""The pool of replica hosts: Ray actor processes that hold slots of many models.

A model's replica is a slot on a host (`Slot`). A `ReplicaSet` holds slots exactly as it held
per-model replica actors before: a slot offers the same calls (`ping`, `load`, `unload`,
`data_address`, `drain`, `stats`, `memory`, each `.remote(...)`), bound to its model, so the
replica set's logic (start, catch up, health, replace, retire) is the same for both.

The pool places each new slot (`packing.choose_host`: memory, load, spread), starts hosts when
none has room and stops a host when its last slot leaves. Health is per host: every slot's ping
of one host in one health round shares one Ray call, whose answer also carries each slot's
resident bytes and idle time (the memory budget's and the LRU's inputs). A host whose process
died, or that leaves `misses` pings in a row unanswered (hung, lost with its node), is marked
dead and killed, and every slot on it fails its ping too, so each model's replica
set replaces its slot, placed on the hosts left (or a new one).

Hosts are named by index and detached: a controller that restarts finds them (`adopt`) with their
models loaded, and placement puts each model back where its versions are.

Plain asyncio over injected host handles (Ray actor handles in production, fakes in tests). The
records of a host and of a slot are in `slots.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cluster.config import BatchingConfig
from cluster.controller.packing import HostView, PlacementOptions, choose_host, over_budget
from cluster.controller.slots import Host, HostDead, Slot, describe, failed, quiet, resolved

log = logging.getLogger("tessera.controller")

# (index, the model it starts for, whether it is that model's own) -> a new host's handle
HostFactory = Callable[[int, str, bool], Any]
# slot -> the controller takes it out of its model's replicas (the one resize path)
Evict = Callable[[Slot], None]


class HostPool:
    """Replica hosts and the slots on them; `place` and `release` are the controller's replica
    factory and killer."""

    def __init__(
        self,
        options: PlacementOptions,
        new_host: HostFactory,
        kill_host: Callable[[Any], None],
        *,
        ping_timeout_s: float = 0.8,
        misses: int = 2,
        loading_ping_timeout_s: float = 10.0,
    ) -> None:
        self.options = options
        self._new_host = new_host
        self._kill_host = kill_host
        self._ping_timeout = ping_timeout_s
        self._misses = misses
        # A host loading models (a hundred of them placed at once, on a crowded machine) answers
        # pings late without being hung: it gets this long while loads are in flight.
        self._loading_timeout = max(ping_timeout_s, loading_ping_timeout_s)
        self.hosts: dict[int, Host] = {}
        self.model_bytes: dict[str, int] = {}  # a model's resident bytes, as last reported anywhere
        # Before any host reported a model: its EstimateResources (estimates.py), set by the controller.
        self.estimates: dict[str, int] = {}
        # Set by the controller: which models may lose a replica, how to take one away, their load.
        self.evictable: Callable[[str], bool] = lambda model: False
        self.evict: Evict = lambda slot: None
        self.load_of: Callable[[str], float] = lambda model: 0.0
        self.evictions = 0
        self._tasks: set[asyncio.Future[Any]] = set()  # calls to hosts nobody awaits
        self._next_index = 0
        self._slot_ids = 0

    # -- placement -------------------------------------------------------------------------------
    def views(self) -> list[HostView]:
        counts: dict[str, int] = {}
        for host in self.hosts.values():
            for model in host.slots:
                counts[model] = counts.get(model, 0) + 1
        return [
            HostView(
                index=h.index,
                slots={m: self._slot_state(h, m) for m, slot in h.slots.items() if not slot.evicted},
                load=sum(self.load_of(m) / counts[m] for m in h.slots),
                node=h.node,
                own=h.own,
                held=h.held,
            )
            for h in self.hosts.values()
            if not h.dead
        ]

    def bytes_of(self, model: str) -> int:
        """A model's size for the budget: its resident bytes as last reported anywhere, else (never
        loaded yet) its estimate from storage, else 0."""
        return self.model_bytes.get(model) or self.estimates.get(model, 0)

    def _slot_state(self, host: Host, model: str) -> tuple[int, float]:
        # What the host says its servables keep; until it has said (loading), the model's size
        # as reported anywhere (or estimated), so a placement counts what is on its way.
        size, idle = host.report.get(model, (0, 0.0))
        return size or self.bytes_of(model), idle

    def place(self, model: str, *, own: bool = False, batching: BatchingConfig | None = None) -> Slot:
        """A new slot of `model`: on a host with room, evicting LRU slots if the hosts are all
        full and no more may start, or on a new host."""
        need = self.bytes_of(model)
        choice = choose_host(self.views(), model, need, self.options, own=own, evictable=self.evictable)
        if choice.host is None:
            host = self._start_host(model, own)
        else:
            host = self.hosts[choice.host]
        for victim in choice.evict:
            if not self.evictable(victim):
                continue  # an earlier eviction took it to its minimum
            log.info("model %s evicted from replica host %d (least recently used) to make room for %s",
                     victim, host.index, model)
            self._evict(host.slots[victim])
        if choice.over_limits:
            log.warning("no replica host has room for model %s (limits: %s); host %d takes it over them",
                        model, self.options, host.index)
        self._slot_ids += 1
        slot = host.slots[model] = Slot(self, host, model, batching, f"{host.index}.{self._slot_ids}")
        return slot

    def _evict(self, slot: Slot) -> None:
        slot.evicted = True
        self.evictions += 1
        self.evict(slot)

    def _start_host(self, model: str, own: bool) -> Host:
        # Never a stopped host's index again: its name may linger in Ray while it dies.
        index = self._next_index
        self._next_index += 1
        host = Host(index, self._new_host(index, model, own), own=model if own else None)
        self.hosts[index] = host
        log.info("replica host %d starting%s", index, f" (for model {model} alone)" if own else "")
        return host

    def release(self, slot: Slot) -> None:
        """The slot is gone (retired, replaced or evicted): off its host, which stops when empty."""
        if slot.released:
            return
        slot.released = True
        host = slot.host
        if host.slots.get(slot.model) is slot:
            del host.slots[slot.model]
        host.report.pop(slot.model, None)
        if host.dead:
            return
        if not host.slots:
            self._stop(host, "no model left on it")
        else:
            # Drained already if it was retired; a slot replaced or evicted unloads here.
            self._background(host.handle.remove.remote(slot.model, 0.0, slot.id))

    def _stop(self, host: Host, why: str) -> None:
        if self.hosts.get(host.index) is host:
            del self.hosts[host.index]
        host.dead = True
        log.info("replica host %d stopped: %s", host.index, why)
        self._kill_host(host.handle)

    # -- health ----------------------------------------------------------------------------------
    def _started(self, host: Host) -> asyncio.Future[None]:
        if host.started is None:
            host.started = asyncio.ensure_future(self._start(host))
        return host.started

    async def _start(self, host: Host) -> None:
        try:
            await host.handle.ping.remote()  # no timeout: Ray may be waiting for room
            host.node = await asyncio.wait_for(host.handle.node_id.remote(), 10.0)
        except Exception:
            self._dead(host, "it failed to start")
            raise

    def ping(self, host: Host) -> Awaitable[Any]:
        """A slot's health: its host's, as the pool knows it now. Before the host has started,
        the wait for it; after, an answer at once (the host's last report, or HostDead) while one
        ping of the host, shared by every slot asking in this round, refreshes it. So a thousand
        slots cost one Ray call per host per round, and a busy controller loop (whose timers
        fire late) never takes a late answer for a hung host: the pool counts misses itself."""
        if host.dead:
            return failed(HostDead(f"replica host {host.index} is gone"))
        started = self._started(host)
        if not started.done() or started.exception() is not None:
            return asyncio.shield(started)
        if host.pinging is None or host.pinging.done():
            host.pinging = asyncio.ensure_future(self._ping(host))
            host.pinging.add_done_callback(quiet)
        return resolved(host.report)

    async def stats(self, host: Host, model: str) -> list[Any]:
        """A slot's statistics, from one call to its host shared by every slot asking at once: a
        scrape asks every slot of every model, and 100 slots' calls on one host kept its loop (and
        the requests of every model on it) busy for the scrape's length."""
        if host.asking is None or host.asking.done():
            host.asking = asyncio.ensure_future(host.handle.stats.remote())
            host.asking.add_done_callback(quiet)
        return [s for s in await asyncio.shield(host.asking) if s.model == model]

    async def load(
        self, host: Host, model: str, version: int, path: str, platform: str, batching: BatchingConfig | None,
        slot_id: str,
    ) -> Any:
        """One version of `model` loaded into its slot on `host` (counted: see _loading_timeout)."""
        host.loading += 1
        try:
            return await host.handle.load.remote(model, version, path, platform, batching, slot_id)
        finally:
            host.loading -= 1

    async def _ping(self, host: Host) -> dict[str, tuple[int, float]]:
        timeout = self._ping_timeout if host.loading == 0 else self._loading_timeout
        try:
            report = await asyncio.wait_for(host.handle.ping.remote(), timeout)
        except TimeoutError:
            # A host loading a hundred models may be slow to answer once; `misses` in a row
            # (about two health periods) is a hung host. Its slots keep their last answer meanwhile.
            host.misses += 1
            if host.misses < self._misses:
                return host.report
            why = f"no answer in {timeout:.1f}s, {host.misses} times in a row"
            self._dead(host, why)
            raise HostDead(f"replica host {host.index} is gone ({why})") from None
        except Exception as exc:
            self._dead(host, repr(exc))
            raise HostDead(f"replica host {host.index} is gone ({exc!r})") from None
        host.misses = 0
        host.report = {m: (int(size), float(idle)) for m, (size, idle) in report.items()}
        for model, (size, _) in host.report.items():
            if size:
                self.model_bytes[model] = size
        self._enforce_budget()
        return host.report

    def _dead(self, host: Host, why: str) -> None:
        if host.dead:
            return
        log.error("replica host %d is gone (%s): its %d model(s) are placed again", host.index, why, len(host.slots))
        self._stop(host, why)

    def address(self, host: Host) -> Awaitable[tuple[str, int]]:
        if host.address is None or (host.address.done() and host.address.exception() is not None):
            host.address = asyncio.ensure_future(self._address(host))
        return asyncio.shield(host.address)

    async def _address(self, host: Host) -> tuple[str, int]:
        host_name, port = await host.handle.data_address.remote()
        return str(host_name), int(port)

    def _enforce_budget(self) -> None:
        """Hosts whose servables outgrew the budget (sizes are known once loaded) shed their
        least recently used evictable slots."""
        budget, min_idle = self.options.memory_budget_bytes, self.options.min_idle_s
        for index, model in over_budget(self.views(), budget, self.evictable, min_idle):
            slot = self.hosts[index].slots.get(model)
            # One at a time: an eviction on one host may take the model to its minimum.
            if slot is not None and self.evictable(model):
                log.info("model %s evicted from replica host %d: the host is over its memory budget", model, index)
                self._evict(slot)

    # -- a restarted controller ------------------------------------------------------------------
    async def adopt(self, found: Sequence[tuple[int, Any]], timeout_s: float = 5.0) -> None:
        """Takes over hosts a previous controller left running: each tells what it holds (and
        whose it is), so placement puts those models back where their versions are loaded."""

        answers = await asyncio.gather(*(describe(handle, timeout_s) for _, handle in found))
        for (index, handle), answer in zip(found, answers, strict=True):
            if answer is None or index in self.hosts:
                continue
            host = self.hosts[index] = Host.adopted(index, handle, answer)
            self._next_index = max(self._next_index, index + 1)
            log.info("replica host %d adopted with %d model(s)", index, len(host.held))

    def forget_unclaimed(self) -> None:
        """After the first config: what adopted hosts hold and no model placed there goes."""
        for host in list(self.hosts.values()):
            leftovers = host.held - set(host.slots)
            host.held = frozenset()
            if not host.slots and leftovers:
                self._stop(host, "none of its models is placed on it any more")
                continue
            for model in leftovers:
                self._background(host.handle.remove.remote(model, 0.0))

    def kill_all(self) -> None:
        for host in list(self.hosts.values()):
            self._stop(host, "the controller is shutting down")

    def _background(self, call: Any) -> None:
        try:
            task = asyncio.ensure_future(call)
        except RuntimeError:
            return  # no loop (tests building sets before one runs): nothing to tell the host
        self._tasks.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a call to a replica host failed: %r", task.exception())  # it is being stopped
