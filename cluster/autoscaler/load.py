"""The autoscaling signal: requests in flight per model, averaged over time, from every gateway.

Two halves, both pure (the clock is passed in):

- `InFlight` lives in a gateway, one per model. It counts requests from arrival to answer and
  integrates that count over time (updated on each start and finish: a few float operations, no
  allocation), so `take(now)` gives the exact time average over the period since the last take,
  and the arrival rate. Sampling the count once a second instead reads 0 at low concurrency in
  the middle of steady load: 250 requests/s of 6 ms each see-saw between "idle" and "two in flight".
- `LoadWindow` lives in the controller. Each gateway reports, once a period, a `Load` per model
  and the period's length; the window keeps each gateway's recent reports, and a model's load is
  the sum over gateways of each one's time-weighted average over its last `look_back_s` of
  reports. A gateway silent for `ttl_s` counts as gone (its process died; its requests with it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import NamedTuple


class Load(NamedTuple):
    """A model's load over a period: mean requests in flight, arrivals and answers per second."""

    in_flight_requests: float
    rate: float
    done_rate: float = 0.0  # above `rate` while a backlog drains


IDLE = Load(0.0, 0.0, 0.0)


class InFlight:
    """One model's requests in flight in one gateway, and their integral over time."""

    __slots__ = ("count", "_area", "_mark", "_since", "_arrivals", "_answers")

    def __init__(self, now: float) -> None:
        self.count = 0
        self._area = 0.0  # in-flight request-seconds since `_since`, up to `_mark`
        self._mark = now
        self._since = now
        self._arrivals = 0
        self._answers = 0

    def start(self, now: float) -> None:
        self._area += self.count * (now - self._mark)
        self._mark = now
        self.count += 1
        self._arrivals += 1

    def finish(self, now: float) -> None:
        self._area += self.count * (now - self._mark)
        self._mark = now
        self.count -= 1
        self._answers += 1

    def take(self, now: float) -> Load:
        """The load since the last take (or creation); starts a new period."""
        area = self._area + self.count * (now - self._mark)
        period = now - self._since
        arrivals, answers = self._arrivals, self._answers
        self._area, self._mark, self._since, self._arrivals, self._answers = 0.0, now, now, 0, 0
        if period <= 0:
            return Load(float(self.count), 0.0, 0.0)
        return Load(area / period, arrivals / period, answers / period)


_Report = tuple[float, float, Mapping[str, Load]]  # (received at, period_s, model -> load)


class LoadWindow:
    """Every gateway's recent load reports; `load(model, now)` sums their time averages."""

    def __init__(self, look_back_s: float, ttl_s: float) -> None:
        if look_back_s <= 0 or ttl_s <= 0:
            raise ValueError(f"look_back_s and ttl_s must be positive, got {look_back_s}, {ttl_s}")
        self._look_back = look_back_s
        self._ttl = ttl_s
        self._reports: dict[str, deque[_Report]] = {}  # gateway -> reports, oldest first

    def add(self, gateway: str, now: float, period_s: float, loads: Mapping[str, Load | tuple[float, ...]]) -> None:
        """A gateway's load per model over the `period_s` seconds before `now`."""
        if not period_s > 0:
            return
        reports = self._reports.setdefault(gateway, deque())
        reports.append((now, period_s, {name: Load(*load) for name, load in loads.items()}))
        # Drop the oldest report while the newer ones still cover the look-back.
        while len(reports) > 1 and sum(p for _, p, _ in reports) - reports[0][1] >= self._look_back:
            reports.popleft()

    def gateways(self, now: float) -> list[str]:
        """The gateways heard from within `ttl_s`; forgets the others."""
        for gateway in [g for g, r in self._reports.items() if now - r[-1][0] > self._ttl]:
            del self._reports[gateway]
        return list(self._reports)

    def load(self, model: str, now: float) -> Load:
        """The model's load averaged over the look-back, summed over the live gateways."""
        return self._sum(model, now, self._look_back)

    def recent(self, model: str, now: float, span_s: float = 1.0) -> Load:
        """The model's load over each live gateway's newest `span_s` of reports (its newest report,
        at the usual 1 s period), summed. A span, not just the newest report: a gateway reports
        early when a request finds a model with no replica, and that report's period may be a few
        milliseconds, a single instant's sample for every other model."""
        return self._sum(model, now, span_s)

    def _sum(self, model: str, now: float, span: float) -> Load:
        loads = [_average(reversed(self._reports[g]), model, span) for g in self.gateways(now)]
        return Load(*(sum(column) for column in zip(IDLE, *loads, strict=True)))


def _average(newest_first: Iterable[_Report], model: str, span: float) -> Load:
    """The time-weighted mean of the newest reports that cover `span` seconds (at least one)."""
    total, covered = [0.0, 0.0, 0.0], 0.0
    for _, period, loads in newest_first:
        weight = min(period, span - covered) if covered else period  # the newest counts in full
        for i, value in enumerate(loads.get(model, IDLE)):
            total[i] += value * weight
        covered += weight
        if covered >= span:
            break
    return Load(*(t / covered for t in total)) if covered else IDLE
