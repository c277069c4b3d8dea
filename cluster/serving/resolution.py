"""Version resolution for requests (spec §7.1): latest, a specific version or a label, with TF
Serving's errors. A pure function of what is available and the label map."""

from __future__ import annotations

from collections.abc import Mapping, Set

from cluster import errors
from cluster.types import VersionChoice, VersionRequest


def resolve_version(
    request: VersionRequest,
    available: Set[int],
    labels: Mapping[str, int] | None,
    *,
    model_name: str,
) -> int:
    """The version that serves `request`, with TF Serving's errors (spec §7.1).

    `labels` is None while the label map is not initialised yet (UNAVAILABLE for label requests).
    A label resolves to its version, which must then be available like a specific request.
    """
    if request.choice is VersionChoice.LATEST:
        if not available:
            raise errors.NotFound(f"Servable not found for request: {request.describe(model_name)}")
        return max(available)
    if request.choice is VersionChoice.LABEL:
        if labels is None:
            raise errors.Unavailable(f"Version labels of model {model_name} are not available yet")
        assert request.label is not None
        version = labels.get(request.label)
        if version is None:
            raise errors.InvalidArgument(f"Unrecognized servable version label: {request.label}")
        request = VersionRequest.specific(version)
    assert request.version is not None
    if request.version not in available:
        raise errors.NotFound(f"Servable not found for request: {request.describe(model_name)}")
    return request.version
