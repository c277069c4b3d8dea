"""The gateway's side of the cluster: implements ServingAPI over the routing table.

Resolves (model, version | label | latest, signature) against the latest routing table snapshot,
validates the request against the signature (so a bad request never reaches a replica), picks a
replica by power of two choices, and hands the request to the coalescer. The table arrives by
long-poll from the controller; a swap is one attribute assignment. The connections to replicas
are `connections.Connections`'s; the load reported to the controller, `load_report.LoadReport`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np

from cluster import errors
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
from cluster.routing.channel import ReplicaChannel
from cluster.routing.coalescer import Coalescer
from cluster.routing.connections import Connections
from cluster.routing.load_report import LoadReport, ReportLoad
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
        report_load: ReportLoad | None = None,
        report_interval_s: float = 1.0,
    ) -> None:
        self._poll_table = poll_table
        self._reload = reload
        self._max_in_flight = max_in_flight_per_replica
        self._coalescer = coalescer or Coalescer()
        self._table = RoutingTable()
        # Each version's ModelMetadata, made once per table, not per request (the gRPC servicer
        # looks a Predict's signature up through it).
        self._metadata: dict[tuple[str, int], ModelMetadata] = {}
        self._routers: dict[str, Router[ReplicaRef]] = {}
        self._connections = Connections(
            connect=connect, host_channel=host_channel, data_plane_secret=data_plane_secret, drain_grace_s=drain_grace_s
        )
        self._poll_task: asyncio.Task[None] | None = None
        self._load = LoadReport(report_load, report_interval_s)
        self._seen: tuple[str, int] = ("", -1)  # the newest table received: (incarnation, epoch)
        self._restarting = False

    # -- routing table -------------------------------------------------------------------------
    async def start(self) -> None:
        self._receive(await self._poll_table(-1, ""))
        self._poll_task = asyncio.get_running_loop().create_task(self._follow_table())
        self._load.start(lambda: list(self._routers))

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
        self._load.stop()
        await self._connections.close()

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
            self._load.forget(name)
        self._connections.keep({ref for route in table.models.values() for ref in route.replicas})
        self._metadata = {
            (name, version): ModelMetadata(ResolvedSpec(route.name, version, ""), signatures)
            for name, route in table.models.items()
            for version, signatures in route.available.items()
        }
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
        requests = self._load.requests(name)
        if requests.count >= self._max_in_flight * max(len(route.replicas), 1):
            raise errors.ResourceExhausted(f"Too many requests in flight for model {name}; retry later")
        now = time.monotonic()
        timeout = None if deadline is None else deadline - now
        if timeout is not None and timeout <= 0:
            raise errors.DeadlineExceeded("Deadline exceeded before the request was run")
        requests.start(now)
        if not route.replicas:
            self._load.demand(name, now)
        try:
            future = self._coalescer.submit(
                name, self._routers[name], self._connections.target, version, signature, feeds, output_filter, deadline
            )
            if timeout is None:
                return await future
            # A timer on the future itself: asyncio.wait_for would wrap every request in a task.
            # (call_later's own call_at, without its frame.)
            loop = asyncio.get_running_loop()
            timer = loop.call_at(loop.time() + timeout, _expire, future)
            try:
                return await future
            finally:
                timer.cancel()
        finally:
            requests.finish(time.monotonic())

    # -- ServingAPI ----------------------------------------------------------------------------
    async def predict(self, request: PredictRequest) -> PredictResult:
        route, version, signatures = self._resolve(request.spec)
        key = request.spec.signature_key
        signature = signatures.get(key)
        if signature is None:
            raise errors.FailedPrecondition(f'Serving signature key "{key}" not found.')
        checked, output_filter = request.checked, request.output_filter
        if checked is signature or checked == signature:  # checked where it entered, against this very signature
            check_output_filter(signature, request.output_filter)
        else:
            check_predict_request(signature, request.inputs, request.output_filter)
        outputs = await self._run(
            route, version, key, request.inputs, tuple(sorted(output_filter)) if output_filter else (), request.deadline
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
        metadata = self._metadata.get((spec.name, version))
        if metadata is None or metadata.signatures is not signatures:  # made for another table
            metadata = ModelMetadata(ResolvedSpec(route.name, version, ""), signatures)
        return metadata

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
