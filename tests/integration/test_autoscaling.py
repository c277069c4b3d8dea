"""Autoscaling on a real local Ray: load from gateways scales a model up, idleness scales it down."""

from __future__ import annotations

import asyncio
import pathlib
import time

import numpy as np
import pytest
import ray

from cluster.app import TesseraServer
from cluster.config import ModelConfig, ServeOptions, ServerConfig
from cluster.requests import ModelSpec, PredictRequest
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
