"""The `tessera serve` and `tessera gateway` processes: flags in, a server up until a signal, drained out.

`serve_main` starts a `cluster.app.TesseraServer` (the controller, the config, the gateways) on
this process's loop, prints where it listens and when every model is available, and on SIGTERM or
SIGINT drains and stops it all. `gateway_main` runs one `Gateway` that joins the controller of an
existing cluster, and ends with the `tessera serve` that started it, if one did. Both move the
objects alive after start-up out of the garbage collector's sight (`_freeze_startup_objects`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

import ray

from cluster import heap
from cluster.app import TesseraServer, init_ray
from cluster.config import ServeOptions
from cluster.controller.named import NoController, find_controller
from cluster.gateway.gateway import Gateway

log = logging.getLogger("tessera")


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


def serve_main(argv: Sequence[str]) -> int:
    """`tessera serve` with TF Serving's flags (see cluster.flags)."""
    from cluster.flags.serve import parse_serve_args
    from cluster.logs import configure_logging

    options, config = parse_serve_args(list(argv))
    configure_logging(options)
    if options.gateway_processes:  # this process runs a gateway
        heap.retain_freed_memory(options.gateway_retained_heap_bytes)
    if not options.ray_address:
        # The embedded Ray's processes (its replica hosts above all: a 100 MB request in, 100 MB
        # out) get the same allocator settings, as glibc reads them at their start.
        os.environ.update(heap.environment(options.gateway_retained_heap_bytes))
    started_ray = init_ray(options)
    if options.gateway_processes:
        # After Ray's start: ray.init forks its daemons, and a fork write-protects every page the
        # process has (the next write to each faults again), so pages faulted in before it are lost.
        heap.prefault(options.gateway_prefaulted_heap_bytes, options.gateway_retained_heap_bytes)
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
    from cluster.flags.gateway import parse_gateway_args
    from cluster.logs import configure_logging

    args = parse_gateway_args(list(argv))
    configure_logging(args.options)
    heap.retain_freed_memory(args.options.gateway_retained_heap_bytes)
    init_ray(args.options)
    heap.prefault(args.options.gateway_prefaulted_heap_bytes, args.options.gateway_retained_heap_bytes)  # after Ray's forks
    try:
        asyncio.run(_gateway_until_signal(args.options, args.reuse_port, args.exit_with_parent, args.gateway_id))
    except NoController as exc:
        print(f"tessera gateway: {exc}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    return 0
