"""A gateway's metrics scrape: the controller's snapshot rendered off the gateway's event loop."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

from cluster import stats
from cluster.config import ServeOptions
from cluster.gateway.gateway import Gateway


class _Controller:
    """Answers cluster_metrics as the controller actor does: (snapshot, request totals)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.cluster_metrics = SimpleNamespace(remote=self._cluster_metrics)

    async def _cluster_metrics(
        self, gateway: str, requests: stats.RequestStats
    ) -> tuple[list[stats.ModelStats], stats.RequestStats]:
        if self.fail:
            raise ConnectionError("controller away")
        loaded = stats.ModelStats(model="m", replica_count=1)
        loaded.load_seconds.observe(0.2)
        return [loaded], requests


def _scrape(gateway: Gateway) -> tuple[bytes, list[int]]:
    threads: list[int] = []
    render = gateway.metrics.render

    def recording(*args: Any) -> bytes:
        threads.append(threading.get_ident())
        return render(*args)

    gateway.metrics.render = recording  # type: ignore[method-assign]

    async def scrape() -> tuple[bytes, int]:
        response = await gateway._scrape(None)
        return bytes(response.body), threading.get_ident()

    body, loop_thread = asyncio.run(scrape())
    return body, [t for t in threads if t == loop_thread]


def test_a_scrape_renders_the_cluster_snapshot_off_the_event_loop() -> None:
    gateway = Gateway(ServeOptions(), _Controller())
    gateway.metrics.gateway.observe("m", "serving_default", "predict", "OK", "grpc", 0.002)
    body, on_loop = _scrape(gateway)
    assert on_loop == []  # rendered in a worker thread: the loop kept serving requests meanwhile
    text = body.decode()
    assert 'tessera_replicas{model="m"} 1.0' in text
    assert 'tessera_model_load_latency_seconds_count{model="m"} 1.0' in text
    assert 'entrypoint="grpc"' in text and 'status="OK"' in text  # the gateway's counters, as sent


def test_without_the_controller_a_scrape_shows_this_gateway_s_own_counters() -> None:
    gateway = Gateway(ServeOptions(), _Controller(fail=True))
    gateway.metrics.gateway.observe("m", "serving_default", "predict", "OK", "rest", 0.002)
    body, on_loop = _scrape(gateway)
    assert on_loop == []
    assert 'tessera_requests_total{entrypoint="rest",method="predict",model="m",signature="serving_default",status="OK"} 1.0' in body.decode()
