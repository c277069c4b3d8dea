"""The controller's autoscaling over fake replicas (no Ray): per-model bounds, gateways' reports."""

from __future__ import annotations

import asyncio
import functools
import pathlib
import time
from typing import Any

from cluster.autoscaler.load import Load
from cluster.config import ModelAutoscaling, ModelConfig, ServerConfig
from cluster.controller.autoscaling import autoscaling_config_for
from cluster.controller.controller import Controller
from cluster.controller.options import ControllerOptions
from cluster.types import ServableState
from tests.cluster.controller.controller_testlib import FakeHandle, make_controller, until


def _replicas(controller: Controller, name: str) -> int:
    return len(controller._tables.table.models[name].replicas)  # noqa: SLF001


def test_a_hot_model_scales_out_while_cold_ones_stay_at_their_minimum(tmp_path: pathlib.Path) -> None:
    for name in ("hot", "cold", "plain"):
        (tmp_path / name / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = make_controller(
            started, poll_seconds=0, tick_seconds=0.05, num_replicas=1, max_replicas=2,
            target_ongoing_requests=1.0, upscale_delay_s=0.0, downscale_delay_s=60.0, look_back_s=0.1,
            model_autoscaling={
                "hot": ModelAutoscaling(max_replicas=4, target_ongoing_requests=2.0),
                "cold": ModelAutoscaling(min_replicas=2),  # max: the flag's 2
            },
        )
        models = tuple(ModelConfig(name, str(tmp_path / name)) for name in ("hot", "cold", "plain"))
        await controller.set_config(ServerConfig(models))
        await until(lambda: controller._tables.table.ready())  # noqa: SLF001
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
        await until(lambda: _replicas(controller, "hot") == 4, timeout=10.0)
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
    config = functools.partial(autoscaling_config_for, options)
    plain = config(ModelConfig("plain", "/m"))
    assert (plain.min_replicas, plain.max_replicas, plain.target_ongoing_requests) == (2, 5, 8.0)
    capped = config(ModelConfig("capped", "/m"))
    assert (capped.min_replicas, capped.max_replicas) == (1, 1)  # its own maximum wins
    big = config(ModelConfig("big", "/m"))
    assert (big.min_replicas, big.max_replicas, big.downscale_delay_s) == (7, 7, 0.0)
    tuned = config(ModelConfig("tuned", "/m"))
    assert (tuned.target_ongoing_requests, tuned.upscale_delay_s, tuned.downscale_delay_s) == (2.0, 1.0, 30.0)
    assert not capped.enabled and not big.enabled and plain.enabled


def _slow_start_controller(started: list[FakeHandle], **options: Any) -> Controller:
    """Replica 0 starts at once; every later one hangs in its start until `hung` is cleared."""

    def new_replica(model: ModelConfig, index: int) -> FakeHandle:
        handle = FakeHandle(index, hung=index > 0)
        started.append(handle)
        return handle

    def kill(handle: FakeHandle) -> None:
        handle.killed = True

    return Controller(ControllerOptions(drain_seconds=0.01, **options), new_replica, kill)


_FAST = dict(poll_seconds=0, tick_seconds=0.02, num_replicas=1, max_replicas=4, target_ongoing_requests=1.0,
             upscale_delay_s=0.0, look_back_s=0.05)


def test_a_scale_up_takes_effect_when_its_replica_serves_and_is_not_repeated_while_it_starts(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = _slow_start_controller(started, downscale_delay_s=60.0, **{**_FAST, "upscale_delay_s": 0.3})
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
        await until(lambda: controller._tables.table.ready())  # noqa: SLF001

        async def gateway() -> None:  # 5 in flight at 1 per replica: wants more, step by step
            while True:
                controller.report_load("g", 0.02, {"m": Load(5.0, 500.0, 500.0)})
                await asyncio.sleep(0.02)

        reporting = asyncio.ensure_future(gateway())
        await until(lambda: len(started) == 2)
        scaler = controller._models["m"].scaler  # noqa: SLF001
        assert scaler is not None
        decided = scaler.state.last_change
        await asyncio.sleep(0.6)  # 30 ticks, twice the upscale delay
        assert len(started) == 2, "a second scale-up while the first one's replica still starts"
        assert _replicas(controller, "m") == 1 and scaler.state.last_change == decided
        joined = time.monotonic()
        started[1].hung = False
        await until(lambda: _replicas(controller, "m") == 2)
        await until(lambda: len(started) == 3)  # the next step follows once it serves ...
        # ... the upscale delay after it joined the table (counted from the decision, 0.6 s
        # before, it would follow at the next tick).
        assert time.monotonic() - joined >= 0.3
        reporting.cancel()
        await controller.shutdown()

    asyncio.run(main())


def test_a_scale_down_still_applies_while_a_scale_up_cannot_start(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = _slow_start_controller(started, downscale_delay_s=0.1, **_FAST)
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
        await until(lambda: controller._tables.table.ready())  # noqa: SLF001
        load = {"m": Load(5.0, 500.0, 500.0)}

        async def gateway() -> None:
            while True:
                controller.report_load("g", 0.02, load)
                await asyncio.sleep(0.02)

        reporting = asyncio.ensure_future(gateway())
        await until(lambda: len(started) == 2)  # replica 1 never starts (no room, say)
        load["m"] = Load(0.0, 0.0, 0.0)  # the traffic goes away
        await until(lambda: started[1].killed)  # the one not serving yet leaves first
        model = controller._models["m"]  # noqa: SLF001
        await until(lambda: model.scaling is None)  # the scale-down took effect at its publish
        assert len(model.replicas) == 1 and _replicas(controller, "m") == 1 and not started[0].killed
        reporting.cancel()
        await controller.shutdown()

    asyncio.run(main())


def test_min_zero_idles_to_zero_then_loads_on_demand_at_once(tmp_path: pathlib.Path) -> None:
    (tmp_path / "rare" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        controller = make_controller(
            started, poll_seconds=0, tick_seconds=0.02, look_back_s=0.05, scale_to_zero_idle_s=0.2,
            model_autoscaling={"rare": ModelAutoscaling(min_replicas=0)},  # max: 1, no --max_replicas
        )
        await controller.set_config(ServerConfig((ModelConfig("rare", str(tmp_path / "rare")),)))
        await until(lambda: controller._tables.table.ready() and _replicas(controller, "rare") == 1)  # noqa: SLF001
        model = controller._models["rare"]  # noqa: SLF001
        assert model.scaler is not None and model.scaler.config.max_replicas == 1
        # No gateway reports any request: idle, then unloaded everywhere, still configured.
        await until(lambda: started[0].killed and _replicas(controller, "rare") == 0)
        assert len(model.replicas) == 0 and model.scaled_to_zero == 1
        (status,) = controller._tables.table.models["rare"].statuses  # noqa: SLF001
        assert status.state is ServableState.AVAILABLE and status.error_kind == "OK"
        assert "scaled to zero" in (status.error_message or "")
        assert controller._tables.table.ready()  # noqa: SLF001  - a model at zero is still servable
        # A request waits in a gateway, which reports at once: one replica starts within the call.
        controller.report_load("g", 0.01, {"rare": Load(0.0, 100.0, 0.0)})
        assert len(model.replicas) == 1 and len(started) == 2
        await until(lambda: _replicas(controller, "rare") == 1)
        assert started[1].loaded == {1}  # it loaded the available version before it was routed
        assert model.cold_start_seconds.count == 1
        (status,) = controller._tables.table.models["rare"].statuses  # noqa: SLF001
        assert status.error_message is None  # serving again: a plain AVAILABLE
        await controller.shutdown()

    asyncio.run(main())


def test_one_slow_cold_start_never_holds_back_another_model(tmp_path: pathlib.Path) -> None:
    for name in ("slow", "fast"):
        (tmp_path / name / "1").mkdir(parents=True)
    handles: dict[str, list[FakeHandle]] = {"slow": [], "fast": []}

    def new_replica(model: ModelConfig, index: int) -> FakeHandle:
        # The slow model's later replicas hang in their start (a big bundle, no room yet).
        handle = FakeHandle(index, hung=model.name == "slow" and bool(handles["slow"]))
        handles[model.name].append(handle)
        return handle

    def kill(handle: FakeHandle) -> None:
        handle.killed = True

    async def main() -> None:
        options = ControllerOptions(
            drain_seconds=0.01, poll_seconds=0, tick_seconds=0.02, look_back_s=0.05, scale_to_zero_idle_s=0.1,
            model_autoscaling={name: ModelAutoscaling(min_replicas=0) for name in handles},
        )
        controller = Controller(options, new_replica, kill)
        models = tuple(ModelConfig(name, str(tmp_path / name)) for name in handles)
        await controller.set_config(ServerConfig(models))
        await until(lambda: all(_replicas(controller, n) == 0 and len(handles[n]) == 1 for n in handles)
                    and controller._tables.table.ready())  # noqa: SLF001
        demand = {name: Load(0.5, 10.0, 0.0) for name in handles}

        async def gateway() -> None:
            while True:
                controller.report_load("g", 0.02, demand)
                await asyncio.sleep(0.02)

        reporting = asyncio.ensure_future(gateway())
        await until(lambda: _replicas(controller, "fast") == 1)
        assert len(handles["slow"]) == 2 and _replicas(controller, "slow") == 0  # still starting
        (status,) = controller._tables.table.models["slow"].statuses  # noqa: SLF001
        assert "loading on demand" in (status.error_message or "")
        handles["slow"][1].hung = False
        await until(lambda: _replicas(controller, "slow") == 1)
        reporting.cancel()
        await controller.shutdown()

    asyncio.run(main())


def test_request_counters_of_every_gateway_sum_and_a_gone_gateway_still_counts() -> None:
    from cluster import stats

    now = [0.0]
    controller = Controller(ControllerOptions(load_report_ttl_s=5.0), lambda model, index: None, clock=lambda: now[0])

    def counters(n: int) -> stats.RequestStats:
        out = stats.RequestStats()
        for _ in range(n):
            out.observe(("m", "serving_default", "predict", "OK", "grpc"), 0.001)
        return out

    key = ("m", "serving_default", "predict", "OK", "grpc")
    controller.report_load("g1", 1.0, {"m": Load(1.0, 10.0)}, counters(3))
    controller.report_load("g2", 1.0, {"m": Load(2.0, 20.0)}, counters(5))
    assert sorted(controller.gateways()) == ["g1", "g2"]
    assert controller.request_totals().counts[key] == 8
    # A scrape of g2 brings its newest counters along.
    assert controller.request_totals("g2", counters(7)).counts[key] == 10
    now[0] = 7.0  # g1 silent for longer than the TTL; g2 reports again
    controller.report_load("g2", 1.0, {"m": Load(2.0, 20.0)}, counters(9))
    assert controller.gateways() == ["g2"]
    assert controller.request_totals().counts[key] == 12
