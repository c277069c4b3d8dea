"""The controller as a Ray actor, creating replica actors as it needs them."""

from __future__ import annotations

import asyncio
import os
import threading
from types import SimpleNamespace
from typing import Any, cast

import ray

from cluster.autoscaler.load import Load
from cluster.config import BatchingConfig, ModelConfig, ServerConfig
from cluster.controller.controller import Controller, ControllerOptions
from cluster.logs import configure_logging
from cluster.replica.actor import ReplicaActor
from cluster.replica.data_plane import DataPlaneConfig
from cluster.routing.table import RoutingTable
from cluster.stats import ModelStats

CONTROLLER_NAME = "tessera-controller"


def _kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # noqa: BLE001 - already dead
        pass


async def _import_saved_models(model: ModelConfig, path: str) -> str:
    """A SavedModel version under model_platform "tensorflow" is imported into a bundle (once per
    content, in a subprocess: TensorFlow never enters this process or a replica)."""
    from exporter.importers.savedmodel_cache import resolve_version

    return await resolve_version(model.platform, path)


_GCS = threading.Lock()  # one state query at a time: Ray's global state accessor is not for threads at once


def _unplaced_reason(handle: Any, num_cpus: float) -> str | None:
    """Why Ray has not started this replica, from its actor table (GCS, no dashboard needed)."""
    from ray._private import state  # the public state API needs the dashboard, which may be off

    with _GCS:
        info = state.actors(actor_id=handle._actor_id.hex())  # noqa: SLF001 - Ray's own id accessor
        free = ray.available_resources().get("CPU", 0.0)
    status = info.get("State") if isinstance(info, dict) else None
    if status in ("PENDING_CREATION", "DEPENDENCIES_UNREADY"):
        return (f"Ray has no room for it: it needs {num_cpus:g} CPU and the cluster has {free:g} free "
                "(lower --replica_num_cpus, fewer replicas, or add nodes); it starts once room frees up")
    if status in (None, "ALIVE"):
        return None  # running, just slow to answer: the start keeps waiting
    return f"replica actor is {status}"


@ray.remote(num_cpus=0)
class ControllerActor:
    """Thin Ray wrapper: every method delegates to the Controller on this actor's event loop."""

    def __init__(
        self,
        options: ControllerOptions,
        replica_num_cpus: float,
        enable_warmup: bool,
        batching: BatchingConfig | None = None,
        log_format: str = "text",
        server_id: str = "tessera",
        session_threads: tuple[int, int] = (0, 0),
        data_plane: DataPlaneConfig | None = None,
    ) -> None:
        configure_logging(SimpleNamespace(log_format=log_format))
        self._data_plane = data_plane

        def new_replica(model: ModelConfig, index: int) -> Any:
            # Named and detached: replicas outlive a controller that crashes, and the restarted
            # controller (same arguments, so same names) adopts them with their versions loaded.
            replica_id = f"{server_id}:{model.name}:{index}"
            # An @ray.remote class: mypy does not apply class decorators, so it cannot see .options.
            return cast(Any, ReplicaActor).options(
                name=replica_id, get_if_exists=True, lifetime="detached",
                num_cpus=replica_num_cpus, max_concurrency=1000,
            ).remote(model.name, replica_id, enable_warmup, model.batching or batching, log_format, session_threads, data_plane)

        async def probe(handle: Any) -> str | None:
            return await asyncio.to_thread(_unplaced_reason, handle, replica_num_cpus)

        self._controller = Controller(options, new_replica, _kill, resolve_path=_import_saved_models, placement_probe=probe)

    async def set_config(self, config: ServerConfig) -> None:
        await self._controller.set_config(config)

    async def get_routing_table(
        self, known_epoch: int = -1, timeout: float = 10.0, incarnation: str = ""
    ) -> RoutingTable:
        return await self._controller.get_routing_table(known_epoch, timeout, incarnation)

    async def report_load(self, gateway: str, period_s: float, loads: dict[str, Load]) -> None:
        self._controller.report_load(gateway, period_s, loads)

    async def cluster_stats(self) -> list[ModelStats]:
        return await self._controller.cluster_stats()

    async def replica_memory(self, name: str) -> list[dict[str, int]]:
        return await self._controller.replica_memory(name)

    async def data_plane_secret(self) -> bytes:
        """The cluster's data-plane secret, for a gateway joining (over Ray, never the data plane)."""
        if self._data_plane is None:
            raise RuntimeError("this cluster was started without a data-plane secret")
        return self._data_plane.secret

    async def pid(self) -> int:
        return os.getpid()

    async def shutdown(self) -> None:
        await self._controller.shutdown()
