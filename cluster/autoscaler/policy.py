"""How many replicas a model should have: a pure function, the clock passed in.

Ray Serve's users see oscillation: a scale-up lowers each replica's queue, the lower number reads
as "too many replicas", one is removed, queues grow again, and so on. This policy damps it:

- Scale up at once to what the load needs, ceil(total_in_flight / target_per_replica), once
  `upscale_delay_s` has passed since the last change (time for new replicas to start taking load
  before we judge again). Right after a scale-down the upscale is not delayed: that scale-down
  was evidently one too many, and waiting would only add latency.
- Scale down one replica at a time, only when the load would still fit under the target after
  removing it (total_in_flight <= (current - 1) * target_per_replica), and only once
  `downscale_delay_s` has passed since the last change in either direction. Between those two
  thresholds lies a dead band of one replica's worth of load in which nothing changes.
- `min_replicas`/`max_replicas` always win, without delay (a config change must apply).

Feed it a smoothed load (e.g. the mean in-flight over a look-back window), not a single sample.
"""

from __future__ import annotations

import enum
import math


class Direction(enum.IntEnum):
    DOWN = -1
    NONE = 0
    UP = 1


def direction_of(current: int, desired: int) -> Direction:
    """The direction of a change from `current` to `desired` replicas (to record as last_direction)."""
    return Direction.UP if desired > current else Direction.DOWN if desired < current else Direction.NONE


def desired_replicas(
    current: int,
    total_in_flight: float,
    target_per_replica: float,
    min_replicas: int,
    max_replicas: int,
    now: float,
    last_change_time: float,
    upscale_delay_s: float,
    downscale_delay_s: float,
    last_direction: Direction,
) -> int:
    """The replica count to move to now (== `current` when nothing should change)."""
    if target_per_replica <= 0:
        raise ValueError(f"target_per_replica must be positive, got {target_per_replica}")
    if not 0 <= min_replicas <= max_replicas:
        raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {min_replicas}, {max_replicas}")
    if current < min_replicas or current > max_replicas:
        return min(max(current, min_replicas), max_replicas)

    since_change = now - last_change_time
    needed = min(max(math.ceil(total_in_flight / target_per_replica), min_replicas), max_replicas)
    if needed > current:
        if last_direction is Direction.DOWN or since_change >= upscale_delay_s:
            return needed
        return current
    fits_with_one_less = total_in_flight <= (current - 1) * target_per_replica
    if current > min_replicas and fits_with_one_less and since_change >= downscale_delay_s:
        return current - 1
    return current
