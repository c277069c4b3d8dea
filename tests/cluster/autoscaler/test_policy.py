"""The pure policy, decision by decision (the whole loop is driven in test_scaler.py)."""

from __future__ import annotations

import math

import pytest

from cluster.autoscaler.load import Load
from cluster.autoscaler.policy import AutoscalingConfig, Direction, ScalingState, decide, direction_of

CONFIG = AutoscalingConfig(1, 10, target_ongoing_requests=2.0, upscale_delay_s=3.0, downscale_delay_s=30.0,
                           look_back_s=3.0, hysteresis=0.2)


def step(current: int, in_flight: float, state: ScalingState | None = None, now: float = 1000.0,
         rate: float = 100.0, config: AutoscalingConfig = CONFIG) -> tuple[int, ScalingState]:
    return decide(config, state or ScalingState(last_change=0.0), current, Load(in_flight, rate), now)


def test_steady_load_inside_the_dead_band_keeps_the_count():
    # On 3 replicas at target 2: up above 6, down at or below 2 * 2 * 0.8 = 3.2.
    for in_flight in (3.3, 4.0, 5.0, 6.0):
        assert step(3, in_flight)[0] == 3


def test_scales_up_one_replica_at_a_time_when_close():
    assert step(2, 9.0)[0] == 3  # needs 5: one step, judged again on 3
    assert step(2, 100.0)[0] == 4  # needs 10: a quarter of the shortfall of 8


def test_upscale_waits_for_the_delay_and_the_look_back_after_a_change():
    state = ScalingState(last_change=100.0, last_direction=Direction.UP)
    assert step(2, 9.0, state, now=102.9)[0] == 2
    assert step(2, 9.0, state, now=103.0)[0] == 3
    slow_window = AutoscalingConfig(1, 10, 2.0, upscale_delay_s=1.0, look_back_s=5.0)
    assert step(2, 9.0, state, now=104.0, config=slow_window)[0] == 2  # the window still shows 2 replicas


def test_upscale_right_after_a_downscale_is_not_delayed():
    state = ScalingState(last_change=100.0, last_direction=Direction.DOWN)
    assert step(2, 9.0, state, now=100.5)[0] == 3


def test_upscale_does_not_chase_a_draining_backlog():
    config, state = CONFIG, ScalingState(last_change=0.0)
    high, falling = Load(9.0, 100.0), Load(3.0, 100.0)
    assert decide(config, state, 2, high, 1000.0, recent=falling)[0] == 2
    assert decide(config, state, 2, high, 1000.0, recent=high)[0] == 3


def test_downscale_needs_the_load_low_for_the_whole_delay():
    count, state = step(4, 2.0, now=1000.0)  # 2 <= 3 * 2 * 0.8: low from now on
    assert count == 4 and state.low_since == 1000.0
    count, state = step(4, 2.0, state, now=1029.0)
    assert count == 4
    count, broken = step(4, 5.0, state, now=1029.5)  # above the down threshold: the clock restarts
    assert count == 4 and broken.low_since is None
    count, state = step(4, 2.0, state, now=1030.0)
    assert count == 3 and state.last_direction is Direction.DOWN


def test_after_the_first_step_down_the_next_needs_only_the_look_back():
    state = ScalingState(last_change=1000.0, last_direction=Direction.DOWN, low_since=960.0)
    assert step(6, 0.5, state, now=1002.0)[0] == 6  # the window still shows 7 replicas' load
    assert step(6, 0.5, state, now=1003.0)[0] == 5


def test_never_below_min():
    assert step(1, 0.0)[0] == 1


def test_bounds_apply_at_once_without_delay():
    state = ScalingState(last_change=999.0, last_direction=Direction.UP)
    assert step(12, 100.0, state)[0] == 10
    assert step(1, 0.0, state, config=AutoscalingConfig(3, 5))[0] == 3


def test_an_upscale_remembers_the_count_was_too_few_at_that_rate():
    count, state = step(2, 9.0, rate=500.0)
    assert (count, state.too_few) == (3, (2, 500.0))
    # Later, on 3 replicas, the in-flight count reads low (shorter queues) at the same traffic:
    quiet = ScalingState(last_change=0.0, too_few=(2, 500.0), low_since=0.0)
    assert step(3, 1.0, quiet, rate=500.0)[0] == 3
    assert step(3, 1.0, quiet, rate=401.0)[0] == 3  # not clearly lower yet
    assert step(3, 1.0, quiet, rate=400.0)[0] == 2  # 20% below: n=2 may hold it now
    assert step(4, 1.0, quiet, rate=500.0)[0] == 3  # going down to 3 was never shown too few


