"""What the controller keeps per model: its config, source, servable stream, replicas, the
paths and signatures of its versions, its autoscaling state and its counters.

Plain data and checks of it: the controller (`controller.py`) changes it, the autoscaling (`autoscaling.py`) and
the status queries (`status.py`) read it. One `ModelState` per configured model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cluster import errors, stats
from cluster.autoscaler.scaler import ModelScaler
from cluster.config import ModelConfig
from cluster.controller.replica_set import ReplicaSet
from cluster.serving.source import FileSystemSource
from cluster.serving.stream import ServableStream
from exporter.signature import Signature


@dataclass(frozen=True)
class Scaling:
    """A change of a model's replica count, decided and not yet in effect: a scale-up takes
    effect once `target` replicas are in the routing table, a scale-down once the leaving ones
    are out of it (the first publish after the shrink)."""

    before: int
    target: int
    at: float = 0.0  # when it was decided (a cold start's latency counts from here)

    @property
    def up(self) -> bool:
        return self.target > self.before


@dataclass
class ModelState:
    config: ModelConfig
    source: FileSystemSource
    stream: ServableStream
    replicas: ReplicaSet
    paths: dict[int, str] = field(default_factory=dict)
    load_paths: dict[int, str] = field(default_factory=dict)  # what replicas load (see PathResolver)
    signatures: dict[int, Mapping[str, Signature]] = field(default_factory=dict)
    source_error: str | None = None
    load_seconds: stats.Histogram = field(default_factory=lambda: stats.Histogram(stats.LATENCY_BUCKETS))
    scaler: ModelScaler | None = None
    scaling: Scaling | None = None  # the autoscaler's last change, until it takes effect
    cold_start_seconds: stats.Histogram = field(default_factory=lambda: stats.Histogram(stats.LATENCY_BUCKETS))
    scaled_to_zero: int = 0  # times it went to 0 replicas for being idle
    evictions: int = 0  # replicas evicted from their host (memory budget, least recently used)
    zero_reason: str = "no replica"  # why it is at 0 replicas (GetModelStatus), set by what took it there
    last_poll: float | None = None  # when the source was last listed

    def wanted(self) -> dict[int, str]:
        """The versions every replica must hold, with the path each loads: the resolved one (an
        imported SavedModel's bundle), else the source's."""
        return {v: self.load_paths.get(v, self.paths[v]) for v in self.stream.available_versions()}


def check_labels(current: ModelState | None, model: ModelConfig) -> None:
    """A config's labels may only move to versions that are available (TF Serving's rule)."""
    if current is None:
        return  # a new model's labels apply once their versions are available
    old = current.config.label_map()
    available = current.stream.available_versions()
    for label, version in model.version_labels:
        if old.get(label) != version and version not in available:
            raise errors.FailedPrecondition(
                f"Request to assign label to version {version} of model {model.name}, "
                "which is not currently available for inference"
            )
