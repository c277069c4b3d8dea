"""What the controller is given: its options (the flags' values) and the hooks it calls.

`ControllerOptions` holds every tunable of the controller (polling, draining, replica counts,
retries, health, autoscaling, placement); the hook types name the calls the composition root
(`actor.py`) or a test injects: how a replica starts and stops, and the path replicas load.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster.config import ModelAutoscaling, ModelConfig
from cluster.controller.member import HealthOptions
from cluster.controller.packing import PlacementOptions
from cluster.serving.planner import RetryPolicy

ReplicaFactory = Callable[[ModelConfig, int], Any]  # (model, index) -> replica handle
ReplicaKiller = Callable[[Any], None]
# (model, version path on storage) -> the path replicas load. The hook for versions that need a
# step before any replica can load them (a SavedModel is imported into a bundle first); it runs on
# the controller's loop, so a slow one must not block it. Default: the path itself.
PathResolver = Callable[[ModelConfig, str], Awaitable[str]]


async def same_path(model: ModelConfig, path: str) -> str:
    """The default PathResolver: replicas load the version's path on storage."""
    return path


@dataclass(frozen=True)
class ControllerOptions:
    poll_seconds: float = 1.0  # --file_system_poll_wait_seconds
    drain_seconds: float = 1.0  # between leaving the routing table and draining (gateways see it)
    num_replicas: int = 1  # per model, unless its config says otherwise
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    health: HealthOptions = field(default_factory=HealthOptions)
    # Autoscaling: between the model's replica count and max_replicas (None or <= count: off),
    # aiming at target_ongoing_requests in flight per replica, as gateways report them; the
    # defaults of every model, each overridden by its entry in model_autoscaling.
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 30.0
    scale_to_zero_idle_s: float = 300.0  # min_replicas 0: unloaded after this long with no request
    model_autoscaling: Mapping[str, ModelAutoscaling] = field(default_factory=dict)  # by model name
    look_back_s: float = 3.0  # the load is every gateway's in-flight time average over this long
    load_report_ttl_s: float = 5.0  # a gateway that has not reported for this long counts as gone
    tick_seconds: float = 2.0  # autoscaling, whatever the storage poll interval
    placement: PlacementOptions = field(default_factory=PlacementOptions)  # replica hosts (hosts.py)
