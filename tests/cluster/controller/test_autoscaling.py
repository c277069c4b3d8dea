"""The controller's autoscaling over fake replicas (no Ray): per-model bounds, gateways' reports."""

from __future__ import annotations

import asyncio
import pathlib

from cluster.autoscaler.load import Load
from cluster.config import ModelAutoscaling, ModelConfig, ServerConfig
from cluster.controller.controller import Controller, ControllerOptions
from tests.cluster.controller.test_controller import _controller, _until
from tests.cluster.controller.test_replica_set import FakeHandle


def _replicas(controller: Controller, name: str) -> int:
    return len(controller._table.models[name].replicas)  # noqa: SLF001


def test_a_hot_model_scales_out_while_cold_ones_stay_at_their_minimum(tmp_path: pathlib.Path) -> None:
    for name in ("hot", "cold", "plain"):
        (tmp_path / name / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = _controller(
            started, poll_seconds=0, tick_seconds=0.05, num_replicas=1, max_replicas=2,
            target_ongoing_requests=1.0, upscale_delay_s=0.0, downscale_delay_s=60.0, look_back_s=0.1,
            model_autoscaling={
                "hot": ModelAutoscaling(max_replicas=4, target_ongoing_requests=2.0),
                "cold": ModelAutoscaling(min_replicas=2),  # max: the flag's 2
            },
        )
        models = tuple(ModelConfig(name, str(tmp_path / name)) for name in ("hot", "cold", "plain"))
        await controller.set_config(ServerConfig(models))
        await _until(lambda: controller._table.ready())  # noqa: SLF001
        assert [_replicas(controller, m) for m in ("hot", "cold", "plain")] == [1, 2, 1]

        async def gateways() -> None:  # two gateways, each with half the traffic
            while True:
                for gateway in ("g1", "g2"):
                    controller.report_load(gateway, 0.05, {
                        "hot": Load(5.0, 500.0, 500.0), "cold": Load(0.2, 2.0, 2.0), "plain": Load(0.1, 1.0, 1.0),
                    })
                await asyncio.sleep(0.05)

        reporting = asyncio.ensure_future(gateways())
        # hot: 10 in flight in all at 2 per replica needs 5; its own maximum is 4.
        await _until(lambda: _replicas(controller, "hot") == 4, timeout=10.0)
        await asyncio.sleep(0.5)
        assert _replicas(controller, "hot") == 4
        assert _replicas(controller, "cold") == 2  # its own minimum, not the flag's 1
        assert _replicas(controller, "plain") == 1  # 0.2 in flight: the flags' minimum
        reporting.cancel()
        await controller.shutdown()

    asyncio.run(main())


def test_per_model_settings_fall_back_to_the_flags() -> None:
    options = ControllerOptions(
        num_replicas=2, max_replicas=5, target_ongoing_requests=8.0, upscale_delay_s=3.0, downscale_delay_s=30.0,
        model_autoscaling={
            "capped": ModelAutoscaling(max_replicas=1),
            "big": ModelAutoscaling(min_replicas=7, downscale_delay_s=0.0),
            "tuned": ModelAutoscaling(target_ongoing_requests=2.0, upscale_delay_s=1.0),
        },
    )
    controller = Controller(options, lambda model, index: FakeHandle(index))
    config = controller._autoscaling_config  # noqa: SLF001
    plain = config(ModelConfig("plain", "/m"))
    assert (plain.min_replicas, plain.max_replicas, plain.target_ongoing_requests) == (2, 5, 8.0)
    capped = config(ModelConfig("capped", "/m"))
    assert (capped.min_replicas, capped.max_replicas) == (1, 1)  # its own maximum wins
    big = config(ModelConfig("big", "/m"))
    assert (big.min_replicas, big.max_replicas, big.downscale_delay_s) == (7, 7, 0.0)
    tuned = config(ModelConfig("tuned", "/m"))
    assert (tuned.target_ongoing_requests, tuned.upscale_delay_s, tuned.downscale_delay_s) == (2.0, 1.0, 30.0)
    assert not capped.enabled and not big.enabled and plain.enabled
