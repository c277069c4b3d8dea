"""Servable lifecycle: per-stream version states and the availability-preserving transition planner.

The planner is TF Serving's AvailabilityPreservingPolicy (spec §12), as a pure function: the
controller feeds it the current records, the aspired set and the time, applies the actions it
returns (on the replicas), and reports the outcome back to the `ServableStream`.
Label and version resolution for requests (spec §7.1) lives here too.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, replace

from cluster import errors
from cluster.types import ServableState, VersionChoice, VersionRequest, VersionStatus


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


def error_kind(exc: BaseException) -> str:
    """The nearest `cluster.errors` class name of an exception, else its own class name."""
    for cls in type(exc).__mro__:
        if cls.__module__ == errors.__name__:
            return cls.__name__
    return type(exc).__name__


class ServableStream:
    """The versions of one model name: their states, errors and the aspired set.

    Not thread-safe: owned by the controller's event loop. Records of versions that ended stay, so
    GetModelStatus can report them (TF Serving's state monitor does the same).
    """

    def __init__(self, name: str, retry: RetryPolicy | None = None) -> None:
        self.name = name
        self.retry = retry if retry is not None else RetryPolicy()
        self._records: dict[int, VersionRecord] = {}
        self._aspired: frozenset[int] = frozenset()

    @property
    def aspired(self) -> frozenset[int]:
        return self._aspired

    def set_aspired(self, versions: Iterable[int]) -> None:
        """Replace the aspired set (from the latest source report)."""
        new = frozenset(versions)
        for version in new - self._aspired:
            record = self._records.get(version)
            # A newly aspired version starts afresh, even one that failed before it was dropped:
            # an operator may have replaced the broken directory.
            if record is None or record.state in (ServableState.END, ServableState.UNKNOWN):
                self._records[version] = VersionRecord(ServableState.START)
        for version in self._aspired - new:
            record = self._records.get(version)
            if record is not None and record.state is ServableState.START:
                self._records[version] = VersionRecord(ServableState.END)  # never loaded: nothing to do
        self._aspired = new

    def plan(self, now: float) -> list[Action]:
        return plan_transitions(self._records, self._aspired, now=now, retry=self.retry)

    def load_started(self, version: int) -> None:
        previous = self._records.get(version, VersionRecord(ServableState.START))
        self._records[version] = replace(
            previous, state=ServableState.LOADING, error_message=None, error_kind=None, retry_at=None
        )

    def load_succeeded(self, version: int) -> None:
        self._records[version] = VersionRecord(ServableState.AVAILABLE)

    def load_failed(self, version: int, error: BaseException, now: float) -> None:
        """The load (or warmup) failed: END with the error, a retry due `retry_interval_s` later."""
        previous = self._records.get(version, VersionRecord(ServableState.START))
        self._records[version] = VersionRecord(
            ServableState.END,
            error_message=str(error) or "the load failed without a message",
            error_kind=error_kind(error),
            failed_loads=previous.failed_loads + 1,
            retry_at=now + self.retry.retry_interval_s,
        )

    def unload_started(self, version: int) -> None:
        self._records[version] = VersionRecord(ServableState.UNLOADING)

    def unloaded(self, version: int, error: BaseException | None = None) -> None:
        if error is None:
            self._records[version] = VersionRecord(ServableState.END)
        else:
            self._records[version] = VersionRecord(
                ServableState.END, error_message=str(error) or "the load failed without a message", error_kind=error_kind(error)
            )

    def record(self, version: int) -> VersionRecord | None:
        return self._records.get(version)

    def available_versions(self) -> frozenset[int]:
        return frozenset(v for v, r in self._records.items() if r.state is ServableState.AVAILABLE)

    def next_retry_at(self) -> float | None:
        """When the earliest pending retry falls due (for the controller's wake-up), or None."""
        due = [
            r.retry_at
            for v, r in self._records.items()
            if v in self._aspired
            and r.state is ServableState.END
            and r.retry_at is not None
            and r.failed_loads <= self.retry.max_retries
        ]
        return min(due, default=None)

    def statuses(self) -> list[VersionStatus]:
        """Every known version, highest first (GetModelStatus order, spec §7.5)."""
        return [
            VersionStatus(v, r.state, r.error_message, r.error_kind)
            for v, r in sorted(self._records.items(), reverse=True)
        ]


def resolve_version(
    request: VersionRequest,
    available: Set[int],
    labels: Mapping[str, int] | None,
    *,
    model_name: str,
) -> int:
    """The version that serves `request`, with TF Serving's errors (spec §7.1).

    `labels` is None while the label map is not initialised yet (UNAVAILABLE for label requests).
    A label resolves to its version, which must then be available like a specific request.
    """
    if request.choice is VersionChoice.LATEST:
        if not available:
            raise errors.NotFound(f"Servable not found for request: {request.describe(model_name)}")
        return max(available)
    if request.choice is VersionChoice.LABEL:
        if labels is None:
            raise errors.Unavailable(f"Version labels of model {model_name} are not available yet")
        assert request.label is not None
        version = labels.get(request.label)
        if version is None:
            raise errors.InvalidArgument(f"Unrecognized servable version label: {request.label}")
        request = VersionRequest.specific(version)
    assert request.version is not None
    if request.version not in available:
        raise errors.NotFound(f"Servable not found for request: {request.describe(model_name)}")
    return request.version
