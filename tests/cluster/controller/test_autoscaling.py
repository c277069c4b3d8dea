"""The controller's autoscaling over fake replicas (no Ray): per-model bounds, gateways' reports.

The controller's clock is a FakeClock: the delays (upscale, downscale, idle to zero) pass when a
test advances it, and a test runs the controller's ticks itself (`reconcile`) after it does.
What it decided is read as a caller reads it: the routing table and the metrics snapshot."""

from __future__ import annotations

import asyncio
import functools
import pathlib
from typing import Any

from cluster.autoscaler.load import Load
from cluster.config import ModelAutoscaling, ModelConfig, ServerConfig
from cluster.controller.autoscaling import autoscaling_config_for
from cluster.controller.controller import Controller
from cluster.controller.options import ControllerOptions
from cluster.routing.table import RoutingTable
from cluster.types import ServableState
from tests.cluster.controller.controller_testlib import (
    FakeClock,
    FakeHandle,
    make_controller,
    model_stats,
    routed,
    routing_table,
    table_holds,
    until,
)


async def _ticks(controller: Controller, count: int) -> None:
    """`count` of the controller's ticks, each an autoscaling decision per model."""
    for _ in range(count):
        await controller.reconcile()


async def _routed_is(controller: Controller, name: str, count: int) -> bool:
    return await routed(controller, name) == count


