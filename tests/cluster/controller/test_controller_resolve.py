"""The controller's path resolver (the hook SavedModel versions are imported through), over fake
replicas: replicas load the resolved path, new replicas too, and a failed resolution fails only
that version. The controller's clock is a FakeClock; what it did is read from its routing table."""

from __future__ import annotations

import asyncio
import pathlib

from cluster.config import ModelConfig, ServerConfig
from cluster.controller.controller import Controller
from cluster.controller.options import ControllerOptions
from cluster.routing.table import RoutingTable
from cluster.types import VersionStatus
from exporter.errors import BundleError
from tests.cluster.controller.controller_testlib import (
    FakeClock,
    FakeHandle,
    routing_table,
    table_holds,
    until,
)


class PathHandle(FakeHandle):
    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.paths: dict[int, str] = {}

    async def _load(self, version: int, path: str, platform: str = "tensorflow") -> dict:
        self.paths[version] = path
        return await super()._load(version, path, platform)


def _controller(started: list[PathHandle], resolve, **options) -> Controller:  # noqa: ANN001
    def new_replica(model: ModelConfig, index: int) -> PathHandle:
        started.append(PathHandle(index))
        return started[-1]

    def kill(handle: PathHandle) -> None:
        handle.killed = True

    opts = ControllerOptions(drain_seconds=0.01, poll_seconds=0.05, tick_seconds=0.05, **options)
    return Controller(opts, new_replica, kill, resolve_path=resolve, clock=FakeClock())


def test_replicas_load_the_resolved_path_and_new_replicas_too(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    calls: list[tuple[str, str]] = []

    async def resolve(model: ModelConfig, path: str) -> str:
        calls.append((model.platform, path))
        await asyncio.sleep(0.05)  # an import takes a while: the controller's loop keeps running
        return f"{path}-imported"

    started: list[PathHandle] = []

    async def main() -> None:
        controller = _controller(started, resolve, num_replicas=2)
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
        await until(lambda: table_holds(controller, RoutingTable.ready))
        want = str(tmp_path / "m" / "1") + "-imported"
        assert [h.paths for h in started] == [{1: want}, {1: want}]
        started[0].dead = True  # its replacement loads the resolved path, without resolving again
        await until(lambda: len(started) == 3 and 1 in started[2].loaded)
        assert started[2].paths == {1: want}
        assert calls == [("tensorflow", str(tmp_path / "m" / "1"))]
        await controller.shutdown()

    asyncio.run(main())


def test_a_failed_resolution_fails_only_that_version(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "2").mkdir(parents=True)

    async def resolve(model: ModelConfig, path: str) -> str:
        if path.endswith("2"):
            raise BundleError(f"{path} is a TensorFlow SavedModel and importing it failed: no")
        return path

    started: list[PathHandle] = []

    async def main() -> None:
        from cluster.config import VersionPolicy

        controller = _controller(started, resolve)
        policy = VersionPolicy(kind="all")
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m"), version_policy=policy),)))
        def version_2(table: RoutingTable) -> VersionStatus | None:  # GetModelStatus's entry for it
            return next((s for s in table.models["m"].statuses if s.version == 2), None)

        await until(lambda: table_holds(controller, lambda t: (s := version_2(t)) is not None
                                        and s.error_message is not None))
        status = version_2(await routing_table(controller))
        assert status is not None and "importing it failed" in (status.error_message or "")
        await until(lambda: 1 in started[0].loaded)
        assert 2 not in started[0].paths  # no replica was asked to load what did not resolve
        await controller.shutdown()

    asyncio.run(main())
