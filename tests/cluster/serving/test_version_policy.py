from __future__ import annotations

import pytest

from cluster.config import VersionPolicy
from cluster.serving.version_policy import aspired_versions, missing_versions

ON_DISK = [3, 10, 7, 1]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (VersionPolicy(), {10}),
        (VersionPolicy("latest", num_versions=2), {10, 7}),
        (VersionPolicy("latest", num_versions=0), {10}),  # 0 means 1, as in TF Serving
        (VersionPolicy("latest", num_versions=9), {1, 3, 7, 10}),
        (VersionPolicy("all"), {1, 3, 7, 10}),
        (VersionPolicy("specific", versions=(3, 7, 42)), {3, 7}),
        (VersionPolicy("specific", versions=()), set()),
    ],
)
def test_aspired_versions(policy, expected):
    assert aspired_versions(ON_DISK, policy) == frozenset(expected)


@pytest.mark.parametrize("policy", [VersionPolicy(), VersionPolicy("all"), VersionPolicy("specific", versions=(1,))])
def test_nothing_on_disk_aspires_nothing(policy):
    assert aspired_versions([], policy) == frozenset()


def test_accepts_any_iterable_such_as_dict_keys():
    assert aspired_versions({5: "/b/5", 6: "/b/6"}.keys(), VersionPolicy()) == {6}


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError):
        aspired_versions([1], VersionPolicy(kind="oldest"))  # type: ignore[arg-type]


def test_missing_versions_only_for_specific():
    assert missing_versions(ON_DISK, VersionPolicy("specific", versions=(3, 42, 43))) == {42, 43}
    assert missing_versions(ON_DISK, VersionPolicy("latest", num_versions=50)) == frozenset()
