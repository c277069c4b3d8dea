"""Worker resources from the flags and the cluster: a pure function."""

from __future__ import annotations

import pytest

from cluster.batch_predict.resources import UnschedulableError, WorkerResources, plan_workers


def test_default_cpus_fit_the_cluster() -> None:
    assert plan_workers(1, None, 2.0, can_grow=False) == WorkerResources(1, 1.0)
    assert plan_workers(2, None, 2.0, can_grow=False) == WorkerResources(2, 1.0)
    assert plan_workers(4, None, 2.0, can_grow=False) == WorkerResources(4, 0.5)  # a share each
    assert plan_workers(3, 0.25, 2.0, can_grow=False) == WorkerResources(3, 0.25)  # fractional
    assert plan_workers(3, None, 2.0, can_grow=False) == WorkerResources(3, 0.6666)  # 3 x 0.6666 <= 2
    # The embedded Ray is the job's alone: its workers share every CPU.
    assert plan_workers(1, None, 2.0, can_grow=False, whole_cluster=True) == WorkerResources(1, 2.0)
    assert plan_workers(2, None, 8.0, can_grow=False, whole_cluster=True) == WorkerResources(2, 4.0)
    assert plan_workers(1, 1.0, 8.0, can_grow=False, whole_cluster=True) == WorkerResources(1, 1.0)  # the flag wins


def test_a_job_that_cannot_fit_is_refused_with_the_numbers() -> None:
    with pytest.raises(UnschedulableError, match=r"3 workers of 1 CPUs need 3 CPUs; the cluster has 2"):
        plan_workers(3, 1.0, 2.0, can_grow=False)
    with pytest.raises(UnschedulableError, match="no CPUs"):
        plan_workers(1, None, 0.0, can_grow=False)
    # A cluster that can grow (an autoscaling KubeRay cluster) is given the chance to.
    assert plan_workers(8, 2.0, 2.0, can_grow=True) == WorkerResources(8, 2.0)


def test_bad_flags() -> None:
    with pytest.raises(ValueError, match="--concurrency"):
        plan_workers(0, None, 2.0, can_grow=False)
    with pytest.raises(ValueError, match="--num_cpus"):
        plan_workers(1, 0.0, 2.0, can_grow=False)
