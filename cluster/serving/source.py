"""The file-system source (spec §12): poll a base path, report the aspired versions of one stream.

Listing goes through `exporter.storage.list_versions` (pyarrow.fs: local paths and object stores),
which already keeps only the numeric children. The source applies the version policy and turns
failures into reports instead of exceptions, so one missing base path never stops the polling.

A half-written export is never reported. A Tessera bundle commits itself (its MANIFEST.pb is
written last; the loader refuses a version without one, and the load is retried). Layouts that
have no such marker (Triton's `<version>/model.onnx`) are watched instead (`settle=True`): a
version is reported only once it is complete by `complete_versions` (its files, sizes and mtimes
unchanged across two polls, or untouched for `quiet_s`). A version that changes after that fails
its load, which is retried up to --max_num_load_retries.
"""

from __future__ import annotations

import asyncio
import inspect
import posixpath
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cluster.config import ModelConfig, VersionPolicy
from cluster.serving.version_policy import aspired_versions, missing_versions
from exporter import servable, storage
from exporter.errors import BundleError

Lister = Callable[[str], Mapping[int, str]]
Listing = tuple[tuple[str, int, int], ...]  # (relative path, size, mtime ns) of every file
Tree = Callable[[str], Listing]
Sleep = Callable[[float], Awaitable[object]]
# A version whose newest file is this old is complete even on the first poll (a server started
# next to finished exports serves them at once, also with --file_system_poll_wait_seconds=0).
QUIET_S = 30.0


def complete_versions(
    previous: Mapping[int, Listing], current: Mapping[int, Listing], *, now: float, quiet_s: float = QUIET_S
) -> set[int]:
    """The versions of `current` that are done being written: their listing equals the previous
    poll's, or their newest file was modified at least `quiet_s` before `now` (wall-clock seconds)."""
    done = set()
    for version, listing in current.items():
        newest = max((mtime for _, _, mtime in listing), default=None)
        quiet = newest is not None and newest >= 0 and now - newest / 1e9 >= quiet_s
        if quiet or previous.get(version) == listing:
            done.add(version)
    return done


@dataclass(frozen=True)
class SourceReport:
    """One poll's result for one stream.

    `aspired` maps each aspired version to its directory. It is None when the listing failed: the
    consumer must then keep what it has (a flaky store must not unload a healthy model), whereas an
    empty mapping means the base path exists and holds no aspired version (unload everything).
    """

    name: str
    aspired: Mapping[int, str] | None
    error: str | None = None
    warnings: tuple[str, ...] = field(default=())


class FileSystemSource:
    """Reports the aspired versions of the stream `name` stored under `base_path`."""

    def __init__(
        self,
        name: str,
        base_path: str,
        policy: VersionPolicy | None = None,
        *,
        lister: Lister = storage.list_versions,
        settle: bool = False,
        tree: Tree = storage.list_tree,
        clock: Callable[[], float] = time.time,
        quiet_s: float = QUIET_S,
    ) -> None:
        self.name = name
        self.base_path = base_path
        self.policy = policy if policy is not None else VersionPolicy()
        self._lister = lister
        self._settle = settle
        self._tree = tree
        self._clock = clock
        self._quiet_s = quiet_s
        self._complete: set[int] = set()  # versions found complete (versions are immutable)
        self._listings: dict[int, Listing] = {}  # last listing of each version not complete yet

    @classmethod
    def for_model(cls, model: ModelConfig) -> FileSystemSource:
        """The source of a configured model: settling unless its platform commits with a manifest."""
        settle = not servable.commits_with_manifest(model.platform)
        return cls(model.name, model.base_path, model.version_policy, settle=settle)

    def poll_once(self) -> SourceReport:
        """List the base path once (blocking I/O) and apply the version policy."""
        try:
            on_disk = self._lister(self.base_path)
        except BundleError as exc:
            # list_versions words a missing base path like TF Serving; add the servable as it does.
            return SourceReport(self.name, None, error=f"{exc} for servable {self.name}")
        except Exception as exc:  # any storage failure becomes a report: polling goes on
            return SourceReport(
                self.name,
                None,
                error=f"Failed to list base path {self.base_path} for servable {self.name}: {exc}",
            )

        warnings: list[str] = []
        if self._settle:
            on_disk, pending = self._completed(on_disk)
            warnings.extend(
                f"Version {v} of servable {self.name} is still being written (its files changed "
                "since the last poll): not loaded yet" for v in pending
            )
        if not on_disk and not warnings:
            warnings.append(
                f"No versions of servable {self.name} found under base path {self.base_path}. "
                "Did you forget to name your leaf directory as a number (eg. '/1/')?"
            )
        for version in sorted(missing_versions(on_disk, self.policy)):
            warnings.append(
                f"Version {version} of servable {self.name}, which was requested to be served as a "
                "'specific' version in the servable's version policy, was not found in the file system"
            )
        chosen = aspired_versions(on_disk, self.policy)
        # Listed paths are in the filesystem's own terms (no scheme, no ?endpoint_override=...):
        # report each version as its base path plus its directory name, so a replica reads it
        # through the same URI (and the same object store) as the base path.
        aspired = MappingProxyType(
            {v: storage.join(self.base_path, posixpath.basename(on_disk[v].rstrip("/"))) for v in sorted(chosen)}
        )
        return SourceReport(self.name, aspired, warnings=tuple(warnings))

    @property
    def pending(self) -> bool:
        """True while a version found by the last poll is still being written: polled once or not,
        the owner should poll again (a one-shot poll would otherwise never see it finished)."""
        return bool(self._listings)

    def _completed(self, on_disk: Mapping[int, str]) -> tuple[dict[int, str], list[int]]:
        """`on_disk` without the versions still being written, and those versions."""
        self._complete &= on_disk.keys()
        current: dict[int, Listing] = {}
        for version, path in on_disk.items():
            if version not in self._complete:
                try:
                    current[version] = self._tree(path)
                except Exception:  # noqa: BLE001 - unreadable now: not complete, look again next poll
                    continue
        done = complete_versions(self._listings, current, now=self._clock(), quiet_s=self._quiet_s)
        self._complete |= done
        self._listings = {v: listing for v, listing in current.items() if v not in done}
        pending = sorted(set(on_disk) - self._complete)
        return {v: p for v, p in on_disk.items() if v in self._complete}, pending

    async def run(
        self,
        on_report: Callable[[SourceReport], Awaitable[object] | object],
        *,
        interval_s: float,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Poll every `interval_s` seconds and hand each report to `on_report` (sync or async).

        As `--file_system_poll_wait_seconds`: 0 polls exactly once, a negative value never polls.
        Listing runs in a worker thread because object-store listings can take a while and must not
        stall the event loop. Cancel the task to stop.
        """
        if interval_s < 0:
            return
        while True:
            report = await asyncio.to_thread(self.poll_once)
            result = on_report(report)
            if inspect.isawaitable(result):
                await result
            if interval_s == 0:
                return
            await sleep(interval_s)
