"""The replica actors of one model: started, asked for their data-plane address, replaced when
they die, grown and shrunk. Every replica holds every available version of the model.

Plain asyncio over replica handles (Ray actor handles in production): the controller decides what
to do, this class knows how to do it on a set of actors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from cluster.routing.table import ReplicaRef
from exporter.signature import Signature

log = logging.getLogger("tessera.controller")

BringUp = Callable[[Sequence[Any]], Awaitable[None]]  # loads the available versions on new replicas


def unwrap_error(exc: BaseException) -> BaseException:
    """The exception a replica raised, without Ray's task-error wrapping."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class ReplicaSet:
    """The replicas of model `name`; `new_replica(index)` starts one, `kill(handle)` stops one."""

    def __init__(
        self,
        name: str,
        count: int,
        new_replica: Callable[[int], Any],
        kill: Callable[[Any], None],
        timeout: float,
    ) -> None:
        self.name = name
        self._new = new_replica
        self._kill = kill
        self._timeout = timeout
        self.handles: list[Any] = [new_replica(i) for i in range(count)]
        self._addresses: list[tuple[str, int] | None] = [None] * count

    def __len__(self) -> int:
        return len(self.handles)

    # -- versions ------------------------------------------------------------------------------
    async def load(self, version: int, path: str, platform: str = "tensorflow") -> Mapping[str, Signature]:
        """Loads `version` with `platform`'s loader on every replica; on any failure unloads it
        everywhere and raises."""
        handles = list(self.handles)
        try:
            results = await asyncio.gather(*(r.load.remote(version, path, platform) for r in handles))
        except Exception:
            await asyncio.gather(*(r.unload.remote(version) for r in handles), return_exceptions=True)
            raise
        return results[0]

    async def unload(self, version: int) -> BaseException | None:
        """Unloads `version` everywhere; returns the first failure, if any."""
        results = await asyncio.gather(*(r.unload.remote(version) for r in self.handles), return_exceptions=True)
        return next((unwrap_error(r) for r in results if isinstance(r, BaseException)), None)

    # -- routing -------------------------------------------------------------------------------
    async def refs(self) -> tuple[ReplicaRef, ...]:
        """The replicas with their data-plane addresses; one that cannot say its address is left out."""
        for i, handle in enumerate(self.handles):
            if self._addresses[i] is None:
                try:
                    host, port = await asyncio.wait_for(handle.data_address.remote(), self._timeout)
                    self._addresses[i] = (host, port)
                except Exception as exc:  # noqa: BLE001 - dead or hung: the health check replaces it
                    log.warning("model %s replica %d has no data-plane address: %s", self.name, i, exc)
        return tuple(
            ReplicaRef(handle, address)
            for handle, address in zip(self.handles, self._addresses, strict=True)
            if address is not None
        )

    # -- health and size -----------------------------------------------------------------------
    async def replace_dead(self, bring_up: BringUp) -> bool:
        """Replaces replicas that do not answer a ping; a new one loads the available versions first."""
        replaced = False
        for i, handle in enumerate(list(self.handles)):
            try:
                await asyncio.wait_for(handle.ping.remote(), self._timeout)
                continue
            except Exception as exc:  # noqa: BLE001 - dead or hung: replace it
                log.error("model %s replica %d died (%s); starting a new one", self.name, i, exc)
            self._kill(handle)
            fresh = self._new(i)
            try:
                await bring_up([fresh])
            except Exception as exc:  # noqa: BLE001 - the next health check tries again
                log.error("model %s replacement replica failed to load: %s", self.name, unwrap_error(exc))
            self.handles[i] = fresh
            self._addresses[i] = None
            log.info("model %s replica %d replaced", self.name, i)
            replaced = True
        return replaced

    async def grow(self, count: int, bring_up: BringUp) -> bool:
        """Adds replicas up to `count`, taking traffic only once they hold the available versions."""
        fresh = [self._new(i) for i in range(len(self.handles), count)]
        try:
            await bring_up(fresh)
        except Exception as exc:  # noqa: BLE001 - keep serving on what we have
            log.error("model %s: new replicas failed to load: %s", self.name, unwrap_error(exc))
            for handle in fresh:
                self._kill(handle)
            return False
        self.handles.extend(fresh)
        self._addresses.extend([None] * len(fresh))
        return True

    def shrink(self, count: int) -> list[Any]:
        """Drops replicas beyond `count` from the set (the caller retires them after a drain)."""
        retired = self.handles[count:]
        del self.handles[count:], self._addresses[count:]
        return retired

    def kill_all(self) -> None:
        for handle in self.handles:
            self._kill(handle)
