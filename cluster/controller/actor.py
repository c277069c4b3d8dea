"""The controller as a Ray actor, creating replica host actors as it needs them.

One per cluster, named `CONTROLLER_NAME` in the "tessera" namespace and detached: `tessera serve`
creates it (or finds it), every gateway of the cluster finds it by name (`tessera gateway`).
The model config it was last given is kept in Ray's internal key-value store (GCS), not in any
gateway, so a controller that Ray restarts after a crash applies the newest config again by
itself and no gateway can overwrite it with an older one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import threading
from collections.abc import Collection
from types import SimpleNamespace
from typing import Any, cast

import ray

from cluster.autoscaler.load import Load
from cluster.config import BatchingConfig, ModelConfig, ServerConfig
from cluster.controller.controller import Controller
from cluster.controller.hosts import HostPool
from cluster.controller.options import ControllerOptions
from cluster.controller.placement import Placed, choose_node, free_after_pending, model_holdings
from cluster.logs import configure_logging
from cluster.replica.actor import ReplicaHost
from cluster.replica.data_plane import DataPlaneConfig
from cluster.routing.table import RoutingTable
from cluster.stats import ModelStats, RequestStats

CONTROLLER_NAME = "tessera-controller"
NAMESPACE = "tessera"
log = logging.getLogger("tessera")


def _config_key(name: str) -> bytes:
    return f"{name}:model-config".encode()


def _stored_config(name: str) -> ServerConfig | None:
    from ray.experimental import internal_kv  # Ray Serve keeps its controller's checkpoint there too

    raw = internal_kv._internal_kv_get(_config_key(name), namespace=NAMESPACE)  # noqa: SLF001
    # Written only by this class (set_config below): our own frozen dataclasses, never user bytes.
    return cast(ServerConfig, pickle.loads(raw)) if raw else None  # noqa: S301


def _store_config(name: str, config: ServerConfig | None) -> None:
    from ray.experimental import internal_kv

    if config is None:
        internal_kv._internal_kv_del(_config_key(name), namespace=NAMESPACE)  # noqa: SLF001
    else:
        internal_kv._internal_kv_put(_config_key(name), pickle.dumps(config), namespace=NAMESPACE)  # noqa: SLF001


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


class _Spread:
    """Aims each new replica host at a node (placement.choose_node), from Ray's actor and node
    tables: the node with room holding the fewest hosts of the model the host starts for (the
    pool starts a host when a model's next replica finds no room, or must not share a host with
    its other replicas).

    Remembers where it aimed hosts Ray has not started yet: a burst of new hosts (a model's
    first two, say) must see each other before the actor table shows where they run.
    """

    def __init__(self, server_id: str, num_cpus: float) -> None:
        self._prefix = f"{server_id}:"
        self._num_cpus = num_cpus
        self._aimed: dict[str, str] = {}  # host id -> node, while Ray has not started it

    def strategy(self, model: str, replica_id: str, holders: Collection[str]) -> Any:
        """A scheduling strategy for the host `replica_id`, started for one more replica of
        `model`, whose other replicas are on the hosts named `holders`."""
        from ray._private import state  # the public state API needs the dashboard, which may be off
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            with _GCS:
                actors = list(state.actors().values())
                free = {node: float(res.get("CPU", 0.0)) for node, res in state.available_resources_per_node().items()}
        except Exception as exc:  # noqa: BLE001 - placement is best effort: Ray's own spreading then
            log.warning("model %s: Ray's tables unreadable (%s); replica %s placed by Ray's SPREAD", model, exc, replica_id)
            return "SPREAD"
        ours: list[Placed] = []
        for info in actors:
            name = str(info.get("Name", ""))
            if not name.startswith(self._prefix) or name == replica_id or info.get("State") == "DEAD":
                continue
            started = info.get("State") == "ALIVE"
            node = str(info["Address"]["NodeID"]) if started else self._aimed.get(name)
            ours.append(Placed(name, node, started))
        self._aimed = {p.name: p.node for p in ours if not p.started and p.node is not None}
        same_model = [p for p in ours if p.name in holders]
        holdings = model_holdings(same_model, free)
        room = free_after_pending(free, [(node, self._num_cpus) for node in self._aimed.values()])
        node = choose_node(room, holdings, self._num_cpus)
        if node is None:
            # No node has room: Ray queues it (and KubeRay's autoscaler adds a node for it).
            return "SPREAD"
        self._aimed[replica_id] = node
        log.info("model %s: replica host %s aimed at node %s, which holds %d of the model's %d other replica(s)",
                 model, replica_id, node[:12], holdings[node], len(same_model))
        # Soft, spilling: a node that died or filled up meanwhile must not hold the replica back.
        return NodeAffinitySchedulingStrategy(node, soft=True, _spill_on_unavailable=True)


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
        name: str = CONTROLLER_NAME,
    ) -> None:
        configure_logging(SimpleNamespace(log_format=log_format))
        self._data_plane = data_plane
        spread = _Spread(server_id, replica_num_cpus)
        self._name = name

        self._host_prefix = f"{server_id}:host:"

        def new_host(index: int, model: str, own: bool) -> Any:
            # Named and detached: hosts outlive a controller that crashes, and the restarted
            # controller (same arguments, so same names) adopts them with their models loaded.
            host_id = f"{self._host_prefix}{index}"
            # An @ray.remote class: mypy does not apply class decorators, so it cannot see .options.
            return cast(Any, ReplicaHost).options(
                name=host_id, get_if_exists=True, lifetime="detached",
                num_cpus=replica_num_cpus, max_concurrency=1000,
                # Each model's replicas over as many nodes as have room: a lost node takes its share.
                scheduling_strategy=spread.strategy(model, host_id, self._holders(model)),
            ).remote(host_id, enable_warmup, batching, log_format, session_threads, data_plane, model if own else None)

        # Each host's shared ping answers before the replica sets' own health timeout fires, so a
        # hung host is marked dead before its slots are placed again (never back on it).
        self._pool = HostPool(options.placement, new_host, _kill, ping_timeout_s=options.health.timeout_s * 0.8)
        self._adopted = False

        def new_replica(model: ModelConfig, index: int) -> Any:
            entry = options.model_autoscaling.get(model.name)
            own = bool(entry is not None and entry.own_hosts)
            return self._pool.place(model.name, own=own, batching=model.batching or batching)

        async def probe(handle: Any) -> str | None:
            return await asyncio.to_thread(_unplaced_reason, getattr(handle, "actor", handle), replica_num_cpus)

        self._controller = Controller(
            options, new_replica, self._pool.release, resolve_path=_import_saved_models, placement_probe=probe,
            hosts=self._pool,
        )
        # Ray runs an async actor's __init__ on its event loop. A restarted controller (same
        # arguments) finds the config its previous life stored and applies it before any other.
        self._config_lock = asyncio.Lock()
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    def _holders(self, model: str) -> set[str]:
        """The names of the hosts holding a replica of `model`."""
        return {f"{self._host_prefix}{h.index}" for h in self._pool.hosts.values() if model in h.slots}

    def _left_hosts(self) -> list[tuple[int, Any]]:
        """Hosts a previous controller of this server left running (named, detached)."""
        found = []
        for name in ray.util.list_named_actors():
            if name.startswith(self._host_prefix) and name[len(self._host_prefix):].isdigit():
                try:
                    found.append((int(name[len(self._host_prefix):]), ray.get_actor(name)))
                except ValueError:
                    pass  # gone meanwhile
        return found

    async def _apply(self, config: ServerConfig) -> None:
        """The first config adopts what a crashed controller left (its hosts, their models) first:
        each model goes back where its versions are loaded, and what no model claims goes."""
        first = not self._adopted
        if first:
            self._adopted = True
            await self._pool.adopt(await asyncio.to_thread(self._left_hosts))
        await self._controller.set_config(config)
        if first:
            self._pool.forget_unclaimed()

    async def _recover(self) -> None:
        async with self._config_lock:
            config = await asyncio.to_thread(_stored_config, self._name)
            if config is not None:
                log.info("controller restarted: applying the stored model config (%d model(s))", len(config.models))
                await self._apply(config)

    async def set_config(self, config: ServerConfig) -> None:
        """Applies `config` to the whole cluster and stores it (for a restart). One at a time."""
        async with self._config_lock:
            await self._apply(config)
            await asyncio.to_thread(_store_config, self._name, config)

    async def get_routing_table(
        self, known_epoch: int = -1, timeout: float = 10.0, incarnation: str = ""
    ) -> RoutingTable:
        return await self._controller.get_routing_table(known_epoch, timeout, incarnation)

    async def report_load(
        self, gateway: str, period_s: float, loads: dict[str, Load], requests: RequestStats | None = None
    ) -> None:
        self._controller.report_load(gateway, period_s, loads, requests)

    async def cluster_stats(self) -> list[ModelStats]:
        return await self._controller.cluster_stats()

    async def cluster_metrics(self, gateway: str, requests: RequestStats) -> tuple[list[ModelStats], RequestStats]:
        """For a scrape of `gateway`: every replica's statistics and every gateway's requests."""
        return await self._controller.cluster_stats(), self._controller.request_totals(gateway, requests)

    async def gateways(self) -> list[str]:
        """The gateways that reported load recently (joined and alive)."""
        return self._controller.gateways()

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
        """Stops every replica and forgets the stored config (the cluster is being taken down)."""
        async with self._config_lock:
            await asyncio.to_thread(_store_config, self._name, None)
            await self._controller.shutdown()
