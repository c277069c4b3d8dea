"""How many workers a job gets and what each reserves: a pure function of the flags and the cluster.

A worker reserves `--num_cpus` (fractional allowed). By default, on the embedded Ray (which is the
job's alone) the workers share all its CPUs equally; on a cluster reached with `--ray_address`
(shared with serving replicas, maybe) a worker takes one CPU, or an equal share when
`--concurrency` asks for more workers than the cluster has CPUs. Either way the default job fits. A job that cannot fit is refused before anything starts, naming the numbers, unless
the cluster can grow (an autoscaling KubeRay cluster reached with `--ray_address`): then workers are
given until `--schedule_timeout_s` to be placed, and a job still unplaced fails then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class UnschedulableError(RuntimeError):
    """The job's workers do not fit on the cluster (or were not placed in time)."""


@dataclass(frozen=True)
class WorkerResources:
    workers: int
    num_cpus: float  # per worker


def plan_workers(concurrency: int, num_cpus: float | None, cluster_cpus: float, *, can_grow: bool,
                 whole_cluster: bool = False) -> WorkerResources:
    """The workers to start: `concurrency` of `num_cpus` each (see the module docstring);
    `whole_cluster`: the cluster is the job's alone (the embedded Ray)."""
    if concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {concurrency}")
    if num_cpus is not None and num_cpus <= 0:
        raise ValueError(f"--num_cpus must be positive, got {num_cpus}")
    if cluster_cpus <= 0 and not can_grow:
        raise UnschedulableError("the cluster has no CPUs for workers")
    if num_cpus is None:
        share = math.floor(cluster_cpus / concurrency * 1e4) / 1e4
        num_cpus = 1.0 if cluster_cpus <= 0 else share if whole_cluster else min(1.0, share)
    needed = concurrency * num_cpus  # Ray counts CPUs in units of 1e-4: the share is rounded down
    if needed > cluster_cpus + 1e-9 and not can_grow:
        raise UnschedulableError(
            f"{concurrency} workers of {num_cpus:g} CPUs need {needed:g} CPUs; the cluster has {cluster_cpus:g}. "
            "Lower --concurrency or --num_cpus."
        )
    return WorkerResources(concurrency, num_cpus)
