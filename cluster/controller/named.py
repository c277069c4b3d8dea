"""The cluster's one controller: a detached Ray actor named `CONTROLLER_NAME` in namespace
`NAMESPACE`, started (or adopted) by `tessera serve`, found by every gateway, stopped only by the
`tessera serve` that owns it."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
import uuid
from typing import Any, cast

import ray

from cluster.config import BatchingConfig, ServeOptions
from cluster.controller.actor import CONTROLLER_NAME, NAMESPACE, ControllerActor
from cluster.controller.options import ControllerOptions
from cluster.controller.packing import PlacementOptions
from cluster.replica.data_plane import DataPlaneConfig
from cluster.serving.planner import RetryPolicy

log = logging.getLogger("tessera")


def controller_options(opts: ServeOptions) -> ControllerOptions:
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


def existing_controller() -> Any | None:
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def start_controller(opts: ServeOptions) -> tuple[Any, bool]:
    """The cluster's controller: started here, or the one already running. (handle, started here)"""
    existing = existing_controller()
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
        max_concurrency=1000, max_restarts=-1, scheduling_strategy=this_node(),
    ).remote(
        controller_options(opts), opts.replica_num_cpus, opts.enable_model_warmup, batching, opts.log_format,
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
        handle = existing_controller()
        if handle is not None:
            return handle
        if time.monotonic() >= deadline:
            raise NoController(f"no Tessera controller ({CONTROLLER_NAME!r} in namespace {NAMESPACE!r}) "
                               f"appeared on this Ray cluster within {timeout:.0f}s: start `tessera serve` first")
        if time.monotonic() - said > 10:
            log.info("waiting for the Tessera controller to start (`tessera serve` on this Ray cluster)")
            said = time.monotonic()
        await asyncio.sleep(0.5)


def stop_controller_blocking(handle: Any, timeout: float = 10.0) -> None:
    ray.kill(handle, no_restart=True)
    # The name is free once Ray has recorded the death; a `tessera serve` starting right after
    # must create a new controller, not find this one.
    deadline = time.monotonic() + timeout
    while existing_controller() is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def this_node() -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # Soft: if this node is gone the controller may run elsewhere rather than not at all.
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
