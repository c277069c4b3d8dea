from __future__ import annotations

import asyncio

from cluster.config import ModelConfig, VersionPolicy
from cluster.serving.source import FileSystemSource, SourceReport, complete_versions
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
    assert "s3://b/m" in report.error and report.error.endswith(": connection reset")
    assert "OSError" not in report.error  # no Python exception names in what GetModelStatus shows


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


# -- layouts without a manifest: a version is reported once it is complete ----------------------

NOW = 1_000_000.0
FRESH = int((NOW - 1) * 1e9)  # written a second ago
OLD = int((NOW - 3600) * 1e9)


def test_complete_versions_unchanged_across_two_polls_or_quiet() -> None:
    first = {1: (("model.onnx", 10, FRESH),), 2: (("model.onnx", 10, OLD),), 3: ()}
    assert complete_versions({}, first, now=NOW) == {2}  # old files: complete at the first poll
    grown = {1: (("model.onnx", 20, FRESH + 1),), 3: ()}
    assert complete_versions(first, grown, now=NOW) == {3}  # 1 is still growing; 3 stayed (empty)
    assert complete_versions(grown, grown, now=NOW) == {1, 3}


class FakeTree:
    """Version directory -> its listing, changed by the test between polls."""

    def __init__(self, listings: dict[str, tuple]) -> None:
        self.listings = listings
        self.calls: list[str] = []

    def __call__(self, path: str) -> tuple:
        self.calls.append(path)
        return self.listings[path]


def test_a_version_still_being_written_is_not_reported_and_the_previous_keeps_serving() -> None:
    store = FakeStore({1: "/m/1", 2: "/m/2"})
    tree = FakeTree({"/m/1": (("model.onnx", 10, OLD),), "/m/2": (("model.onnx", 5, FRESH),)})
    source = FileSystemSource("m", "/m", lister=store, settle=True, tree=tree, clock=lambda: NOW)
    first = source.poll_once()
    assert dict(first.aspired) == {1: "/m/1"}  # latest-1 policy over complete versions only
    assert any("Version 2 of servable m is still being written" in w for w in first.warnings)
    tree.listings["/m/2"] = (("model.onnx", 9, FRESH + 5),)  # the copy goes on
    assert dict(source.poll_once().aspired) == {1: "/m/1"}
    assert dict(source.poll_once().aspired) == {2: "/m/2"}  # unchanged since the last poll
    calls = len(tree.calls)
    source.poll_once()
    assert len(tree.calls) == calls  # complete versions are not listed again


def test_a_version_that_disappears_is_forgotten() -> None:
    store = FakeStore({1: "/m/1"})
    tree = FakeTree({"/m/1": (("model.onnx", 10, OLD),)})
    source = FileSystemSource("m", "/m", lister=store, settle=True, tree=tree, clock=lambda: NOW)
    assert dict(source.poll_once().aspired) == {1: "/m/1"}
    store.versions = {}
    assert dict(source.poll_once().aspired) == {}
    store.versions = {1: "/m/1"}
    tree.listings["/m/1"] = (("model.onnx", 3, FRESH),)  # re-made: watched afresh
    assert dict(source.poll_once().aspired) == {}


def test_bundle_platforms_commit_with_their_manifest_and_are_not_watched() -> None:
    assert FileSystemSource.for_model(ModelConfig("m", "/m"))._settle is False  # noqa: SLF001
    assert FileSystemSource.for_model(ModelConfig("m", "/m", platform="onnx"))._settle is True  # noqa: SLF001


def test_settling_on_real_files(tmp_path) -> None:  # noqa: ANN001
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"half")
    source = FileSystemSource("m", str(tmp_path / "m"), settle=True)
    assert dict(source.poll_once().aspired) == {}  # just written
    assert list(source.poll_once().aspired) == [1]  # unchanged since
