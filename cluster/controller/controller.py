"""The controller: desired state -> replicas with the aspired versions loaded -> routing table.

One instance per cluster (a Ray actor, see `actor.py`). For each configured model it polls the
base path (the source), asks the lifecycle planner what to load and unload (availability
preserving: a new version is loaded and warmed on every replica before traffic moves; the old one
leaves the routing table, drains, then unloads), applies the plan on the replicas, replaces dead
replicas, and publishes a new routing table on every change for the gateways' long-poll.

Per-model work never waits on another model: replicas start in their own tasks (one Ray cannot
place yet is reported and waits in Ray's queue), health checks ping every replica at once with a
short timeout, and every other wait on a replica has a timeout too.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster import errors, stats
from cluster.autoscaler.load import Load, LoadWindow
from cluster.autoscaler.scaler import AutoscalingConfig, ModelScaler
from cluster.config import ModelAutoscaling, ModelConfig, ServerConfig
from cluster.controller.estimates import estimate_models
from cluster.controller.hosts import HostPool
from cluster.controller.member import HealthOptions, Member, PlacementProbe, unwrap_error
from cluster.controller.packing import PlacementOptions
from cluster.controller.replica_set import ReplicaSet
from cluster.controller.slots import Slot
from cluster.routing.table import ModelRoute, RoutingTable
from cluster.serving.planner import ActionKind, RetryPolicy
from cluster.serving.source import FileSystemSource, SourceReport
from cluster.serving.stream import ServableStream
from cluster.types import ServableState, VersionStatus
from exporter.signature import Signature

log = logging.getLogger("tessera.controller")

_LOADING = (ServableState.START, ServableState.LOADING)

ReplicaFactory = Callable[[ModelConfig, int], Any]  # (model, index) -> replica handle
ReplicaKiller = Callable[[Any], None]
# (model, version path on storage) -> the path replicas load. The hook for versions that need a
# step before any replica can load them (a SavedModel is imported into a bundle first); it runs on
# the controller's loop, so a slow one must not block it. Default: the path itself.
PathResolver = Callable[[ModelConfig, str], Awaitable[str]]


async def _same_path(model: ModelConfig, path: str) -> str:
    return path


@dataclass(frozen=True)
class ControllerOptions:
    poll_seconds: float = 1.0  # --file_system_poll_wait_seconds
    drain_seconds: float = 1.0  # between leaving the routing table and draining (gateways see it)
    num_replicas: int = 1  # per model, unless its config says otherwise
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    health: HealthOptions = field(default_factory=HealthOptions)
    # Autoscaling: between the model's replica count and max_replicas (None or <= count: off),
    # aiming at target_ongoing_requests in flight per replica, as gateways report them; the
    # defaults of every model, each overridden by its entry in model_autoscaling.
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 30.0
    scale_to_zero_idle_s: float = 300.0  # min_replicas 0: unloaded after this long with no request
    model_autoscaling: Mapping[str, ModelAutoscaling] = field(default_factory=dict)  # by model name
    look_back_s: float = 3.0  # the load is every gateway's in-flight time average over this long
    load_report_ttl_s: float = 5.0  # a gateway that has not reported for this long counts as gone
    tick_seconds: float = 2.0  # autoscaling, whatever the storage poll interval
    placement: PlacementOptions = field(default_factory=PlacementOptions)  # replica hosts (hosts.py)


@dataclass(frozen=True)
class _Scaling:
    """A change of a model's replica count, decided and not yet in effect: a scale-up takes
    effect once `target` replicas are in the routing table, a scale-down once the leaving ones
    are out of it (the first publish after the shrink)."""

    before: int
    target: int
    at: float = 0.0  # when it was decided (a cold start's latency counts from here)

    @property
    def up(self) -> bool:
        return self.target > self.before


@dataclass
class _Model:
    config: ModelConfig
    source: FileSystemSource
    stream: ServableStream
    replicas: ReplicaSet
    paths: dict[int, str] = field(default_factory=dict)
    load_paths: dict[int, str] = field(default_factory=dict)  # what replicas load (see PathResolver)
    signatures: dict[int, Mapping[str, Signature]] = field(default_factory=dict)
    source_error: str | None = None
    load_seconds: stats.Histogram = field(default_factory=lambda: stats.Histogram(stats.LATENCY_BUCKETS))
    scaler: ModelScaler | None = None
    scaling: _Scaling | None = None  # the autoscaler's last change, until it takes effect
    cold_start_seconds: stats.Histogram = field(default_factory=lambda: stats.Histogram(stats.LATENCY_BUCKETS))
    scaled_to_zero: int = 0  # times it went to 0 replicas for being idle
    evictions: int = 0  # replicas evicted from their host (memory budget, least recently used)
    zero_reason: str = "no replica"  # why it is at 0 replicas (GetModelStatus), set by what took it there
    last_poll: float | None = None  # when the source was last listed


class Controller:
    """Owns the models, their replicas and the routing table. All methods run on one event loop."""

    def __init__(
        self,
        options: ControllerOptions,
        replica_factory: ReplicaFactory,
        replica_killer: ReplicaKiller = lambda handle: None,
        clock: Callable[[], float] = time.monotonic,
        resolve_path: PathResolver = _same_path,
        placement_probe: PlacementProbe | None = None,
        hosts: HostPool | None = None,
    ) -> None:
        self._options = options
        self._resolve_path = resolve_path
        self._new_replica = replica_factory
        self._kill_replica = replica_killer
        self._probe = placement_probe
        self._clock = clock
        self._models: dict[str, _Model] = {}
        self._incarnation = uuid.uuid4().hex
        self._table = RoutingTable(incarnation=self._incarnation)
        self._changed = asyncio.Condition()
        self._configuring = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._publish_due = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._load_window = LoadWindow(options.look_back_s, options.load_report_ttl_s)
        self._requests = stats.RequestTotals(options.load_report_ttl_s)  # every gateway's counters
        # With replica hosts (production), replicas are slots on them: the pool asks which models
        # may lose one, and takes one away (memory budget, LRU) through `_evict`, the resize path.
        self._hosts = hosts
        if hosts is not None:
            hosts.evictable = self._evictable
            hosts.evict = self._evict
            hosts.load_of = lambda name: self._load_window.load(name, self._clock()).in_flight_requests

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
            self._check_labels(model)
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
        if self._loop_task is None:
            loop = asyncio.get_running_loop()
            self._loop_task = loop.create_task(self._poll_loop())
            self._health_task = loop.create_task(self._health_loop())
            self._publisher = loop.create_task(self._publish_loop())

    def _check_labels(self, model: ModelConfig) -> None:
        current = self._models.get(model.name)
        if current is None:
            return  # a new model's labels apply once their versions are available
        old = current.config.label_map()
        available = current.stream.available_versions()
        for label, version in model.version_labels:
            if old.get(label) != version and version not in available:
                raise errors.FailedPrecondition(
                    f"Request to assign label to version {version} of model {model.name}, "
                    "which is not currently available for inference"
                )

    def _autoscaling_config(self, model: ModelConfig) -> AutoscalingConfig:
        """The flags' autoscaling settings, overridden by the model's --autoscaling_config_file entry."""
        o, m = self._options, self._options.model_autoscaling.get(model.name, ModelAutoscaling())
        low = m.min_replicas if m.min_replicas is not None else model.num_replicas or o.num_replicas
        # A model that may scale to zero may still have one replica when asked for.
        high = m.max_replicas if m.max_replicas is not None else max(low, o.max_replicas or low, 1 if low == 0 else 0)
        if m.min_replicas is None:
            low = min(low, high)  # a model's own maximum wins over the flags' minimum
        target = o.target_ongoing_requests if m.target_ongoing_requests is None else m.target_ongoing_requests
        return AutoscalingConfig(
            min_replicas=low,
            max_replicas=high,
            target_ongoing_requests=target,
            upscale_delay_s=o.upscale_delay_s if m.upscale_delay_s is None else m.upscale_delay_s,
            downscale_delay_s=o.downscale_delay_s if m.downscale_delay_s is None else m.downscale_delay_s,
            look_back_s=o.look_back_s,
            scale_to_zero_idle_s=o.scale_to_zero_idle_s if m.scale_to_zero_idle_s is None else m.scale_to_zero_idle_s,
        )

    def _add_model(self, model: ModelConfig) -> None:
        scaling = self._autoscaling_config(model)
        # A model that may scale to zero starts with one replica all the same: its versions load
        # (so a broken bundle shows at once, and its signatures are known), then it idles to zero.
        count = max(scaling.min_replicas, 1)

        def start(index: int, initial: ModelConfig = model) -> Any:
            current = self._models.get(initial.name)  # new replicas follow config updates
            return self._new_replica(current.config if current else initial, index)

        def wanted(name: str = model.name) -> dict[int, str]:
            current = self._models.get(name)
            if current is None:
                return {}
            # What replicas load: the resolved path (an imported SavedModel's bundle), else the source's.
            return {v: current.load_paths.get(v, current.paths[v]) for v in current.stream.available_versions()}

        def platform(name: str = model.name) -> str:
            current = self._models.get(name)
            return current.config.platform if current is not None else model.platform

        replicas = ReplicaSet(
            model.name, count, start, self._kill_replica, wanted=wanted, platform=platform,
            on_change=self._publish_due.set,
            health=self._options.health, probe=self._probe, clock=self._clock,
        )
        self._models[model.name] = _Model(
            config=model,
            source=FileSystemSource.for_model(model),
            stream=ServableStream(model.name, self._options.retry),
            replicas=replicas,
            scaler=ModelScaler(scaling, self._clock()) if scaling.enabled else None,
        )
        log.info("model %s added: base path %s, %d replica(s)%s", model.name, model.base_path, count,
                 f"; scales to zero after {scaling.scale_to_zero_idle_s:g}s idle" if scaling.scales_to_zero else "")

    def _update_model(self, current: _Model, model: ModelConfig) -> None:
        old = current.config
        if (old.base_path, old.version_policy, old.platform) != (model.base_path, model.version_policy, model.platform):
            current.source = FileSystemSource.for_model(model)
            current.last_poll = None  # list the new base path at the next tick
        scaling = self._autoscaling_config(model)
        if scaling.enabled:
            # An autoscaled model's count is its scaler's: new bounds apply at the next tick.
            if current.scaler is None:
                current.scaler = ModelScaler(scaling, self._clock())
            else:
                current.scaler.config = scaling
        else:
            current.scaler = current.scaling = None
            count = scaling.min_replicas
            if count != len(current.replicas):
                log.info("model %s: %d replica(s) configured, was %d", model.name, count, len(current.replicas))
                self._resize(current, count)
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
            poll = self._options.poll_seconds
            # Health checks and autoscaling tick even when storage is polled only once.
            timeout = min(poll, self._options.tick_seconds) if poll > 0 else self._options.tick_seconds
            retry_at = [t for m in self._models.values() if (t := m.stream.next_retry_at()) is not None]
            if retry_at:
                until_retry = max(0.0, min(retry_at) - self._clock())
                timeout = min(timeout, until_retry)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()

    async def reconcile(self) -> None:
        """One tick: poll sources, autoscale, start the planned loads and unloads."""
        changed = False
        models = list(self._models.values())
        due = [m for m in models if self._source_due(m)]
        # Every due source listed in one worker thread: a thousand models cost one hop, not a
        # thousand (each listing is a few system calls on a local disk).
        reports = await asyncio.to_thread(lambda: [m.source.poll_once() for m in due]) if due else []
        now = self._clock()
        for model, report in zip(due, reports, strict=True):
            model.last_poll = now
            self._take_report(model, report)
        for model in models:
            if self._models.get(model.config.name) is not model:
                continue  # removed while the sources were listed
            self._autoscale(model)
            for action in model.stream.plan(self._clock()):
                if action.kind is ActionKind.LOAD:
                    if not model.replicas.ready():
                        continue  # no replica has started yet: planned again at the next tick
                    model.stream.load_started(action.version)
                    self._spawn(self._load(model, action.version))
                else:
                    model.stream.unload_started(action.version)
                    self._spawn(self._unload(model, action.version))
                changed = True
        if changed:
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

    @staticmethod
    def _take_report(model: _Model, report: SourceReport) -> None:
        if report.aspired is None:  # listing failed: keep what is loaded
            if model.source_error != report.error:
                log.warning("model %s: %s", model.config.name, report.error)
            model.source_error = report.error
            return
        model.source_error = None
        model.paths.update(report.aspired)
        model.stream.set_aspired(report.aspired)

    def _source_due(self, model: _Model) -> bool:
        """--file_system_poll_wait_seconds: > 0 polls that often, otherwise once (and on reloads)."""
        if model.last_poll is None or model.source.pending:  # pending: a version still being written
            return True
        poll = self._options.poll_seconds
        return poll > 0 and self._clock() - model.last_poll >= poll * 0.999

    async def _load(self, model: _Model, version: int) -> None:
        name, path = model.config.name, model.paths[version]
        started = self._clock()
        try:
            path = model.load_paths[version] = await self._resolve_path(model.config, path)
            signatures = await model.replicas.load(version, path, model.config.platform)
        except Exception as exc:  # noqa: BLE001 - any failure fails this version's load
            error = unwrap_error(exc)
            model.stream.load_failed(version, error, self._clock())
            log.error("model %s version %d failed to load: %s", name, version, error)
        else:
            model.signatures[version] = signatures
            model.stream.load_succeeded(version)
            model.load_seconds.observe(self._clock() - started)
            log.info("model %s version %d loaded in %.2fs", name, version, self._clock() - started)
        # Published by the publish loop, once for every load that finished together (a thousand
        # models loading at start would otherwise build a thousand tables of a thousand models).
        self._publish_due.set()
        self._wake.set()  # the planner may now unload the version this one replaces

    async def _unload(self, model: _Model, version: int) -> None:
        await self._publish()  # out of the routing table first ...
        await asyncio.sleep(self._options.drain_seconds)  # ... then in-flight requests drain
        model.stream.unloaded(version, await model.replicas.unload(version))
        model.signatures.pop(version, None)
        model.load_paths.pop(version, None)
        log.info("model %s version %d unloaded", model.config.name, version)
        await self._publish()

    # -- autoscaling --------------------------------------------------------------------------
    def report_load(
        self, gateway: str, period_s: float, loads: Mapping[str, Load], requests: stats.RequestStats | None = None
    ) -> None:
        """A gateway's load per model (requests in flight averaged over time, arrival and answer
        rates) over the `period_s` seconds before now; sent about once a second, and at once
        when a request arrives for a model with no replica (a model scaled to zero then loads
        on demand here, without waiting for the next tick). `requests`: the gateway's request
        counters since it started, for the cluster-wide metrics."""
        now = self._clock()
        self._load_window.add(gateway, now, period_s, loads)
        if requests is not None:
            self._requests.update(gateway, now, requests)
        for name, load in loads.items():
            model = self._models.get(name)
            if model is not None and not model.replicas.members and (load[0] > 0 or load[1] > 0):
                self._autoscale(model)

    def request_totals(self, gateway: str = "", requests: stats.RequestStats | None = None) -> stats.RequestStats:
        """Every gateway's request counters summed (a gateway that left still counts), after
        taking `gateway`'s newest `requests` if given (the gateway being scraped)."""
        now = self._clock()
        if gateway and requests is not None:
            self._requests.update(gateway, now, requests)
        return self._requests.total(now)

    def gateways(self) -> list[str]:
        """The gateways that reported within the load-report TTL."""
        return self._load_window.gateways(self._clock())

    def _autoscale(self, model: _Model) -> None:
        if model.scaler is None:
            return
        now = self._clock()
        current = len(model.replicas)  # starting replicas included
        name, window = model.config.name, self._load_window
        # No second scale-up while the last one's replicas still start: the load is judged on them.
        growing = model.scaling is not None and model.scaling.up
        load = window.load(name, now)
        # A version waiting to load (or loading) is demand too: a new version of a model at zero
        # loads (so its errors show), and no model idles to zero in the middle of a load.
        pending = any(s.state in _LOADING for s in model.stream.statuses())
        desired = model.scaler.decide(
            now, current, load, window.recent(name, now), may_grow=not growing, pending=pending
        )
        if desired == current:
            return
        model.scaling = _Scaling(current, desired, now)  # in effect (scaler.applied) at a publish: _took_effect
        self._resize(model, desired)
        if current == 0:
            log.info("model %s cold start: loading on demand on %d replica(s) (%.1f requests/s waiting%s)",
                     name, desired, load.rate, ", and a new version" if pending else "")
        elif desired == 0:
            model.scaled_to_zero += 1
            model.zero_reason = f"no request for {model.scaler.config.scale_to_zero_idle_s:g}s"
            log.info("model %s scaled to zero: no request for %.0fs, unloading from its %d replica(s); "
                     "it loads again on its next request", name, model.scaler.config.scale_to_zero_idle_s, current)
        else:
            log.info("model %s scaling from %d to %d replicas (load %.2f in flight, %.1f requests/s)",
                     name, current, desired, load.in_flight_requests, load.rate)

    def _took_effect(self, table: RoutingTable) -> None:
        """Tells each model's scaler that its last change took effect, once `table` (published)
        shows it: the autoscaling delays count from here, not from the decision (a new replica
        may take seconds to start and load its versions)."""
        now = self._clock()
        for name, model in self._models.items():
            change, route = model.scaling, table.models.get(name)
            if change is None or model.scaler is None or route is None:
                continue
            if change.up and len(route.replicas) < change.target:
                continue  # still starting (or one died meanwhile: it counts once replaced)
            model.scaling = None
            model.scaler.applied(now)
            if change.before == 0 and change.up:
                model.cold_start_seconds.observe(now - change.at)
                log.info("model %s cold start done: serving on %d replica(s) %.2fs after the first request",
                         name, len(route.replicas), now - change.at)
            else:
                log.info("model %s scaled from %d to %d replicas: %d in the routing table",
                         name, change.before, change.target, len(route.replicas))

    def _resize(self, model: _Model, desired: int, leaving: Member | None = None) -> None:
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
        return len(model.replicas) > self._autoscaling_config(model.config).min_replicas

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

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the routing table ------------------------------------------------------------------------
    async def _publish(self) -> None:
        models = {}
        for name, model in self._models.items():
            available = {
                v: model.signatures[v] for v in model.stream.available_versions() if v in model.signatures
            }
            models[name] = ModelRoute(
                name=name,
                available=available,
                labels=model.config.label_map(),
                replicas=model.replicas.refs(frozenset(available)),
                statuses=self._statuses(model),
            )
        async with self._changed:
            self._table = RoutingTable(self._table.epoch + 1, models, self._incarnation)
            self._changed.notify_all()
        self._took_effect(self._table)

    @staticmethod
    def _statuses(model: _Model) -> tuple[VersionStatus, ...]:
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

    async def get_routing_table(
        self, known_epoch: int = -1, timeout: float = 10.0, incarnation: str = ""
    ) -> RoutingTable:
        """Long-poll: returns as soon as the table is newer than `known_epoch`, or after `timeout`.

        A caller that knows another incarnation (this controller restarted) gets the table at once.
        """
        async with self._changed:
            if self._table.epoch <= known_epoch and incarnation in ("", self._incarnation):
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self._table.epoch > known_epoch), timeout
                    )
                except TimeoutError:
                    pass
            return self._table

    async def cluster_stats(self, timeout: float = 2.0) -> list[stats.ModelStats]:
        """Every model's versions, load latency and replicas' statistics (for a metrics scrape).

        Every replica is asked at once; one that does not answer within `timeout` (dead, hung, or
        not placed yet) is left out of this snapshot.
        """
        models = list(self._models.items())

        async def replicas(model: _Model) -> list[stats.ReplicaStats]:
            calls = [asyncio.wait_for(m.handle.stats.remote(), timeout) for m in model.replicas.members]
            replies = await asyncio.gather(*calls, return_exceptions=True)
            # A slot on a host answers a list (its model's statistics there).
            flat = [s for r in replies for s in (r if isinstance(r, list) else [r])]
            return [r for r in flat if isinstance(r, stats.ReplicaStats)]

        answers = await asyncio.gather(*(replicas(model) for _, model in models))
        now = self._clock()
        signals = {name: self._load_window.load(name, now) for name, _ in models}
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

    async def replica_memory(self, name: str, timeout: float = 2.0) -> list[dict[str, int]]:
        model = self._models.get(name)
        if model is None:
            raise errors.NotFound(f"no model {name}")
        calls = (asyncio.wait_for(m.handle.memory.remote(), timeout) for m in model.replicas.members)
        replies = await asyncio.gather(*calls, return_exceptions=True)
        return [r for r in replies if isinstance(r, dict)]  # a dead replica has no memory to report

    async def shutdown(self) -> None:
        """Stops polling and kills every replica (their versions unload with them)."""
        for loop_task in (self._loop_task, self._health_task, self._publisher):
            if loop_task is not None:
                loop_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for model in self._models.values():
            model.replicas.kill_all()
        self._models.clear()
        if self._hosts is not None:
            self._hosts.kill_all()
        await self._publish()
