"""A gateway's load, as the controller's autoscaler hears it: requests in flight per model.

Each request counts from its arrival in the dispatcher to its answer (`requests(model)`, an
`InFlight`). Once a period, `LoadReport` tells the controller each model's count averaged over the
period and the period's length; a request that waits for a model with no replica (`demand`) asks
for a report at once, so a model scaled to zero gets a replica without waiting for the period's end.
A failed report is logged and the next period reports again: the controller may be restarting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from cluster.autoscaler.load import InFlight, Load

log = logging.getLogger("tessera.gateway")

# (period in seconds, model -> its load over the period) -> the controller's answer (unused)
ReportLoad = Callable[[float, dict[str, Load]], Awaitable[Any]]


class LoadReport:
    """Requests in flight per model, and the loop that reports them (when given `report`)."""

    def __init__(self, report: ReportLoad | None, interval_s: float = 1.0) -> None:
        self._report = report
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self._now = asyncio.Event()  # a request waits for a model with no replica: report at once
        self._requests: dict[str, InFlight] = {}  # requests per model, from arrival to answer
        self._demand_at: dict[str, float] = {}  # model -> when its last waiting request asked for a report

    def start(self, models: Callable[[], Iterable[str]]) -> None:
        """Starts reporting, once a period, the load of each of `models()` (if there is a `report`)."""
        if self._report is not None:
            self._task = asyncio.get_running_loop().create_task(self._loop(models))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def requests(self, model: str) -> InFlight:
        """`model`'s requests in flight (started and finished by the dispatcher)."""
        requests = self._requests.get(model)
        if requests is None:
            requests = self._requests[model] = InFlight(time.monotonic())
        return requests

    def forget(self, model: str) -> None:
        """`model` left the routing table; its requests still running hold their own reference."""
        self._requests.pop(model, None)
        self._demand_at.pop(model, None)

    def demand(self, model: str, now: float) -> None:
        """A request for a model with no replica (scaled to zero, or its last one being replaced)
        waits in the coalescer for one, within its deadline; the controller hears of it at once
        (a load report now, not at the end of the period) and starts one. At most one early
        report per model per 0.2 s, however many requests wait."""
        if self._report is not None and now - self._demand_at.get(model, -1.0) >= 0.2:
            self._demand_at[model] = now
            self._now.set()

    async def _loop(self, models: Callable[[], Iterable[str]]) -> None:
        """Tells the controller, once a period, this gateway's requests in flight per model
        averaged over the period (for autoscaling), and the period's length."""
        assert self._report is not None
        last = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self._now.wait(), self._interval)
            except TimeoutError:
                pass
            self._now.clear()
            now = time.monotonic()
            period, last = now - last, now
            loads = {name: self.requests(name).take(now) for name in models()}
            try:
                await self._report(period, loads)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the controller may be restarting
                log.debug("load report failed: %s", exc)
