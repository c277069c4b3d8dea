"""A replica host and a model's slot on it, as the pool (`hosts.py`) knows them.

A `Host` is the pool's record of one replica host process: its handle, its slots, its last ping
report and the state of its start, address and health. A `Slot` is one model's replica on a
host: the handle a replica set's member holds, offering the calls a per-model replica actor
offers (`ping`, `load`, `unload`, `data_address`, `drain`, `stats`, `memory`, each
`.remote(...)`), bound to its model; the ones that need the pool (ping, load, address) go
through it, the others straight to the host's actor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cluster.config import BatchingConfig

if TYPE_CHECKING:
    from cluster.controller.hosts import HostPool

log = logging.getLogger("tessera.controller")


class HostDead(RuntimeError):
    """A host that failed its ping (dead, hung, or lost with its node)."""


@dataclass(eq=False)
class Host:
    """One replica host as the pool knows it."""

    index: int
    handle: Any
    own: str | None = None  # the model it is dedicated to
    slots: dict[str, Slot] = field(default_factory=dict)
    report: dict[str, tuple[int, float]] = field(default_factory=dict)  # last ping: model -> (bytes, idle s)
    held: frozenset[str] = frozenset()  # models it kept from before this controller (adoption)
    node: str | None = None
    dead: bool = False
    started: asyncio.Future[None] | None = None  # Ray placing it, then its first answer
    address: asyncio.Future[tuple[str, int]] | None = None
    pinging: asyncio.Future[dict[str, tuple[int, float]]] | None = None
    asking: asyncio.Future[list[Any]] | None = None  # every slot's statistics, one call for a scrape
    misses: int = 0  # pings in a row not answered in time
    loading: int = 0  # loads in flight on it

    @classmethod
    def adopted(cls, index: int, handle: Any, answer: Mapping[str, Any]) -> Host:
        """A host a previous controller left running, from its `describe` answer: started, and
        holding the models it reported."""
        host = cls(index, handle, own=answer.get("own") or None, node=answer.get("node"))
        host.report = {m: (int(s), float(i)) for m, (s, i) in answer.get("slots", {}).items()}
        host.held = frozenset(host.report)
        host.started = asyncio.get_running_loop().create_future()
        host.started.set_result(None)
        return host


async def describe(handle: Any, timeout_s: float) -> Mapping[str, Any] | None:
    """What a running host says it holds (and whose it is); None if it does not answer."""
    try:
        return dict(await asyncio.wait_for(handle.describe.remote(), timeout_s))
    except Exception as exc:  # noqa: BLE001 - a host that does not answer is not adopted
        log.warning("replica host %s not adopted: %r", handle, exc)
        return None


class _Call:
    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self.remote = fn


class Slot:
    """A model's replica on a host: the handle a replica set's member holds."""

    def __init__(self, pool: HostPool, host: Host, model: str, batching: BatchingConfig | None, slot_id: str) -> None:
        self.host = host
        self.model = model
        self.id = slot_id  # a late `remove` of an earlier slot of the model never takes this one
        self.released = False
        self.evicted = False  # on its way out: its bytes no longer count against the budget
        handle = host.handle
        self.ping = _Call(lambda: pool.ping(host))
        self.data_address = _Call(lambda: pool.address(host))
        self.load = _Call(
            lambda version, path, platform="tensorflow": pool.load(host, model, version, path, platform, batching, slot_id)
        )
        self.unload = _Call(lambda version, drain_timeout_s=30.0: handle.unload.remote(model, version, drain_timeout_s))
        # A slot leaving drains alone: the host's other models keep serving.
        self.drain = _Call(lambda timeout_s=30.0: handle.remove.remote(model, timeout_s, slot_id))
        self.stats = _Call(lambda: pool.stats(host, model))
        self.memory = _Call(lambda: handle.memory.remote(model))

    @property
    def actor(self) -> Any:
        """The host's actor handle (Ray's placement state is the host's)."""
        return self.host.handle

    def __repr__(self) -> str:
        return f"Slot({self.model} on host {self.host.index})"


# Ping answers that need no wait (`HostPool.ping`: the host's last report, or HostDead).
def quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # HostDead is acted on where it is raised; nobody awaits this one


def resolved(value: Any) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def failed(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
