"""cluster.serving.planner: the availability-preserving policy (spec §12), as a pure function."""

from __future__ import annotations

import pytest

from cluster.serving.planner import Action, ActionKind, RetryPolicy, VersionRecord, plan_transitions
from cluster.types import ServableState

S = ServableState
RETRY = RetryPolicy(max_retries=2, retry_interval_s=60.0)


def load(v: int) -> Action:
    return Action(ActionKind.LOAD, v)


def unload(v: int) -> Action:
    return Action(ActionKind.UNLOAD, v)


def plan(records: dict[int, VersionRecord | S], aspired: set[int], now: float = 0.0) -> list[Action]:
    full = {v: r if isinstance(r, VersionRecord) else VersionRecord(r) for v, r in records.items()}
    return plan_transitions(full, aspired, now=now, retry=RETRY)


# -- the pure planner ---------------------------------------------------------------------------


def test_first_versions_load_highest_first():
    assert plan({}, {1, 2, 3}) == [load(3), load(2), load(1)]


def test_new_version_loads_while_old_keeps_serving():
    assert plan({1: S.AVAILABLE}, {2}) == [load(2)]


def test_old_version_is_not_unloaded_while_replacement_loads():
    assert plan({1: S.AVAILABLE, 2: S.LOADING}, {2}) == []


def test_old_version_unloads_once_replacement_is_available():
    assert plan({1: S.AVAILABLE, 2: S.AVAILABLE}, {2}) == [unload(1)]


def test_old_version_stays_when_replacement_failed():
    failed = VersionRecord(S.END, error_message="bad checksum", failed_loads=3, retry_at=0.0)
    assert plan({2: S.AVAILABLE, 3: failed}, {3}, now=1000.0) == []


def test_when_nothing_new_is_available_only_the_highest_unaspired_version_stays():
    # latest-2 moved from {1, 2} to {3, 4}: 1 can go at once, 2 keeps serving until 3 or 4 is up.
    assert plan({1: S.AVAILABLE, 2: S.AVAILABLE, 3: S.LOADING, 4: S.LOADING}, {3, 4}) == [unload(1)]
    assert plan({1: S.AVAILABLE, 2: S.AVAILABLE, 3: S.AVAILABLE, 4: S.LOADING}, {3, 4}) == [unload(1), unload(2)]


def test_nothing_aspired_unloads_everything_smallest_first():
    assert plan({1: S.AVAILABLE, 2: S.AVAILABLE}, set()) == [unload(1), unload(2)]


def test_loads_come_before_unloads():
    assert plan({1: S.AVAILABLE, 2: S.AVAILABLE}, {2, 3}) == [load(3), unload(1)]


def test_versions_in_transition_are_left_alone():
    assert plan({1: S.UNLOADING, 2: S.LOADING}, {2}) == []
    assert plan({1: S.LOADING}, set()) == []  # unloaded once it is available


def test_unloaded_version_that_is_aspired_again_is_reloaded():
    assert plan({1: S.END, 2: S.AVAILABLE}, {1, 2}) == [load(1)]


@pytest.mark.parametrize(
    ("failed_loads", "now", "retries"),
    [
        (1, 59.0, False),  # interval not over yet
        (1, 60.0, True),
        (2, 500.0, True),  # the last of max_retries=2 retries
        (3, 500.0, False),  # exhausted: stays in END with its error
    ],
)
def test_failed_load_is_retried_after_interval_up_to_max_retries(failed_loads, now, retries):
    record = VersionRecord(S.END, error_message="boom", error_kind="Internal", failed_loads=failed_loads, retry_at=60.0)
    assert plan({1: S.AVAILABLE, 2: record}, {2}, now=now) == ([load(2)] if retries else [])
