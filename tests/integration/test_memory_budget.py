"""A replica host's memory budget with real resident bytes, on the module's local Ray (issue 11).

Three models of ~1 MB of variables each, one replica host (`max_replica_hosts=1`) whose budget
holds two of them (2.5 times one model's resident bytes, measured by loading one here), every
model at `min_replicas: 0` (evictable to zero) and no scale to zero within the test: evictions
alone keep the host under its budget. Every model loads once at start (its versions become
AVAILABLE), then, idle, the host sheds one; requests to each model in turn find it evicted and
wait for its cold start, which evicts the least recently used other. The host's own reports
(`ping`, sampled throughout) never exceed the budget by more than one model.
"""

from __future__ import annotations

import pathlib
import threading
import time
from typing import Any

import numpy as np
import pytest

from cluster.config import ModelAutoscaling
from cluster.requests import ModelSpec, PredictRequest
from exporter import servable
from tests.bundles_testlib import write_version
from tests.integration.serving_testlib import LoopThread, config, routed, serving, wait_until

pytestmark = pytest.mark.timeout(300)

NAMES = ["m0", "m1", "m2"]
SCALES = {"m0": 2.0, "m1": 3.0, "m2": 5.0}


class _HostSampler:
    """Polls the replica host's own report (model -> (resident bytes, idle s)) in a thread."""

    def __init__(self) -> None:
        import ray

        (name,) = [n for n in ray.util.list_named_actors() if ":host:" in n]
        self._host = ray.get_actor(name)
        self.worst: dict[str, tuple[int, float]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import ray

        while not self._stop.is_set():
            report: dict[str, tuple[int, float]] = ray.get(self._host.ping.remote(), timeout=30)
            if sum(b for b, _ in report.values()) > sum(b for b, _ in self.worst.values()):
                self.worst = report
            self.samples += 1
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_budget_for_two_of_three_models_evicts_and_every_request_is_served(
    local_ray: None, loop_thread: LoopThread, tmp_path: pathlib.Path
) -> None:
    for name in NAMES:
        write_version(tmp_path / name, 1, SCALES[name], weights=250_000)
    loaded = servable.load_servable("tensorflow", str(tmp_path / "m0" / "1"))
    size = loaded.resident_bytes  # what a host reports for one model's slot
    loaded.close()
    budget = int(2.5 * size)
    with serving(
        loop_thread, config(tmp_path, NAMES), replica_num_cpus=0.1, max_replica_hosts=1,
        replica_memory_budget_bytes=budget, scale_to_zero_idle_s=3600.0,
        model_autoscaling={n: ModelAutoscaling(min_replicas=0) for n in NAMES},
    ) as server:
        import ray

        def stats() -> dict[str, Any]:
            return {s.model: s for s in ray.get(server.controller.cluster_stats.remote(), timeout=30)}

        def status(name: str) -> str:
            (version,) = loop_thread.run(server.dispatcher.model_status(name, None))
            return f"{version.state.name}: {version.error_message}"

        # Each loads once at start (the third over the budget: nothing had idled yet) ...
        wait_until(lambda: all(routed(server, n) for n in NAMES), timeout=120, what="every model loaded once")
        sampler = _HostSampler()
        try:
            # ... then, idle for the LRU's 10 s, one is evicted to zero replicas, versions AVAILABLE.
            wait_until(lambda: sum(routed(server, n) == 0 for n in NAMES) == 1, timeout=60, what="an eviction")
            (first,) = [n for n in NAMES if routed(server, n) == 0]
            assert status(first).startswith("AVAILABLE") and "evicted" in status(first)
            assert stats()[first].evictions == 1

            def predict(name: str) -> float:
                request = PredictRequest(ModelSpec(name), {"x": np.ones((1, 2), np.float32)},
                                         deadline=time.monotonic() + 60)
                return float(loop_thread.run(server.dispatcher.predict(request)).outputs["y"][0, 0])

            # Each model in turn, the evicted one first: each cold start evicts the least recently
            # used other (the first two find one idle since the start), and every request is served.
            order = [first, *[n for n in NAMES if n != first]]
            cold_before = sum(s.cold_start_seconds.count for s in stats().values())
            answers = {}
            for name in [*order, *order]:
                answers.setdefault(name, []).append(predict(name))
            assert answers == {n: [SCALES[n]] * 2 for n in NAMES}
            after = stats()
            cold_starts = sum(s.cold_start_seconds.count for s in after.values()) - cold_before
            assert cold_starts >= 2  # the evicted one, and the one its cold start evicted
            assert sum(s.evictions for s in after.values()) >= 2  # tessera_model_evictions_total
        finally:
            sampler.stop()
        # The host's reports, sampled all along: never more than one model over the budget.
        worst = sum(b for b, _ in sampler.worst.values())
        assert sampler.samples > 10 and worst <= budget + size, (worst, budget, size, sampler.worst)
