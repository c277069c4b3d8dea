from __future__ import annotations

import pytest

from cluster.autoscaler.policy import Direction, desired_replicas, direction_of


def decide(current, in_flight, *, now=1000.0, last_change=0.0, last=Direction.NONE, lo=1, hi=10,
           target=2.0, up_delay=30.0, down_delay=600.0):
    return desired_replicas(current, in_flight, target, lo, hi, now, last_change, up_delay, down_delay, last)


def test_steady_load_keeps_the_count():
    assert decide(3, 6) == 3
    assert decide(3, 5) == 3  # inside the dead band (4, 6]


def test_scales_up_at_once_to_what_the_load_needs():
    assert decide(2, 9) == 5  # ceil(9 / 2)


def test_upscale_is_clamped_to_max():
    assert decide(2, 100) == 10


def test_upscale_waits_for_the_upscale_delay_after_a_change():
    assert decide(2, 9, now=10.0, last_change=0.0, last=Direction.UP) == 2
    assert decide(2, 9, now=30.0, last_change=0.0, last=Direction.UP) == 5


def test_upscale_right_after_a_downscale_is_not_delayed():
    assert decide(2, 9, now=1.0, last_change=0.0, last=Direction.DOWN) == 5


def test_scales_down_one_replica_only_when_load_fits_without_it():
    assert decide(4, 6) == 3  # 6 <= 3 * 2
    assert decide(4, 6.5) == 4  # would not fit under the target on 3 replicas
    assert decide(4, 0) == 3  # one at a time, even when idle


def test_downscale_waits_for_the_downscale_delay_in_either_direction():
    assert decide(4, 0, now=599.0, last_change=0.0, last=Direction.UP) == 4
    assert decide(4, 0, now=599.0, last_change=0.0, last=Direction.DOWN) == 4
    assert decide(4, 0, now=600.0, last_change=0.0, last=Direction.DOWN) == 3


def test_never_below_min_and_zero_is_allowed_when_min_is_zero():
    assert decide(1, 0, lo=1) == 1
    assert decide(1, 0, lo=0) == 0
    assert decide(0, 0.5, lo=0) == 1  # any load brings one replica back


def test_bounds_apply_at_once_without_delay():
    assert decide(12, 100, now=1.0, last_change=0.0) == 10
    assert decide(1, 0, lo=3, now=1.0, last_change=0.0) == 3


def test_converges_when_more_replicas_make_requests_finish_faster():
    # Ray Serve's oscillation: a scale-up shortens queues, so fewer requests are in flight, which
    # reads as "too many replicas"; a scale-down lengthens them again, and so on. Model a closed loop
    # where in-flight falls as replicas are added, and check the count settles for good.
    in_flight_with = {1: 12, 2: 10, 3: 9, 4: 8, 5: 7, 6: 7, 7: 7}
    current, last_change, last = 2, 0.0, Direction.NONE
    history = []
    for step in range(400):  # 100 minutes, one decision every 15 s
        now = 100.0 + step * 15.0
        desired = decide(current, in_flight_with[current], now=now, last_change=last_change, last=last)
        if desired != current:
            last, last_change, current = direction_of(current, desired), now, desired
            history.append(current)
    # Up to what 10 in flight needs, then one step down (7 fits on 4), then never again:
    # on 4 replicas the 8 in flight fill them exactly, and neither threshold is crossed.
    assert history == [5, 4]


def test_changes_are_rate_limited_by_the_delays():
    # A load flapping across both thresholds every decision still moves at most once per delay.
    current, last_change, last = 3, 0.0, Direction.NONE
    changes = 0
    for step in range(240):  # one hour, every 15 s
        now = 1000.0 + step * 15.0
        in_flight = 7 if step % 2 else 3
        desired = decide(current, in_flight, now=now, last_change=last_change, last=last)
        if desired != current:
            if direction_of(current, desired) is Direction.DOWN:
                assert now - last_change >= 600.0
            last, last_change, current = direction_of(current, desired), now, desired
            changes += 1
    assert changes <= 2 * (3600 // 600) + 1


@pytest.mark.parametrize(("lo", "hi", "target"), [(2, 1, 1.0), (-1, 3, 1.0), (1, 3, 0.0)])
def test_bad_arguments(lo, hi, target):
    with pytest.raises(ValueError):
        decide(1, 1, lo=lo, hi=hi, target=target)


def test_direction_of():
    assert direction_of(2, 3) is Direction.UP
    assert direction_of(3, 2) is Direction.DOWN
    assert direction_of(3, 3) is Direction.NONE
