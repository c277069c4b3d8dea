"""The autoscaling loop (load window + ModelScaler + policy) on a synthetic clock and plant.

Step, threshold and burst loads, open loop, with queueing that makes more replicas read as less
load (see plant.py); each test counts the replica count's changes.
"""

from __future__ import annotations

import pytest

from cluster.autoscaler.load import Load
from cluster.autoscaler.policy import AutoscalingConfig
from cluster.autoscaler.scaler import ModelScaler
from tests.cluster.autoscaler.plant import Run, mmc_in_flight, simulate

SERVICE_S = 0.006  # a model of ~6 ms a request
CONFIG = AutoscalingConfig(1, 8, target_ongoing_requests=1.0, upscale_delay_s=3.0, downscale_delay_s=30.0,
                           look_back_s=3.0)
# One scale-up takes at most: the wait after the last one took effect, a tick, the replica's start.
STEP_S = max(CONFIG.upscale_delay_s, CONFIG.look_back_s) + 2.0 + 1.5


def reversals(run: Run) -> int:
    counts = [c for _, c in run.counts]
    moves = [(b > a) - (b < a) for a, b in zip(counts, counts[1:], strict=False)]
    return sum(1 for x, y in zip(moves, moves[1:], strict=False) if x != y)


@pytest.mark.parametrize("busy", [0.5, 1.5, 2.5, 3.7, 5.2])  # replicas' worth of work: rate * 6 ms
def test_a_step_load_settles_without_overshoot_and_then_never_changes(busy: float) -> None:
    rate = busy / SERVICE_S
    run = simulate(CONFIG, lambda t: rate if t >= 10 else 0.0, 600.0, service_s=SERVICE_S, noise=0.05)
    final = run.counts[-1][1]
    assert reversals(run) == 0  # up, step by step, and no correction afterwards
    assert mmc_in_flight(rate, SERVICE_S, final) <= final * CONFIG.target_ongoing_requests  # enough
    # ... and not many more than the fewest that hold the load at steady state (the backlog built
    # up while the first counts were saturated may need one or two more to drain).
    fewest = next(n for n in range(1, 9) if mmc_in_flight(rate, SERVICE_S, n) <= n * CONFIG.target_ongoing_requests)
    assert final <= fewest + 2
    assert run.last_change() <= 10 + final * STEP_S
    assert run.changes(after=10 + final * STEP_S) == 0


def test_a_load_right_at_a_threshold_settles_and_then_never_changes():
    # Exactly 2 replicas' worth of in-flight on 2 replicas, with 5% noise on every report: the
    # sampled signal crossed the threshold both ways all the time (1→2→1→2→1→2→3→2 measured).
    low, high = 1e-6, 2.0 / SERVICE_S
    for _ in range(100):  # the rate at which M/M/2 holds exactly 2 in flight
        mid = (low + high) / 2
        low, high = (mid, high) if mmc_in_flight(mid, SERVICE_S, 2) < 2.0 else (low, mid)
    for start in (1, 2, 3):
        run = simulate(CONFIG, lambda t: low, 900.0, service_s=SERVICE_S, start=start, noise=0.05, seed=start)
        assert run.changes() <= 2, run.counts
        # From below: straight up. From above: down to the threshold, and (noise) back up once.
        assert reversals(run) == (0 if start < 3 else 1) or run.changes() <= 1, run.counts
        assert run.changes(after=CONFIG.downscale_delay_s + 4 * STEP_S) == 0, run.counts


def test_a_burst_scales_out_and_comes_back_within_the_downscale_delay_plus_a_bound():
    base, burst = 0.8 / SERVICE_S, 6.0 / SERVICE_S  # 0.8 replicas' worth, then 6 for 10 s
    run = simulate(CONFIG, lambda t: burst if 100 <= t < 110 else base, 600.0, service_s=SERVICE_S, noise=0.05)
    before = run.count_at(99.0)
    peak = max(c for t, c in run.counts if t < 130)
    assert peak > before  # it scaled out for the burst
    back = run.first_time(lambda c: c <= before + 1, after=110.0)
    assert back is not None
    # The burst's load leaves the window, then the load must stay low for the downscale delay,
    # then one step per look-back (plus a tick each).
    bound = 110 + CONFIG.look_back_s + CONFIG.downscale_delay_s + (peak - before) * (CONFIG.look_back_s + 2.0)
    assert back <= bound, run.counts
    assert run.changes(after=back + CONFIG.downscale_delay_s + STEP_S) == 0, run.counts
    assert reversals(run) <= 2  # up, down, and at most one correction at the knee of the queue


def test_late_changes_come_only_from_loads_within_the_signal_s_noise_of_a_threshold():
    # The benchmark's shape: 3.4 ms a request, target 0.25, the 1 -> 2 line, and each 1 s report
    # off by up to 12% (about Poisson's at ~75 requests/s). A late scale-up, measured with the step
    # load 2% above that line, is the noisy signal crossing a threshold it sits on; 15% off it,
    # the count decides within one step and never changes again.
    config = AutoscalingConfig(1, 4, 0.25, upscale_delay_s=3.0, downscale_delay_s=30.0, look_back_s=3.0)
    service = 0.0034
    low, high = 1e-6, 1.0 / service
    for _ in range(100):  # the rate at which one replica holds the target in flight
        mid = (low + high) / 2
        low, high = (mid, high) if mmc_in_flight(mid, service, 1) < 0.25 else (low, mid)
    for seed in range(8):
        below = simulate(config, lambda t: low * 0.85, 300.0, service_s=service, noise=0.12, seed=seed)
        assert below.changes() == 0, below.counts
        above = simulate(config, lambda t: low * 1.15, 300.0, service_s=service, noise=0.12, seed=seed)
        assert above.count_at(300.0) == 2 and above.last_change() <= STEP_S, above.counts


