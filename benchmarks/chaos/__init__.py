"""`make chaos`: fault and hostile-input scenarios against a real Tessera, one line each.

A scenario is a named, bounded function (loopback or a local two-node Ray only; it starts what it
needs and stops it, by PID, before it returns) that reports what a client saw. Scenarios live in
`benchmarks/chaos/scenarios_*.py` modules, each exposing `SCENARIOS: list[Scenario]`; the runner
(`python -m benchmarks.chaos`) finds them all. `fast` ones are also covered by tests in `make test`;
the rest are one command away.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """What a scenario's clients saw: requests sent and failed, the worst latency, the peak RSS."""

    sent: int
    failed: int
    worst_latency_s: float
    rss_peak_bytes: int
    note: str = ""

    def line(self, name: str) -> str:
        return (
            f"{name:<40} sent {self.sent:>7}  failed {self.failed:>6}  worst {self.worst_latency_s * 1000:>9.1f} ms"
            f"  rss peak {self.rss_peak_bytes / 2**20:>8.1f} MiB" + (f"  {self.note}" if self.note else "")
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[], Outcome]
    fast: bool = False  # runs in seconds; also covered by a test in `make test`
