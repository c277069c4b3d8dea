"""The replica actors of one model: started in the background, health-checked, replaced, grown,
shrunk and drained. Every routed replica holds every available version of the model.

Plain asyncio over replica handles (Ray actor handles in production): the controller decides what
to do, this class knows how to do it on a set of actors. Nothing here waits without a timeout on
a replica, except a start waiting for Ray to place the actor, and that runs in its own task:
a replica Ray cannot place (no room) is reported, stays queued in Ray until room frees up, and
holds back nothing else. One replica's record, and the timeouts of its calls, are in `member.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from cluster.controller.member import HealthOptions, Member, PlacementProbe, unwrap_error
from cluster.routing.table import ReplicaRef
from exporter.signature import Signature

log = logging.getLogger("tessera.controller")

class ReplicaSet:
    """The replicas of model `name`; `new_replica(index)` starts one, `kill(handle)` stops one.

    `wanted()` gives the versions every replica must hold (the available ones, with their paths),
    `platform()` the model's platform they load with;
    `on_change()` is called whenever the routed set changes (the controller then publishes).
    """

    def __init__(
        self,
        name: str,
        count: int,
        new_replica: Callable[[int], Any],
        kill: Callable[[Any], None],
        *,
        wanted: Callable[[], Mapping[int, str]] = dict,
        platform: Callable[[], str] = lambda: "tensorflow",
        on_change: Callable[[], None] = lambda: None,
        health: HealthOptions | None = None,
        probe: PlacementProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._new = new_replica
        self._kill = kill
        self._wanted = wanted
        self._platform = platform  # the model's, as configured now (a loader per platform)
        self._on_change = on_change
        self.health = health or HealthOptions()
        self._probe = probe
        self._clock = clock
        self._leaving: set[int] = set()  # indices of replicas draining: their names are still taken
        self._failures: dict[int, int] = {}  # index -> replicas there that died before serving
        self.members: list[Member] = []
        for _ in range(count):
            self._add()

    def __len__(self) -> int:
        return len(self.members)

    @property
    def handles(self) -> list[Any]:
        return [m.handle for m in self.members]

    def ready(self) -> list[Member]:
        return [m for m in self.members if m.ready]

    def unplaced(self) -> list[str]:
        """Why replicas are waiting for Ray to place them (one reason per waiting replica)."""
        return [m.unplaced for m in self.members if m.unplaced is not None]

    # -- starting --------------------------------------------------------------------------------
    def _add(self, index: int | None = None, delay: float = 0.0) -> Member:
        if index is None:
            used = {m.index for m in self.members} | self._leaving
            index = next(i for i in range(len(used) + 1) if i not in used)
        member = Member(self._new(index), index)
        self.members.append(member)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return member  # started by start() once a loop runs
        member.task = loop.create_task(self._start(member, delay))
        return member

    def start(self) -> None:
        """Starts bringing up replicas created before the event loop ran."""
        for member in self.members:
            if member.task is None and not member.ready:
                member.task = asyncio.get_running_loop().create_task(self._start(member, 0.0))

    async def _start(self, member: Member, delay: float) -> None:
        """Waits for Ray to start the replica (reporting why not, if it takes long), then loads the
        wanted versions on it; only then is it routed. A replica that dies meanwhile is replaced."""
        if delay:
            await asyncio.sleep(delay)
        try:
            ping = asyncio.ensure_future(member.handle.ping.remote())
            while not (await asyncio.wait({ping}, timeout=self.health.report_unplaced_after_s))[0]:
                reason = await self._why_unplaced(member)
                if reason != member.unplaced:
                    if reason:
                        log.warning("model %s replica %d cannot be placed yet: %s", self.name, member.index, reason)
                    member.unplaced = reason
                    self._on_change()  # GetModelStatus says why
            ping.result()
            if member.unplaced:
                log.info("model %s replica %d placed", self.name, member.index)
            member.unplaced = None
            host, port = await asyncio.wait_for(member.handle.data_address.remote(), self.health.address_timeout_s)
            await self.catch_up(member)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - dead before it served: replace it, after a pause
            if member in self.members:
                failures = self._failures[member.index] = self._failures.get(member.index, 0) + 1
                backoff = min(30.0, self.health.restart_backoff_s * 2 ** (failures - 1))
                log.error("model %s replica %d failed to start (%s); another in %.0fs",
                          self.name, member.index, unwrap_error(exc), backoff)
                self._replace(member, backoff)
            return
        member.address = (host, port)
        member.ready = True
        self._failures.pop(member.index, None)
        log.info("model %s replica %d serving at %s:%d", self.name, member.index, host, port)
        self._on_change()

    async def _why_unplaced(self, member: Member) -> str | None:
        if self._probe is None:
            return f"not started after {self.health.report_unplaced_after_s:.0f}s"
        try:
            return await asyncio.wait_for(self._probe(member.handle), self.health.timeout_s * 5)
        except Exception as exc:  # noqa: BLE001 - no answer is an answer too
            return f"not started; its state is unknown ({exc!r})"

    async def catch_up(self, member: Member) -> None:
        """Loads every wanted version the replica lacks, including ones that became available
        while it loaded. Raises if one fails to load."""
        while missing := {v: p for v, p in self._wanted().items() if v not in member.versions}:
            await asyncio.gather(*(self._load_on(member, v, p) for v, p in missing.items()))

    async def _load_on(
        self, member: Member, version: int, path: str, platform: str | None = None
    ) -> Mapping[str, Signature]:
        load = member.handle.load.remote(version, path, self._platform() if platform is None else platform)
        signatures = await asyncio.wait_for(load, self.health.load_timeout_s)
        member.versions.add(version)
        return signatures

    # -- versions ------------------------------------------------------------------------------
    async def load(self, version: int, path: str, platform: str = "tensorflow") -> Mapping[str, Signature]:
        """Loads `version` with `platform`'s loader on every ready replica (at least one must be); on
        any failure unloads it from them and raises. Replicas that start later load it when they
        catch up (with the platform `platform()` gives)."""
        targets = self.ready()
        if not targets:
            raise RuntimeError(f"model {self.name} has no replica to load version {version} on")
        try:
            results = await asyncio.gather(*(self._load_on(m, version, path, platform) for m in targets))
        except Exception:
            await self.unload(version, targets)
            raise
        return results[0]

    async def unload(self, version: int, members: list[Member] | None = None) -> BaseException | None:
        """Unloads `version` from the replicas holding it; returns the first failure, if any."""
        targets = [m for m in (self.members if members is None else members) if version in m.versions]
        for m in targets:
            m.versions.discard(version)
        drain = self.health.drain_timeout_s
        calls = (asyncio.wait_for(m.handle.unload.remote(version, drain), drain + 5.0) for m in targets)
        results = await asyncio.gather(*calls, return_exceptions=True)
        return next((unwrap_error(r) for r in results if isinstance(r, BaseException)), None)

    # -- routing -------------------------------------------------------------------------------
    def refs(self, available: frozenset[int]) -> tuple[ReplicaRef, ...]:
        """The replicas to route to: ready ones that hold every available version."""
        return tuple(
            # A slot (hosts.py) is published as its host's actor handle: what Ray can send.
            ReplicaRef(getattr(m.handle, "actor", m.handle), m.address, self.name)
            for m in self.members
            if m.ready and m.address is not None and available <= m.versions
        )

    # -- health and size -----------------------------------------------------------------------
    async def check(self) -> bool:
        """Pings every ready replica at once; one that fails or does not answer within the timeout
        leaves the set (so the routing table) and is killed and replaced. Also loads versions a
        ready replica lacks. Returns whether a replica left."""
        ready = self.ready()
        timeout = self.health.timeout_s
        results = await asyncio.gather(
            *(asyncio.wait_for(m.handle.ping.remote(), timeout) for m in ready), return_exceptions=True
        )
        left = False
        for member, result in zip(ready, results, strict=True):
            if member not in self.members:
                continue  # retired meanwhile
            if isinstance(result, BaseException):
                why = f"no answer in {timeout:.1f}s" if isinstance(result, TimeoutError) else unwrap_error(result)
                log.error("model %s replica %d is gone (%s); starting a new one", self.name, member.index, why)
                self._replace(member, 0.0)
                left = True
            elif member.task is None or member.task.done():
                if any(v not in member.versions for v in self._wanted()):
                    member.task = asyncio.get_running_loop().create_task(self._catch_up_logged(member))
        if left:
            self._on_change()
        return left

    async def _catch_up_logged(self, member: Member) -> None:
        try:
            await self.catch_up(member)
        except Exception as exc:  # noqa: BLE001 - not routed until it holds them; next check retries
            log.error("model %s replica %d failed to load a version: %s", self.name, member.index, unwrap_error(exc))
            return
        self._on_change()

    def _replace(self, member: Member, delay: float) -> None:
        self.members.remove(member)
        if member.task is not None and member.task is not asyncio.current_task():
            member.task.cancel()
        self._kill(member.handle)
        self._add(member.index, delay)

    def grow(self, count: int) -> None:
        """Adds replicas up to `count`; each takes traffic once it holds the available versions."""
        while len(self.members) < count:
            self._add()

    def shrink(self, count: int) -> list[Member]:
        """Takes replicas beyond `count` out of the set, those not serving yet first; the caller
        publishes, then `retire`s them."""
        order = sorted(self.members, key=lambda m: (m.ready, -m.index))  # low indices stay: adoptable names
        leaving = order[: max(0, len(self.members) - count)]
        for member in leaving:
            self.members.remove(member)
            self._leaving.add(member.index)
        return leaving

    def take(self, member: Member) -> list[Member]:
        """Takes this one replica out of the set (evicted from its host); the caller publishes,
        then `retire`s it."""
        if member not in self.members:
            return []
        self.members.remove(member)
        self._leaving.add(member.index)
        return [member]

    async def retire(self, members: list[Member], propagation_s: float) -> None:
        """Stops replicas already out of the routing table: waits `propagation_s` for gateways to
        see the table, lets each finish what it has (bounded), then kills it."""
        for member in members:
            if member.task is not None:
                member.task.cancel()
        await asyncio.sleep(propagation_s)
        ready = [m for m in members if m.ready]
        drain = self.health.drain_timeout_s
        calls = (asyncio.wait_for(m.handle.drain.remote(drain), drain + 5.0) for m in ready)
        for member, result in zip(ready, await asyncio.gather(*calls, return_exceptions=True), strict=True):
            if isinstance(result, BaseException):
                log.warning("model %s replica %d did not drain: %s", self.name, member.index, unwrap_error(result))
        for member in members:
            self._kill(member.handle)
            self._leaving.discard(member.index)

    def kill_all(self) -> None:
        for member in self.members:
            if member.task is not None:
                member.task.cancel()
            self._kill(member.handle)
        self.members.clear()
