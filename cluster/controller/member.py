"""One replica as its replica set knows it, the timeouts of the calls to it, and the errors
those calls raise.

A `Member` is `starting` until it answers, has its data-plane address and holds the available
versions; then it is routed. `HealthOptions` bounds every wait on a replica (pings, address,
loads, drains) and the restart backoff. A replica's call fails with the exception the replica
raised, wrapped by Ray: `unwrap_error` gives the replica's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# A replica that has not answered its first ping yet -> why not, if Ray says (e.g. no room), or None.
PlacementProbe = Callable[[Any], Awaitable[str | None]]


def unwrap_error(exc: BaseException) -> BaseException:
    """The exception a replica raised, without Ray's task-error wrapping."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


@dataclass(frozen=True)
class HealthOptions:
    period_s: float = 1.0  # ready replicas are pinged this often
    timeout_s: float = 1.0  # a ping not answered in this long fails: hung replicas go within ~2 s
    report_unplaced_after_s: float = 5.0  # a replica not started by then is asked about (and reported)
    address_timeout_s: float = 10.0  # for the data-plane address of a started replica
    load_timeout_s: float = 600.0  # one version on one replica, warmup included
    drain_timeout_s: float = 30.0  # a leaving replica's requests in flight finish within this
    restart_backoff_s: float = 1.0  # doubled after each replica that dies before it serves, up to 30 s


@dataclass(eq=False)
class Member:
    """One replica: `starting` until it answers, has its address and holds the available versions."""

    handle: Any
    index: int
    ready: bool = False
    address: tuple[str, int] | None = None
    versions: set[int] = field(default_factory=set)
    unplaced: str | None = None  # why Ray has not placed it yet, while that lasts
    task: asyncio.Task[None] | None = None
