"""A router over a set of replica handles that counts requests in flight on each.

Generic over the handle type (in production a `ReplicaRef`, whose data-plane address requests travel
to as frames; anything in tests). Not thread-safe: one router per event loop, as the gateway uses
it. A replica whose call just failed can be set aside for a while (`mark_down`), so new calls go to
the others until the controller's next routing table says what became of it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

from cluster.errors import Unavailable
from cluster.routing.policy import choose_replica

H = TypeVar("H")


class _Slot(Generic[H]):
    __slots__ = ("handle", "in_flight_requests", "down_until")

    def __init__(self, handle: H) -> None:
        self.handle = handle
        self.in_flight_requests = 0
        self.down_until = 0.0  # set aside until then (clock seconds)


class Router(Generic[H]):
    """Picks a replica by power of two choices on the requests each has in flight.

    `key` identifies a replica across `set_replicas` calls (default: the handle itself, which must
    then be hashable), so a replica that stays keeps its count.
    """

    def __init__(
        self,
        handles: Iterable[H] = (),
        *,
        rng: random.Random | None = None,
        key: Callable[[H], Hashable] = lambda handle: handle,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._key = key
        self._clock = clock
        self._slots: list[_Slot[H]] = []
        self._changed: asyncio.Event | None = None
        self.set_replicas(handles)

    def set_replicas(self, handles: Iterable[H]) -> None:
        """Replace the replica set (e.g. from a new routing table).

        Requests still running on a removed replica finish normally; their completion only touches
        the removed slot, never a new one.
        """
        existing = {self._key(slot.handle): slot for slot in self._slots}
        slots = [existing.get(self._key(h)) or _Slot(h) for h in handles]
        added = any(self._key(s.handle) not in existing for s in slots)
        self._slots = slots
        if added and self._changed is not None:
            self._changed.set()  # callers waiting for a replica try again
            self._changed = None

    def has_live(self) -> bool:
        """Whether some replica is not set aside."""
        now = self._clock()
        return any(slot.down_until <= now for slot in self._slots)

    def mark_down(self, handle: H, seconds: float) -> None:
        """Sets `handle` aside for `seconds`: calls go to other replicas meanwhile."""
        for slot in self._slots:
            if slot.handle == handle:
                slot.down_until = self._clock() + seconds

    async def wait_for_replica(self, timeout: float) -> None:
        """Returns when a replica is added, or after `timeout` seconds (then the caller looks again:
        a replica set aside may be back)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    @property
    def replicas(self) -> list[H]:
        return [slot.handle for slot in self._slots]

    def in_flight_requests(self) -> list[int]:
        """Per replica, the requests in flight on it (a coalesced call counts each of its requests)."""
        return [slot.in_flight_requests for slot in self._slots]

    @contextmanager
    def acquire(self, weight: int = 1, *, exclude: H | None = None) -> Iterator[H]:
        """Choose a replica and count `weight` requests in flight on it until the block exits.

        `weight` lets a coalesced call of several requests count as what it is; `exclude` skips a
        replica (one that just failed); replicas set aside are skipped too. Raises Unavailable when
        there is no replica to choose.
        """
        now = self._clock()
        slots = [s for s in self._slots if s.down_until <= now and (exclude is None or s.handle != exclude)]
        if not slots:
            raise Unavailable("No replica is available to serve this model")
        slot = slots[choose_replica(_counts(slots), self._rng)] if len(slots) > 1 else slots[0]
        slot.in_flight_requests += weight
        try:
            yield slot.handle
        finally:
            slot.in_flight_requests -= weight


def _counts(slots: Sequence[_Slot[H]]) -> list[int]:
    return [slot.in_flight_requests for slot in slots]
