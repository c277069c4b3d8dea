"""The routing table the controller publishes, and the gateways' long-poll for it.

Each publish makes a new table with the next epoch; a gateway asks with the epoch it knows and
is answered as soon as a newer one exists (or after its timeout). The incarnation names this
controller: a gateway that knows another one (the controller restarted, epochs began again)
gets the table at once. Ray Serve's controller long-polls its gateways' config the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping

from cluster.routing.table import ModelRoute, RoutingTable


class TablePublisher:
    """The newest routing table (`table`), and the waits for a newer one."""

    def __init__(self) -> None:
        self.incarnation = uuid.uuid4().hex
        self.table = RoutingTable(incarnation=self.incarnation)
        self._changed = asyncio.Condition()

    async def publish(self, models: Mapping[str, ModelRoute]) -> RoutingTable:
        """A new table of `models` with the next epoch; every waiting long-poll gets it."""
        async with self._changed:
            self.table = RoutingTable(self.table.epoch + 1, models, self.incarnation)
            self._changed.notify_all()
        return self.table

    async def newer_than(self, known_epoch: int = -1, timeout: float = 10.0, incarnation: str = "") -> RoutingTable:
        """Long-poll: returns as soon as the table is newer than `known_epoch`, or after `timeout`.

        A caller that knows another incarnation (this controller restarted) gets the table at once.
        """
        async with self._changed:
            if self.table.epoch <= known_epoch and incarnation in ("", self.incarnation):
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self.table.epoch > known_epoch), timeout
                    )
                except TimeoutError:
                    pass
            return self.table
