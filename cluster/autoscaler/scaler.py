"""Per-model autoscaling state: the policy's memory between ticks, and the log of its decisions.

The decision itself is the pure `decide` policy; this class only keeps the `ScalingState` it
returns and the load it decided on. The controller feeds it each model's load (from a
`LoadWindow` of every gateway's reports) and applies the count it returns.
"""

from __future__ import annotations

from dataclasses import replace

from cluster.autoscaler.load import Load
from cluster.autoscaler.policy import AutoscalingConfig, ScalingState, decide

__all__ = ["AutoscalingConfig", "ModelScaler"]


class ModelScaler:
    """One model's autoscaling: `decide(now, current, load)` -> the replica count to move to."""

    def __init__(self, config: AutoscalingConfig, now: float) -> None:
        self.config = config
        self.state = ScalingState(last_change=now)
        self.last_load = Load(0.0, 0.0)  # the load of the last decision (for logs)

    def decide(
        self, now: float, current: int, load: Load, recent: Load | None = None, *, may_grow: bool = True,
        pending: bool = False,
    ) -> int:
        """The replica count to move to (== current: no change). A change is remembered as made:
        if the controller cannot make it, the next decision starts from the count it has.

        `may_grow=False` (the last scale-up's replicas are still starting): a scale-up the load
        asks for waits, remembering nothing (the load is judged again once they serve); bounds
        and scale-downs still apply. `pending`: a version waits for a replica to load on.
        """
        self.last_load = load
        desired, state = decide(self.config, self.state, current, load, now, recent, pending=pending)
        if desired > current and not may_grow and current >= max(self.config.min_replicas, 1):
            self.state = replace(self.state, low_since=None)  # the load is not low: it asks for more
            return current
        self.state = state
        return desired

    def applied(self, now: float) -> None:
        """The change decided last took effect now (new replicas serve): the delays count from here."""
        self.state = replace(self.state, last_change=now)
