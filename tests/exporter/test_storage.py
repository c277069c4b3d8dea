"""exporter.storage on local disk and on a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import pathlib
import uuid

import numpy as np
import pyarrow.fs as pafs
import pytest

from exporter import local_versions, storage
from exporter.bundle import read_bundle, write_bundle
from exporter.errors import BundleError, ExportError
from protos.tessera import bundle_pb2
from tests.s3_testlib import S3


def _staged(tmp_path: pathlib.Path, name: str = "staging", value: float = 1.0) -> pathlib.Path:
    """A finished bundle in a local staging dir."""
    meta = bundle_pb2.MetaGraph()
    meta.signatures["serving_default"].method_name = "tensorflow/serving/predict"
    directory = tmp_path / name
    write_bundle(
        directory,
        meta,
        {"w": np.full((3, 2), value, np.float32)},
        {"vocab.txt": b"a\nb\n"},
        {"tf_serving_warmup_requests": b""},
    )
    return directory


# --- version names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("123", 123),
        ("00000123", 123),
        (" 123\t", 123),
        ("+7", 7),
        ("-7", -7),
        ("0", 0),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),  # overflows int64
        ("tmp", None),
        ("1.tmp", None),
        (".tmp-123", None),
        ("1_000", None),  # Python's int() would take it; SimpleAtoi does not
        ("١٢", None),  # non-ASCII digits
        ("+-1", None),
        ("", None),
        (" ", None),
        ("0x10", None),
        ("1 2", None),
    ],
)
def test_parse_version_follows_simple_atoi(name: str, expected: int | None) -> None:
    assert storage.parse_version(name) == expected


def test_list_versions_ignores_non_versions_and_dedups(tmp_path: pathlib.Path) -> None:
    for name in ["5", "0010", "10", "007", "tmp", "1.tmp", ".tmp-99-abc", "0", "-3", ".DS_Store"]:
        (tmp_path / name).mkdir()
    (tmp_path / "42").write_bytes(b"")  # no check that a version is a directory, as in TF Serving
    versions = storage.list_versions(tmp_path)
    assert list(versions) == [5, 7, 10, 42]
    assert versions[10] == f"{tmp_path}/10"  # canonical spelling wins over "0010"
    assert versions[7].endswith("/007")  # loaded from the original name


def test_list_versions_missing_base(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BundleError, match="Could not find base path"):
        storage.list_versions(tmp_path / "nope")
    assert storage.list_versions(tmp_path / "nope", missing_ok=True) == {}


def test_next_version_uses_clock_and_bumps(tmp_path: pathlib.Path) -> None:
    assert storage.next_version(tmp_path / "fresh", 1_700_000_000.7) == 1_700_000_000
    (tmp_path / "1700000000").mkdir()
    (tmp_path / "1700000005").mkdir()
    assert storage.next_version(tmp_path, 1_700_000_000) == 1_700_000_006
    assert storage.next_version(tmp_path, 1_800_000_000) == 1_800_000_000


def test_join_keeps_uri_query() -> None:
    assert storage.join("s3://b/m?endpoint_override=x&scheme=http", "12") == "s3://b/m/12?endpoint_override=x&scheme=http"
    assert storage.join("/a/b/", "3") == "/a/b/3"


# --- publish and keep on local disk ----------------------------------------------------------


def test_publish_local_is_atomic_and_never_overwrites(tmp_path: pathlib.Path) -> None:
    base = tmp_path / "models" / "m"
    staged = _staged(tmp_path)
    location = storage.publish(staged, base, 17)
    assert location == f"{base}/17"
    assert storage.list_versions(base) == {17: f"{base}/17"}
    assert sorted(p.name for p in base.iterdir()) == ["17"]  # no temp dir left behind
    assert read_bundle(location).version == 17

    other = _staged(tmp_path, "other", value=2.0)
    with pytest.raises(ExportError, match="already exists"):
        storage.publish(other, base, 17)
    (base / "0018").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        storage.publish(other, base, 18)  # same number under another spelling
    assert float(read_bundle(location).variables["w"][0, 0]) == 1.0


def test_publish_refuses_unfinished_staging(tmp_path: pathlib.Path) -> None:
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "graph.pb").write_bytes(b"")
    with pytest.raises(ExportError, match="MANIFEST.pb"):
        storage.publish(tmp_path / "staging", tmp_path / "base", 1)
    with pytest.raises(ExportError, match="positive"):
        storage.publish(_staged(tmp_path, "finished"), tmp_path / "base", 0)


def test_temp_dir_is_invisible_and_cleaned_up(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "base"
    seen: list[dict[int, str]] = []

    def failing_rename(fs: pafs.FileSystem, src: str, dest: str) -> None:
        # Mid-publish: the bundle is fully copied into its temp sibling; a poller sees no version.
        assert pathlib.PurePath(src).name.startswith(".tmp-3-")
        assert pathlib.Path(src, "MANIFEST.pb").is_file()
        seen.append(storage.list_versions(base))
        raise OSError("disk unplugged")

    monkeypatch.setattr(storage, "_rename_dir", failing_rename)
    with pytest.raises(OSError, match="unplugged"):
        storage.publish(_staged(tmp_path), base, 3)
    assert seen == [{}]
    assert list(base.iterdir()) == []


def test_keep_removes_oldest(tmp_path: pathlib.Path) -> None:
    for version in [3, 1, 20, 4]:
        (tmp_path / str(version)).mkdir()
    (tmp_path / "tmp").mkdir()
    assert storage.keep(tmp_path, 2) == [1, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20", "4", "tmp"]
    assert storage.keep(tmp_path, 5) == []
    with pytest.raises(ValueError):
        storage.keep(tmp_path, 0)




def test_s3_list_publish_keep_with_explicit_filesystem(s3: S3) -> None:
    base = f"models/{uuid.uuid4().hex}/iris"
    for name in ["5/x", "0012/x", "tmp/x", ".tmp-3-abc/x", "9/sub/deeper/x"]:
        with s3.fs.open_output_stream(f"{base}/{name}") as f:
            f.write(b"x")
    assert storage.list_versions(base, filesystem=s3.fs) == {5: f"{base}/5", 9: f"{base}/9", 12: f"{base}/0012"}
    assert storage.next_version(base, 3, filesystem=s3.fs) == 13
    assert storage.keep(base, 1, filesystem=s3.fs) == [5, 9]
    assert list(storage.list_versions(base, filesystem=s3.fs)) == [12]
    assert storage.list_versions(f"models/{uuid.uuid4().hex}", filesystem=s3.fs, missing_ok=True) == {}


def test_s3_uri_publish_then_read_through_cache(s3: S3, tmp_path: pathlib.Path) -> None:
    prefix = f"{uuid.uuid4().hex}/iris"
    base = s3.uri(prefix)
    version = storage.next_version(base, 1_700_000_000)
    location = storage.publish(_staged(tmp_path), base, version)
    assert location == s3.uri(f"{prefix}/{version}")
    with pytest.raises(ExportError, match="already exists"):
        storage.publish(_staged(tmp_path, "again"), base, version)
    assert list(storage.list_versions(base)) == [version]

    cache = tmp_path / "cache"
    bundle = read_bundle(location, cache_dir=cache)
    assert bundle.version == version
    assert cache in bundle.path.parents
    assert isinstance(bundle.variables["w"], np.memmap)
    np.testing.assert_array_equal(bundle.variables["w"], np.ones((3, 2), np.float32))
    assert (bundle.assets_dir / "vocab.txt").read_bytes() == b"a\nb\n"

    # Reused while the manifest matches: a marker left in the cached copy survives.
    (bundle.path / "assets" / "vocab.txt").write_bytes(b"tampered")
    again = local_versions.copy_to_cache(location, cache)
    assert again == bundle.path
    with pytest.raises(BundleError, match="vocab.txt"):
        read_bundle(location, cache_dir=cache)  # and the reader still checks the cached copy


def test_s3_half_written_version_is_refused(s3: S3, tmp_path: pathlib.Path) -> None:
    prefix = f"{uuid.uuid4().hex}/m"
    staged = _staged(tmp_path)
    # An object-store publish that died before the manifest: every file but MANIFEST.pb.
    for path in staged.rglob("*"):
        rel = path.relative_to(staged).as_posix()
        if path.is_file() and rel != "MANIFEST.pb":
            with s3.fs.open_output_stream(f"models/{prefix}/1/{rel}") as f:
                f.write(path.read_bytes())
    with pytest.raises(BundleError, match="MANIFEST.pb is missing"):
        read_bundle(s3.uri(f"{prefix}/1"), cache_dir=tmp_path / "cache")


def test_s3_publish_writes_manifest_last(s3: S3, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copied: list[str] = []
    real_copy = pafs.copy_files

    def recording_copy(source: str, destination: str, **kwargs: object) -> None:
        copied.append(destination.rsplit("/1/", 1)[-1])
        real_copy(source, destination, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", recording_copy)
    storage.publish(_staged(tmp_path), f"models/{uuid.uuid4().hex}", 1, filesystem=s3.fs)
    assert copied[-1] == "MANIFEST.pb"
    assert sorted(copied) == sorted(
        ["MANIFEST.pb", "graph.pb", "variables/w.npy", "assets/vocab.txt", "assets.extra/tf_serving_warmup_requests"]
    )


def test_s3_inspect_and_run_through_the_cli(s3: S3, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cluster import cli

    base = s3.uri(f"{uuid.uuid4().hex}/m")
    storage.publish(_staged(tmp_path), base, 8)
    assert cli.main(["inspect", base, "--all"]) == 0
    out = capsys.readouterr().out
    assert "  8  signatures: serving_default" in out
    assert "Method name is: tensorflow/serving/predict" in out
    assert cli.main(["inspect", storage.join(base, "8")]) == 0
    assert "signature_def['serving_default']" in capsys.readouterr().out


def test_cached_copy_is_refreshed_when_the_manifest_changes(s3: S3, tmp_path: pathlib.Path) -> None:
    prefix = f"models/{uuid.uuid4().hex}"
    storage.publish(_staged(tmp_path, "a", value=1.0), prefix, 1, filesystem=s3.fs)
    cached = local_versions.copy_to_cache(f"{prefix}/1", tmp_path / "cache", filesystem=s3.fs)
    # Someone deletes and re-makes version 1 (not our exporter's habit, but possible by hand).
    s3.fs.delete_dir(f"{prefix}/1")
    storage.publish(_staged(tmp_path, "b", value=5.0), prefix, 1, filesystem=s3.fs)
    again = local_versions.copy_to_cache(f"{prefix}/1", tmp_path / "cache", filesystem=s3.fs)
    assert again == cached
    assert float(read_bundle(again).variables["w"][0, 0]) == 5.0
    assert [p.name for p in again.parent.iterdir()] == ["1"]  # no temp copies left behind