def test_infinite_load_means_max():
    assert step(9, math.inf)[0] == 10


@pytest.mark.parametrize(
    "kwargs",
    [dict(min_replicas=2, max_replicas=1), dict(min_replicas=-1, max_replicas=3),
     dict(min_replicas=1, max_replicas=3, target_ongoing_requests=0.0),
     dict(min_replicas=1, max_replicas=3, hysteresis=1.0),
     dict(min_replicas=1, max_replicas=3, downscale_delay_s=-1.0)],
)
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        AutoscalingConfig(**kwargs)


def test_direction_of():
    assert direction_of(2, 3) is Direction.UP
    assert direction_of(3, 2) is Direction.DOWN
    assert direction_of(3, 3) is Direction.NONE


# -- scale to zero -------------------------------------------------------------------------------
ZERO = AutoscalingConfig(0, 4, target_ongoing_requests=2.0, upscale_delay_s=3.0, downscale_delay_s=30.0,
                         look_back_s=3.0, scale_to_zero_idle_s=300.0)
IDLE = Load(0.0, 0.0, 0.0)


def test_idle_for_the_idle_period_goes_to_zero_and_not_before():
    count, state = decide(ZERO, ScalingState(last_change=0.0), 1, IDLE, 1000.0)
    assert count == 1 and state.idle_since == 1000.0
    count, state = decide(ZERO, state, 1, IDLE, 1299.0)
    assert count == 1
    count, state = decide(ZERO, state, 1, IDLE, 1300.0)
    assert count == 0 and state.last_direction is Direction.DOWN


def test_the_load_rules_stop_at_one_replica_for_a_model_that_may_scale_to_zero():
    # 0 in flight fits (1 - 1) replicas: the normal downscale would go to 0 after 30 s.
    state = ScalingState(last_change=0.0)
    for now in range(1000, 1100, 2):
        count, state = decide(ZERO, state, 1, IDLE, float(now))
        assert count == 1


def test_one_request_restarts_the_idle_clock():
    _, state = decide(ZERO, ScalingState(last_change=0.0), 1, IDLE, 1000.0)
    _, state = decide(ZERO, state, 1, Load(0.0, 0.3, 0.3), 1200.0)  # one request in the look-back
    assert state.idle_since is None
    count, state = decide(ZERO, state, 1, IDLE, 1202.0)
    count, state = decide(ZERO, state, 1, IDLE, 1501.0)
    assert count == 1  # 299 s idle since the request
    assert decide(ZERO, state, 1, IDLE, 1502.0)[0] == 0


def test_several_replicas_idle_for_the_period_go_to_zero_at_once():
    state = ScalingState(last_change=0.0, idle_since=600.0, low_since=600.0)
    assert decide(ZERO, state, 3, IDLE, 900.0)[0] == 0


def test_from_zero_any_demand_starts_one_replica_at_once():
    just_scaled = ScalingState(last_change=1000.0, last_direction=Direction.DOWN, idle_since=700.0)
    assert decide(ZERO, just_scaled, 0, IDLE, 1000.5) == (0, just_scaled)  # nothing asks: stays at zero
    for load in (Load(0.0, 0.3), Load(0.01, 0.0), Load(50.0, 100.0)):  # an arrival, one waiting, many
        count, state = decide(ZERO, just_scaled, 0, load, 1000.5)  # no upscale delay from zero
        assert count == 1 and state.last_direction is Direction.UP and state.idle_since is None
    # The newest period alone shows it (the look-back average may not yet).
    assert decide(ZERO, just_scaled, 0, IDLE, 1000.5, recent=Load(0.0, 1.0))[0] == 1


def test_a_version_waiting_to_load_is_demand_at_zero_and_keeps_a_model_from_idling_out():
    assert decide(ZERO, ScalingState(last_change=0.0), 0, IDLE, 10.0, pending=True)[0] == 1
    _, state = decide(ZERO, ScalingState(last_change=0.0), 1, IDLE, 10.0, pending=True)
    assert state.idle_since is None


def test_a_model_with_a_minimum_never_goes_to_zero_however_idle():
    state = ScalingState(last_change=0.0, idle_since=0.0)
    assert decide(CONFIG, state, 1, IDLE, 10_000.0)[0] == 1


def test_bad_idle_period():
    with pytest.raises(ValueError):
        AutoscalingConfig(0, 2, scale_to_zero_idle_s=-1.0)
