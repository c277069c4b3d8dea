"""Per-model autoscaling state: a look-back window of load samples and the last change.

The decision itself is the pure `desired_replicas` policy; this class only remembers what the
policy needs between ticks (samples, when and which way the count last changed). The controller
feeds it the in-flight requests that gateways report and applies what it returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cluster.autoscaler.policy import Direction, desired_replicas, direction_of


@dataclass(frozen=True)
class AutoscalingConfig:
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float = 8.0  # per replica
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 30.0
    look_back_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return self.max_replicas > self.min_replicas


class ModelScaler:
    """Remembers one model's recent load and its last scaling change."""

    def __init__(self, config: AutoscalingConfig, now: float) -> None:
        self.config = config
        self._samples: deque[tuple[float, float]] = deque()
        self._last_change = now
        self._last_direction = Direction.NONE

    def observe(self, now: float, in_flight: float) -> None:
        self._samples.append((now, in_flight))
        horizon = now - self.config.look_back_s
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()

    def smoothed_load(self) -> float:
        return sum(v for _, v in self._samples) / len(self._samples) if self._samples else 0.0

    def decide(self, now: float, current: int) -> int:
        """The replica count to move to (== current: no change)."""
        c = self.config
        return desired_replicas(
            current, self.smoothed_load(), c.target_ongoing_requests, c.min_replicas, c.max_replicas,
            now, self._last_change, c.upscale_delay_s, c.downscale_delay_s, self._last_direction,
        )

    def changed(self, now: float, current: int, desired: int) -> None:
        """Record a change the controller made (or started)."""
        self._last_direction = direction_of(current, desired)
        self._last_change = now
