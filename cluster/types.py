"""Plain value types shared by every part of the cluster: servable states, version requests and statuses.

A leaf module (stdlib only): the controller, the replicas and the gateway all speak these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ServableState(enum.IntEnum):
    """A version's lifecycle state, numbered like TF Serving's `ModelVersionStatus.State` (spec §4.8).

    A failed load ends in END with an error message, as in TF Serving.
    """

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """What GetModelStatus reports for one version.

    `error_kind` names the `cluster.errors` class that best describes the failure (e.g. "NotFound"),
    or the raw exception class name when it was not one of ours; the gateway maps it to a code.
    Both error fields are None when the version is healthy, or `error_kind` is "OK" and the
    message a note on a healthy version (a model scaled to zero loads on demand).
    """

    version: int
    state: ServableState
    error_message: str | None = None
    error_kind: str | None = None


class VersionChoice(enum.Enum):
    """How a request names a version: the latest available one, a number, or a configured label."""

    LATEST = "latest"
    SPECIFIC = "specific"
    LABEL = "label"


@dataclass(frozen=True, slots=True)
class VersionRequest:
    """The version part of a ModelSpec: exactly one of latest | specific version | label.

    Build with `VersionRequest.latest()`, `.specific(v)` or `.labelled(label)` rather than by hand.
    """

    choice: VersionChoice = VersionChoice.LATEST
    version: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        # Catch a mixed-up request at construction, not when it is resolved far away.
        expected = {
            VersionChoice.LATEST: (False, False),
            VersionChoice.SPECIFIC: (True, False),
            VersionChoice.LABEL: (False, True),
        }[self.choice]
        if (self.version is not None, self.label is not None) != expected:
            raise ValueError(f"inconsistent VersionRequest: {self.choice.value} with "
                             f"version={self.version!r}, label={self.label!r}")

    @classmethod
    def latest(cls) -> VersionRequest:
        return _LATEST

    @classmethod
    def specific(cls, version: int) -> VersionRequest:
        return cls(VersionChoice.SPECIFIC, version=int(version))

    @classmethod
    def labelled(cls, label: str) -> VersionRequest:
        return cls(VersionChoice.LABEL, label=label)

    def describe(self, model_name: str) -> str:
        """TF Serving's rendering of a ServableRequest, as used in NOT_FOUND messages (spec §7.1)."""
        if self.choice is VersionChoice.SPECIFIC:
            return f"Specific({model_name}, {self.version})"
        if self.choice is VersionChoice.LABEL:
            return f"Label({model_name}, {self.label})"
        return f"Latest({model_name})"


_LATEST = VersionRequest()
