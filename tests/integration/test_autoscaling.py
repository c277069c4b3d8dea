"""Autoscaling on a real local Ray: load from gateways scales a model up, idleness scales it down."""

from __future__ import annotations

import asyncio
import pathlib
import time

import numpy as np
import pytest
import ray

from cluster import errors
from cluster.app import TesseraServer
from cluster.config import ModelAutoscaling, ModelConfig, ServeOptions, ServerConfig
from cluster.requests import ModelSpec, PredictRequest
from cluster.types import ServableState
from tests.bundles_testlib import write_version
from tests.integration.serving_testlib import LoopThread

pytestmark = pytest.mark.timeout(180)


def test_load_scales_up_and_idleness_scales_down(
    local_ray: None, loop_thread: LoopThread, tmp_path: pathlib.Path
) -> None:
    write_version(tmp_path / "m", 1, 2.0)
    options = ServeOptions(
        host="127.0.0.1", grpc_port=0, num_replicas=1, max_replicas=2, replica_num_cpus=0.25,
        target_ongoing_requests=2, upscale_delay_s=0.5, downscale_delay_s=2.0, file_system_poll_wait_seconds=0.2,
    )
    server = TesseraServer(options, ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
    loop_thread.run(server.start())
    try:
        assert loop_thread.run(server.wait_ready(60))

        def replicas() -> int:
            return len(server.dispatcher.table.models["m"].replicas)

        assert replicas() == 1

        async def load(seconds: float) -> int:
            # 16 clients with a big enough batch each that requests overlap in flight.
            request = PredictRequest(ModelSpec("m"), {"x": np.ones((20000, 2), np.float32)})
            done = 0
            end = time.monotonic() + seconds

            async def client() -> None:
                nonlocal done
                while time.monotonic() < end and replicas() < 2:
                    await server.dispatcher.predict(request)
                    done += 1

            await asyncio.gather(*(client() for _ in range(16)))
            return done

        served = loop_thread.run(load(30))
        assert served > 0
        assert replicas() == 2, "no scale-up under load"
        stats = ray.get(server.controller.cluster_stats.remote())
        assert stats[0].replica_count == 2
        deadline = time.monotonic() + 30
        while replicas() != 1:
            assert time.monotonic() < deadline, "no scale-down when idle"
            time.sleep(0.2)
        # The model still answers after scaling down.
        result = loop_thread.run(server.dispatcher.predict(PredictRequest(ModelSpec("m"), {"x": np.ones((1, 2), np.float32)})))
        assert result.outputs["y"][0, 0] == 2.0
    finally:
        loop_thread.run(server.stop(grace=2))


def test_a_min_zero_model_scales_to_zero_when_idle_and_serves_a_burst_that_finds_it_there(
    local_ray: None, loop_thread: LoopThread, tmp_path: pathlib.Path
) -> None:
    write_version(tmp_path / "rare", 1, 3.0)
    write_version(tmp_path / "busy", 1, 2.0)
    options = ServeOptions(
        host="127.0.0.1", grpc_port=0, num_replicas=1, replica_num_cpus=0.25, file_system_poll_wait_seconds=0,
        scale_to_zero_idle_s=1.0, model_autoscaling={"rare": ModelAutoscaling(min_replicas=0)},
    )
    models = tuple(ModelConfig(name, str(tmp_path / name)) for name in ("rare", "busy"))
    server = TesseraServer(options, ServerConfig(models))
    loop_thread.run(server.start())
    try:
        assert loop_thread.run(server.wait_ready(60))

        def replicas(name: str) -> int:
            return len(server.dispatcher.table.models[name].replicas)

        deadline = time.monotonic() + 60
        while replicas("rare") != 0:  # idle for 1 s (once its version loaded): unloaded everywhere
            assert time.monotonic() < deadline, "no scale to zero when idle"
            time.sleep(0.1)
        assert replicas("busy") == 1  # a model with a minimum stays
        (status,) = loop_thread.run(server.dispatcher.model_status("rare", None))
        assert status.state is ServableState.AVAILABLE and "scaled to zero" in (status.error_message or "")

        async def burst() -> list[float | BaseException]:
            # 12 requests from 4 clients arrive while it is at zero: each waits for the cold start.
            async def client() -> list[float | BaseException]:
                answers: list[float | BaseException] = []
                for _ in range(3):
                    request = PredictRequest(ModelSpec("rare"), {"x": np.ones((1, 2), np.float32)},
                                             deadline=time.monotonic() + 60)
                    try:
                        answers.append(float((await server.dispatcher.predict(request)).outputs["y"][0, 0]))
                    except errors.ServingError as exc:
                        answers.append(exc)
                return answers

            return [a for answers in await asyncio.gather(*(client() for _ in range(4))) for a in answers]

        assert loop_thread.run(burst()) == [3.0] * 12  # zero failures
        assert replicas("rare") == 1
        (rare,) = [s for s in ray.get(server.controller.cluster_stats.remote()) if s.model == "rare"]
        assert rare.scaled_to_zero >= 1 and rare.cold_start_seconds.count == 1
    finally:
        loop_thread.run(server.stop(grace=2))
