"""The composition root: Ray, the controller, the dispatcher and the gateway servers, wired.

`TesseraServer` runs in the driver process on one asyncio loop: gRPC (and REST, when enabled)
gateways in front of a Dispatcher that follows the controller's routing table. The controller and
the replicas are Ray actors, so the same code runs on an embedded local Ray (a laptop) and on a
Ray cluster started by KubeRay (`--ray_address`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import time
from collections.abc import Sequence
from typing import Any, cast

import ray

from cluster.config import BatchingConfig, ServeOptions, ServerConfig
from cluster.controller.actor import ControllerActor
from cluster.controller.controller import ControllerOptions
from cluster.metrics import CONTENT_TYPE, MetricsExporter
from cluster.replica.data_plane import DataPlaneConfig
from cluster.routing.channel import ReplicaChannel
from cluster.routing.dispatcher import Dispatcher
from cluster.serving.planner import RetryPolicy

log = logging.getLogger("tessera")
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"


def keep_ray_on_loopback() -> None:
    """Makes an embedded Ray bind and talk on 127.0.0.1 instead of the host's network address.

    Ray picks the address of the default route even for a single-node cluster; for the embedded
    cluster nothing should leave loopback. Ray reads this switch from the environment in every
    process it starts, and from a module constant in this one (already imported), so set both.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False")


def init_ray(options: ServeOptions, num_cpus: int | None = None) -> bool:
    """Connects to `--ray_address`, or starts an embedded local Ray. True if we started it."""
    if ray.is_initialized():
        return False
    if options.ray_address:
        ray.init(address=options.ray_address, namespace="tessera", logging_level=logging.WARNING)
        return True
    # The embedded cluster is ours alone, on loopback: token auth would only get in the way.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    keep_ray_on_loopback()
    ray.init(
        # "local": always a new Ray of our own, never a cluster some `ray start` left on this machine
        # (ray.init would join it, via /tmp/ray/ray_current_cluster, and refuse num_cpus).
        address="local",
        namespace="tessera",  # detached replicas need a named namespace
        num_cpus=num_cpus or max(2, os.cpu_count() or 2),
        include_dashboard=False,
        logging_level=logging.WARNING,
        object_store_memory=512 * 1024 * 1024,
    )
    return True


