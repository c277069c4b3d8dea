"""The Ray actor around a Replica.

An async actor, so one replica accepts several calls at once; each call's compute runs in a
worker thread (numpy releases the GIL in its kernels), keeping the actor's loop free to accept
the next coalesced call while one runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

import numpy as np
import ray

from cluster.config import BatchingConfig
from cluster.logs import configure_logging
from cluster.replica.batched import BatchedRunner
from cluster.replica.data_plane import DataPlaneServer
from cluster.replica.replica import Replica, RunResult, is_small
from cluster.stats import ReplicaStats
from exporter.signature import Signature

log = logging.getLogger("tessera.replica")


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
    ) -> None:
        configure_logging(SimpleNamespace(log_format=log_format))
        log.info("replica %s of model %s started (pid %d)", replica_id, model_name, os.getpid())
        self.replica_id = replica_id
        self._in_flight = 0
        self._replica = Replica(model_name, enable_warmup=enable_warmup)
        # Without batching parameters, each call's requests (coalesced by the gateway) still run
        # as one merged batch; with them, a queue also merges across calls and gateways.
        self._batched = BatchedRunner(self._replica, batching) if batching is not None else None
        self._data_plane = DataPlaneServer(self.run)

    async def load(self, version: int, path: str) -> dict[str, Signature]:
        return await asyncio.to_thread(self._replica.load, version, path)

    async def unload(self, version: int) -> None:
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
    ) -> RunResult:
        """Runs coalesced requests; `timeouts` are each request's seconds left before its deadline."""
        self._in_flight += len(requests)
        try:
            if self._batched is not None:
                return await self._batched.run(version, signature_key, requests, output_filter, timeouts)
            if is_small(*requests):
                return self._replica.run(version, signature_key, requests, output_filter)
            return await asyncio.to_thread(self._replica.run, version, signature_key, requests, output_filter)
        finally:
            self._in_flight -= len(requests)

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
        return await self._data_plane.start(ray.util.get_node_ip_address())

    async def memory(self) -> dict[str, int]:
        return self._replica.memory()

    async def ping(self) -> str:
        return self.replica_id
