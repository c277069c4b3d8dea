"""The controller: desired state -> replicas with the aspired versions loaded -> routing table.

One instance per cluster (a Ray actor, see `actor.py`). For each configured model it polls the
base path (the source), asks the lifecycle planner what to load and unload (availability
preserving: a new version is loaded and warmed on every replica before traffic moves; the old one
leaves the routing table, drains, then unloads), applies the plan on the replicas, replaces dead
replicas, and publishes a new routing table on every change for the gateways' long-poll.
Its parts: `options.py` (what it is given), `model_state.py` (what it keeps per model),
`reconcile.py` (one tick's steps), `autoscaling.py` (load reports in, replica counts out),
`long_poll.py` (the published table) and `status.py` (what it answers about its models).

Per-model work never waits on another model: replicas start in their own tasks (one Ray cannot
place yet is reported and waits in Ray's queue), health checks ping every replica at once with a
short timeout, and every other wait on a replica has a timeout too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from cluster import errors, stats
from cluster.autoscaler.load import Load
from cluster.autoscaler.scaler import ModelScaler
from cluster.config import ModelConfig, ServerConfig
from cluster.controller import status
from cluster.controller.autoscaling import Autoscaling, autoscaling_config_for
from cluster.controller.estimates import estimate_models
from cluster.controller.hosts import HostPool
from cluster.controller.long_poll import TablePublisher
from cluster.controller.member import Member, PlacementProbe
from cluster.controller.model_state import ModelState, check_labels
from cluster.controller.options import (
    ControllerOptions,
    PathResolver,
    ReplicaFactory,
    ReplicaKiller,
    same_path,
)
from cluster.controller.reconcile import load_version, next_tick_in, tick, unload_version
from cluster.controller.replica_set import ReplicaSet
from cluster.controller.slots import Slot
from cluster.routing.table import RoutingTable
from cluster.serving.source import FileSystemSource
from cluster.serving.stream import ServableStream

log = logging.getLogger("tessera.controller")


class Controller:
    """Owns the models, their replicas and the routing table. All methods run on one event loop."""

    def __init__(
        self,
        options: ControllerOptions,
        replica_factory: ReplicaFactory,
        replica_killer: ReplicaKiller = lambda handle: None,
        clock: Callable[[], float] = time.monotonic,
        resolve_path: PathResolver = same_path,
        placement_probe: PlacementProbe | None = None,
        hosts: HostPool | None = None,
    ) -> None:
        self._options = options
        self._resolve_path = resolve_path
        self._new_replica = replica_factory
        self._kill_replica = replica_killer
        self._probe = placement_probe
        self._clock = clock
        self._models: dict[str, ModelState] = {}
        self._tables = TablePublisher()
        self._configuring = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []  # polling, health checks, publishing
        self._publish_due = asyncio.Event()
        self._autoscaling = Autoscaling(options, clock)
        # With replica hosts (production), replicas are slots on them: the pool asks which models
        # may lose one, and takes one away (memory budget, LRU) through `_evict`, the resize path.
        self._hosts = hosts
        if hosts is not None:
            hosts.evictable = self._evictable
            hosts.evict = self._evict
            hosts.load_of = lambda name: self._autoscaling.load(name).in_flight_requests

    # -- desired state -------------------------------------------------------------------------
    async def set_config(self, config: ServerConfig) -> None:
        """Replaces the whole model config: new models load, omitted ones unload, unchanged stay."""
        async with self._configuring:  # one config at a time: the estimates below may take a while
            await self._set_config(config)

    async def _set_config(self, config: ServerConfig) -> None:
        if self._hosts is not None and self._hosts.options.memory_budget_bytes > 0:
            # New models' sizes before their first placement (the budget counts them at once).
            unknown = [m for m in config.models if m.name not in self._models and not self._hosts.bytes_of(m.name)]
            if unknown:
                self._hosts.estimates.update(await asyncio.to_thread(estimate_models, unknown))
        names = [m.name for m in config.models]
        if len(set(names)) != len(names):
            raise errors.InvalidArgument(f"model names must be unique, got {names}")
        for model in config.models:
            check_labels(self._models.get(model.name), model)
        for name in list(self._models):
            if config.model(name) is None:
                self._remove_model(name)
        for model in config.models:
            current = self._models.get(model.name)
            if current is None:
                self._add_model(model)
            elif current.config != model:
                self._update_model(current, model)
        await self._publish()
        self._wake.set()
        if not self._loops:
            loop = asyncio.get_running_loop()
            self._loops = [loop.create_task(c) for c in (self._poll_loop(), self._health_loop(), self._publish_loop())]

    def _add_model(self, model: ModelConfig) -> None:
        scaling = autoscaling_config_for(self._options, model)
        # A model that may scale to zero starts with one replica all the same: its versions load
        # (so a broken bundle shows at once, and its signatures are known), then it idles to zero.
        count = max(scaling.min_replicas, 1)

        def start(index: int, initial: ModelConfig = model) -> Any:
            current = self._models.get(initial.name)  # new replicas follow config updates
            return self._new_replica(current.config if current else initial, index)

        def wanted(name: str = model.name) -> dict[int, str]:
            current = self._models.get(name)
            return current.wanted() if current is not None else {}

        def platform(name: str = model.name) -> str:
            current = self._models.get(name)
            return current.config.platform if current is not None else model.platform

        replicas = ReplicaSet(
            model.name, count, start, self._kill_replica, wanted=wanted, platform=platform,
            on_change=self._publish_due.set,
            health=self._options.health, probe=self._probe, clock=self._clock,
        )
        self._models[model.name] = ModelState(
            config=model,
            source=FileSystemSource.for_model(model),
            stream=ServableStream(model.name, self._options.retry),
            replicas=replicas,
            scaler=ModelScaler(scaling, self._clock()) if scaling.enabled else None,
        )
        log.info("model %s added: base path %s, %d replica(s)%s", model.name, model.base_path, count,
                 f"; scales to zero after {scaling.scale_to_zero_idle_s:g}s idle" if scaling.scales_to_zero else "")

    def _update_model(self, current: ModelState, model: ModelConfig) -> None:
        old = current.config
        if (old.base_path, old.version_policy, old.platform) != (model.base_path, model.version_policy, model.platform):
            current.source = FileSystemSource.for_model(model)
            current.last_poll = None  # list the new base path at the next tick
        self._autoscaling.configure(current, model, self._resize)
        current.config = model
        log.info("model %s config updated", model.name)

    def _remove_model(self, name: str) -> None:
        model = self._models.pop(name)
        log.info("model %s removed: draining and stopping %d replica(s)", name, len(model.replicas))
        # Out of the routing table first (the publish that follows), then drained and stopped.
        self._spawn(model.replicas.retire(model.replicas.shrink(0), self._options.drain_seconds))

    # -- the loop --------------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:  # one bad tick must not stop the controller
                log.exception("controller tick failed")
            try:
                await asyncio.wait_for(self._wake.wait(), next_tick_in(self._models, self._options, self._clock()))
            except TimeoutError:
                pass
            self._wake.clear()

    async def reconcile(self) -> None:
        """One tick: poll sources, autoscale, start the planned loads and unloads."""
        poll, autoscale = self._options.poll_seconds, lambda m: self._autoscaling.autoscale(m, self._resize)
        if await tick(self._models, poll, self._clock, autoscale, self._spawn, self._load, self._unload):
            await self._publish()

    async def _health_loop(self) -> None:
        """Pings every replica of every model at once, each `health.period_s`; one that is gone
        leaves the routing table at once and is replaced in the background."""
        while True:
            await asyncio.sleep(self._options.health.period_s)
            try:
                await asyncio.gather(*(m.replicas.check() for m in list(self._models.values())))
            except Exception:  # one bad check must not stop the others for good
                log.exception("health check failed")

    async def _publish_loop(self) -> None:
        """Publishes once for any number of replica changes that happen together."""
        while True:
            await self._publish_due.wait()
            self._publish_due.clear()
            await self._publish()
            self._wake.set()  # versions may now load on a model's first replica

    async def _load(self, model: ModelState, version: int) -> None:
        await load_version(model, version, self._resolve_path, self._clock)
        # Published by the publish loop, once for every load that finished together (a thousand
        # models loading at start would otherwise build a thousand tables of a thousand models).
        self._publish_due.set()
        self._wake.set()  # the planner may now unload the version this one replaces

    async def _unload(self, model: ModelState, version: int) -> None:
        await unload_version(model, version, self._options.drain_seconds, self._publish)

    # -- autoscaling --------------------------------------------------------------------------
    def report_load(
        self, gateway: str, period_s: float, loads: Mapping[str, Load], requests: stats.RequestStats | None = None
    ) -> None:
        """A gateway's load per model (requests in flight averaged over time, arrival and answer
        rates) over the `period_s` seconds before now; sent about once a second, and at once
        when a request arrives for a model with no replica (a model scaled to zero then loads
        on demand here, without waiting for the next tick). `requests`: the gateway's request
        counters since it started, for the cluster-wide metrics."""
        self._autoscaling.report(gateway, period_s, loads, requests, self._models, self._resize)

    def request_totals(self, gateway: str = "", requests: stats.RequestStats | None = None) -> stats.RequestStats:
        """Every gateway's request counters summed (a gateway that left still counts), after
        taking `gateway`'s newest `requests` if given (the gateway being scraped)."""
        return self._autoscaling.request_totals(gateway, requests)

    def gateways(self) -> list[str]:
        """The gateways that reported within the load-report TTL."""
        return self._autoscaling.gateways()

    def _resize(self, model: ModelState, desired: int, leaving: Member | None = None) -> None:
        """The one way a model's replica count changes (config, autoscaling, scale to zero and
        back, eviction from a host: `leaving` is the replica to take away, else the set picks).
        At 0 the model stays configured with its versions AVAILABLE: its next request (held by
        the gateway) brings it back through the autoscaler."""
        if desired > len(model.replicas):
            model.replicas.grow(desired)  # each takes traffic once it holds the available versions
            self._publish_due.set()  # GetModelStatus: a model at zero now says it is loading
        elif desired < len(model.replicas):
            # Out of the routing table first (the publish), then drained and stopped.
            gone = model.replicas.take(leaving) if leaving is not None else model.replicas.shrink(desired)
            self._spawn(model.replicas.retire(gone, self._options.drain_seconds))
            self._publish_due.set()

    def _evictable(self, name: str) -> bool:
        """A model may lose a replica to the memory budget while it has more than its minimum."""
        model = self._models.get(name)
        if model is None:
            return True  # a leftover: nothing wants it
        return len(model.replicas) > autoscaling_config_for(self._options, model.config).min_replicas

    def _evict(self, slot: Slot) -> None:
        """The pool needs `slot`'s room: its model loses that replica (drained, then unloaded)."""
        model = self._models.get(slot.model)
        member = next((m for m in model.replicas.members if m.handle is slot), None) if model else None
        if model is None or member is None:
            self._kill_replica(slot)  # no model claims it: off its host at once
            return
        model.evictions += 1
        if len(model.replicas) == 1:
            model.zero_reason = "evicted from its replica host for the memory budget"  # GetModelStatus
        log.info("model %s: replica evicted from its host (least recently used); %d left",
                 slot.model, len(model.replicas) - 1)
        self._resize(model, len(model.replicas) - 1, leaving=member)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the routing table ------------------------------------------------------------------------
    async def _publish(self) -> None:
        table = await self._tables.publish({name: status.model_route(name, m) for name, m in self._models.items()})
        self._autoscaling.took_effect(self._models, table)

    async def get_routing_table(self, known_epoch: int = -1, timeout: float = 10.0, incarnation: str = "") -> RoutingTable:
        """Long-poll: the table once newer than `known_epoch`, or after `timeout` (see `long_poll.py`)."""
        return await self._tables.newer_than(known_epoch, timeout, incarnation)

    async def cluster_stats(self, timeout: float = 2.0) -> list[stats.ModelStats]:
        """Every model's versions, load latency and replicas' statistics (for a metrics scrape);
        a replica that does not answer within `timeout` is left out (`status.cluster_stats`)."""
        return await status.cluster_stats(list(self._models.items()), self._autoscaling.load, self._clock, timeout)

    async def replica_memory(self, name: str, timeout: float = 2.0) -> list[dict[str, int]]:
        """Each answering replica's memory report for model `name` (`status.replica_memory`)."""
        return await status.replica_memory(name, self._models.get(name), timeout)

    async def shutdown(self) -> None:
        """Stops polling and kills every replica (their versions unload with them)."""
        for task in [*self._loops, *self._tasks]:
            task.cancel()
        for model in self._models.values():
            model.replicas.kill_all()
        self._models.clear()
        if self._hosts is not None:
            self._hosts.kill_all()
        await self._publish()
