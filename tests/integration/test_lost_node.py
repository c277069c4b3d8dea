"""A lost node on a real two-node Ray cluster (both nodes on 127.0.0.1, one CPU each).

Slow (a minute or two, two Ray nodes): not in `make test`; run it with
`.venv/bin/python -m pytest -m slow tests/integration/test_lost_node.py` or `make chaos`.
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodeCluster]:
    ray = pytest.importorskip("ray")
    nodes = TwoNodeCluster(head_cpus=1, worker_cpus=1, log_dir=tmp_path_factory.mktemp("ray-logs"))
    try:
        nodes.start()
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        nodes.connect(namespace="tessera", logging_level="WARNING")
        yield nodes
    finally:
        ray.shutdown()
        nodes.stop()


def test_a_lost_node_s_replica_leaves_its_calls_are_retried_and_the_survivor_carries_the_load(
    cluster: TwoNodeCluster, loop_thread: LoopThread, tmp_path: pathlib.Path
) -> None:
    import ray

    write_version(tmp_path / "m", 1, 2.0)
    # One CPU per replica, one CPU per node: the two replicas sit one on each node, and once the
    # worker node is lost nothing is free for a replacement.
    options = ServeOptions(host="127.0.0.1", grpc_port=0, num_replicas=2, replica_num_cpus=1,
                           ray_address=cluster.address)
    config = ServerConfig((ModelConfig("m", str(tmp_path / "m")),))
    server = TesseraServer(options, config)
    loop_thread.run(server.start())
    try:
        assert loop_thread.run(server.wait_ready(120))
        table = lambda: server.dispatcher.table  # noqa: E731
        wait_until(lambda: len(table().models["m"].replicas) == 2, timeout=120, what="two replicas of m")
        nodes = {r["NodeID"] for r in ray.nodes() if r["Alive"]}
        assert len(nodes) == 2
        with Stream(f"127.0.0.1:{server.grpc_port}", models=["m"], clients=4, timeout_s=30) as load:
            time.sleep(1.0)
            cluster.lose_worker()
            lost = time.monotonic()
            wait_until(lambda: len(table().models["m"].replicas) == 1, timeout=30, what="the lost replica out")
            out_after = time.monotonic() - lost
            before = load.snapshot()[0]
            wait_until(lambda: load.snapshot()[0] > before + 100, timeout=30, what="the survivor serving")
            stats = {s.model: s for s in ray.get(server.controller.cluster_stats.remote())}
            wait_until(lambda: {s.model: s for s in ray.get(server.controller.cluster_stats.remote())}["m"]
                       .replicas_unplaced == 1, timeout=60, what="the replacement reported as waiting for room")
            # Room comes back (a new node): the waiting replacement is placed there and serves.
            cluster.add_worker()
            wait_until(lambda: len(table().models["m"].replicas) == 2, timeout=120, what="a replacement placed")
            before = load.snapshot()[0]
            wait_until(lambda: load.snapshot()[0] > before + 100, timeout=30, what="serving on two again")
        print(f"lost node: replica out of the table after {out_after:.1f}s; {load.summary()}; {stats['m']}")
        assert load.failed == 0, load.summary()
        assert out_after < 10.0, out_after  # within a health period or two (a shared 2-core box)
    finally:
        loop_thread.run(server.stop(grace=5))
