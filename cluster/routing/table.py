"""The routing table: what the controller publishes and every gateway routes by.

Immutable snapshots with an increasing epoch. The controller builds a new one on every change
(a version became available or went away, labels changed, replicas came or went); gateways
long-poll for the next epoch and swap their snapshot atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cluster.types import VersionStatus
from exporter.signature import Signature


@dataclass(frozen=True)
class ReplicaRef:
    """A replica as gateways see it: a model's slot on a replica host. The host's Ray actor handle
    (control) and data-plane address, which every model on that host shares, and the model the
    slot serves (what each data-plane call names)."""

    handle: Any = field(compare=False, hash=False)
    address: tuple[str, int] = ("", 0)
    model: str = ""


@dataclass(frozen=True)
class ModelRoute:
    """One model: its versions taking traffic (with their signatures), labels and replicas."""

    name: str
    available: Mapping[int, Mapping[str, Signature]]
    labels: Mapping[str, int]
    replicas: tuple[ReplicaRef, ...]  # every replica holds every available version
    statuses: tuple[VersionStatus, ...]  # all known versions, highest first (GetModelStatus)


@dataclass(frozen=True)
class RoutingTable:
    epoch: int = 0
    models: Mapping[str, ModelRoute] = field(default_factory=dict)
    incarnation: str = ""  # which controller process published it; epochs restart with it

    def ready(self) -> bool:
        """Every configured model has at least one available version."""
        return all(route.available for route in self.models.values())
