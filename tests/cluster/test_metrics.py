"""cluster.metrics: a scrape shows the cluster's request totals when the controller gave them,
and this gateway's own otherwise."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from cluster import stats
from cluster.metrics import MetricsExporter

LABELS = {"model": "m", "signature": "serving_default", "method": "predict", "status": "OK", "entrypoint": "grpc"}


def sample(exporter: MetricsExporter, name: str, labels: dict[str, str]) -> float | None:
    return exporter.registry.get_sample_value(name, labels)


def test_own_counters_without_totals_and_the_cluster_s_with_them() -> None:
    exporter = MetricsExporter(CollectorRegistry(auto_describe=False))
    for _ in range(3):
        exporter.gateway.observe("m", "serving_default", "predict", "OK", "grpc", 0.003)
    text = exporter.render().decode()
    assert 'tessera_requests_total{entrypoint="grpc",method="predict",model="m",signature="serving_default",status="OK"} 3.0' in text
    assert sample(exporter, "tessera_request_latency_seconds_count", {"model": "m", "method": "predict", "entrypoint": "grpc"}) == 3

    totals = exporter.gateway.snapshot()
    other = stats.RequestStats()
    other.observe(("m", "serving_default", "predict", "OK", "grpc"), 0.5)
    other.observe(("m", "serving_default", "predict", "OK", "rest"), 0.5)
    totals.merge(other)
    exporter.render(requests=totals)
    assert sample(exporter, "tessera_requests_total", LABELS) == 4
    assert sample(exporter, "tessera_requests_total", {**LABELS, "entrypoint": "rest"}) == 1
    assert sample(exporter, "tessera_request_latency_seconds_bucket",
                  {"model": "m", "method": "predict", "entrypoint": "grpc", "le": "0.005"}) == 3
    exporter.render(requests=None)  # the controller is away: this gateway's own again
    assert sample(exporter, "tessera_requests_total", LABELS) == 3


def test_snapshot_is_a_copy() -> None:
    exporter = MetricsExporter()
    snap = exporter.gateway.snapshot()
    exporter.gateway.observe("m", "", "predict", "NOT_FOUND", "rest", 0.001)
    assert snap.counts == {}


def test_a_scrape_counts_each_model_s_evictions() -> None:
    exporter = MetricsExporter(CollectorRegistry(auto_describe=False))
    exporter.render([stats.ModelStats(model="cold", evictions=3), stats.ModelStats(model="hot")])
    assert sample(exporter, "tessera_model_evictions_total", {"model": "cold"}) == 3
    assert sample(exporter, "tessera_model_evictions_total", {"model": "hot"}) == 0


def test_a_model_s_histogram_shows_once_it_has_an_observation() -> None:
    exporter = MetricsExporter(CollectorRegistry(auto_describe=False))
    loaded = stats.ModelStats(model="loaded")
    loaded.load_seconds.observe(0.3)
    text = exporter.render([loaded, stats.ModelStats(model="never")]).decode()
    assert sample(exporter, "tessera_model_load_latency_seconds_count", {"model": "loaded"}) == 1
    assert 'model="never"' in text  # its gauges and counters are there ...
    for family in ("load_latency", "warmup_latency", "cold_start_latency"):  # ... its empty histograms not
        assert sample(exporter, f"tessera_model_{family}_seconds_count", {"model": "never"}) is None
    assert sample(exporter, "tessera_model_warmup_latency_seconds_count", {"model": "loaded"}) is None
    assert sample(exporter, "tessera_batch_size_count", {"model": "loaded"}) is None
