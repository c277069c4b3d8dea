"""Integration fixtures: one local Ray per test module, a real TesseraServer on a free loopback port."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.serving_testlib import LoopThread


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    from cluster.app import keep_ray_on_loopback

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    keep_ray_on_loopback()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024, namespace="tessera",
             logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()
