"""Version policies (spec §12): which of the versions on disk a stream aspires to serve.

Pure functions of their inputs; the source calls them on every poll.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from cluster.config import VersionPolicy


def aspired_versions(on_disk: Iterable[int], policy: VersionPolicy) -> frozenset[int]:
    """The versions to serve, given the versions found on disk.

    - `latest`: the `num_versions` highest (0 or less is treated as 1, as in TF Serving);
    - `all`: every version on disk;
    - `specific`: the listed versions that are on disk (missing ones are simply not aspired —
      see `missing_versions` to report them).
    """
    versions = set(on_disk)
    if policy.kind == "latest":
        return frozenset(heapq.nlargest(max(1, policy.num_versions), versions))
    if policy.kind == "all":
        return frozenset(versions)
    if policy.kind == "specific":
        return frozenset(versions.intersection(policy.versions))
    raise ValueError(f"unknown version policy kind: {policy.kind!r}")


def missing_versions(on_disk: Iterable[int], policy: VersionPolicy) -> frozenset[int]:
    """Versions a `specific` policy asks for that are not on disk (empty for other policies)."""
    if policy.kind != "specific":
        return frozenset()
    return frozenset(policy.versions).difference(on_disk)
