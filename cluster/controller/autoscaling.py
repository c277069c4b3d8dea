"""The controller's autoscaling: the gateways' load reports in, each model's replica count out.

Gateways report each model's load (requests in flight averaged over time, arrival and answer
rates) about once a second; `Autoscaling` keeps them in a window, asks each model's scaler
(`cluster.autoscaler.scaler`, the pure policy) for a replica count at every tick, and hands a
change to the controller's one resize path. A change is in effect once a published routing
table shows it (`took_effect`): the autoscaling delays count from there.

A model's autoscaling config is the flags' (`ControllerOptions`), overridden by its entry in
--autoscaling_config_file (`autoscaling_config_for`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from cluster import stats
from cluster.autoscaler.load import Load, LoadWindow
from cluster.autoscaler.scaler import AutoscalingConfig, ModelScaler
from cluster.config import ModelAutoscaling, ModelConfig
from cluster.controller.model_state import ModelState, Scaling
from cluster.controller.options import ControllerOptions
from cluster.routing.table import RoutingTable
from cluster.types import ServableState

log = logging.getLogger("tessera.controller")

_LOADING = (ServableState.START, ServableState.LOADING)


def autoscaling_config_for(options: ControllerOptions, model: ModelConfig) -> AutoscalingConfig:
    """The flags' autoscaling settings, overridden by the model's --autoscaling_config_file entry."""
    o, m = options, options.model_autoscaling.get(model.name, ModelAutoscaling())
    low = m.min_replicas if m.min_replicas is not None else model.num_replicas or o.num_replicas
    # A model that may scale to zero may still have one replica when asked for.
    high = m.max_replicas if m.max_replicas is not None else max(low, o.max_replicas or low, 1 if low == 0 else 0)
    if m.min_replicas is None:
        low = min(low, high)  # a model's own maximum wins over the flags' minimum
    target = o.target_ongoing_requests if m.target_ongoing_requests is None else m.target_ongoing_requests
    return AutoscalingConfig(
        min_replicas=low,
        max_replicas=high,
        target_ongoing_requests=target,
        upscale_delay_s=o.upscale_delay_s if m.upscale_delay_s is None else m.upscale_delay_s,
        downscale_delay_s=o.downscale_delay_s if m.downscale_delay_s is None else m.downscale_delay_s,
        look_back_s=o.look_back_s,
        scale_to_zero_idle_s=o.scale_to_zero_idle_s if m.scale_to_zero_idle_s is None else m.scale_to_zero_idle_s,
    )


class Autoscaling:
    """Every gateway's load reports and request counters, and the scaling decisions made from them."""

    def __init__(self, options: ControllerOptions, clock: Callable[[], float]) -> None:
        self._options = options
        self._clock = clock
        self._load_window = LoadWindow(options.look_back_s, options.load_report_ttl_s)
        self._requests = stats.RequestTotals(options.load_report_ttl_s)  # every gateway's counters

    def report(
        self,
        gateway: str,
        period_s: float,
        loads: Mapping[str, Load],
        requests: stats.RequestStats | None,
        models: Mapping[str, ModelState],
        resize: Callable[[ModelState, int], None],
    ) -> None:
        """Takes a gateway's report (see `Controller.report_load`): a model of `models` with no
        replica and some load scales up at once (a cold start), without waiting for the tick."""
        now = self._clock()
        self._load_window.add(gateway, now, period_s, loads)
        if requests is not None:
            self._requests.update(gateway, now, requests)
        for name, load in loads.items():
            model = models.get(name)
            if model is not None and not model.replicas.members and (load[0] > 0 or load[1] > 0):
                self.autoscale(model, resize)

    def load(self, name: str, now: float | None = None) -> Load:
        """Model `name`'s load at `now` (default: the clock's now): every gateway's, averaged
        over the look-back window."""
        return self._load_window.load(name, self._clock() if now is None else now)

    def request_totals(self, gateway: str = "", requests: stats.RequestStats | None = None) -> stats.RequestStats:
        """Every gateway's request counters summed (a gateway that left still counts), after
        taking `gateway`'s newest `requests` if given (the gateway being scraped)."""
        now = self._clock()
        if gateway and requests is not None:
            self._requests.update(gateway, now, requests)
        return self._requests.total(now)

    def gateways(self) -> list[str]:
        """The gateways that reported within the load-report TTL."""
        return self._load_window.gateways(self._clock())

    def configure(self, model: ModelState, config: ModelConfig, resize: Callable[[ModelState, int], None]) -> None:
        """`model` is updated to `config`: an autoscaled model's scaler takes the new bounds (they
        apply at the next tick); a model no longer autoscaled gets its configured count."""
        scaling = autoscaling_config_for(self._options, config)
        if scaling.enabled:
            # An autoscaled model's count is its scaler's: new bounds apply at the next tick.
            if model.scaler is None:
                model.scaler = ModelScaler(scaling, self._clock())
            else:
                model.scaler.config = scaling
        else:
            model.scaler = model.scaling = None
            count = scaling.min_replicas
            if count != len(model.replicas):
                log.info("model %s: %d replica(s) configured, was %d", config.name, count, len(model.replicas))
                resize(model, count)

    def autoscale(self, model: ModelState, resize: Callable[[ModelState, int], None]) -> None:
        """Asks `model`'s scaler for a replica count now; a change goes through `resize`."""
        if model.scaler is None:
            return
        now = self._clock()
        current = len(model.replicas)  # starting replicas included
        name, window = model.config.name, self._load_window
        # No second scale-up while the last one's replicas still start: the load is judged on them.
        growing = model.scaling is not None and model.scaling.up
        load = window.load(name, now)
        # A version waiting to load (or loading) is demand too: a new version of a model at zero
        # loads (so its errors show), and no model idles to zero in the middle of a load.
        pending = any(s.state in _LOADING for s in model.stream.statuses())
        desired = model.scaler.decide(
            now, current, load, window.recent(name, now), may_grow=not growing, pending=pending
        )
        if desired == current:
            return
        model.scaling = Scaling(current, desired, now)  # in effect (scaler.applied) at a publish: took_effect
        resize(model, desired)
        if current == 0:
            log.info("model %s cold start: loading on demand on %d replica(s) (%.1f requests/s waiting%s)",
                     name, desired, load.rate, ", and a new version" if pending else "")
        elif desired == 0:
            model.scaled_to_zero += 1
            model.zero_reason = f"no request for {model.scaler.config.scale_to_zero_idle_s:g}s"
            log.info("model %s scaled to zero: no request for %.0fs, unloading from its %d replica(s); "
                     "it loads again on its next request", name, model.scaler.config.scale_to_zero_idle_s, current)
        else:
            log.info("model %s scaling from %d to %d replicas (load %.2f in flight, %.1f requests/s)",
                     name, current, desired, load.in_flight_requests, load.rate)

    def took_effect(self, models: Mapping[str, ModelState], table: RoutingTable) -> None:
        """Tells each model's scaler that its last change took effect, once `table` (published)
        shows it: the autoscaling delays count from here, not from the decision (a new replica
        may take seconds to start and load its versions)."""
        now = self._clock()
        for name, model in models.items():
            change, route = model.scaling, table.models.get(name)
            if change is None or model.scaler is None or route is None:
                continue
            if change.up and len(route.replicas) < change.target:
                continue  # still starting (or one died meanwhile: it counts once replaced)
            model.scaling = None
            model.scaler.applied(now)
            if change.before == 0 and change.up:
                model.cold_start_seconds.observe(now - change.at)
                log.info("model %s cold start done: serving on %d replica(s) %.2fs after the first request",
                         name, len(route.replicas), now - change.at)
            else:
                log.info("model %s scaled from %d to %d replicas: %d in the routing table",
                         name, change.before, change.target, len(route.replicas))
