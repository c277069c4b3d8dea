"""The gateway's connections to replicas: one data-plane connection per replica host, shared by
every model on that host, and a call target per replica (a `ModelChannel`, one model on a host).

A connection opens on first use, with the cluster's secret. When a routing table drops a replica
(retired, replaced, its model removed), its target goes; a host with no model left in the table is
closed after `drain_grace_s`: calls already sent are answered, never cut off. `connect` (tests)
replaces both levels: a call target per replica, closed when its replica leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Set
from typing import Any

from cluster.routing.channel import ModelChannel, ReplicaChannel
from cluster.routing.table import ReplicaRef


class Connections:
    """Call targets per replica, over one `ReplicaChannel` per host (see the module doc)."""

    def __init__(
        self,
        *,
        connect: Callable[[ReplicaRef], Any] | None = None,
        host_channel: Callable[[tuple[str, int]], ReplicaChannel] | None = None,
        data_plane_secret: bytes = b"",
        drain_grace_s: float = 30.0,
    ) -> None:
        self._host_channel = host_channel or (lambda address: ReplicaChannel(address, data_plane_secret))
        self._connect = connect or self._model_channel
        self._drain_grace = drain_grace_s
        self._hosts: dict[tuple[str, int], ReplicaChannel] = {}  # data-plane address -> its connection
        self._targets: dict[ReplicaRef, Any] = {}  # a call target per replica (model on a host)

    def target(self, replica: ReplicaRef) -> Any:
        """The call target of `replica` (anything with the run contract's `run`)."""
        target = self._targets.get(replica)
        if target is None:
            target = self._targets[replica] = self._connect(replica)
        return target

    def _model_channel(self, replica: ReplicaRef) -> ModelChannel:
        host = self._hosts.get(replica.address)
        if host is None:
            host = self._hosts[replica.address] = self._host_channel(replica.address)
        return ModelChannel(host, replica.model)

    def keep(self, live: Set[ReplicaRef]) -> None:
        """Lets go of every replica not in `live` (the new routing table's), and of hosts left
        with none: they close once their calls are answered (bounded by the drain grace)."""
        for ref in set(self._targets) - live:
            target = self._targets.pop(ref)
            if hasattr(target, "close") and not isinstance(target, ModelChannel):
                asyncio.get_running_loop().create_task(target.close(self._drain_grace))
        hosts = {ref.address for ref in live}
        for address in set(self._hosts) - hosts:
            asyncio.get_running_loop().create_task(self._hosts.pop(address).close(self._drain_grace))

    async def close(self) -> None:
        """Closes every connection now (the gateway is stopping)."""
        targets, self._targets = list(self._targets.values()), {}
        hosts, self._hosts = list(self._hosts.values()), {}
        await asyncio.gather(*(c.close() for c in [*targets, *hosts] if hasattr(c, "close")))
