"""A model on an S3-compatible store (moto on loopback) is found by the source and loaded by a replica."""

from __future__ import annotations

import pathlib
import uuid

import numpy as np

from cluster.replica.replica import Replica
from cluster.serving.source import FileSystemSource
from tests.bundles_testlib import write_version
from tests.s3_testlib import S3


def test_source_reports_uris_a_replica_can_load(s3: S3, tmp_path: pathlib.Path) -> None:
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


def test_an_onnx_version_on_s3_is_taken_once_complete_and_loaded_through_the_cache(
    s3: S3, tmp_path: pathlib.Path
) -> None:
    from exporter import storage
    from tests.exporter.onnx_testlib import scale_model

    prefix = f"{uuid.uuid4().hex}/m"
    base = s3.uri(prefix)
    with s3.fs.open_output_stream(f"{s3.bucket}/{prefix}/5/model.onnx") as f:
        f.write(scale_model(4.0).SerializeToString())
    assert storage.list_tree(storage.join(base, "5"))[0][:2] == ("model.onnx", len(scale_model(4.0).SerializeToString()))
    source = FileSystemSource("m", base, settle=True)
    assert dict(source.poll_once().aspired) == {}  # just uploaded: watched first
    report = source.poll_once()
    assert list(report.aspired) == [5]
    replica = Replica("m", cache_dir=str(tmp_path / "cache"))
    replica.load(5, report.aspired[5], "onnx")
    (out,) = replica.run(5, "serving_default", [{"x": np.ones((1, 2), np.float32)}])
    np.testing.assert_array_equal(out["y"], [[4.0, 4.0]])
    assert len(list((tmp_path / "cache").rglob("model.onnx"))) == 1
    replica.load(6, report.aspired[5], "onnx")  # the same files again: the cached copy is reused
    assert len(list((tmp_path / "cache").rglob("model.onnx"))) == 1
