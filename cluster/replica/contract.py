"""The run contract between gateways and a replica, in one place.

A call carries the requests the gateway coalesced for one (version, signature, output filter);
the answer has one `RunResult` per request, in order: its outputs, or the error that refused it
(a bad request fails alone and never fails its neighbours). Every hop speaks it: the replica
(`Replica.run`, `BatchedRunner.run`, `ReplicaHost.run`, for one model), the data plane's server and wire
format, and the gateway's `ReplicaChannel`.

A call's signature is one key (`str`), or, for MultiInference, the tuple of its tasks' keys
(`Tasks`): each request is then one vector of serialized Examples (and its context), sent once,
parsed once per distinct feature spec, run on every task's signature (`cluster.replica.tasks`);
its outputs are every task's, keyed `task_output(index, alias)`. A failing task fails its request,
as one failing Session::Run fails TF Serving's MultiInference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from cluster.errors import ServingError
from exporter.signature import Tensors

# One request's answer: its outputs (output alias -> array, dim 0 = the request's own rows) or the
# error that refused it.
RunResult = Tensors | ServingError

# The signature keys of a MultiInference's tasks, in the request's order (see the module doc).
Tasks = tuple[str, ...]
# What a call runs: one signature key, or a MultiInference's tasks.
Target = str | Tasks


def task_output(index: int, alias: str) -> str:
    """The key of output `alias` of task `index` in a MultiInference request's outputs."""
    return f"{index}/{alias}"


def task_outputs(outputs: Tensors, count: int) -> list[dict[str, np.ndarray]]:
    """A MultiInference request's outputs, split back into each of its `count` tasks' own."""
    per_task: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    for key, array in outputs.items():
        index, _, alias = key.partition("/")
        per_task[int(index)][alias] = array
    return per_task


class Runner(Protocol):
    """Anything that runs a coalesced call (a replica, its batch queues, a channel to one)."""

    async def run(
        self,
        version: int,
        signature_key: Target,
        requests: Sequence[Tensors],
        output_filter: Sequence[str] = (),
        timeouts: Sequence[float | None] | None = None,
    ) -> list[RunResult]:
        """`timeouts`: each request's seconds left before its deadline (None: no deadline)."""
        ...
