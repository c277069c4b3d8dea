from __future__ import annotations

import asyncio

from cluster.config import VersionPolicy
from cluster.serving.source import FileSystemSource, SourceReport
from exporter.errors import BundleError


class FakeStore:
    """A lister whose answers a test changes between polls."""

    def __init__(self, versions: dict[int, str] | Exception) -> None:
        self.versions = versions
        self.calls: list[str] = []

    def __call__(self, base_path: str) -> dict[int, str]:
        self.calls.append(base_path)
        if isinstance(self.versions, Exception):
            raise self.versions
        return dict(self.versions)


def test_reports_aspired_versions_with_their_paths():
    store = FakeStore({1: "/m/1", 2: "/m/0002", 3: "/m/3"})
    source = FileSystemSource("m", "/m", VersionPolicy("latest", num_versions=2), lister=store)
    report = source.poll_once()
    assert report == SourceReport("m", {2: "/m/0002", 3: "/m/3"})
    assert store.calls == ["/m"]


def test_missing_base_path_is_reported_not_raised_and_keeps_previous_state():
    store = FakeStore(BundleError("Could not find base path /m"))
    report = FileSystemSource("m", "/m", lister=store).poll_once()
    assert report.aspired is None  # "keep what you have", unlike an empty mapping
    assert report.error == "Could not find base path /m for servable m"


def test_other_storage_failures_are_reported_too():
    report = FileSystemSource("m", "s3://b/m", lister=FakeStore(OSError("connection reset"))).poll_once()
    assert report.aspired is None
    assert "s3://b/m" in report.error and "OSError: connection reset" in report.error


def test_empty_base_path_aspires_nothing_with_tf_serving_warning():
    report = FileSystemSource("m", "/m", lister=FakeStore({})).poll_once()
    assert report.aspired == {} and report.error is None
    assert report.warnings == (
        "No versions of servable m found under base path /m. "
        "Did you forget to name your leaf directory as a number (eg. '/1/')?",
    )


def test_specific_versions_missing_on_disk_are_warned_about():
    source = FileSystemSource("m", "/m", VersionPolicy("specific", versions=(1, 5)), lister=FakeStore({1: "/m/1"}))
    report = source.poll_once()
    assert report.aspired == {1: "/m/1"}
    assert len(report.warnings) == 1 and "Version 5 of servable m" in report.warnings[0]


async def _run(source: FileSystemSource, interval_s: float, polls_before_stop: int) -> list[SourceReport]:
    reports: list[SourceReport] = []
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= polls_before_stop:
            raise asyncio.CancelledError
        await asyncio.sleep(0)

    try:
        await source.run(reports.append, interval_s=interval_s, sleep=fake_sleep)
    except asyncio.CancelledError:
        pass
    assert all(s == interval_s for s in sleeps)
    return reports


def test_run_polls_each_interval_and_survives_errors():
    store = FakeStore(BundleError("Could not find base path /m"))
    source = FileSystemSource("m", "/m", lister=store)

    async def scenario() -> list[SourceReport]:
        reports: list[SourceReport] = []

        async def on_report(report: SourceReport) -> None:  # an async consumer, and it changes the store
            reports.append(report)
            store.versions = {4: "/m/4"}

        async def fake_sleep(seconds: float) -> None:
            assert seconds == 2.5
            if len(reports) == 3:
                raise asyncio.CancelledError

        try:
            await source.run(on_report, interval_s=2.5, sleep=fake_sleep)
        except asyncio.CancelledError:
            pass
        return reports

    reports = asyncio.run(scenario())
    assert [r.aspired for r in reports] == [None, {4: "/m/4"}, {4: "/m/4"}]
    assert reports[0].error is not None and reports[1].error is None


def test_interval_zero_polls_once_and_negative_never():
    store = FakeStore({1: "/m/1"})
    source = FileSystemSource("m", "/m", lister=store)
    assert len(asyncio.run(_run(source, 0, polls_before_stop=10))) == 1
    assert asyncio.run(_run(source, -1, polls_before_stop=10)) == []
    assert len(store.calls) == 1