def test_every_constant_load_from_below_settles_without_a_reversal():
    for target in (1.0, 2.0):
        config = AutoscalingConfig(1, 8, target, upscale_delay_s=3.0, downscale_delay_s=30.0, look_back_s=3.0)
        for tenth in range(1, 80, 3):
            rate = tenth / 10 / SERVICE_S
            run = simulate(config, lambda t, rate=rate: rate, 300.0, service_s=SERVICE_S, noise=0.05, seed=tenth)
            assert reversals(run) == 0, (target, tenth, run.counts)
            # No scale-up while the backlog of the saturated first counts drains: that can take
            # a while when the count it drains on is only just short.
            assert run.changes(after=120.0) == 0, (target, tenth, run.counts)


def test_from_above_the_count_steps_down_and_flaps_at_most_once():
    # Starting at the maximum (after a burst, say): down to what the load needs, never see-saw.
    for tenth in range(1, 80, 3):
        rate = tenth / 10 / SERVICE_S
        run = simulate(CONFIG, lambda t, rate=rate: rate, 400.0, service_s=SERVICE_S, start=8, noise=0.05, seed=tenth)
        assert reversals(run) <= 1, (tenth, run.counts)
        assert run.changes(after=200.0) == 0, (tenth, run.counts)


def test_model_scaler_counts_delays_from_when_a_change_took_effect():
    scaler = ModelScaler(AutoscalingConfig(1, 4, 1.0, upscale_delay_s=3.0, look_back_s=1.0), now=0.0)
    assert scaler.decide(10.0, 1, Load(5.0, 100.0)) == 2
    assert scaler.last_load == Load(5.0, 100.0)
    scaler.applied(20.0)  # the new replica took 10 s to start
    assert scaler.decide(22.0, 2, Load(5.0, 100.0)) == 2
    assert scaler.decide(23.0, 2, Load(5.0, 100.0)) == 3


def test_a_scale_up_waits_while_the_last_ones_replicas_start_but_bounds_and_downs_do_not():
    config = AutoscalingConfig(2, 8, target_ongoing_requests=1.0, upscale_delay_s=0.0, downscale_delay_s=0.0,
                               look_back_s=1.0)
    scaler = ModelScaler(config, now=0.0)
    hot, idle = Load(6.0, 100.0, 100.0), Load(0.0, 0.0, 0.0)
    before = scaler.state
    assert scaler.decide(10.0, 3, hot, may_grow=False) == 3  # waits: nothing remembered
    assert scaler.state == before
    assert scaler.decide(10.0, 3, hot) == 4  # once they serve, the same load steps up
    assert scaler.decide(20.0, 1, hot, may_grow=False) == 2  # below the minimum: the bound wins
    scaler.applied(20.0)
    assert scaler.decide(30.0, 4, idle, may_grow=False) == 3  # a scale-down is never held back


def test_idle_goes_to_zero_after_the_idle_period_and_the_first_request_brings_one_back_at_once():
    config = AutoscalingConfig(0, 8, target_ongoing_requests=1.0, upscale_delay_s=3.0, downscale_delay_s=30.0,
                               look_back_s=3.0, scale_to_zero_idle_s=120.0)
    rate = 1.5 / SERVICE_S  # two replicas' worth, then nothing from 100 s, then the same from 500 s

    def load(t: float) -> float:
        return 0.0 if 100 <= t < 500 else rate

    run = simulate(config, load, 700.0, service_s=SERVICE_S, start=1, noise=0.05)
    assert run.count_at(99.0) >= 2
    to_zero = run.first_time(lambda c: c == 0, after=100.0)
    assert to_zero is not None
    # Idle once the last request leaves the look-back, then the idle period, then a tick.
    assert 100 + config.scale_to_zero_idle_s <= to_zero <= 100 + config.look_back_s + config.scale_to_zero_idle_s + 2.0
    assert run.changes(after=to_zero + 0.1, before=500.0) == 0  # stays at zero while idle
    back = run.first_time(lambda c: c >= 1, after=500.0)
    # From zero without the upscale delay: the next report, a tick, the replica's start.
    assert back is not None and back <= 500 + 1.0 + 2.0 + 1.5 + 1e-6, run.counts
    # Then up to what the load needs, and steady.
    assert run.count_at(700.0) >= 2
    assert run.changes(after=500 + 4 * STEP_S) == 0, run.counts


def test_a_cold_start_is_never_held_back_by_a_scale_up_still_starting():
    # At zero, a request's demand brings one replica at once, even while the last change is
    # pending (may_grow=False: the controller's replicas of an earlier scale-up still start).
    config = AutoscalingConfig(0, 4, target_ongoing_requests=1.0, upscale_delay_s=3.0, look_back_s=3.0,
                               scale_to_zero_idle_s=60.0)
    scaler = ModelScaler(config, now=0.0)
    assert scaler.decide(0.5, 0, Load(0.0, 10.0, 0.0), may_grow=False) == 1
    # At one replica the same wait applies as above the minimum: no second one until they serve.
    assert scaler.decide(10.0, 1, Load(5.0, 100.0, 100.0), may_grow=False) == 1
    assert scaler.decide(10.0, 1, Load(5.0, 100.0, 100.0)) > 1
