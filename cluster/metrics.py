"""Prometheus metrics, through an injected registry (never import-time globals).

Gateway-side request metrics are recorded per request into plain counters (one dict lookup, no
label building) and reported to the controller, which sums every gateway's. Cluster-wide metrics (replicas, queues, batch sizes, load and warmup
latency, version states) come from a snapshot the controller gathers from every replica at scrape
time, exposed by a custom collector.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster import stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayMetrics(Collector):
    """Requests by model, signature, method, status and entrypoint; request latency.

    Recorded per request into plain counters (`stats.RequestStats`: one dict lookup and a bisect,
    no Prometheus lock), registered on `registry` as a collector. A gateway reports its counters
    to the controller with its load; a scrape renders the cluster's sum (`show_cluster`), so one
    scrape of any gateway covers every gateway, or this gateway's own if the controller is away.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = stats.RequestStats()
        self._shown: stats.RequestStats | None = None
        registry.register(self)

    def observe(self, model: str, signature: str, method: str, status: str, entrypoint: str, seconds: float) -> None:
        self.requests.observe((model, signature, method, status, entrypoint), seconds)

    def snapshot(self) -> stats.RequestStats:
        """A copy of this gateway's counters (to send to the controller)."""
        return self.requests.copy()

    def show_cluster(self, totals: stats.RequestStats | None) -> None:
        """What the next collect renders: the cluster's totals, or (None) this gateway's own."""
        self._shown = totals

    def collect(self) -> Iterator[Metric]:
        shown = self._shown if self._shown is not None else self.requests
        requests = CounterMetricFamily(
            "tessera_requests", "Requests answered by the cluster's gateways",
            labels=["model", "signature", "method", "status", "entrypoint"],
        )
        for key, count in sorted(shown.counts.items()):
            requests.add_metric(list(key), count)
        latency = _histogram_family(
            "tessera_request_latency_seconds", "Time from request received to response ready, in a gateway",
            ["model", "method", "entrypoint"],
        )
        for lkey, histogram in sorted(shown.latency.items()):
            _add_histogram(latency, list(lkey), histogram)
        yield from (requests, latency)


def _histogram_family(name: str, doc: str, labels: Sequence[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=list(labels))


def _add_histogram(family: HistogramMetricFamily, label_values: Sequence[str], h: stats.Histogram) -> None:
    cumulative, buckets = 0, []
    for bound, count in zip([*map(str, h.bounds), "+Inf"], h.counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    family.add_metric(list(label_values), buckets, h.total)


def _add_observed(family: HistogramMetricFamily, label_values: Sequence[str], h: stats.Histogram) -> None:
    """A model's histogram once it has an observation, as a labelled prometheus_client histogram
    appears once observed: 200 models that never warm up or cold-start would otherwise render
    about 7,000 lines of zero buckets at every scrape (half of a 201-model scrape)."""
    if h.count:
        _add_histogram(family, label_values, h)


class ClusterCollector(Collector):
    """Exposes the latest cluster snapshot (set by `update`) as metric families."""

    def __init__(self) -> None:
        self._snapshot: list[stats.ModelStats] = []

    def update(self, snapshot: list[stats.ModelStats]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily("tessera_replicas", "Replica actors per model (started or starting)", labels=["model"])
        unplaced = GaugeMetricFamily(
            "tessera_replicas_unplaced", "Replicas of each model that Ray has no room to place yet", labels=["model"]
        )
        state = GaugeMetricFamily(
            "tessera_model_version_state",
            "State of each known version (TF Serving's numbers: 10 START, 20 LOADING, 30 AVAILABLE, "
            "40 UNLOADING, 50 END)",
            labels=["model", "version"],
        )
        in_flight = GaugeMetricFamily(
            "tessera_replica_in_flight_requests", "Requests inside each replica", labels=["model", "replica"]
        )
        queue = GaugeMetricFamily(
            "tessera_replica_queue_depth", "Rows waiting in each replica's batch queues", labels=["model", "replica"]
        )
        load = _histogram_family("tessera_model_load_latency_seconds", "Time to load a version on all replicas",
                                 ["model"])
        warmup = _histogram_family("tessera_model_warmup_latency_seconds", "Time to replay a version's warmup file",
                                   ["model"])
        batch = _histogram_family("tessera_batch_size", "Rows per executed batch", ["model"])
        cold = _histogram_family(
            "tessera_model_cold_start_latency_seconds",
            "From a request for a model at zero replicas (scaled to zero) until a replica serves it", ["model"],
        )
        to_zero = CounterMetricFamily(
            "tessera_model_scaled_to_zero", "Times a model went to zero replicas for being idle", labels=["model"]
        )
        evicted = CounterMetricFamily(
            "tessera_model_evictions",
            "Replicas of a model evicted from their host for its memory budget (least recently used)",
            labels=["model"],
        )
        signal = GaugeMetricFamily(
            "tessera_autoscaler_load_in_flight",
            "The autoscaler's load: requests in flight, time-averaged over its look-back, all gateways",
            labels=["model"],
        )
        arrivals = GaugeMetricFamily(
            "tessera_autoscaler_arrival_rate", "Requests arriving per second, as the autoscaler sees them",
            labels=["model"],
        )
        for model in self._snapshot:
            replicas.add_metric([model.model], model.replica_count)
            unplaced.add_metric([model.model], model.replicas_unplaced)
            for version, value in sorted(model.versions.items()):
                state.add_metric([model.model, str(version)], value)
            _add_observed(load, [model.model], model.load_seconds)
            _add_observed(cold, [model.model], model.cold_start_seconds)
            to_zero.add_metric([model.model], model.scaled_to_zero)
            evicted.add_metric([model.model], model.evictions)
            signal.add_metric([model.model], model.load_in_flight)
            arrivals.add_metric([model.model], model.load_rate)
            batches = stats.Histogram(stats.BATCH_SIZE_BUCKETS)
            warmups = stats.Histogram(stats.LATENCY_BUCKETS)
            for replica in model.replicas:
                in_flight.add_metric([model.model, replica.replica_id], replica.in_flight_requests)
                queue.add_metric([model.model, replica.replica_id], replica.queued_rows)
                batches.merge(replica.batch_sizes)
                warmups.merge(replica.warmup_seconds)
            _add_observed(batch, [model.model], batches)
            _add_observed(warmup, [model.model], warmups)
        yield from (replicas, unplaced, state, in_flight, queue, load, warmup, batch, cold, to_zero, evicted, signal, arrivals)


class MetricsExporter:
    """The registry a gateway exposes: its own request metrics plus the cluster snapshot."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.gateway = GatewayMetrics(self.registry)
        self.cluster = ClusterCollector()
        self.registry.register(self.cluster)
        self._rendering = threading.Lock()  # a gateway renders in worker threads: one snapshot at a time

    def render(
        self, snapshot: list[stats.ModelStats] | None = None, requests: stats.RequestStats | None = None
    ) -> bytes:
        """Prometheus text exposition; `snapshot` (if given) replaces the cluster metrics first, and
        `requests` (every gateway's counters summed; None: this gateway's own) the request metrics.
        Safe to call from several threads at once (each renders its own snapshot)."""
        with self._rendering:
            if snapshot is not None:
                self.cluster.update(snapshot)
            self.gateway.show_cluster(requests)
            return generate_latest(self.registry)
