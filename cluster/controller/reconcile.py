"""One tick of the controller's loop: list the due sources, autoscale, and start the loads and
unloads the lifecycle planner asks for; and the steps themselves (a source's listing taken, a
version loaded on every replica of its model, a version unloaded from them).

Functions over the controller's per-model state (`model_state.py`); the controller
(`Controller.reconcile`) runs a tick, publishes, and owns the tasks the steps run in. A version's
path on storage goes through the controller's `PathResolver` before replicas load it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from cluster.controller.member import unwrap_error
from cluster.controller.model_state import ModelState
from cluster.controller.options import ControllerOptions, PathResolver
from cluster.serving.planner import ActionKind
from cluster.serving.source import SourceReport

log = logging.getLogger("tessera.controller")


Step = Callable[[ModelState, int], Coroutine[Any, Any, None]]  # (model, version) -> the step's coroutine


async def tick(
    models: Mapping[str, ModelState],
    poll_seconds: float,
    clock: Callable[[], float],
    autoscale: Callable[[ModelState], None],
    spawn: Callable[[Coroutine[Any, Any, None]], None],
    load_step: Step,
    unload_step: Step,
) -> bool:
    """One tick: poll sources, autoscale, start (`spawn`) the planned loads and unloads.
    True when a load or an unload started (the routing table is then published)."""
    changed = False
    states = list(models.values())
    due = [m for m in states if source_due(m, poll_seconds, clock())]
    # Every due source listed in one worker thread: a thousand models cost one hop, not a
    # thousand (each listing is a few system calls on a local disk).
    reports = await asyncio.to_thread(lambda: [m.source.poll_once() for m in due]) if due else []
    now = clock()
    for model, report in zip(due, reports, strict=True):
        model.last_poll = now
        take_report(model, report)
    for model in states:
        if models.get(model.config.name) is not model:
            continue  # removed while the sources were listed
        autoscale(model)
        for action in model.stream.plan(clock()):
            if action.kind is ActionKind.LOAD:
                if not model.replicas.ready():
                    continue  # no replica has started yet: planned again at the next tick
                model.stream.load_started(action.version)
                spawn(load_step(model, action.version))
            else:
                model.stream.unload_started(action.version)
                spawn(unload_step(model, action.version))
            changed = True
    return changed


def next_tick_in(models: Mapping[str, ModelState], options: ControllerOptions, now: float) -> float:
    """Seconds until the next tick, unless something wakes the loop first."""
    poll = options.poll_seconds
    # Health checks and autoscaling tick even when storage is polled only once.
    timeout = min(poll, options.tick_seconds) if poll > 0 else options.tick_seconds
    retry_at = [t for m in models.values() if (t := m.stream.next_retry_at()) is not None]
    if retry_at:
        until_retry = max(0.0, min(retry_at) - now)
        timeout = min(timeout, until_retry)
    return timeout


def source_due(model: ModelState, poll_seconds: float, now: float) -> bool:
    """--file_system_poll_wait_seconds: > 0 polls that often, otherwise once (and on reloads)."""
    if model.last_poll is None or model.source.pending:  # pending: a version still being written
        return True
    return poll_seconds > 0 and now - model.last_poll >= poll_seconds * 0.999


def take_report(model: ModelState, report: SourceReport) -> None:
    """The source's listing becomes the model's aspired versions (a failed one keeps them)."""
    if report.aspired is None:  # listing failed: keep what is loaded
        if model.source_error != report.error:
            log.warning("model %s: %s", model.config.name, report.error)
        model.source_error = report.error
        return
    model.source_error = None
    model.paths.update(report.aspired)
    model.stream.set_aspired(report.aspired)


async def load_version(model: ModelState, version: int, resolve_path: PathResolver, clock: Callable[[], float]) -> None:
    """Loads `version` on every replica of `model`; the stream learns whether it did."""
    name, path = model.config.name, model.paths[version]
    started = clock()
    try:
        path = model.load_paths[version] = await resolve_path(model.config, path)
        signatures = await model.replicas.load(version, path, model.config.platform)
    except Exception as exc:  # noqa: BLE001 - any failure fails this version's load
        error = unwrap_error(exc)
        model.stream.load_failed(version, error, clock())
        log.error("model %s version %d failed to load: %s", name, version, error)
    else:
        model.signatures[version] = signatures
        model.stream.load_succeeded(version)
        model.load_seconds.observe(clock() - started)
        log.info("model %s version %d loaded in %.2fs", name, version, clock() - started)


async def unload_version(
    model: ModelState, version: int, drain_seconds: float, publish: Callable[[], Awaitable[None]]
) -> None:
    """Takes `version` out of the routing table (`publish`), lets it drain, unloads it everywhere."""
    await publish()  # out of the routing table first ...
    await asyncio.sleep(drain_seconds)  # ... then in-flight requests drain
    model.stream.unloaded(version, await model.replicas.unload(version))
    model.signatures.pop(version, None)
    model.load_paths.pop(version, None)
    log.info("model %s version %d unloaded", model.config.name, version)
    await publish()
