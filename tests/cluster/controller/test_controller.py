"""The controller over fake replica handles (no Ray): versions, health ticks, routing table."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

from cluster.config import ModelConfig, ServerConfig
from cluster.controller.controller import Controller, ControllerOptions
from tests.cluster.controller.test_replica_set import FakeHandle


def _controller(started: list[FakeHandle], **options: Any) -> Controller:
    def new_replica(model: ModelConfig, index: int) -> FakeHandle:
        handle = FakeHandle(index)
        started.append(handle)
        return handle

    def kill(handle: FakeHandle) -> None:
        handle.killed = True

    return Controller(ControllerOptions(drain_seconds=0.01, **options), new_replica, kill)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_polled_once_yet_a_dead_replica_is_still_replaced(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = _controller(started, poll_seconds=0, tick_seconds=0.05)
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
        await _until(lambda: controller._table.ready())  # noqa: SLF001
        table = controller._table  # noqa: SLF001
        assert set(table.models["m"].available) == {1}
        (tmp_path / "m" / "2").mkdir()  # polled once: a new version is not picked up ...
        started[0].dead = True  # ... but health checks still run
        await _until(lambda: len(started) == 2)
        await _until(lambda: 1 in started[1].loaded)  # the replacement loads v1 before routing
        await _until(lambda: controller._table.models["m"].replicas[0].handle is started[1])  # noqa: SLF001
        assert set(controller._table.models["m"].available) == {1}  # noqa: SLF001
        await controller.shutdown()

    asyncio.run(main())


def test_a_new_version_replaces_the_old_without_a_gap(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = _controller(started, poll_seconds=0.05, tick_seconds=0.05)
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
        await _until(lambda: controller._table.ready())  # noqa: SLF001
        seen: list[set[int]] = []
        (tmp_path / "m" / "2").mkdir()

        async def watch() -> None:
            while True:
                seen.append(set(controller._table.models["m"].available))  # noqa: SLF001
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        await _until(lambda: set(controller._table.models["m"].available) == {2})  # noqa: SLF001
        watcher.cancel()
        assert all(s for s in seen)  # never a moment without an available version
        await _until(lambda: started[0].loaded == {2})  # then the old one is unloaded, after the drain
        await controller.shutdown()

    asyncio.run(main())


def test_the_models_platform_reaches_every_replica_load(tmp_path: pathlib.Path) -> None:
    import os

    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"onnx")
    os.utime(version / "model.onnx", (0, 0))  # long finished: complete at the first poll
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = _controller(started, poll_seconds=0.05, tick_seconds=0.05, num_replicas=2)
        config = ModelConfig("m", str(tmp_path / "m"), platform="onnx")
        await controller.set_config(ServerConfig((config,)))
        await _until(lambda: controller._table.ready())  # noqa: SLF001
        assert [h.platforms for h in started] == [{1: "onnx"}, {1: "onnx"}]
        await controller.shutdown()

    asyncio.run(main())


def test_polled_once_a_version_still_being_written_is_looked_at_until_complete(tmp_path: pathlib.Path) -> None:
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"just written")  # fresh: not complete at the first poll
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = _controller(started, poll_seconds=0, tick_seconds=0.05)
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m"), platform="onnx"),)))
        await _until(lambda: controller._table.ready())  # noqa: SLF001
        assert started[0].platforms == {1: "onnx"}
        await controller.shutdown()

    asyncio.run(main())
