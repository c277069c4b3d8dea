"""A synthetic serving system to drive the autoscaler with: open-loop load on n replicas, a clock.

The load a gateway would measure, requests in flight averaged over time, comes from queueing
theory: Poisson arrivals at `rate` on `n` replicas serving `service_s` each (M/M/c, Erlang C), so
more replicas mean shorter queues and fewer requests in flight for the same traffic, the effect
that makes naive autoscalers see-saw. Past saturation a backlog builds at the excess rate and
drains when capacity returns. New replicas take `startup_s` before they count (the controller does
not decide while a scale-up is under way). Every second each of `gateways` reports its share of
the period's average (optionally with multiplicative noise) to a `LoadWindow`; every `tick_s` the
`ModelScaler` decides on the window's load, as the controller does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.autoscaler.load import LoadWindow
from cluster.autoscaler.policy import AutoscalingConfig
from cluster.autoscaler.scaler import ModelScaler


def mmc_in_flight(rate: float, service_s: float, n: int) -> float:
    """Mean requests in system (queued + served) of M/M/n; inf at or past saturation."""
    a = rate * service_s  # offered load, in busy replicas
    if n <= 0 or a >= n:
        return math.inf
    if a == 0:
        return 0.0
    term, total = 1.0, 1.0  # a^k / k!, summed for k < n
    for k in range(1, n):
        term *= a / k
        total += term
    tail = term * a / n / (1 - a / n)  # a^n / n! / (1 - rho)
    waiting = tail / (total + tail)
    return a + waiting * (a / n) / (1 - a / n)


@dataclass
class Run:
    """The replica count over time: (time, count) at the start and at every change."""

    counts: list[tuple[float, int]] = field(default_factory=list)

    def changes(self, after: float = -math.inf, before: float = math.inf) -> int:
        return sum(1 for t, _ in self.counts[1:] if after <= t < before)

    def count_at(self, t: float) -> int:
        return [c for s, c in self.counts if s <= t][-1]

    def last_change(self) -> float:
        return self.counts[-1][0]

    def first_time(self, predicate: Callable[[int], bool], after: float = 0.0) -> float | None:
        for t, c in self.counts:
            if t >= after and predicate(c):
                return t
        return None


def simulate(
    config: AutoscalingConfig,
    rate: Callable[[float], float],  # requests/s at time t
    duration_s: float,
    *,
    service_s: float = 0.006,
    start: int | None = None,
    startup_s: float = 1.5,
    tick_s: float = 2.0,
    gateways: int = 2,
    noise: float = 0.0,
    seed: int = 0,
) -> Run:
    rng = random.Random(seed)
    window = LoadWindow(config.look_back_s, ttl_s=5.0)
    scaler = ModelScaler(config, 0.0)
    count = start if start is not None else config.min_replicas
    run = Run([(0.0, count)])
    backlog = 0.0  # requests queued beyond the steady state, past saturation
    ready_at: tuple[float, int] | None = None  # a scale-up under way: (when, to)
    dt = 0.1
    area = answers = 0.0  # in-flight request-seconds and answers since the last report
    steps = round(duration_s / dt)
    for step in range(1, steps + 1):
        now = step * dt
        lam = rate(now)
        capacity = count / service_s
        if lam >= capacity:
            backlog += (lam - capacity) * dt
            in_flight, done = count + backlog, capacity
        else:
            drained = min(backlog, (capacity - lam) * dt)
            backlog -= drained
            in_flight, done = mmc_in_flight(lam, service_s, count) + backlog, lam + drained / dt
        area += in_flight * dt
        answers += done * dt
        if step % round(1.0 / dt) == 0:
            mean, answered = area / 1.0, answers / 1.0
            area = answers = 0.0
            for g in range(gateways):
                share = mean / gateways * (1 + rng.uniform(-noise, noise))
                window.add(f"g{g}", now, 1.0, {"m": (share, lam / gateways, answered / gateways)})
        if ready_at is not None and now >= ready_at[0] - 1e-9:
            count, ready_at = ready_at[1], None
            scaler.applied(now)
            run.counts.append((now, count))
        if ready_at is None and step % round(tick_s / dt) == 0:
            desired = scaler.decide(now, count, window.load("m", now), window.recent("m", now))
            if desired > count:
                ready_at = (now + startup_s, desired)
            elif desired < count:
                count = desired
                run.counts.append((now, count))
    return run
