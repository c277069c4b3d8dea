"""cluster.serving.resolution: latest, specific and label requests with TF Serving's errors (spec §7.1)."""

from __future__ import annotations

import pytest

from cluster import errors
from cluster.serving.resolution import resolve_version
from cluster.types import VersionRequest

LABELS = {"stable": 1, "canary": 2, "old": 0}


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (VersionRequest.latest(), 2),
        (VersionRequest.specific(1), 1),
        (VersionRequest.labelled("stable"), 1),
        (VersionRequest.labelled("canary"), 2),
    ],
)
def test_resolve_version(request_, expected):
    assert resolve_version(request_, {1, 2}, LABELS, model_name="m") == expected


@pytest.mark.parametrize(
    ("request_", "available", "error", "message"),
    [
        (VersionRequest.latest(), set(), errors.NotFound, "Servable not found for request: Latest(m)"),
        (VersionRequest.specific(9), {1, 2}, errors.NotFound, "Servable not found for request: Specific(m, 9)"),
        (VersionRequest.labelled("old"), {1, 2}, errors.NotFound, "Servable not found for request: Specific(m, 0)"),
        (VersionRequest.labelled("beta"), {1, 2}, errors.InvalidArgument, "Unrecognized servable version label: beta"),
    ],
)
def test_resolve_version_errors(request_, available, error, message):
    with pytest.raises(error) as caught:
        resolve_version(request_, available, LABELS, model_name="m")
    assert str(caught.value) == message


def test_labels_not_initialised_yet_is_unavailable():
    with pytest.raises(errors.Unavailable):
        resolve_version(VersionRequest.labelled("stable"), {1}, None, model_name="m")
    assert resolve_version(VersionRequest.latest(), {1}, None, model_name="m") == 1
