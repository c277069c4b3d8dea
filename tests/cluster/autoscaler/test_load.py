"""The load signal: a gateway's in-flight integral, and the controller's window over gateways."""

from __future__ import annotations

import pytest

from cluster.autoscaler.load import InFlight, Load, LoadWindow


def test_the_time_average_sees_steady_load_that_one_sample_a_second_misses():
    # 250 requests/s of 6 ms each: 1.5 in flight on average, but at any one instant 1 or 2
    # (and, at a lower rate, often 0): what the old once-a-second sample reported.
    load = InFlight(0.0)
    events = sorted([(i * 0.004, 1) for i in range(250)] + [(i * 0.004 + 0.006, -1) for i in range(250)])
    for at, kind in events:
        load.start(at) if kind > 0 else load.finish(at)
    got = load.take(1.0)
    assert got.in_flight_requests == pytest.approx(1.5, rel=1e-9)
    assert got.rate == pytest.approx(250.0)
    assert load.count == 0


def test_a_take_starts_a_new_period_and_counts_requests_still_running():
    load = InFlight(10.0)
    load.start(10.0)
    load.start(10.5)
    assert load.take(11.0) == Load(1.5, 2.0, 0.0)  # 1 for 0.5 s, then 2 for 0.5 s
    assert load.take(12.0) == Load(2.0, 0.0, 0.0)  # both still running, nothing new arrived
    load.finish(12.5)
    load.finish(12.5)
    assert load.take(13.0) == Load(1.0, 0.0, 2.0)
    assert load.take(13.0) == Load(0.0, 0.0, 0.0)  # an empty period: the count now


def test_window_sums_gateways_and_averages_each_over_the_look_back():
    window = LoadWindow(look_back_s=3.0, ttl_s=5.0)
    for t in (1.0, 2.0, 3.0, 4.0):
        window.add("a", t, 1.0, {"m": (t, 10.0)})  # a's load rises 1, 2, 3, 4
        window.add("b", t, 1.0, {"m": (0.5, 5.0), "other": (7.0, 1.0)})
    assert window.load("m", 4.0) == Load((2 + 3 + 4) / 3 + 0.5, 15.0)
    assert window.recent("m", 4.0) == Load(4.5, 15.0)
    assert window.load("other", 4.0) == Load(7.0, 1.0)  # a does not serve it: 0 from a
    assert window.load("unknown", 4.0) == Load(0.0, 0.0)


def test_recent_is_the_newest_second_even_after_an_early_short_report():
    # A request found a model at zero: the gateway reported after 5 ms, when nothing of "m" happened
    # to be in flight. The newest second still shows m's load, not that instant.
    window = LoadWindow(look_back_s=3.0, ttl_s=5.0)
    window.add("a", 1.0, 1.0, {"m": (2.0, 100.0)})
    window.add("a", 1.005, 0.005, {"m": (0.0, 0.0), "cold": (0.0, 200.0)})
    assert window.recent("m", 1.005).in_flight_requests == pytest.approx(0.995 * 2.0)
    assert window.recent("cold", 1.005).rate > 0  # the demand shows all the same


def test_reports_of_different_periods_are_weighted_by_time():
    window = LoadWindow(look_back_s=4.0, ttl_s=10.0)
    window.add("a", 1.0, 3.0, {"m": (4.0, 0.0)})  # 3 s at 4
    window.add("a", 2.0, 1.0, {"m": (0.0, 0.0)})  # 1 s at 0
    assert window.load("m", 2.0).in_flight_requests == pytest.approx(3.0)
    window.add("a", 4.0, 2.0, {"m": (1.0, 0.0)})  # only 2 s of the 3 s report still in the window
    assert window.load("m", 4.0).in_flight_requests == pytest.approx((2 * 1.0 + 1 * 0.0 + 1 * 4.0) / 4)


def test_a_report_longer_than_the_look_back_still_counts():
    window = LoadWindow(look_back_s=1.0, ttl_s=10.0)
    window.add("a", 5.0, 5.0, {"m": (2.0, 1.0)})
    assert window.load("m", 6.0) == Load(2.0, 1.0)


def test_a_silent_gateway_is_forgotten_after_the_ttl():
    window = LoadWindow(look_back_s=2.0, ttl_s=5.0)
    window.add("gone", 0.0, 1.0, {"m": (3.0, 1.0)})
    window.add("alive", 4.0, 1.0, {"m": (1.0, 1.0)})
    assert window.load("m", 5.0).in_flight_requests == 4.0
    assert window.load("m", 5.1).in_flight_requests == 1.0
    assert window.gateways(5.1) == ["alive"]


def test_old_reports_are_dropped_and_empty_periods_ignored():
    window = LoadWindow(look_back_s=2.0, ttl_s=5.0)
    for t in range(100):
        window.add("a", float(t), 1.0, {"m": (1.0, 1.0)})
    window.add("a", 100.0, 0.0, {"m": (99.0, 1.0)})
    assert len(window._reports["a"]) <= 3  # noqa: SLF001
    assert window.load("m", 100.0).in_flight_requests == 1.0


def test_window_bad_arguments():
    with pytest.raises(ValueError):
        LoadWindow(0.0, 1.0)
