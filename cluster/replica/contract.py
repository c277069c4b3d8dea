"""The run contract between gateways and a replica, in one place.

A call carries the requests the gateway coalesced for one (version, signature, output filter);
the answer has one `RunResult` per request, in order: its outputs, or the error that refused it
(a bad request fails alone and never fails its neighbours). Every hop speaks it: the replica
(`Replica.run`, `BatchedRunner.run`, `ReplicaHost.run`, for one model), the data plane's server and wire
format, and the gateway's `ReplicaChannel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cluster.errors import ServingError
from exporter.signature import Tensors

# One request's answer: its outputs (output alias -> array, dim 0 = the request's own rows) or the
# error that refused it.
RunResult = Tensors | ServingError


class Runner(Protocol):
    """Anything that runs a coalesced call (a replica, its batch queues, a channel to one)."""

    async def run(
        self,
        version: int,
        signature_key: str,
        requests: Sequence[Tensors],
        output_filter: Sequence[str] = (),
        timeouts: Sequence[float | None] | None = None,
    ) -> list[RunResult]:
        """`timeouts`: each request's seconds left before its deadline (None: no deadline)."""
        ...
