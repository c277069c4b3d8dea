"""The composition root: Ray, the controller, the gateways, wired.

A cluster has ONE controller, a detached Ray actor named `CONTROLLER_NAME` in the "tessera"
namespace (`cluster.controller.named` starts, finds and stops it), and any number of gateways that
join it:

- `Gateway` (`cluster.gateway.gateway`) is one gateway: gRPC (and REST, when enabled) on this
  process's asyncio loop, in front of a Dispatcher that follows the controller's routing table.
  A gateway owns nothing but its sockets.
- `TesseraServer` (`tessera serve`) starts the controller (or adopts the one already running on
  `--ray_address`), gives it the model config, polls `--model_config_file`, runs one `Gateway` in
  this process and `--gateway_processes - 1` more as `tessera gateway` subprocesses on the same
  ports (SO_REUSEPORT, `cluster.gateway.processes`), and, on stop, drains them all and then stops
  the controller and replicas.
- `tessera gateway` runs only a `Gateway`, joining the controller of an existing cluster; it never
  stops the controller. Both commands' processes (signals, start-up, drain) are `cluster.commands`.

The controller and the replicas are Ray actors, so the same code runs on an embedded local Ray (a
laptop) and on a Ray cluster started by KubeRay (`--ray_address`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import ray

from cluster.config import ServeOptions, ServerConfig
from cluster.controller.actor import NAMESPACE
from cluster.controller.named import start_controller, stop_controller_blocking
from cluster.gateway.gateway import Gateway
from cluster.gateway.processes import GatewayProcess, gateway_argv
from cluster.metrics import MetricsExporter
from cluster.routing.dispatcher import Dispatcher

log = logging.getLogger("tessera")


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
            self.gateway.readiness_held = count > 1  # until the other gateway processes have joined
            await self.gateway.start()
        if count > 1:
            assert self.gateway is not None and self.gateway.grpc_port is not None
            address = ray.get_runtime_context().gcs_address
            argv = gateway_argv(opts, address, self.gateway.grpc_port, self.gateway.rest_port)
            self.processes = [GatewayProcess(argv, i) for i in range(1, count)]
            for process in self.processes:
                process.start()
            await self._wait_joined(timeout=120.0)
            self.gateway.readiness_held = False
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
                await asyncio.to_thread(stop_controller_blocking, self._controller)
        log.info("stopped")
