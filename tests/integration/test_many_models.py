"""`tessera serve`'s defaults serve 50 small models on the 2-CPU test Ray (issue 9, point 3).

Slow: `pytest -m slow`, or the `faults/50 models` line of `make chaos`. Since replica hosts
(issue 11) the 50 models share one host process (--max_models_per_host=100), where they took
50 processes before; `benchmarks/many_models.py` serves 1,000.
"""

from __future__ import annotations

import pathlib

import pytest

from benchmarks.chaos.stream import Stream
from cluster.config import ServeOptions
from tests.bundles_testlib import write_version
from tests.integration.serving_testlib import LoopThread, config, routed, serving, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_default_flags_serve_fifty_small_models_on_two_cpus(
    local_ray: None, loop_thread: LoopThread, tmp_path: pathlib.Path
) -> None:
    import time

    names = [f"m{i}" for i in range(50)]
    for name in names:
        write_version(tmp_path / name, 1, 2.0)
    defaults = ServeOptions()
    with serving(loop_thread, config(tmp_path, names), replica_num_cpus=defaults.replica_num_cpus) as server:
        wait_until(lambda: all(routed(server, n) for n in names), timeout=400, what="all 50 models serving")
        hosts = {ref.address for n in names for ref in server.dispatcher.table.models[n].replicas}
        assert len(hosts) == 1  # packed into one replica host
        with Stream(f"127.0.0.1:{server.grpc_port}", models=names, clients=4, timeout_s=30) as load:
            time.sleep(3.0)
        assert load.sent >= 50 and load.failed == 0, load.summary()
