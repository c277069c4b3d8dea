"""The gateway's side of the cluster: implements ServingAPI over the routing table.

Resolves (model, version | label | latest, signature) against the latest routing table snapshot,
validates the request against the signature (so a bad request never reaches a replica), picks a
replica by power of two choices, and hands the request to the coalescer. The table arrives by
long-poll from the controller; a swap is one attribute assignment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from cluster import errors
from cluster.autoscaler.load import InFlight, Load
from cluster.config import ServerConfig
from cluster.replica.contract import Target, task_outputs
from cluster.requests import (
    EXAMPLE_CONTEXT_FEED,
    ClassifyResult,
    ExamplesRequest,
    ModelMetadata,
    ModelSpec,
    MultiInferenceRequest,
    PredictRequest,
    PredictResult,
    RegressResult,
    ResolvedSpec,
)
from cluster.routing.channel import ModelChannel, ReplicaChannel
from cluster.routing.coalescer import Coalescer
from cluster.routing.router import Router
from cluster.routing.table import ModelRoute, ReplicaRef, RoutingTable
from cluster.routing.validation import (
    check_classify_signature,
    check_output_filter,
    check_predict_request,
    check_regress_signature,
    classify_result,
    multi_inference_methods,
    regress_result,
)
from cluster.serving.resolution import resolve_version
from cluster.types import VersionStatus
from exporter.signature import Signature

log = logging.getLogger("tessera.gateway")

# (known epoch, known controller incarnation) -> a newer (or the same) table
TablePoll = Callable[[int, str], Awaitable[RoutingTable]]
Reload = Callable[[ServerConfig], Awaitable[None]]


class Dispatcher:
    """ServingAPI for the gateway: routing-table snapshot + router per model + coalescer."""

    def __init__(
        self,
        poll_table: TablePoll,
        reload: Reload,
        *,
        max_in_flight_per_replica: int = 1024,
        coalescer: Coalescer | None = None,
        connect: Callable[[ReplicaRef], Any] | None = None,
        host_channel: Callable[[tuple[str, int]], ReplicaChannel] | None = None,
        data_plane_secret: bytes = b"",
        drain_grace_s: float = 30.0,
        report_load: Callable[[float, dict[str, Load]], Awaitable[Any]] | None = None,
        report_interval_s: float = 1.0,
    ) -> None:
        self._poll_table = poll_table
        self._reload = reload
        self._max_in_flight = max_in_flight_per_replica
        self._coalescer = coalescer or Coalescer()
        self._table = RoutingTable()
        self._routers: dict[str, Router[ReplicaRef]] = {}
        # One data-plane connection per replica host, opened with the cluster's secret, shared by
        # every model on that host; each model's replica there is a ModelChannel over it. `connect`
        # (tests) replaces both: a call target per replica.
        self._host_channel = host_channel or (lambda address: ReplicaChannel(address, data_plane_secret))
        self._connect = connect or self._model_channel
        self._drain_grace = drain_grace_s
        self._hosts: dict[tuple[str, int], ReplicaChannel] = {}  # data-plane address -> its connection
        self._channels: dict[ReplicaRef, Any] = {}  # a call target per replica (model on a host)
        self._in_flight_requests: dict[str, InFlight] = {}  # requests per model, from arrival to answer
        self._poll_task: asyncio.Task[None] | None = None
        self._report_load = report_load
        self._report_interval = report_interval_s
        self._report_task: asyncio.Task[None] | None = None
        self._report_now = asyncio.Event()  # a request waits for a model with no replica: report at once
        self._demand_at: dict[str, float] = {}  # model -> when its last waiting request asked for a report
        self._seen: tuple[str, int] = ("", -1)  # the newest table received: (incarnation, epoch)
        self._restarting = False

    # -- routing table -------------------------------------------------------------------------
    async def start(self) -> None:
        self._receive(await self._poll_table(-1, ""))
        self._poll_task = asyncio.get_running_loop().create_task(self._follow_table())
        if self._report_load is not None:
            self._report_task = asyncio.get_running_loop().create_task(self._report_loads())

    async def stop(self) -> None:
        for task in (self._poll_task, self._report_task):
            if task is not None:
                task.cancel()
        channels, self._channels = list(self._channels.values()), {}
        hosts, self._hosts = list(self._hosts.values()), {}
        await asyncio.gather(*(c.close() for c in [*channels, *hosts] if hasattr(c, "close")))

    async def _follow_table(self) -> None:
        while True:
            try:
                incarnation, epoch = self._seen
                self._receive(await self._poll_table(epoch, incarnation))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - controller restarting: keep the last table
                log.warning("routing table poll failed: %s", exc)
                await asyncio.sleep(1.0)

    async def _report_loads(self) -> None:
        """Tells the controller, once a period, this gateway's requests in flight per model
        averaged over the period (for autoscaling), and the period's length."""
        assert self._report_load is not None
        last = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self._report_now.wait(), self._report_interval)
            except TimeoutError:
                pass
            self._report_now.clear()
            now = time.monotonic()
            period, last = now - last, now
            loads = {name: self._load(name).take(now) for name in self._routers}
            try:
                await self._report_load(period, loads)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the controller may be restarting
                log.debug("load report failed: %s", exc)

    def _receive(self, table: RoutingTable) -> None:
        incarnation, epoch = self._seen
        if (table.incarnation, table.epoch) == (incarnation, epoch):
            return
        if incarnation and table.incarnation != incarnation:
            # The controller restarted: it applies its stored config again and adopts its
            # replicas (which survived it). Keep routing on the last table until it has caught up.
            log.warning("the controller restarted; routing on the last table until it catches up")
            self._restarting = True
        self._seen = (table.incarnation, table.epoch)
        if self._restarting and not (table.models and table.ready()):
            return
        self._restarting = False
        self._apply(table)

    def _apply(self, table: RoutingTable) -> None:
        for name, route in table.models.items():
            router = self._routers.get(name)
            if router is None:
                router = self._routers[name] = Router()
            router.set_replicas(route.replicas)
        for name in set(self._routers) - set(table.models):
            del self._routers[name]
            self._in_flight_requests.pop(name, None)  # requests still running hold their own reference
            self._demand_at.pop(name, None)
        live = {ref for route in table.models.values() for ref in route.replicas}
        for ref in set(self._channels) - live:
            # A replica leaving the table (retired, replaced, its model removed) answers what it
            # has: its calls are not cut off, the connection closes once they are answered.
            channel = self._channels.pop(ref)
            if hasattr(channel, "close") and not isinstance(channel, ModelChannel):
                asyncio.get_running_loop().create_task(channel.close(self._drain_grace))
        hosts = {ref.address for ref in live}
        for address in set(self._hosts) - hosts:  # no model left on that host: same, per host
            asyncio.get_running_loop().create_task(self._hosts.pop(address).close(self._drain_grace))
        self._table = table

    @property
    def table(self) -> RoutingTable:
        return self._table

    def is_ready(self) -> bool:
        return bool(self._table.models) and self._table.ready()

    # -- resolution ----------------------------------------------------------------------------
    def _resolve(self, spec: ModelSpec) -> tuple[ModelRoute, int, Mapping[str, Signature]]:
        route = self._table.models.get(spec.name)
        if route is None:
            raise errors.NotFound(f"Servable not found for request: {spec.version.describe(spec.name)}")
        version = resolve_version(spec.version, route.available.keys(), route.labels, model_name=spec.name)
        return route, version, route.available[version]

    def _model_channel(self, replica: ReplicaRef) -> ModelChannel:
        host = self._hosts.get(replica.address)
        if host is None:
            host = self._hosts[replica.address] = self._host_channel(replica.address)
        return ModelChannel(host, replica.model)

    def _channel(self, replica: ReplicaRef) -> Any:
        channel = self._channels.get(replica)
        if channel is None:
            channel = self._channels[replica] = self._connect(replica)
        return channel

    async def _run(
        self,
        route: ModelRoute,
        version: int,
        signature: Target,
        feeds: Mapping[str, np.ndarray],
        output_filter: tuple[str, ...],
        deadline: float | None,
    ) -> Mapping[str, np.ndarray]:
        name = route.name
        requests = self._load(name)
        if requests.count >= self._max_in_flight * max(len(route.replicas), 1):
            raise errors.ResourceExhausted(f"Too many requests in flight for model {name}; retry later")
        now = time.monotonic()
        timeout = None if deadline is None else deadline - now
        if timeout is not None and timeout <= 0:
            raise errors.DeadlineExceeded("Deadline exceeded before the request was run")
        requests.start(now)
        if not route.replicas:
            self._demand(name, now)
        try:
            future = self._coalescer.submit(
                name, self._routers[name], self._channel, version, signature, feeds, output_filter, deadline
            )
            if timeout is None:
                return await future
            # A timer on the future itself: asyncio.wait_for would wrap every request in a task.
            timer = asyncio.get_running_loop().call_later(timeout, _expire, future)
            try:
                return await future
            finally:
                timer.cancel()
        finally:
            requests.finish(time.monotonic())

    def _demand(self, name: str, now: float) -> None:
        """A request for a model with no replica (scaled to zero, or its last one being replaced)
        waits in the coalescer for one, within its deadline; the controller hears of it at once
        (a load report now, not at the end of the period) and starts one. At most one early
        report per model per 0.2 s, however many requests wait."""
        if self._report_load is not None and now - self._demand_at.get(name, -1.0) >= 0.2:
            self._demand_at[name] = now
            self._report_now.set()

    def _load(self, name: str) -> InFlight:
        requests = self._in_flight_requests.get(name)
        if requests is None:
            requests = self._in_flight_requests[name] = InFlight(time.monotonic())
        return requests

    # -- ServingAPI ----------------------------------------------------------------------------
    async def predict(self, request: PredictRequest) -> PredictResult:
        route, version, signatures = self._resolve(request.spec)
        key = request.spec.signature_key
        signature = signatures.get(key)
        if signature is None:
            raise errors.FailedPrecondition(f'Serving signature key "{key}" not found.')
        if request.checked == signature:  # checked where it entered, against this very signature
            check_output_filter(signature, request.output_filter)
        else:
            check_predict_request(signature, request.inputs, request.output_filter)
        outputs = await self._run(
            route, version, key, request.inputs, tuple(sorted(request.output_filter)), request.deadline
        )
        return PredictResult(ResolvedSpec(route.name, version, key), outputs)

    def _examples_signature(self, spec: ModelSpec) -> tuple[ModelRoute, int, str, Signature]:
        route, version, signatures = self._resolve(spec)
        key = spec.signature_key
        signature = signatures.get(key)
        if signature is None:
            raise errors.InvalidArgument(f"No signature was found with the name: {key}")
        return route, version, key, signature

    async def classify(self, request: ExamplesRequest) -> ClassifyResult:
        route, version, key, signature = self._examples_signature(request.spec)
        input_alias = check_classify_signature(signature)
        outputs = await self._run(route, version, key, _examples(input_alias, request.examples, request.context), (), request.deadline)
        return classify_result(ResolvedSpec(route.name, version, key), outputs, len(request.examples))

    async def regress(self, request: ExamplesRequest) -> RegressResult:
        route, version, key, signature = self._examples_signature(request.spec)
        input_alias = check_regress_signature(signature)
        outputs = await self._run(route, version, key, _examples(input_alias, request.examples, request.context), (), request.deadline)
        return regress_result(ResolvedSpec(route.name, version, key), outputs, len(request.examples))

    async def multi_inference(self, request: MultiInferenceRequest) -> list[ClassifyResult | RegressResult]:
        """Every task on the servable the first task names (spec §7.3), in one call: the examples
        are sent once and parsed once per distinct feature spec on the replica (`Tasks`)."""
        methods = multi_inference_methods(request.tasks)
        route, version, signatures = self._resolve(request.tasks[0].spec)
        keys, aliases = [], []
        for task, method in zip(request.tasks, methods, strict=True):
            key = task.spec.signature_key
            signature = signatures.get(key)
            if signature is None:
                raise errors.InvalidArgument(f"No signature was found with the name: {key}")
            check = check_classify_signature if method == "classify" else check_regress_signature
            aliases.append(check(signature))
            keys.append(key)
        # The examples travel once, under the first task's input alias: the replica feeds them to
        # each task's one input, whatever its alias.
        feeds = _examples(aliases[0], request.examples, request.context)
        outputs = await self._run(route, version, tuple(keys), feeds, (), request.deadline)
        n = len(request.examples)
        results: list[ClassifyResult | RegressResult] = []
        for key, method, own in zip(keys, methods, task_outputs(outputs, len(keys)), strict=True):
            spec = ResolvedSpec(route.name, version, key)
            results.append(classify_result(spec, own, n) if method == "classify" else regress_result(spec, own, n))
        return results

    async def model_metadata(self, spec: ModelSpec) -> ModelMetadata:
        route, version, signatures = self._resolve(spec)
        return ModelMetadata(ResolvedSpec(route.name, version, ""), signatures)

    async def model_status(self, name: str, version: int | None) -> list[VersionStatus]:
        route = self._table.models.get(name)
        statuses = list(route.statuses) if route is not None else []
        if version is not None:
            statuses = [s for s in statuses if s.version == version]
            if not statuses:
                raise errors.NotFound(f"Could not find version {version} of model {name}")
        elif not statuses:
            raise errors.NotFound(f"Could not find any versions of model {name}")
        return statuses

    async def reload_config(self, config: ServerConfig) -> None:
        await self._reload(config)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(errors.DeadlineExceeded("Deadline exceeded while the request was queued or run"))


def _examples(alias: str, examples: Any, context: bytes = b"") -> dict[str, np.ndarray]:
    """The feeds of a Classify/Regress call: the examples, and their shared context once, if any."""
    if len(examples) == 0:
        raise errors.InvalidArgument("Input is empty.")
    column = np.empty(len(examples), dtype=object)
    column[:] = list(examples)
    feeds = {alias: column}
    if context:
        shared = np.empty(1, dtype=object)
        shared[0] = context
        feeds[EXAMPLE_CONTEXT_FEED] = shared
    return feeds
