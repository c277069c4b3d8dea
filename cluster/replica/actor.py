"""The Ray actor around a Replica.

An async actor, so one replica accepts several calls at once; each call's compute runs in a
worker thread (numpy and onnxruntime release the GIL), keeping the actor's loop free to accept
the next coalesced call while one runs. The CPUs Ray gave the actor bound the threads each
session may use (`session_threads`), so two replicas on one node do not fight over every core.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace

import numpy as np
import ray

from cluster import errors
from cluster.config import BatchingConfig
from cluster.logs import configure_logging
from cluster.replica.batched import BatchedRunner
from cluster.replica.contract import RunResult
from cluster.replica.data_plane import DataPlaneConfig, DataPlaneServer
from cluster.replica.replica import Replica, compute
from cluster.requests import EXAMPLE_CONTEXT_FEED
from cluster.stats import ReplicaStats
from exporter.example_parser import with_context
from exporter.servable import LoadOptions
from exporter.signature import Signature

log = logging.getLogger("tessera.replica")


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


@ray.remote(num_cpus=0)
class ReplicaActor:
    """One replica of one model. Created by the controller with `.options(num_cpus=...)`."""

    def __init__(
        self,
        model_name: str,
        replica_id: str,
        enable_warmup: bool = True,
        batching: BatchingConfig | None = None,
        log_format: str = "text",
        session_threads: tuple[int, int] = (0, 0),
        data_plane: DataPlaneConfig | None = None,
    ) -> None:
        configure_logging(SimpleNamespace(log_format=log_format))
        log.info("replica %s of model %s started (pid %d)", replica_id, model_name, os.getpid())
        self.replica_id = replica_id
        self._in_flight = 0
        self._by_version: Counter[int] = Counter()  # requests in flight per version (unload waits)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        intra, inter = session_threads
        options = LoadOptions(intra_op_threads=intra or threads_for(cpus), inter_op_threads=inter)
        self._replica = Replica(model_name, enable_warmup=enable_warmup, options=options)
        # Without batching parameters, each call's requests (coalesced by the gateway) still run
        # as one merged batch; with them, a queue also merges across calls and gateways.
        self._batched = BatchedRunner(self._replica, batching) if batching is not None else None
        # Without a config (tests), a secret of its own: nobody can connect, which is the safe default.
        self._data_config = data_plane or DataPlaneConfig(secrets.token_bytes(32))
        self._data_plane = DataPlaneServer(
            self.run, self._data_config.secret, max_frame=self._data_config.max_frame
        )

    async def load(self, version: int, path: str, platform: str = "tensorflow") -> dict[str, Signature]:
        return await asyncio.to_thread(self._replica.load, version, path, platform)

    async def unload(self, version: int, drain_timeout_s: float = 30.0) -> None:
        """Unloads `version` once the requests running on it finish (bounded by `drain_timeout_s`)."""
        await self._until_idle(lambda: self._by_version[version] == 0, drain_timeout_s)
        if self._batched is not None:
            await self._batched.unload(version)
        self._replica.unload(version)

    async def loaded_versions(self) -> list[int]:
        return self._replica.loaded_versions()

    async def run(
        self,
        version: int,
        signature_key: str,
        requests: Sequence[Mapping[str, np.ndarray]],
        output_filter: Sequence[str] = (),
        timeouts: Sequence[float | None] | None = None,
    ) -> list[RunResult]:
        """The run contract (`cluster.replica.contract.Runner`)."""
        requests = [examples_with_context(r) for r in requests]
        self._in_flight += len(requests)
        self._by_version[version] += len(requests)
        try:
            if self._batched is not None:
                return await self._batched.run(version, signature_key, requests, output_filter, timeouts)
            return await compute(
                lambda: self._replica.run(version, signature_key, requests, output_filter), *requests
            )
        finally:
            self._in_flight -= len(requests)
            self._by_version[version] -= len(requests)

    async def stats(self) -> ReplicaStats:
        return ReplicaStats(
            replica_id=self.replica_id,
            model=self._replica.model_name,
            in_flight=self._in_flight,
            queued_rows=self._batched.queued_rows if self._batched is not None else 0,
            batch_sizes=self._replica.batch_sizes,
            warmup_seconds=self._replica.warmup_seconds,
        )

    async def data_address(self) -> tuple[str, int]:
        """Where gateways send requests (the data plane); starts its server on first use."""
        return await self._data_plane.start(self._data_config.host or ray.util.get_node_ip_address())

    async def drain(self, timeout_s: float = 30.0) -> int:
        """Refuses new calls (gateways retry them elsewhere), waits up to `timeout_s` for those
        running to finish, and returns how many were still running. The replica is out of the
        routing table before this is called; stopping it is the caller's next step."""
        self._data_plane.draining = True
        await self._until_idle(lambda: self._data_plane.busy() == 0 and self._in_flight == 0, timeout_s)
        return self._data_plane.busy()

    @staticmethod
    async def _until_idle(idle: Callable[[], bool], timeout_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not idle() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def memory(self) -> dict[str, int]:
        return self._replica.memory()

    async def ping(self) -> str:
        return self.replica_id
