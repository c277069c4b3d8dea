"""How many replicas a model should have: a pure function of the load, the state and the clock.

`decide(config, state, current, load, now)` returns the replica count to move to and the state to
remember until the next decision. `load` is the model's requests in flight *averaged over time*
(every gateway's, summed; see `cluster.autoscaler.load`), never a single sample: at low
concurrency a sample of 0 in the middle of steady load would read as idle.

The rules, and why:

- **Bounds** (`min_replicas`, `max_replicas`) win at once, without delay: a config change applies.
- **Up**: when the load needs more than `current` replicas at `target_ongoing_requests` each
  (load > current * target), add one replica (or a quarter of the shortfall, when it is more than
  four), once `max(upscale_delay_s, look_back_s)` have passed since the last change took effect,
  so the load is judged on the new count. In-flight counts overstate the need while queues are
  long (a saturated count reads as needing far more than the smallest count that is not), so a
  jump to ceil(load / target) overshoots and must come back down; stepping up from below stops
  at the smallest count that holds the load. The up decision takes the lower of the look-back
  average and the newest period, and none is made while answers outpace arrivals: a backlog that
  drains after a burst or a scale-up needs no more replicas, the count already keeps up.
  Right after a scale-down the upscale is not delayed: that scale-down was one too many.
- **Down, with hysteresis**: only while the load fits one replica fewer with room to spare,
  load <= (current - 1) * target * (1 - hysteresis). Between that and the up threshold lies a dead
  band in which nothing changes. The load must have stayed below the down threshold for
  `downscale_delay_s` without a break (a dip is not a trend), and then the count steps down one
  replica at a time, each step `look_back_s` after the last (so the load is judged again on the
  smaller count) for as long as the load stays low: after a burst the count comes back within
  `downscale_delay_s` plus one `look_back_s` per step.
- **Scale to zero** (`min_replicas` 0 only): the load rules never take the count below 1; a model
  with no request arriving or in flight for `scale_to_zero_idle_s` goes to 0 replicas from any
  count (unloaded everywhere; it stays configured). Idle means the look-back saw no arrival and
  nothing in flight, so a single request restarts the idle clock.
- **From zero, at once**: at 0 replicas any demand — a request arrived or waiting (its gateway
  holds it and reports at once), or a version waiting for a replica to load on (`pending`) — goes
  to 1 replica without delay: nothing can serve meanwhile, and the load measured while nothing
  serves says nothing about how many replicas it needs (the normal rules take it from 1).
- **No flapping**: more replicas shorten queues, so the same traffic reads as fewer requests in
  flight on more replicas (Ray Serve's users see the count see-saw). Every scale-up from n at an
  arrival rate r records that n replicas are too few for r, and the count does not go down to n
  again until the rate falls clearly below r (by the hysteresis fraction). The rate, unlike the
  in-flight count, does not depend on the replica count under open-loop traffic. (A scale-up
  while a backlog drains, answers outpacing arrivals, proves nothing about the traffic and
  records nothing.)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from cluster.autoscaler.load import Load

_EPSILON = 1e-9  # a load of exactly k * target needs k replicas, whatever the float rounding
UPSCALE_STEP = 0.25  # a scale-up adds one replica, or this fraction of the way when far behind


class Direction(enum.IntEnum):
    DOWN = -1
    NONE = 0
    UP = 1


def direction_of(current: int, desired: int) -> Direction:
    """The direction of a change from `current` to `desired` replicas."""
    return Direction.UP if desired > current else Direction.DOWN if desired < current else Direction.NONE


@dataclass(frozen=True)
class AutoscalingConfig:
    """One model's autoscaling settings (the flags, overridden by --autoscaling_config_file)."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float = 8.0  # per replica
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 30.0
    look_back_s: float = 3.0  # the load is the time average over this long
    hysteresis: float = 0.2  # the down threshold sits this fraction below one replica fewer's worth
    scale_to_zero_idle_s: float = 300.0  # min_replicas 0: to 0 replicas after this long with no request

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"target_ongoing_requests must be positive, got {self.target_ongoing_requests}")
        if not 0 <= self.hysteresis < 1:
            raise ValueError(f"hysteresis must be in [0, 1), got {self.hysteresis}")
        for name in ("upscale_delay_s", "downscale_delay_s", "look_back_s", "scale_to_zero_idle_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        return self.max_replicas > self.min_replicas

    @property
    def scales_to_zero(self) -> bool:
        return self.min_replicas == 0


@dataclass(frozen=True)
class ScalingState:
    """What `decide` remembers between decisions."""

    last_change: float  # when the count last changed (or the model was added)
    last_direction: Direction = Direction.NONE
    low_since: float | None = None  # since when the load has been below the down threshold
    too_few: tuple[int, float] | None = None  # (n, rate): n replicas proved too few at that arrival rate
    idle_since: float | None = None  # since when no request has arrived or been in flight


def _busy(load: Load) -> bool:
    """Whether any request arrived or was in flight over the load's period."""
    return load.in_flight_requests > 0 or load.rate > 0


def decide(
    config: AutoscalingConfig,
    state: ScalingState,
    current: int,
    load: Load,
    now: float,
    recent: Load | None = None,
    *,
    pending: bool = False,
) -> tuple[int, ScalingState]:
    """The replica count to move to now (== `current`: no change) and the state to keep.

    `load` is the average over the look-back; `recent` the newest second's (default: `load`).
    `pending`: a version waits for a replica to load on (demand, for a model at zero).
    """
    lo, hi = config.min_replicas, config.max_replicas
    if current < lo or current > hi:
        desired = min(max(current, lo), hi)
        return desired, ScalingState(now, direction_of(current, desired), too_few=state.too_few)

    busy = pending or _busy(load) or (recent is not None and _busy(recent))
    if current == 0:
        if busy:  # cold start: one replica at once; the load rules take it from there
            return 1, ScalingState(now, Direction.UP)
        return 0, state
    if config.scales_to_zero:
        idle_since = None if busy else state.idle_since if state.idle_since is not None else now
        if idle_since is not None and now - idle_since >= config.scale_to_zero_idle_s:
            return 0, ScalingState(now, Direction.DOWN, idle_since=idle_since)
        state = replace(state, idle_since=idle_since)
        lo = 1  # the load rules stop at one replica: below that only the idle rule goes

    target = config.target_ongoing_requests
    # Up only on load that is still there: a backlog draining after a scale-up reads high on
    # average but falls in the newest period.
    up_load = load.in_flight_requests if recent is None else min(load.in_flight_requests, recent.in_flight_requests)
    wanted = math.ceil(up_load / target - _EPSILON) if math.isfinite(up_load) else hi
    needed = min(max(wanted, lo), hi)
    if needed > current:
        needed = current + max(1, int((needed - current) * UPSCALE_STEP))
    since_change = now - state.last_change
    # A backlog that drains (answers outpace arrivals) needs no more replicas: these keep up.
    draining = load.done_rate > load.rate * (1 + config.hysteresis)
    if needed > current and not draining:
        # Judged again only once the load seen covers the last change (look_back_s after it).
        wait = max(config.upscale_delay_s, config.look_back_s)
        if not (state.last_direction is Direction.DOWN or since_change >= wait):
            return current, replace(state, low_since=None)
        # `current` replicas are too few for this traffic: not back down to it until it falls.
        return needed, ScalingState(now, Direction.UP, too_few=(current, load.rate), idle_since=state.idle_since)
    if needed > current:
        return current, replace(state, low_since=None)

    room = 1.0 - config.hysteresis
    low = current > lo and load.in_flight_requests <= (current - 1) * target * room
    if low and state.too_few is not None:
        count, rate = state.too_few
        low = current - 1 > count or load.rate <= rate * room
    if not low:
        return current, replace(state, low_since=None)
    low_since = state.low_since if state.low_since is not None else now
    if now - low_since >= config.downscale_delay_s and since_change >= config.look_back_s:
        # low_since is kept: the next step down needs only the load to stay low at the new count.
        return current - 1, ScalingState(now, Direction.DOWN, low_since, state.too_few, state.idle_since)
    return current, replace(state, low_since=low_since)
