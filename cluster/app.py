"""The composition root: Ray, the controller, the gateways, wired.

A cluster has ONE controller, a detached Ray actor named `CONTROLLER_NAME` in the "tessera"
namespace, and any number of gateways that join it:

- `Gateway` is one gateway: gRPC (and REST, when enabled) on this process's asyncio loop, in front
  of a Dispatcher that follows the controller's routing table and reports this gateway's load and
  request counters to it. A gateway owns nothing but its sockets: stopping it (or its process
  dying) leaves the controller, the replicas and every other gateway as they are.
- `TesseraServer` (`tessera serve`) starts the controller (or adopts the one already running on
  `--ray_address`), gives it the model config, polls `--model_config_file`, runs one `Gateway` in
  this process and `--gateway_processes - 1` more as `tessera gateway` subprocesses on the same
  ports (SO_REUSEPORT), and, on stop, drains them all and then stops the controller and replicas.
- `tessera gateway` (`gateway_main`) runs only a `Gateway`, joining the controller of an existing
  cluster; it never stops the controller.

The controller and the replicas are Ray actors, so the same code runs on an embedded local Ray (a
laptop) and on a Ray cluster started by KubeRay (`--ray_address`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import ray

from cluster.config import BatchingConfig, ServeOptions, ServerConfig
from cluster.controller.actor import CONTROLLER_NAME, NAMESPACE, ControllerActor
from cluster.controller.controller import ControllerOptions
from cluster.controller.packing import PlacementOptions
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


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].removeprefix("ray://")
    return host in ("127.0.0.1", "localhost", "[::1]")


def init_ray(options: ServeOptions, num_cpus: int | None = None) -> bool:
    """Connects to `--ray_address`, or starts an embedded local Ray. True if we started it."""
    if ray.is_initialized():
        return False
    if options.ray_address:
        # A ray:// address is Ray Client, never a node: it forwards ray.init's arguments to the
        # server's own ray.init, which dies on _node_ip_address (the gateway then cannot connect).
        if _is_loopback(options.ray_address) and not options.ray_address.startswith("ray://"):
            # A gateway process of `tessera serve --gateway_processes` joining the embedded Ray.
            keep_ray_on_loopback()
            ray.init(address=options.ray_address, namespace=NAMESPACE, logging_level=logging.WARNING,
                     _node_ip_address="127.0.0.1")
        else:
            ray.init(address=options.ray_address, namespace=NAMESPACE, logging_level=logging.WARNING)
        return True
    # The embedded cluster is ours alone, on loopback: token auth would only get in the way.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    keep_ray_on_loopback()
    ray.init(
        # "local": always a new Ray of our own, never a cluster some `ray start` left on this machine
        # (ray.init would join it, via /tmp/ray/ray_current_cluster, and refuse num_cpus).
        address="local",
        namespace=NAMESPACE,  # the controller and the detached replicas are named in it
        num_cpus=num_cpus or max(2, os.cpu_count() or 2),
        include_dashboard=False,
        logging_level=logging.WARNING,
        object_store_memory=512 * 1024 * 1024,
    )
    return True


def _controller_options(opts: ServeOptions) -> ControllerOptions:
    return ControllerOptions(
        poll_seconds=opts.file_system_poll_wait_seconds,
        num_replicas=opts.num_replicas,
        retry=RetryPolicy(opts.max_num_load_retries, opts.load_retry_interval_seconds),
        max_replicas=opts.max_replicas,
        target_ongoing_requests=opts.target_ongoing_requests,
        upscale_delay_s=opts.upscale_delay_s,
        downscale_delay_s=opts.downscale_delay_s,
        scale_to_zero_idle_s=opts.scale_to_zero_idle_s,
        model_autoscaling=dict(opts.model_autoscaling),
        placement=PlacementOptions(opts.max_models_per_host, opts.replica_memory_budget_bytes, opts.max_replica_hosts),
    )


def _existing_controller() -> Any | None:
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def start_controller(opts: ServeOptions) -> tuple[Any, bool]:
    """The cluster's controller: started here, or the one already running. (handle, started here)"""
    existing = _existing_controller()
    if existing is not None:
        log.warning("joining the controller already running on this Ray cluster (%s); it keeps the "
                    "flags it was started with, and this process now owns it", CONTROLLER_NAME)
        return existing, False
    batching = (opts.batching or BatchingConfig()) if opts.enable_batching else None
    # The data plane admits only this cluster's gateways: a secret made here, handed to the
    # controller and the replicas as actor arguments and to gateways by the controller (all
    # over Ray). The embedded cluster's replicas listen on loopback only.
    data_plane = DataPlaneConfig(
        secrets.token_bytes(32), host=None if opts.ray_address else "127.0.0.1",
        max_frame=opts.data_plane_max_frame_bytes,
    )
    # Detached and named: gateways of any process find it by name, and it outlives the process
    # that made it (only `TesseraServer.stop` ends it). Restarted by Ray if its process dies (same
    # arguments: same secret, same replica names); its replicas (detached, named) survive and are
    # adopted again, and it applies its stored config again. Kept on this node, so losing another
    # node never takes it along. get_if_exists: two `tessera serve` starting at once share one.
    # An @ray.remote class: mypy does not apply class decorators, so it cannot see .options.
    handle = cast(Any, ControllerActor).options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_concurrency=1000, max_restarts=-1, scheduling_strategy=_this_node(),
    ).remote(
        _controller_options(opts), opts.replica_num_cpus, opts.enable_model_warmup, batching, opts.log_format,
        f"tessera-{os.getpid()}-{uuid.uuid4().hex[:8]}", opts.session_threads, data_plane, CONTROLLER_NAME,
    )
    return handle, True


