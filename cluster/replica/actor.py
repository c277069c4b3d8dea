"""The Ray actor around a Replica.

An async actor, so one replica accepts several calls at once; each call's compute runs in a
worker thread (numpy releases the GIL in its kernels), keeping the actor's loop free to accept
the next coalesced call while one runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np
import ray

from cluster.replica.replica import Replica, RunResult
from exporter.runtime import Signature


@ray.remote(num_cpus=0)
class ReplicaActor:
    """One replica of one model. Created by the controller with `.options(num_cpus=...)`."""

    def __init__(self, model_name: str, replica_id: str, enable_warmup: bool = True) -> None:
        self.replica_id = replica_id
        self._replica = Replica(model_name, enable_warmup=enable_warmup)

    async def load(self, version: int, path: str) -> dict[str, Signature]:
        return await asyncio.to_thread(self._replica.load, version, path)

    async def unload(self, version: int) -> None:
        self._replica.unload(version)

    async def loaded_versions(self) -> list[int]:
        return self._replica.loaded_versions()

    async def run(
        self,
        version: int,
        signature_key: str,
        requests: Sequence[Mapping[str, np.ndarray]],
        output_filter: Sequence[str] = (),
    ) -> RunResult:
        return await asyncio.to_thread(self._replica.run, version, signature_key, requests, output_filter)

    async def memory(self) -> dict[str, int]:
        return self._replica.memory()

    async def ping(self) -> str:
        return self.replica_id
