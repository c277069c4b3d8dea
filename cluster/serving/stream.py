"""A servable stream: the versions of one model name, their states and errors, and the aspired set.

The record the controller keeps per stream (TF Serving's ServableStateMonitor and the harness of
its manager): the planner (cluster.serving.planner) reads it, the controller updates it as loads
and unloads start, succeed and fail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from cluster import errors
from cluster.serving.planner import Action, RetryPolicy, VersionRecord, plan_transitions
from cluster.types import ServableState, VersionStatus


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