class NoController(RuntimeError):
    """No controller appeared on the Ray cluster in time (`tessera gateway` exits with status 1)."""


async def find_controller(timeout: float) -> Any:
    """The cluster's controller, waiting up to `timeout` s for it to appear (a gateway may start
    before the process that starts the controller, as pods do)."""
    deadline = time.monotonic() + timeout
    said = 0.0
    while True:
        handle = _existing_controller()
        if handle is not None:
            return handle
        if time.monotonic() >= deadline:
            raise NoController(f"no Tessera controller ({CONTROLLER_NAME!r} in namespace {NAMESPACE!r}) "
                               f"appeared on this Ray cluster within {timeout:.0f}s: start `tessera serve` first")
        if time.monotonic() - said > 10:
            log.info("waiting for the Tessera controller to start (`tessera serve` on this Ray cluster)")
            said = time.monotonic()
        await asyncio.sleep(0.5)


def _stop_controller_blocking(handle: Any, timeout: float = 10.0) -> None:
    ray.kill(handle, no_restart=True)
    # The name is free once Ray has recorded the death; a `tessera serve` starting right after
    # must create a new controller, not find this one.
    deadline = time.monotonic() + timeout
    while _existing_controller() is not None and time.monotonic() < deadline:
        time.sleep(0.05)


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
            # grpc sets SO_REUSEPORT by default on Linux: a second server on a port in use would
            # silently share it. Only when asked to.
            options=[("grpc.so_reuseport", 1 if self.reuse_port else 0)],
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
            dispatcher, self.metrics.gateway, entrypoint, lambda name: name in dispatcher.table.models
        )

    async def _scrape(self, request: Any) -> Any:
        """Prometheus text for the whole cluster: every gateway's requests plus every replica."""
        from aiohttp import web

        try:
            snapshot, requests = await self.controller.cluster_metrics.remote(
                self.gateway_id, self.metrics.gateway.snapshot())
        except Exception as exc:  # noqa: BLE001 - still serve this gateway's own metrics
            log.warning("cluster metrics unavailable: %s", exc)
            snapshot = requests = None
        return web.Response(body=self.metrics.render(snapshot, requests), headers={"Content-Type": CONTENT_TYPE})

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


def new_gateway_id() -> str:
    """Unique across the cluster's nodes and processes (its load reports are keyed by it)."""
    return f"gateway-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def gateway_argv(opts: ServeOptions, ray_address: str, grpc_port: int, rest_port: int | None) -> list[str]:
    """The `tessera gateway` command line of one more gateway process of `tessera serve`: the same
    gateway flags, the ports the first gateway bound, shared with SO_REUSEPORT."""
    argv = [
        sys.executable, "-m", "cluster.cli", "gateway", f"--ray_address={ray_address}", f"--host={opts.host}",
        f"--port={grpc_port}", f"--rest_api_port={rest_port or 0}", "--reuse_port",
        f"--rest_api_timeout_in_ms={opts.rest_api_timeout_in_ms}",
        f"--enable_serialization_as_tensor_content={str(opts.serialize_as_tensor_content).lower()}",
        f"--max_request_fill_bytes={opts.max_request_fill_bytes}",
        f"--data_plane_max_frame_bytes={opts.data_plane_max_frame_bytes}", f"--log_format={opts.log_format}",
        f"--exit_with_parent={os.getpid()}",
    ]
    if opts.ssl_config_file:
        argv.append(f"--ssl_config_file={opts.ssl_config_file}")
    if opts.monitoring_config_file:
        argv.append(f"--monitoring_config_file={opts.monitoring_config_file}")
    return argv