class TesseraServer:
    """The serving process: start() brings everything up, stop() drains and tears it down."""

    def __init__(self, options: ServeOptions, config: ServerConfig) -> None:
        self.options = options
        self.config = config
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._controller: Any = None
        self._dispatcher: Dispatcher | None = None
        self._grpc: Any = None
        self._rest: Any = None
        self._config_poller: asyncio.Task[None] | None = None
        self.metrics = MetricsExporter()  # one registry per server, injected, never a global

    @property
    def dispatcher(self) -> Dispatcher:
        assert self._dispatcher is not None, "start() first"
        return self._dispatcher

    @property
    def controller(self) -> Any:
        return self._controller

    async def start(self) -> None:
        from cluster.gateway.grpc_server import GatewayServer

        opts = self.options
        controller_options = ControllerOptions(
            poll_seconds=opts.file_system_poll_wait_seconds,
            num_replicas=opts.num_replicas,
            retry=RetryPolicy(opts.max_num_load_retries, opts.load_retry_interval_seconds),
            max_replicas=opts.max_replicas,
            target_ongoing_requests=opts.target_ongoing_requests,
            upscale_delay_s=opts.upscale_delay_s,
            downscale_delay_s=opts.downscale_delay_s,
            scale_to_zero_idle_s=opts.scale_to_zero_idle_s,
            model_autoscaling=dict(opts.model_autoscaling),
        )
        batching = (opts.batching or BatchingConfig()) if opts.enable_batching else None
        # The data plane admits only this cluster's gateways: a secret made here, handed to the
        # controller and the replicas as actor arguments and to gateways by the controller (all
        # over Ray). The embedded cluster's replicas listen on loopback only.
        data_plane = DataPlaneConfig(
            secrets.token_bytes(32), host=None if opts.ray_address else "127.0.0.1",
            max_frame=opts.data_plane_max_frame_bytes,
        )
        # Restarted by Ray if its process dies (same arguments: same secret, same replica names);
        # its replicas (detached, named) survive and are adopted again, and the dispatcher sends it
        # the config again. Kept on this node, so losing another node never takes it along.
        # An @ray.remote class: mypy does not apply class decorators, so it cannot see .options.
        self._controller = cast(Any, ControllerActor).options(
            max_concurrency=1000, max_restarts=-1, scheduling_strategy=_this_node(),
        ).remote(
            controller_options, opts.replica_num_cpus, opts.enable_model_warmup, batching, opts.log_format,
            f"tessera-{os.getpid()}-{id(self):x}", opts.session_threads, data_plane,
        )
        controller = self._controller
        gateway_id = f"gateway-{os.getpid()}-{id(self):x}"
        await controller.set_config.remote(self.config)
        secret = await controller.data_plane_secret.remote()
        max_frame = opts.data_plane_max_frame_bytes
        self._dispatcher = Dispatcher(
            connect=lambda ref: ReplicaChannel(ref.address, secret, max_frame=max_frame),
            poll_table=lambda epoch, incarnation: controller.get_routing_table.remote(epoch, 10.0, incarnation),
            reload=self._reload,
            report_load=lambda period, loads: controller.report_load.remote(gateway_id, period, loads),
            on_controller_restart=lambda: controller.set_config.remote(self.config),
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
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            self._config_poller = asyncio.get_running_loop().create_task(self._poll_config_file())
        log.info("gRPC gateway listening on %s:%s", opts.host, self.grpc_port)

    async def _reload(self, config: ServerConfig) -> None:
        """A new model config (RPC or file): the controller applies it; we remember it for a
        controller that restarts."""
        await self._controller.set_config.remote(config)
        self.config = config

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
        return await self._rest.start(self.options.host, self.options.rest_port)

    def _instrumented(self, entrypoint: str) -> Any:
        from cluster.gateway.instrumented import InstrumentedAPI

        dispatcher = self.dispatcher
        return InstrumentedAPI(
            dispatcher, self.metrics.gateway, entrypoint, lambda name: name in dispatcher.table.models
        )

    async def _scrape(self, request: Any) -> Any:
        """Prometheus text for the whole cluster: this gateway's requests plus every replica."""
        from aiohttp import web

        try:
            snapshot = await self._controller.cluster_stats.remote()
        except Exception as exc:  # noqa: BLE001 - still serve this gateway's own metrics
            log.warning("cluster metrics unavailable: %s", exc)
            snapshot = None
        return web.Response(body=self.metrics.render(snapshot), headers={"Content-Type": CONTENT_TYPE})

    async def wait_ready(self, timeout: float = 60.0) -> bool:
        """Waits until every configured model has an available version (and the gateway knows)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.dispatcher.is_ready():
                return True
            await asyncio.sleep(0.05)
        return False

    async def _poll_config_file(self) -> None:
        from cluster.gateway.config_converters import read_text_file, server_config_from_text

        path = self.options.model_config_file
        last: str | None = None
        while True:
            await asyncio.sleep(self.options.model_config_file_poll_wait_seconds)
            try:
                text = await asyncio.to_thread(read_text_file, path)
                if text == last:
                    continue
                await self._reload(server_config_from_text(text))
                last = text
                log.info("model config reloaded from %s", path)
            except Exception as exc:  # noqa: BLE001 - a bad edit must not stop the server
                log.error("model config %s not applied: %s", path, exc)

    async def stop(self, grace: float = 10.0) -> None:
        """Stops accepting, lets in-flight requests finish (up to `grace`), then stops replicas."""
        if self._config_poller is not None:
            self._config_poller.cancel()
        stops = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(grace))
        if self._rest is not None:
            stops.append(self._rest.stop(grace))
        await asyncio.gather(*stops)
        if self._dispatcher is not None:
            await self._dispatcher.stop()
        if self._controller is not None:
            try:
                await self._controller.shutdown.remote()
            finally:
                ray.kill(self._controller)
        log.info("stopped")


def _this_node() -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Soft: if this node is gone the controller may run elsewhere rather than not at all.
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)


def _freeze_startup_objects() -> None:
    """Moves every object alive now out of the garbage collector's sight (`gc.freeze`).

    The gateway's process holds ~90,000 long-lived objects once started (Ray, gRPC, protobuf's
    descriptors, numpy): each full collection walked all of them, on the event loop, 0.2-0.3 s
    measured, at whatever request happened to allocate the object that triggered it. Frozen, a full
    collection walks only what was made since. Only `tessera serve`'s own process does this: a
    test process that starts servers keeps its collector as it is.
    """
    gc.collect()  # what is garbage already is freed, not frozen
    gc.freeze()


async def _serve_until_signal(server: TesseraServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    await server.start()
    _freeze_startup_objects()
    print(f"Tessera gRPC on {server.options.host}:{server.grpc_port}"
          + (f", REST on {server.options.host}:{server.rest_port}" if server.rest_port else ""), flush=True)
    ready = asyncio.ensure_future(server.wait_ready(timeout=3600))
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({ready, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done and ready.result():
        print(f"All models available after {time.monotonic() - started:.1f}s", flush=True)
        _freeze_startup_objects()
    await waiter
    print("Shutting down: draining in-flight requests", flush=True)
    await server.stop()


def main(argv: Sequence[str]) -> int:
    """`tessera serve` with TF Serving's flags (see cluster.flags)."""
    from cluster.flags import parse_serve_args
    from cluster.logs import configure_logging

    options, config = parse_serve_args(list(argv))
    configure_logging(options)
    started_ray = init_ray(options)
    try:
        asyncio.run(_serve_until_signal(TesseraServer(options, config)))
    finally:
        if started_ray:
            ray.shutdown()
    return 0
