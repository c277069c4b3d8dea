"""cluster.serving.stream: one model's versions through loads, failures, retries and swaps."""

from __future__ import annotations

from cluster import errors
from cluster.serving.planner import Action, ActionKind, RetryPolicy, VersionRecord
from cluster.serving.stream import ServableStream, error_kind
from cluster.types import ServableState, VersionStatus

S = ServableState
RETRY = RetryPolicy(max_retries=2, retry_interval_s=60.0)


def load(v: int) -> Action:
    return Action(ActionKind.LOAD, v)


def unload(v: int) -> Action:
    return Action(ActionKind.UNLOAD, v)


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