def test_a_hot_model_scales_out_while_cold_ones_stay_at_their_minimum(tmp_path: pathlib.Path) -> None:
    for name in ("hot", "cold", "plain"):
        (tmp_path / name / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        clock = FakeClock()
        controller = make_controller(
            started, clock, poll_seconds=0, tick_seconds=0.05, num_replicas=1, max_replicas=2,
            target_ongoing_requests=1.0, upscale_delay_s=0.0, downscale_delay_s=60.0, look_back_s=0.1,
            model_autoscaling={
                "hot": ModelAutoscaling(max_replicas=4, target_ongoing_requests=2.0),
                "cold": ModelAutoscaling(min_replicas=2),  # max: the flag's 2
            },
        )
        models = tuple(ModelConfig(name, str(tmp_path / name)) for name in ("hot", "cold", "plain"))
        await controller.set_config(ServerConfig(models))
        await until(lambda: table_holds(controller, RoutingTable.ready))
        assert [await routed(controller, m) for m in ("hot", "cold", "plain")] == [1, 2, 1]

        def report() -> None:  # two gateways, each with half the traffic
            for gateway in ("g1", "g2"):
                controller.report_load(gateway, 0.05, {
                    "hot": Load(5.0, 500.0, 500.0), "cold": Load(0.2, 2.0, 2.0), "plain": Load(0.1, 1.0, 1.0),
                })

        async def reported_and_ticked(name: str, count: int) -> bool:  # one report period passes
            clock.advance(0.05)
            report()
            await controller.reconcile()
            return await _routed_is(controller, name, count)

        # hot: 10 in flight in all at 2 per replica needs 5; its own maximum is 4.
        await until(lambda: reported_and_ticked("hot", 4), timeout=10.0)
        clock.advance(30.0)  # half the downscale delay, ten upscale delays: the counts hold
        report()
        await _ticks(controller, 10)
        assert await routed(controller, "hot") == 4
        assert (await model_stats(controller, "hot")).replica_count == 4  # none more on its way either
        assert await routed(controller, "cold") == 2  # its own minimum, not the flag's 1
        assert await routed(controller, "plain") == 1  # 0.2 in flight: the flags' minimum
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


def _slow_start_controller(started: list[FakeHandle], clock: FakeClock, **options: Any) -> Controller:
    """Replica 0 starts at once; every later one hangs in its start until `hung` is cleared."""

    def new_replica(model: ModelConfig, index: int) -> FakeHandle:
        handle = FakeHandle(index, hung=index > 0)
        started.append(handle)
        return handle

    def kill(handle: FakeHandle) -> None:
        handle.killed = True

    return Controller(ControllerOptions(drain_seconds=0.01, **options), new_replica, kill, clock=clock)


_FAST = dict(poll_seconds=0, tick_seconds=0.02, num_replicas=1, max_replicas=4, target_ongoing_requests=1.0,
             upscale_delay_s=0.0, look_back_s=0.05)


def test_a_scale_up_takes_effect_when_its_replica_serves_and_is_not_repeated_while_it_starts(
    tmp_path: pathlib.Path,
) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        clock = FakeClock()
        controller = _slow_start_controller(started, clock, downscale_delay_s=60.0, **{**_FAST, "upscale_delay_s": 0.3})
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
        await until(lambda: table_holds(controller, RoutingTable.ready))
        # 5 in flight at 1 per replica: wants more, step by step.
        controller.report_load("g", 0.02, {"m": Load(5.0, 500.0, 500.0)})
        clock.advance(0.31)  # the upscale delay since the scaler began
        await controller.reconcile()
        assert len(started) == 2
        clock.advance(0.6)  # twice the upscale delay, 30 ticks ...
        await _ticks(controller, 30)
        assert len(started) == 2, "a second scale-up while the first one's replica still starts"
        # ... and the count it moves to is still the first decision's: nothing decided meanwhile.
        assert await routed(controller, "m") == 1 and (await model_stats(controller, "m")).replica_count == 2
        started[1].hung = False
        await until(lambda: _routed_is(controller, "m", 2))  # it joined the table: the change took effect
        # The next step follows the upscale delay after it joined the table (counted from the
        # decision, 0.91 s of the clock before, it would follow at the next tick).
        clock.advance(0.2)
        await _ticks(controller, 5)
        assert len(started) == 2
        clock.advance(0.15)
        await controller.reconcile()
        assert len(started) == 3  # the next step, once it serves and the delay has passed
        await controller.shutdown()

    asyncio.run(main())


def test_a_scale_down_still_applies_while_a_scale_up_cannot_start(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        clock = FakeClock()
        controller = _slow_start_controller(started, clock, downscale_delay_s=0.1, **_FAST)
        await controller.set_config(ServerConfig((ModelConfig("m", str(tmp_path / "m")),)))
        await until(lambda: table_holds(controller, RoutingTable.ready))
        controller.report_load("g", 0.02, {"m": Load(5.0, 500.0, 500.0)})
        clock.advance(0.06)  # the look-back since the scaler began: the load is judged
        await controller.reconcile()
        assert len(started) == 2  # replica 1 never starts (no room, say)
        for _ in range(3):  # the traffic goes away: the look-back (0.05 s) holds only idle reports
            controller.report_load("g", 0.02, {"m": Load(0.0, 0.0, 0.0)})
        await controller.reconcile()  # low since now ...
        clock.advance(0.11)  # ... for the downscale delay
        await controller.reconcile()
        await until(lambda: started[1].killed)  # the one not serving yet leaves first (retired)
        # The scale-down took effect at its publish: one replica, routed and counted.
        await until(lambda: _routed_is(controller, "m", 1))
        assert (await model_stats(controller, "m")).replica_count == 1 and not started[0].killed
        await controller.shutdown()

    asyncio.run(main())


def test_min_zero_idles_to_zero_then_loads_on_demand_at_once(tmp_path: pathlib.Path) -> None:
    (tmp_path / "rare" / "1").mkdir(parents=True)
    started: list[FakeHandle] = []

    async def main() -> None:
        clock = FakeClock()
        options: dict[str, Any] = dict(
            poll_seconds=0, tick_seconds=0.02, look_back_s=0.05, scale_to_zero_idle_s=0.2,
            model_autoscaling={"rare": ModelAutoscaling(min_replicas=0)},  # max: 1, no --max_replicas
        )
        controller = make_controller(started, clock, **options)
        config = ModelConfig("rare", str(tmp_path / "rare"))
        await controller.set_config(ServerConfig((config,)))
        await until(lambda: table_holds(controller, lambda t: t.ready() and len(t.models["rare"].replicas) == 1))
        scaling = autoscaling_config_for(ControllerOptions(drain_seconds=0.01, **options), config)
        assert scaling.enabled and scaling.max_replicas == 1
        # No gateway reports any request: idle for the idle period, then unloaded everywhere,
        # still configured.
        clock.advance(0.21)
        await controller.reconcile()
        await until(lambda: started[0].killed)
        await until(lambda: _routed_is(controller, "rare", 0))
        snapshot = await model_stats(controller, "rare")
        assert snapshot.replica_count == 0 and snapshot.scaled_to_zero == 1
        (status,) = (await routing_table(controller)).models["rare"].statuses
        assert status.state is ServableState.AVAILABLE and status.error_kind == "OK"
        assert "scaled to zero" in (status.error_message or "")
        assert (await routing_table(controller)).ready()  # a model at zero is still servable
        # A request waits in a gateway, which reports at once: one replica starts within the call.
        controller.report_load("g", 0.01, {"rare": Load(0.0, 100.0, 0.0)})
        assert len(started) == 2 and (await model_stats(controller, "rare")).replica_count == 1
        await until(lambda: _routed_is(controller, "rare", 1))
        assert started[1].loaded == {1}  # it loaded the available version before it was routed
        assert (await model_stats(controller, "rare")).cold_start_seconds.count == 1
        (status,) = (await routing_table(controller)).models["rare"].statuses
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
        clock = FakeClock()
        controller = Controller(options, new_replica, kill, clock=clock)
        models = tuple(ModelConfig(name, str(tmp_path / name)) for name in handles)
        await controller.set_config(ServerConfig(models))
        await until(lambda: table_holds(controller, lambda t: t.ready() and all(t.models[n].replicas for n in handles)))
        clock.advance(0.11)  # both idle for the idle period
        await controller.reconcile()
        await until(lambda: table_holds(controller, lambda t: t.ready() and not any(
            t.models[n].replicas for n in handles)))
        assert all(len(handles[n]) == 1 for n in handles)
        # A request for each waits in a gateway, which reports at once.
        controller.report_load("g", 0.02, {name: Load(0.5, 10.0, 0.0) for name in handles})
        await until(lambda: _routed_is(controller, "fast", 1))
        assert len(handles["slow"]) == 2 and await routed(controller, "slow") == 0  # still starting
        (status,) = (await routing_table(controller)).models["slow"].statuses
        assert "loading on demand" in (status.error_message or "")
        handles["slow"][1].hung = False
        await until(lambda: _routed_is(controller, "slow", 1))
        await controller.shutdown()

    asyncio.run(main())


def test_request_counters_of_every_gateway_sum_and_a_gone_gateway_still_counts() -> None:
    from cluster import stats

    clock = FakeClock()
    controller = Controller(ControllerOptions(load_report_ttl_s=5.0), lambda model, index: None, clock=clock)

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
    clock.advance(7.0)  # g1 silent for longer than the TTL; g2 reports again
    controller.report_load("g2", 1.0, {"m": Load(2.0, 20.0)}, counters(9))
    assert controller.gateways() == ["g2"]
    assert controller.request_totals().counts[key] == 12
