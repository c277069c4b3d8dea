"""One gateway: gRPC (and REST, when enabled) on this process's asyncio loop, in front of a
Dispatcher that follows the controller's routing table and reports this gateway's load and request
counters to it. A gateway owns nothing but its sockets: stopping it (or its process dying) leaves
the controller, the replicas and every other gateway as they are."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import Any

from cluster.config import ServeOptions, ServerConfig
from cluster.metrics import CONTENT_TYPE, MetricsExporter
from cluster.routing.channel import ReplicaChannel
from cluster.routing.dispatcher import Dispatcher

log = logging.getLogger("tessera")
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"


class Gateway:
    """One gateway: gRPC + REST on this process's loop, in front of the cluster's controller.

    `reuse_port`: bind with SO_REUSEPORT, so several gateway processes share the ports (the
    kernel spreads connections over them); without it a port in use is an error.
    """

    def __init__(
        self, options: ServeOptions, controller: Any, *, reuse_port: bool = False, gateway_id: str = ""
    ) -> None:
        self.options = options
        self.controller = controller
        self.reuse_port = reuse_port
        self.gateway_id = gateway_id or new_gateway_id()
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._dispatcher: Dispatcher | None = None
        self._grpc: Any = None
        self._rest: Any = None
        self.metrics = MetricsExporter()  # one registry per gateway, injected, never a global
        # Readiness held back (health NOT_SERVING, /readyz 503) while true: `tessera serve` holds
        # its own gateway's until its other gateway processes have joined, or a load balancer's
        # first connections would all land on this one process, and stay there.
        self.readiness_held = False

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None, "start() first"
        return self._dispatcher

    async def start(self) -> None:
        from cluster.gateway.grpc_server import GatewayServer

        opts, controller, gateway_id = self.options, self.controller, self.gateway_id
        secret = await controller.data_plane_secret.remote()
        max_frame = opts.data_plane_max_frame_bytes
        requests = self.metrics.gateway
        self._dispatcher = Dispatcher(
            host_channel=lambda address: ReplicaChannel(address, secret, max_frame=max_frame),
            poll_table=lambda epoch, incarnation: controller.get_routing_table.remote(epoch, 10.0, incarnation),
            reload=self._reload,
            # With the load, this gateway's request counters: any gateway's scrape shows the sum.
            report_load=lambda period, loads: controller.report_load.remote(
                gateway_id, period, loads, requests.snapshot()),
        )
        credentials = None
        if opts.ssl_config_file:
            from cluster.gateway.config_converters import read_text_file, ssl_credentials_from_text

            credentials = ssl_credentials_from_text(read_text_file(opts.ssl_config_file))
        self._grpc = GatewayServer(
            self._instrumented("grpc"), tensor_content=opts.serialize_as_tensor_content,
            credentials=credentials, socket_path=opts.grpc_socket_path,
            # The signature lookup that checks a Predict before decoding it is not a request of its own.
            metadata_lookup=self.dispatcher.model_metadata, max_fill_bytes=opts.max_request_fill_bytes,
            options=grpc_server_options(opts, self.reuse_port),
        )
        if opts.rest_port:
            # Imported before the gRPC port opens: the import (~0.2 s, on the loop) would hold
            # the first gRPC requests otherwise. `_start_rest` reports a build without it.
            with contextlib.suppress(ImportError):
                import cluster.gateway.rest_server  # noqa: F401
        await self._dispatcher.start()
        self.grpc_port = await self._grpc.start(opts.host, opts.grpc_port)
        if opts.rest_port:
            self.rest_port = await self._start_rest()
        log.info("gateway %s: gRPC on %s:%s", gateway_id, opts.host, self.grpc_port)

    async def _reload(self, config: ServerConfig) -> None:
        """ReloadConfig: the controller applies it to the whole cluster (and keeps it)."""
        await self.controller.set_config.remote(config)

    async def _start_rest(self) -> int | None:
        try:
            from cluster.gateway.rest_server import RestServer
        except ImportError:
            log.warning("REST API not available in this build; --rest_api_port=%s ignored", self.options.rest_port)
            return None
        # The signature lookup that types a JSON body is not a request of its own: not counted.
        self._rest = RestServer(
            self._instrumented("rest"), self.options, metadata_lookup=self.dispatcher.model_metadata
        )
        self._rest.add_get_route(self.options.monitoring_path or DEFAULT_METRICS_PATH, self._scrape)
        return int(await self._rest.start(self.options.host, self.options.rest_port, reuse_port=self.reuse_port))

    def _instrumented(self, entrypoint: str) -> Any:
        from cluster.gateway.instrumented import InstrumentedAPI

        dispatcher = self.dispatcher
        return InstrumentedAPI(
            dispatcher, self.metrics.gateway, entrypoint, lambda name: name in dispatcher.table.models,
            held=lambda: self.readiness_held,
        )

    async def _scrape(self, request: Any) -> Any:
        """Prometheus text for the whole cluster: every gateway's requests plus every replica."""
        from aiohttp import web

        own = self.metrics.gateway.snapshot()  # a copy: the render below runs beside the loop's counting
        try:
            snapshot, requests = await self.controller.cluster_metrics.remote(self.gateway_id, own)
        except Exception as exc:  # noqa: BLE001 - still serve this gateway's own metrics
            log.warning("cluster metrics unavailable: %s", exc)
            snapshot, requests = None, own
        # In a worker thread: 201 models render ~9,000 lines, 0.1-0.4 s of Python that held this
        # loop, and every request on it, for as long (benchmarks/hot_model.py).
        body = await asyncio.to_thread(self.metrics.render, snapshot, requests)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def wait_ready(self, timeout: float = 60.0) -> bool:
        """Waits until every configured model has an available version (and this gateway knows)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.dispatcher.is_ready():
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self, grace: float = 10.0) -> None:
        """Stops accepting, lets in-flight requests finish (up to `grace`). Nothing else stops."""
        stops = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(grace))
        if self._rest is not None:
            stops.append(self._rest.stop(grace))
        await asyncio.gather(*stops)
        if self._dispatcher is not None:
            await self._dispatcher.stop()
            # The requests of its last second, which no periodic report carried: the cluster's
            # counters keep them after this gateway is gone (a zero period adds no load).
            try:
                await asyncio.wait_for(
                    self.controller.report_load.remote(self.gateway_id, 0.0, {}, self.metrics.gateway.snapshot()), 2.0)
            except Exception as exc:  # noqa: BLE001 - the controller may be gone already
                log.debug("final load report failed: %s", exc)


def grpc_server_options(options: ServeOptions, reuse_port: bool) -> list[tuple[str, int | str]]:
    """The gRPC server arguments of a gateway: SO_REUSEPORT, then `--grpc_channel_arguments`.

    grpc sets SO_REUSEPORT by default on Linux, so a second server on a port in use would silently
    share it: on only when asked to, and first, so that no channel argument turns it on or off
    (grpc keeps the first of two arguments with one key).
    """
    return [("grpc.so_reuseport", 1 if reuse_port else 0), *options.grpc_channel_arguments]


def new_gateway_id() -> str:
    """Unique across the cluster's nodes and processes (its load reports are keyed by it)."""
    return f"gateway-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
