"""A model on an S3-compatible store (moto on loopback) is found by the source and loaded by a replica."""

from __future__ import annotations

import pathlib
import uuid

import numpy as np

from cluster.replica.replica import Replica
from cluster.serving.source import FileSystemSource
from tests.exporter.test_storage import S3, s3  # noqa: F401 - the moto server fixture
from tests.integration.models import write_version


def test_source_reports_uris_a_replica_can_load(s3: S3, tmp_path: pathlib.Path) -> None:  # noqa: F811
    base = s3.uri(f"{uuid.uuid4().hex}/m")
    write_version(base, 3, 2.0)
    write_version(base, 7, 4.0)
    report = FileSystemSource("m", base).poll_once()
    assert report.error is None and list(report.aspired) == [7]
    location = report.aspired[7]
    assert location.startswith("s3://") and "endpoint_override=" in location
    replica = Replica("m", cache_dir=str(tmp_path / "cache"))
    replica.load(7, location)
    (out,) = replica.run(7, "serving_default", [{"x": np.ones((1, 2), np.float32)}])
    np.testing.assert_array_equal(out["y"], [[4.0, 4.0]])