class GatewayProcess:
    """One `tessera gateway` subprocess of `tessera serve`, restarted if it dies while serving."""

    def __init__(self, argv: list[str], index: int) -> None:
        self.index = index
        self.gateway_id = new_gateway_id()
        self.argv = [*argv, f"--gateway_id={self.gateway_id}"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        # Same stdout/stderr as `tessera serve`: its log lines show up where the server's do.
        self.proc = subprocess.Popen(self.argv)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """Waits for it to exit (SIGKILL after `timeout` s); its exit status."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("gateway process %d did not exit %.0fs after SIGTERM: killed", self.proc.pid, timeout)
            self.proc.kill()
            return self.proc.wait(10)


class TesseraServer:
    """`tessera serve`: start() brings the cluster up, stop() drains every gateway and tears it down.

    `options.gateway_processes` gateways: this process runs the first one (none if 0: a
    controller-only process, for clusters whose gateways run elsewhere); the others are
    subprocesses on the same ports.
    """

    def __init__(self, options: ServeOptions, config: ServerConfig) -> None:
        self.options = options
        self.config = config
        self.gateway: Gateway | None = None
        self.processes: list[GatewayProcess] = []
        self._controller: Any = None
        self._config_poller: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    # The one gateway in this process, as tests and the CLI see it.
    @property
    def dispatcher(self) -> Dispatcher:
        assert self.gateway is not None, "start() first, with at least one gateway process"
        return self.gateway.dispatcher

    @property
    def grpc_port(self) -> int | None:
        return self.gateway.grpc_port if self.gateway is not None else None

    @property
    def rest_port(self) -> int | None:
        return self.gateway.rest_port if self.gateway is not None else None

    @property
    def metrics(self) -> MetricsExporter:
        assert self.gateway is not None, "start() first"
        return self.gateway.metrics

    @property
    def controller(self) -> Any:
        return self._controller

    async def start(self) -> None:
        opts = self.options
        # Started here or adopted: either way this `tessera serve` stops it on SIGTERM.
        self._controller, _ = start_controller(opts)
        # The config of the `tessera serve` being started is the user's newest word.
        await self._controller.set_config.remote(self.config)
        count = opts.gateway_processes
        if count >= 1:
            self.gateway = Gateway(opts, self._controller, reuse_port=count > 1)
            await self.gateway.start()
        if count > 1:
            assert self.gateway is not None and self.gateway.grpc_port is not None
            address = ray.get_runtime_context().gcs_address
            argv = gateway_argv(opts, address, self.gateway.grpc_port, self.gateway.rest_port)
            self.processes = [GatewayProcess(argv, i) for i in range(1, count)]
            for process in self.processes:
                process.start()
            await self._wait_joined(timeout=120.0)
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            # One poller per cluster, here: gateways never re-send a config they read earlier.
            self._config_poller = asyncio.get_running_loop().create_task(self._poll_config_file())

    async def _wait_joined(self, timeout: float) -> None:
        """Until every gateway process has reported to the controller (it serves from then on)."""
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if not process.running():
                    raise RuntimeError(f"gateway process {process.index} exited at start "
                                       f"(status {process.proc.returncode if process.proc else None})")
            reported = set(await self._controller.gateways.remote())
            joined = sum(p.gateway_id in reported for p in self.processes)
            if joined == len(self.processes):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {joined} of {len(self.processes)} gateway processes joined "
                                   f"the controller within {timeout:.0f}s")
            await asyncio.sleep(0.2)

    async def _supervise(self) -> None:
        """A gateway process that dies while serving is started again (it joins at once)."""
        while not self._stopping:
            await asyncio.sleep(1.0)
            for process in self.processes:
                if not self._stopping and not process.running():
                    status = process.proc.returncode if process.proc is not None else None
                    process.restarts += 1
                    log.warning("gateway process %d exited (status %s): starting it again", process.index, status)
                    process.start()

    async def _reload(self, config: ServerConfig) -> None:
        """A new model config (from the config file): the controller applies and keeps it."""
        await self._controller.set_config.remote(config)
        self.config = config

    async def wait_ready(self, timeout: float = 60.0) -> bool:
        """Waits until every configured model has an available version (and the gateway knows)."""
        if self.gateway is not None:
            return await self.gateway.wait_ready(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            table = await self._controller.get_routing_table.remote(-1, 0.0)
            if table.models and table.ready():
                return True
            await asyncio.sleep(0.2)
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
        """Drains every gateway (this one and the subprocesses, at once: up to `grace` for their
        in-flight requests), then stops the controller and its replicas."""
        self._stopping = True
        for task in (self._config_poller, self._supervisor):
            if task is not None:
                task.cancel()
        for process in self.processes:
            process.terminate()
        if self.gateway is not None:
            await self.gateway.stop(grace)
        await asyncio.gather(*(asyncio.to_thread(p.wait, grace + 20.0) for p in self.processes))
        if self._controller is not None:
            try:
                await self._controller.shutdown.remote()
            finally:
                await asyncio.to_thread(_stop_controller_blocking, self._controller)
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
    collection walks only what was made since. Only `tessera serve`'s and `tessera gateway`'s own
    processes do this: a test process that starts servers keeps its collector as it is.
    """
    gc.collect()  # what is garbage already is freed, not frozen
    gc.freeze()


async def _serve_until_signal(server: TesseraServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        await server.start()
    except BaseException:
        # The controller is detached: a start that fails half way must not leave it (and its
        # replicas, and gateway processes) running on a shared Ray cluster.
        await server.stop(grace=0)
        raise
    _freeze_startup_objects()
    count = server.options.gateway_processes
    if server.gateway is not None:
        print(f"Tessera gRPC on {server.options.host}:{server.grpc_port}"
              + (f", REST on {server.options.host}:{server.rest_port}" if server.rest_port else "")
              + (f" ({count} gateway processes)" if count > 1 else ""), flush=True)
    else:
        print("Tessera controller running, no gateway in this process (join with `tessera gateway`)", flush=True)
    ready = asyncio.ensure_future(server.wait_ready(timeout=3600))
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({ready, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done and ready.result():
        print(f"All models available after {time.monotonic() - started:.1f}s", flush=True)
        _freeze_startup_objects()
    await waiter
    ready.cancel()
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


async def _gateway_until_signal(options: ServeOptions, reuse_port: bool, parent: int | None, gateway_id: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    controller = await find_controller(options.controller_wait_seconds)
    gateway = Gateway(options, controller, reuse_port=reuse_port, gateway_id=gateway_id)
    await gateway.start()
    _freeze_startup_objects()
    print(f"Tessera gateway {gateway.gateway_id}: gRPC on {options.host}:{gateway.grpc_port}"
          + (f", REST on {options.host}:{gateway.rest_port}" if gateway.rest_port else ""), flush=True)
    if parent is not None:
        # A gateway process of `tessera serve` ends with it, even if it was SIGKILLed.
        async def watch_parent() -> None:
            while os.getppid() == parent:
                await asyncio.sleep(1.0)
            log.warning("the `tessera serve` that started this gateway is gone: stopping")
            stop.set()

        watcher = loop.create_task(watch_parent())
    await stop.wait()
    if parent is not None:
        watcher.cancel()
    print(f"Gateway {gateway.gateway_id} shutting down: draining in-flight requests", flush=True)
    await gateway.stop()


def gateway_main(argv: Sequence[str]) -> int:
    """`tessera gateway`: one gateway joining the controller of the Ray cluster at --ray_address."""
    from cluster.flags import parse_gateway_args
    from cluster.logs import configure_logging

    args = parse_gateway_args(list(argv))
    configure_logging(args.options)
    init_ray(args.options)
    try:
        asyncio.run(_gateway_until_signal(args.options, args.reuse_port, args.exit_with_parent, args.gateway_id))
    except NoController as exc:
        print(f"tessera gateway: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    return 0
