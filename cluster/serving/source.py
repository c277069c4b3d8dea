"""The file-system source (spec §12): poll a base path, report the aspired versions of one stream.

Listing goes through `exporter.storage.list_versions` (pyarrow.fs: local paths and object stores),
which already keeps only the numeric children. The source applies the version policy and turns
failures into reports instead of exceptions, so one missing base path never stops the polling.
"""

from __future__ import annotations

import asyncio
import inspect
import posixpath
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cluster.config import VersionPolicy
from cluster.serving.version_policy import aspired_versions, missing_versions
from exporter import storage
from exporter.errors import BundleError

Lister = Callable[[str], Mapping[int, str]]
Sleep = Callable[[float], Awaitable[object]]


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
    ) -> None:
        self.name = name
        self.base_path = base_path
        self.policy = policy if policy is not None else VersionPolicy()
        self._lister = lister

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
                error=f"Failed to list base path {self.base_path} for servable {self.name}: "
                f"{type(exc).__name__}: {exc}",
            )

        warnings: list[str] = []
        if not on_disk:
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
