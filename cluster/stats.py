"""Plain, picklable statistics that replicas and the controller keep and send to the gateway.

A leaf module (stdlib only): replicas and the controller record here, with no Prometheus objects
in their processes; the gateway turns a cluster-wide snapshot into metrics at scrape time
(cluster.metrics), so one scrape of one gateway shows every process.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


@dataclass
class Histogram:
    """Cumulative-free bucket counts (counts[i] for values <= bounds[i]; the last for +Inf)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        if other.bounds != self.bounds:
            raise ValueError("cannot merge histograms with different buckets")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class ReplicaStats:
    replica_id: str
    model: str
    in_flight_requests: int = 0  # requests inside the replica now (all gateways; a coalesced call counts each)
    queued_rows: int = 0  # rows waiting in its batch queues
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    warmup_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))


@dataclass
class ModelStats:
    model: str
    versions: dict[int, int] = field(default_factory=dict)  # version -> ServableState number
    load_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    replicas: list[ReplicaStats] = field(default_factory=list)
    replica_count: int = 0  # started or starting
    replicas_unplaced: int = 0  # waiting for Ray to find room for them
    # From a request for a model at zero replicas until a replica serves it (load on demand).
    cold_start_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    scaled_to_zero: int = 0  # times the model went to zero replicas for being idle
    evictions: int = 0  # replicas taken from their host for its memory budget (least recently used)
    # The autoscaler's signal: every gateway's requests in flight (time average over the
    # look-back, summed) and arrivals per second.
    load_in_flight: float = 0.0
    load_rate: float = 0.0


# (model, signature, method, status, entrypoint): the labels of one request counter.
RequestKey = tuple[str, str, str, str, str]
# (model, method, entrypoint): the labels of one latency histogram.
LatencyKey = tuple[str, str, str]


@dataclass
class RequestStats:
    """One gateway's requests since it started (or several gateways' summed): counts by label
    and latency histograms. Cumulative, so the newest report of a gateway replaces its last."""

    counts: dict[RequestKey, int] = field(default_factory=dict)
    latency: dict[LatencyKey, Histogram] = field(default_factory=dict)

    def observe(self, key: RequestKey, seconds: float) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        histogram = self.latency.get(key[::2])  # (model, method, entrypoint)
        if histogram is None:
            histogram = self.latency[key[::2]] = Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def merge(self, other: RequestStats) -> None:
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        for lkey, histogram in other.latency.items():
            mine = self.latency.get(lkey)
            if mine is None:
                mine = self.latency[lkey] = Histogram(histogram.bounds)
            mine.merge(histogram)

    def copy(self) -> RequestStats:
        out = RequestStats()
        out.merge(self)
        return out


class RequestTotals:
    """The cluster's request counters: the sum of every gateway's newest report.

    A gateway not heard from for `ttl_s` is gone (its process died or stopped); its last report
    moves into the retired total, so the cluster's counters never go down when a gateway leaves
    (Prometheus would read a drop as a counter reset). Pure: the clock is passed in.
    """

    def __init__(self, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self._ttl = ttl_s
        self._latest: dict[str, tuple[float, RequestStats]] = {}  # gateway -> (received at, report)
        self._retired = RequestStats()

    def update(self, gateway: str, now: float, report: RequestStats) -> None:
        self._latest[gateway] = (now, report)

    def total(self, now: float) -> RequestStats:
        for gateway in [g for g, (at, _) in self._latest.items() if now - at > self._ttl]:
            self._retired.merge(self._latest.pop(gateway)[1])
        out = self._retired.copy()
        for _, report in self._latest.values():
            out.merge(report)
        return out

    def gateways(self, now: float) -> list[str]:
        """The gateways heard from within `ttl_s`."""
        return [g for g, (at, _) in self._latest.items() if now - at <= self._ttl]
