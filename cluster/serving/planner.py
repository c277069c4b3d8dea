"""The availability-preserving transition planner: TF Serving's AvailabilityPreservingPolicy (spec §12)
as a pure function of one stream's version records, its aspired set and the time.

The controller feeds it a `ServableStream`'s records (cluster.serving.stream), applies the actions
it returns on the replicas, and reports each outcome back to the stream.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Set
from dataclasses import dataclass

from cluster.types import ServableState


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """What the controller knows about one version of a stream."""

    state: ServableState
    error_message: str | None = None
    error_kind: str | None = None
    failed_loads: int = 0  # consecutive failed loads since the version last became aspired
    retry_at: float | None = None  # clock time from which a failed load may be retried


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`--max_num_load_retries` (retries after the first attempt) and the interval between them."""

    max_retries: int = 5
    retry_interval_s: float = 60.0


class ActionKind(enum.Enum):
    LOAD = "load"
    UNLOAD = "unload"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    version: int


def plan_transitions(
    records: Mapping[int, VersionRecord],
    aspired: Set[int],
    *,
    now: float,
    retry: RetryPolicy,
) -> list[Action]:
    """The loads and unloads to start now, loads first.

    Loads: every aspired version that is new, was unloaded earlier, or failed and is due for a retry
    (at most `retry.max_retries` retries, `retry.retry_interval_s` apart), highest version first.

    Unloads (smallest first) of un-aspired AVAILABLE versions, so that serving never has a gap:
    - if some aspired version is AVAILABLE, or nothing is aspired at all, all of them go;
    - otherwise (replacements still loading, or failed) the highest un-aspired one stays.
    Versions that are LOADING or UNLOADING are left alone: their outcome arrives first.
    """
    loads = sorted((v for v in aspired if _wants_load(records.get(v), now, retry)), reverse=True)

    available = {v for v, r in records.items() if r.state is ServableState.AVAILABLE}
    unaspired_available = sorted(available.difference(aspired))
    if unaspired_available and aspired and not available.intersection(aspired):
        unaspired_available.pop()  # the last version that can still answer requests
    return [Action(ActionKind.LOAD, v) for v in loads] + [
        Action(ActionKind.UNLOAD, v) for v in unaspired_available
    ]


def _wants_load(record: VersionRecord | None, now: float, retry: RetryPolicy) -> bool:
    if record is None or record.state in (ServableState.UNKNOWN, ServableState.START):
        return True
    if record.state is not ServableState.END:
        return False
    if record.error_message is None:
        return True  # unloaded earlier, aspired again
    return record.failed_loads <= retry.max_retries and (record.retry_at is None or now >= record.retry_at)
