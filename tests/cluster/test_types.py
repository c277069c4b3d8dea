from __future__ import annotations

import pytest

from cluster.types import ServableState, VersionChoice, VersionRequest, VersionStatus


def test_states_use_tf_serving_numbers():
    assert {s.name: int(s) for s in ServableState} == {
        "UNKNOWN": 0, "START": 10, "LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50,
    }


def test_version_status_defaults_to_healthy():
    status = VersionStatus(3, ServableState.AVAILABLE)
    assert status.error_message is None and status.error_kind is None


def test_version_request_constructors_and_descriptions():
    assert VersionRequest.latest().choice is VersionChoice.LATEST
    assert VersionRequest.latest().describe("m") == "Latest(m)"
    assert VersionRequest.specific(7).describe("m") == "Specific(m, 7)"
    assert VersionRequest.labelled("stable").label == "stable"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"choice": VersionChoice.LATEST, "version": 1},
        {"choice": VersionChoice.SPECIFIC},
        {"choice": VersionChoice.SPECIFIC, "version": 1, "label": "x"},
        {"choice": VersionChoice.LABEL, "version": 1},
    ],
)
def test_version_request_rejects_inconsistent_fields(kwargs):
    with pytest.raises(ValueError):
        VersionRequest(**kwargs)
