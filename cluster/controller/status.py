"""What the controller answers about its models: each model's route in the routing table (with
GetModelStatus's version statuses), the metrics snapshot and the replicas' memory.

Functions of the controller's per-model state (`model_state.py`); the ones that ask replicas ask
them all at once, each with a timeout, and leave out the ones that do not answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from cluster import errors, stats
from cluster.autoscaler.load import Load
from cluster.controller.model_state import ModelState
from cluster.routing.table import ModelRoute
from cluster.types import ServableState, VersionStatus


def model_route(name: str, model: ModelState) -> ModelRoute:
    """Model `name` as the routing table shows it: its available versions, labels, routed
    replicas and version statuses."""
    available = {v: model.signatures[v] for v in model.stream.available_versions() if v in model.signatures}
    return ModelRoute(
        name=name,
        available=available,
        labels=model.config.label_map(),
        replicas=model.replicas.refs(frozenset(available)),
        statuses=version_statuses(model),
    )


def version_statuses(model: ModelState) -> tuple[VersionStatus, ...]:
    """GetModelStatus: a version waiting to load because no replica could start says why.

    A model scaled to zero keeps its versions AVAILABLE (a request is served: it loads them
    first), with an OK status whose message says so: clients that wait for AVAILABLE before
    sending still send, and the message tells an operator why no replica holds it."""
    statuses = model.stream.statuses()
    if model.replicas.ready():
        return tuple(statuses)
    unplaced = model.replicas.unplaced()
    why = "waiting for a replica to start" + (f": {unplaced[0]}" if unplaced else "")
    if model.scaler is not None and model.scaler.config.scales_to_zero:
        cold = model.scaling is not None and model.scaling.before == 0 and model.scaling.up
        note = (
            f"scaled to zero ({model.zero_reason}): loads on demand at the next request"
            if not model.replicas.members
            else "loading on demand (cold start): requests wait for it" if cold else None
        )
        if note is not None:
            statuses = [
                VersionStatus(s.version, s.state, note, "OK")
                if s.state is ServableState.AVAILABLE and s.error_message is None else s
                for s in statuses
            ]
    return tuple(
        VersionStatus(s.version, s.state, why, "Unavailable")
        if s.state is ServableState.START and s.error_message is None else s
        for s in statuses
    )


async def cluster_stats(
    models: Sequence[tuple[str, ModelState]],
    load: Callable[[str, float], Load],
    clock: Callable[[], float],
    timeout: float,
) -> list[stats.ModelStats]:
    """Every model's versions, load latency and replicas' statistics (for a metrics scrape);
    `load(name, now)` is the model's load at `now`, as the gateways reported it.

    Every replica is asked at once; one that does not answer within `timeout` (dead, hung, or
    not placed yet) is left out of this snapshot.
    """

    async def replicas(model: ModelState) -> list[stats.ReplicaStats]:
        calls = [asyncio.wait_for(m.handle.stats.remote(), timeout) for m in model.replicas.members]
        replies = await asyncio.gather(*calls, return_exceptions=True)
        # A slot on a host answers a list (its model's statistics there).
        flat = [s for r in replies for s in (r if isinstance(r, list) else [r])]
        return [r for r in flat if isinstance(r, stats.ReplicaStats)]

    answers = await asyncio.gather(*(replicas(model) for _, model in models))
    now = clock()
    signals = {name: load(name, now) for name, _ in models}
    return [
        stats.ModelStats(
            model=name,
            versions={s.version: int(s.state) for s in model.stream.statuses()},
            load_seconds=model.load_seconds,
            cold_start_seconds=model.cold_start_seconds,
            scaled_to_zero=model.scaled_to_zero,
            evictions=model.evictions,
            load_in_flight=signals[name].in_flight_requests,
            load_rate=signals[name].rate,
            replicas=replies,
            replica_count=len(model.replicas),
            replicas_unplaced=len(model.replicas.unplaced()),
        )
        for (name, model), replies in zip(models, answers, strict=True)
    ]


async def replica_memory(name: str, model: ModelState | None, timeout: float) -> list[dict[str, int]]:
    """Each answering replica's memory report for model `name` (NotFound if `model` is None)."""
    if model is None:
        raise errors.NotFound(f"no model {name}")
    calls = (asyncio.wait_for(m.handle.memory.remote(), timeout) for m in model.replicas.members)
    replies = await asyncio.gather(*calls, return_exceptions=True)
    return [r for r in replies if isinstance(r, dict)]  # a dead replica has no memory to report
