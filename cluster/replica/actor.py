"""The replica host: one Ray actor process holding the servables of many models.

Each model placed on a host has a slot here: its own `Replica` (versions as Servables), batch
queues and counters. A model's replica, as the controller and the routing table see it, is its
slot on one host; the host's one data-plane server carries calls for every slot, each call naming
its model. Packing many small models into one process is what lets 1,000 models share a laptop
(one Python interpreter, one onnxruntime, one copy of the libraries per host instead of per model).

An async actor, so one host accepts several calls at once; each call's compute runs in a
worker thread (numpy and onnxruntime release the GIL), keeping the actor's loop free to accept
the next coalesced call while one runs. The CPUs Ray gave the actor bound the threads each
session may use (`session_threads`), so two replicas on one node do not fight over every core.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import ray

from cluster import errors, heap
from cluster.config import BatchingConfig
from cluster.logs import configure_logging
from cluster.replica.batched import BatchedRunner
from cluster.replica.contract import RunResult, Target
from cluster.replica.data_plane import DataPlaneConfig, DataPlaneServer
from cluster.replica.replica import Replica, compute
from cluster.requests import EXAMPLE_CONTEXT_FEED
from cluster.stats import ReplicaStats
from exporter.example_parser import with_context
from exporter.servable import LoadOptions
from exporter.signature import Signature

log = logging.getLogger("tessera.replica")
LOADS_AT_ONCE = 2


def threads_for(num_cpus: float | None) -> int:
    """Intra-op threads of one session: the whole CPUs the actor was given (at least 1), never more
    than this process may run on."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(available, int(num_cpus or 1)))


