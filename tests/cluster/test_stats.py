"""cluster.stats: request counters merge exactly, and the cluster's totals never go down when a
gateway leaves (its last report is kept as retired)."""

from __future__ import annotations

import pytest

from cluster import stats

KEY = ("m", "serving_default", "predict", "OK", "grpc")


def report(n: int, seconds: float = 0.002, key: stats.RequestKey = KEY) -> stats.RequestStats:
    out = stats.RequestStats()
    for _ in range(n):
        out.observe(key, seconds)
    return out


def test_observe_counts_by_key_and_times_by_model_method_entrypoint() -> None:
    r = report(3)
    r.observe(("m", "", "predict", "NOT_FOUND", "grpc"), 0.5)
    assert r.counts == {KEY: 3, ("m", "", "predict", "NOT_FOUND", "grpc"): 1}
    assert list(r.latency) == [("m", "predict", "grpc")]
    assert r.latency[("m", "predict", "grpc")].count == 4
    assert r.latency[("m", "predict", "grpc")].total == pytest.approx(0.506)


def test_merge_adds_and_copy_is_independent() -> None:
    a, b = report(2), report(5, 0.2)
    total = a.copy()
    total.merge(b)
    assert total.counts[KEY] == 7
    assert total.latency[("m", "predict", "grpc")].count == 7
    assert a.counts[KEY] == 2 and a.latency[("m", "predict", "grpc")].count == 2  # untouched


def test_totals_sum_the_newest_report_of_each_gateway() -> None:
    totals = stats.RequestTotals(ttl_s=5.0)
    totals.update("g1", 0.0, report(3))
    totals.update("g2", 0.5, report(4))
    totals.update("g1", 1.0, report(10))  # cumulative: replaces g1's 3, is not added to it
    assert totals.total(1.0).counts[KEY] == 14
    assert sorted(totals.gateways(1.0)) == ["g1", "g2"]


def test_a_gateway_that_goes_silent_is_retired_and_still_counts() -> None:
    totals = stats.RequestTotals(ttl_s=5.0)
    totals.update("g1", 0.0, report(3))
    totals.update("g2", 0.0, report(4))
    totals.update("g2", 8.0, report(6))
    assert totals.gateways(8.0) == ["g2"]
    assert totals.total(8.0).counts[KEY] == 9  # g1's 3 retired + g2's 6
    totals.update("g3", 9.0, report(1))  # a new gateway joins
    assert totals.total(9.0).counts[KEY] == 10
    assert totals.total(100.0).counts[KEY] == 10  # all gone: nothing lost, nothing counted twice


def test_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        stats.RequestTotals(0)
