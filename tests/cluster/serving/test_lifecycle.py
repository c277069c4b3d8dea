from __future__ import annotations

import pytest

from cluster import errors
from cluster.serving.lifecycle import (
    Action,
    ActionKind,
    RetryPolicy,
    ServableStream,
    VersionRecord,
    error_kind,
    plan_transitions,
    resolve_version,
)
from cluster.types import ServableState, VersionRequest, VersionStatus

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


# -- the stream ---------------------------------------------------------------------------------


def test_stream_walks_through_a_version_swap():
    stream = ServableStream("m", RETRY)
    stream.set_aspired({1})
    assert stream.record(1) == VersionRecord(S.START)
    assert stream.plan(now=0) == [load(1)]
    stream.load_started(1)
    assert stream.plan(now=0) == []
    stream.load_succeeded(1)
    assert stream.available_versions() == {1}

    stream.set_aspired({2})
    assert stream.plan(now=1) == [load(2)]
    stream.load_started(2)
    assert stream.plan(now=1) == []  # 1 keeps serving
    stream.load_succeeded(2)
    assert stream.plan(now=2) == [unload(1)]
    stream.unload_started(1)
    stream.unloaded(1)
    assert stream.statuses() == [VersionStatus(2, S.AVAILABLE), VersionStatus(1, S.END)]


def test_stream_records_failures_and_schedules_retries():
    stream = ServableStream("m", RETRY)
    stream.set_aspired({3})
    stream.load_started(3)
    stream.load_failed(3, errors.NotFound("no manifest"), now=100.0)
    assert stream.statuses() == [VersionStatus(3, S.END, "no manifest", "NotFound")]
    assert stream.next_retry_at() == 160.0
    assert stream.plan(now=159.0) == []
    assert stream.plan(now=160.0) == [load(3)]
    stream.load_started(3)
    assert stream.record(3).state is S.LOADING and stream.record(3).error_message is None
    stream.load_failed(3, ValueError("still broken"), now=200.0)
    stream.load_started(3)
    stream.load_failed(3, ValueError("still broken"), now=300.0)
    assert stream.record(3).failed_loads == 3
    assert stream.next_retry_at() is None and stream.plan(now=10_000.0) == []


def test_reaspired_failed_version_starts_afresh():
    stream = ServableStream("m", RETRY)
    stream.set_aspired({3})
    for now in (0.0, 100.0, 200.0):
        stream.load_started(3)
        stream.load_failed(3, RuntimeError("corrupt"), now=now)
    assert stream.plan(now=1e9) == []
    stream.set_aspired(set())
    assert stream.record(3).error_message == "corrupt"  # still reported while not aspired
    stream.set_aspired({3})
    assert stream.record(3) == VersionRecord(S.START)
    assert stream.plan(now=1e9) == [load(3)]


def test_unaspired_version_that_never_started_ends_quietly():
    stream = ServableStream("m", RETRY)
    stream.set_aspired({1})
    stream.set_aspired({2})
    assert stream.record(1) == VersionRecord(S.END)
    assert stream.plan(now=0) == [load(2)]


def test_error_kind_prefers_our_error_classes():
    class StorageHiccup(errors.Unavailable):
        pass

    assert error_kind(StorageHiccup("x")) == "Unavailable"
    assert error_kind(errors.InvalidArgument("x")) == "InvalidArgument"
    assert error_kind(KeyError("x")) == "KeyError"


# -- resolution (spec §7.1) ---------------------------------------------------------------------

LABELS = {"stable": 1, "canary": 2, "old": 0}


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (VersionRequest.latest(), 2),
        (VersionRequest.specific(1), 1),
        (VersionRequest.labelled("stable"), 1),
        (VersionRequest.labelled("canary"), 2),
    ],
)
def test_resolve_version(request_, expected):
    assert resolve_version(request_, {1, 2}, LABELS, model_name="m") == expected


@pytest.mark.parametrize(
    ("request_", "available", "error", "message"),
    [
        (VersionRequest.latest(), set(), errors.NotFound, "Servable not found for request: Latest(m)"),
        (VersionRequest.specific(9), {1, 2}, errors.NotFound, "Servable not found for request: Specific(m, 9)"),
        (VersionRequest.labelled("old"), {1, 2}, errors.NotFound, "Servable not found for request: Specific(m, 0)"),
        (VersionRequest.labelled("beta"), {1, 2}, errors.InvalidArgument, "Unrecognized servable version label: beta"),
    ],
)
def test_resolve_version_errors(request_, available, error, message):
    with pytest.raises(error) as caught:
        resolve_version(request_, available, LABELS, model_name="m")
    assert str(caught.value) == message


def test_labels_not_initialised_yet_is_unavailable():
    with pytest.raises(errors.Unavailable):
        resolve_version(VersionRequest.labelled("stable"), {1}, None, model_name="m")
    assert resolve_version(VersionRequest.latest(), {1}, None, model_name="m") == 1