def examples_with_context(feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """A Classify/Regress call's feeds as the parser gets them: a context sent once beside the
    examples (EXAMPLE_CONTEXT_FEED) is attached to each example, to be merged as they are parsed."""
    context = feeds.get(EXAMPLE_CONTEXT_FEED)
    if context is None:
        return feeds
    others = {alias: column for alias, column in feeds.items() if alias != EXAMPLE_CONTEXT_FEED}
    if len(others) != 1 or context.size != 1:
        raise errors.InvalidArgument("a context comes with one vector of examples")
    ((alias, examples),) = others.items()
    return {alias: with_context(bytes(context.reshape(-1)[0]), examples.reshape(-1).tolist())}


@dataclass
class _Slot:
    """One model on this host: its replica, batch queues and what the controller asks about it."""

    replica: Replica
    batched: BatchedRunner | None
    in_flight_requests: int = 0  # requests running in its calls now (a coalesced call counts each of its requests)
    by_version: Counter[int] = field(default_factory=Counter)  # requests in flight per version (unload waits)
    resident: dict[int, int] = field(default_factory=dict)  # version -> Servable.resident_bytes, at load
    last_used: float = field(default_factory=time.monotonic)  # the last call (or load): eviction is LRU
    draining: bool = False  # leaving this host: new calls get Unavailable (the gateway retries elsewhere)
    slot_id: str = ""  # the controller's name for this slot (a late remove of an earlier one is ignored)


@ray.remote(num_cpus=0)
class ReplicaHost:
    """Hosts slots of many models. Created by the controller with `.options(num_cpus=...)`."""

    def __init__(
        self,
        host_id: str,
        enable_warmup: bool = True,
        batching: BatchingConfig | None = None,
        log_format: str = "text",
        session_threads: tuple[int, int] = (0, 0),
        data_plane: DataPlaneConfig | None = None,
        own: str | None = None,
    ) -> None:
        configure_logging(SimpleNamespace(log_format=log_format))
        heap.follow_environment()  # the embedded Ray's: see cluster.heap.environment
        log.info("replica host %s started (pid %d)%s", host_id, os.getpid(), f" for model {own} alone" if own else "")
        self.host_id = host_id
        self._own = own  # the model this host is dedicated to (a restarted controller asks)
        self._enable_warmup = enable_warmup
        self._batching = batching  # every model's, unless its config has its own
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        intra, inter = session_threads
        self._options = LoadOptions(intra_op_threads=intra or threads_for(cpus), inter_op_threads=inter)
        self._slots: dict[str, _Slot] = {}
        # Loads (and warmups) two at a time: a hundred models placed at once must not starve
        # this loop (pings, calls of the models already serving) or the GIL.
        self._loads = asyncio.Semaphore(LOADS_AT_ONCE)
        # Without a config (tests), a secret of its own: nobody can connect, which is the safe default.
        self._data_config = data_plane or DataPlaneConfig(secrets.token_bytes(32))
        self._data_plane = DataPlaneServer(
            self.run, self._data_config.secret, max_frame=self._data_config.max_frame
        )

    def _slot(self, model: str, batching: BatchingConfig | None = None, slot_id: str = "") -> _Slot:
        slot = self._slots.get(model)
        if slot is not None and not slot.draining:
            slot.slot_id = slot_id or slot.slot_id  # a new slot of the model keeps what is loaded
        if slot is None or slot.draining:
            replica = Replica(model, enable_warmup=self._enable_warmup, options=self._options)
            # Without batching parameters, each call's requests (coalesced by the gateway) still run
            # as one merged batch; with them, a queue also merges across calls and gateways.
            config = batching or self._batching
            slot = self._slots[model] = _Slot(
                replica, BatchedRunner(replica, config) if config is not None else None, slot_id=slot_id
            )
        return slot

    async def load(
        self,
        model: str,
        version: int,
        path: str,
        platform: str = "tensorflow",
        batching: BatchingConfig | None = None,
        slot_id: str = "",
    ) -> dict[str, Signature]:
        """Loads (and warms up) one version of `model` into its slot, opening the slot if needed
        (`slot_id`: the controller's name for it; a slot the model still has here is kept, with
        what it has loaded: a restarted controller adopting it, or a model placed back at once)."""
        slot = self._slot(model, batching, slot_id)
        async with self._loads:
            signatures = await asyncio.to_thread(slot.replica.load, version, path, platform)
        slot.resident[version] = slot.replica.servable(version).resident_bytes
        slot.last_used = time.monotonic()
        return signatures

    async def unload(self, model: str, version: int, drain_timeout_s: float = 30.0) -> None:
        """Unloads `version` once the requests running on it finish (bounded by `drain_timeout_s`)."""
        slot = self._slots.get(model)
        if slot is None:
            return
        await _until_idle(lambda: slot.by_version[version] == 0, drain_timeout_s)
        if slot.batched is not None:
            await slot.batched.unload(version)
        slot.replica.unload(version)
        slot.resident.pop(version, None)

    async def remove(self, model: str, drain_timeout_s: float = 30.0, slot_id: str | None = None) -> int:
        """Takes `model`'s slot off this host: refuses its new calls, lets those running finish
        (bounded), unloads every version. Returns how many requests were still running. With a
        `slot_id`, only that slot: a remove that arrives after the model was placed here again
        leaves the new slot alone."""
        slot = self._slots.get(model)
        if slot is None or (slot_id is not None and slot.slot_id != slot_id):
            return 0
        slot.draining = True
        await _until_idle(lambda: slot.in_flight_requests == 0, drain_timeout_s)
        if self._slots.get(model) is slot:
            del self._slots[model]
        for version in slot.replica.loaded_versions():
            if slot.batched is not None:
                await slot.batched.unload(version)
            slot.replica.unload(version)
        log.info("model %s removed from host %s", model, self.host_id)
        return slot.in_flight_requests

    async def loaded_versions(self, model: str) -> list[int]:
        slot = self._slots.get(model)
        return slot.replica.loaded_versions() if slot is not None else []

    async def run(
        self,
        model: str,
        version: int,
        signature_key: Target,
        requests: Sequence[Mapping[str, np.ndarray]],
        output_filter: Sequence[str] = (),
        timeouts: Sequence[float | None] | None = None,
    ) -> list[RunResult]:
        """The run contract (`cluster.replica.contract.Runner`) for `model`'s slot."""
        slot = self._slots.get(model)
        if slot is None or slot.draining:
            # Gone from here (evicted, moved, removed): Unavailable, so the gateway re-sends it
            # to another replica of the model.
            raise errors.Unavailable(f"model {model} is not on replica host {self.host_id}")
        requests = [examples_with_context(r) for r in requests]
        slot.in_flight_requests += len(requests)
        slot.by_version[version] += len(requests)
        slot.last_used = time.monotonic()
        try:
            if slot.batched is not None:
                return await slot.batched.run(version, signature_key, requests, output_filter, timeouts)
            replica = slot.replica
            return await compute(lambda: replica.run(version, signature_key, requests, output_filter), *requests)
        finally:
            slot.in_flight_requests -= len(requests)
            slot.by_version[version] -= len(requests)

    async def stats(self, model: str | None = None) -> list[ReplicaStats]:
        """Every slot's statistics (or `model`'s alone)."""
        slots = self._slots.items() if model is None else [(model, s) for s in [self._slots.get(model)] if s]
        return [
            ReplicaStats(
                replica_id=f"{self.host_id}/{name}",
                model=name,
                in_flight_requests=slot.in_flight_requests,
                queued_rows=slot.batched.queued_rows if slot.batched is not None else 0,
                batch_sizes=slot.replica.batch_sizes,
                warmup_seconds=slot.replica.warmup_seconds,
            )
            for name, slot in slots
        ]

    async def data_address(self) -> tuple[str, int]:
        """Where gateways send requests (the data plane); starts its server on first use."""
        return await self._data_plane.start(self._data_config.host or ray.util.get_node_ip_address())

    async def drain(self, timeout_s: float = 30.0) -> int:
        """Refuses every new call (gateways retry them elsewhere), waits up to `timeout_s` for those
        running to finish, and returns how many were still running. The host's slots are out of
        the routing table before this is called; stopping it is the caller's next step."""
        self._data_plane.draining = True
        await _until_idle(lambda: self._data_plane.busy() == 0, timeout_s)
        return self._data_plane.busy()

    async def memory(self, model: str | None = None) -> dict[str, int]:
        """This process's memory (see `Replica.memory`): `variables` counts `model`'s servables
        (every slot's without a model), `host_variables` every slot's."""
        stats = Replica.memory_of_process()
        every = sum(sum(s.resident.values()) for s in self._slots.values())
        slot = self._slots.get(model) if model is not None else None
        stats["variables"] = every if model is None else (sum(slot.resident.values()) if slot else 0)
        stats["host_variables"] = every
        stats["models"] = len(self._slots)
        return stats

    async def ping(self) -> dict[str, tuple[int, float]]:
        """Alive: every slot's resident bytes and seconds since its last call (for placement,
        the memory budget and least-recently-used eviction)."""
        now = time.monotonic()
        return {
            name: (sum(slot.resident.values()), now - slot.last_used)
            for name, slot in self._slots.items()
            if not slot.draining
        }

    async def describe(self) -> dict[str, Any]:
        """What a restarted controller adopts: whose host this is, its node, its slots (as `ping`)."""
        return {"own": self._own, "node": await self.node_id(), "slots": await self.ping()}

    async def node_id(self) -> str:
        """The Ray node this host runs on (placement spreads a model's replicas over nodes)."""
        return str(ray.get_runtime_context().get_node_id())


async def _until_idle(idle: Callable[[], bool], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not idle() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
