"""Replicas spread over nodes, on a real two-node Ray cluster on this machine (both on 127.0.0.1).

Each node has room for every replica (two CPUs, replicas of half a CPU), so only the placement
policy keeps a model's two replicas apart: Ray's default would pack the head first. Then the worker
node is lost, and each model keeps serving from its replica on the head.

Slow (a minute or two, two Ray nodes): not in `make test`; run it with
`.venv/bin/python -m pytest -m slow tests/integration/test_spread.py`.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Iterator

import pytest

from benchmarks.chaos.stream import Stream
from benchmarks.chaos.two_node import TwoNodeCluster
from cluster.app import TesseraServer
from cluster.config import ModelConfig, ServeOptions, ServerConfig
from tests.bundles_testlib import write_version
from tests.integration.serving_testlib import LoopThread, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

MODELS = ("a", "b")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodeCluster]:
    ray = pytest.importorskip("ray")
    nodes = TwoNodeCluster(head_cpus=2, worker_cpus=2, log_dir=tmp_path_factory.mktemp("ray-logs"))
    try:
        nodes.start()
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        nodes.connect(namespace="tessera", logging_level="WARNING")
        # The worker's raylet runs a moment before the GCS lists its resources; placement reads those.
        from ray._private import state

        wait_until(lambda: len(state.available_resources_per_node()) == 2, timeout=60, what="both nodes' resources listed")
        yield nodes
    finally:
        ray.shutdown()
        nodes.stop()


def _replica_nodes(server: TesseraServer) -> dict[str, list[str]]:
    """Model -> the nodes its routed replicas run on (each replica is a slot on a replica host;
    the host says its node)."""
    import ray

    return {
        name: [ray.get(ref.handle.node_id.remote(), timeout=30) for ref in route.replicas]
        for name, route in server.dispatcher.table.models.items()
        if name in MODELS
    }


def test_each_model_s_two_replicas_run_on_two_nodes_and_the_survivors_serve_when_one_is_lost(
    cluster: TwoNodeCluster, loop_thread: LoopThread, tmp_path: pathlib.Path
) -> None:
    import ray

    for i, name in enumerate(MODELS):
        write_version(tmp_path / name, 1, 2.0 + i)
    options = ServeOptions(host="127.0.0.1", grpc_port=0, num_replicas=2, replica_num_cpus=0.5,
                           ray_address=cluster.address)
    server = TesseraServer(options, ServerConfig(tuple(ModelConfig(n, str(tmp_path / n)) for n in MODELS)))
    loop_thread.run(server.start())
    try:
        assert loop_thread.run(server.wait_ready(120))
        table = lambda: server.dispatcher.table  # noqa: E731
        wait_until(lambda: all(len(table().models[n].replicas) == 2 for n in MODELS), timeout=120,
                   what="two replicas of each model")
        assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) == 2
        placed = _replica_nodes(server)
        assert {m: len(set(nodes)) for m, nodes in placed.items()} == {m: 2 for m in MODELS}, placed
        with Stream(f"127.0.0.1:{server.grpc_port}", models=list(MODELS), clients=4, timeout_s=30) as load:
            time.sleep(1.0)
            cluster.lose_worker()
            wait_until(lambda: all(len(table().models[n].replicas) == 1 for n in MODELS), timeout=30,
                       what="each model's lost replica out of the table")
            before = load.snapshot()[0]
            # Stream cycles through the models, so both survivors must answer for the count to climb.
            wait_until(lambda: load.snapshot()[0] > before + 100, timeout=30, what="the survivors serving")
            # The head has room for the replacements: each model is back to two replicas, both there.
            wait_until(lambda: all(len(table().models[n].replicas) == 2 for n in MODELS), timeout=120,
                       what="replacements on the surviving node")
        print(f"spread: {placed}; after the loss: {_replica_nodes(server)}; {load.summary()}")
        assert load.failed == 0, load.summary()
    finally:
        loop_thread.run(server.stop(grace=5))
