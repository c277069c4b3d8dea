"""exporter.bundle: round trip, memory-mapped variables, and every way a reader refuses a bundle."""

from __future__ import annotations

import hashlib
import pathlib
import pickle

import numpy as np
import pytest

from exporter.bundle import Bundle, check_name, read_bundle, read_meta_graph, write_bundle
from exporter.errors import BundleError, ExportError
from protos.tessera import bundle_pb2


def _meta_graph() -> bundle_pb2.MetaGraph:
    meta = bundle_pb2.MetaGraph(tags=["serve"])
    meta.graph.nodes.add(name="x", op="placeholder")
    sig = meta.signatures["predict"]
    sig.method_name = "tensorflow/serving/predict"
    sig.inputs["x"].name = "x:0"
    sig.inputs["x"].dtype = bundle_pb2.DT_FLOAT
    sig.inputs["x"].shape.dim.extend([-1, 4])
    return meta


VARIABLES = {
    "dense/kernel": np.arange(12, dtype=np.float32).reshape(4, 3),
    "bias": np.array([1, 2, 3], dtype=np.int64),
    "flag": np.array(True),
    "empty": np.zeros((0, 5), np.float16),
}


@pytest.fixture
def bundle_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    directory = tmp_path / "base" / "0042"
    write_bundle(
        directory,
        _meta_graph(),
        VARIABLES,
        {"vocab.txt": b"a\nb\n"},
        {"tf_serving_warmup_requests": b"\x00\x01"},
        created_unix_seconds=123,
    )
    return directory


def test_round_trip(bundle_dir: pathlib.Path) -> None:
    bundle = read_bundle(bundle_dir)
    assert isinstance(bundle, Bundle)
    assert bundle.path == bundle_dir
    assert bundle.version == 42
    expected = _meta_graph()
    expected.format_version = 1
    assert bundle.meta_graph == expected
    assert set(bundle.variables) == set(VARIABLES)
    for name, array in VARIABLES.items():
        np.testing.assert_array_equal(bundle.variables[name], array)
        assert bundle.variables[name].dtype == array.dtype
    assert (bundle.assets_dir / "vocab.txt").read_bytes() == b"a\nb\n"
    assert (bundle.assets_extra_dir / "tf_serving_warmup_requests").read_bytes() == b"\x00\x01"
    assert bundle.manifest.created_unix_seconds == 123
    assert [f.path for f in bundle.manifest.files] == sorted(f.path for f in bundle.manifest.files)
    assert "variables/dense/kernel.npy" in [f.path for f in bundle.manifest.files]
    with pytest.raises(TypeError):
        bundle.variables["new"] = np.zeros(1)  # type: ignore[index]
    manifest, meta = read_meta_graph(str(bundle_dir))
    assert meta == expected and manifest == bundle.manifest


def test_variables_are_memory_mapped_read_only(bundle_dir: pathlib.Path) -> None:
    import mmap

    kernel = read_bundle(bundle_dir).variables["dense/kernel"]
    assert isinstance(kernel, np.memmap)
    assert not kernel.flags.owndata and isinstance(kernel.base, mmap.mmap)
    assert not kernel.flags.writeable


def test_no_assets_means_none(tmp_path: pathlib.Path) -> None:
    write_bundle(tmp_path / "1", _meta_graph(), {}, {}, {})
    bundle = read_bundle(tmp_path / "1")
    assert bundle.assets_dir is None and bundle.assets_extra_dir is None and dict(bundle.variables) == {}
    write_bundle(tmp_path / "tmp", _meta_graph(), {}, {}, {})
    assert read_bundle(tmp_path / "tmp").version is None


def test_writer_refuses_bad_input(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ExportError, match="not a plain numeric"):
        write_bundle(tmp_path / "a", _meta_graph(), {"v": np.array([b"x"], dtype=object)}, {}, {})
    with pytest.raises(ExportError, match="not a plain numeric"):
        write_bundle(tmp_path / "b", _meta_graph(), {"v": np.array(["x"])}, {}, {})
    with pytest.raises(ExportError, match="unsafe"):
        write_bundle(tmp_path / "c", _meta_graph(), {"../../evil": np.zeros(1)}, {}, {})
    with pytest.raises(ExportError, match="unsafe"):
        write_bundle(tmp_path / "d", _meta_graph(), {}, {"/etc/passwd": b""}, {})
    write_bundle(tmp_path / "e", _meta_graph(), {}, {}, {})
    with pytest.raises(ExportError, match="not empty"):
        write_bundle(tmp_path / "e", _meta_graph(), {}, {}, {})
    meta = _meta_graph()
    meta.format_version = 7
    with pytest.raises(ExportError, match="format_version"):
        write_bundle(tmp_path / "f", meta, {}, {}, {})


@pytest.mark.parametrize("name", ["/abs", "../up", "a/../../b", "a//b", "./a", "a\\b", "", "a/\x00", "C:/x"])
def test_check_name_refuses_unsafe(name: str) -> None:
    with pytest.raises(BundleError, match="unsafe"):
        check_name(name)


def _rewrite_manifest(directory: pathlib.Path, edit) -> None:  # noqa: ANN001
    manifest = bundle_pb2.Manifest()
    manifest.ParseFromString((directory / "MANIFEST.pb").read_bytes())
    edit(manifest)
    (directory / "MANIFEST.pb").write_bytes(manifest.SerializeToString())


def _list_file(directory: pathlib.Path, rel: str) -> None:
    """Adds `rel` (already on disk) to the manifest with its true size and checksum."""
    data = (directory / rel).read_bytes()

    def edit(m: bundle_pb2.Manifest) -> None:
        m.files.add(path=rel, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    _rewrite_manifest(directory, edit)


def _corrupt_missing_manifest(d: pathlib.Path) -> None:
    (d / "MANIFEST.pb").unlink()


def _corrupt_missing_file(d: pathlib.Path) -> None:
    (d / "assets" / "vocab.txt").unlink()


def _corrupt_size(d: pathlib.Path) -> None:
    (d / "assets" / "vocab.txt").write_bytes(b"a\nb\nc\n")


def _corrupt_checksum(d: pathlib.Path) -> None:
    (d / "assets" / "vocab.txt").write_bytes(b"a\nc\n")  # same size


def _corrupt_unlisted(d: pathlib.Path) -> None:
    (d / "assets" / "extra.txt").write_bytes(b"sneaky")


def _corrupt_format(d: pathlib.Path) -> None:
    _rewrite_manifest(d, lambda m: setattr(m, "format_version", 99))


def _corrupt_traversal(d: pathlib.Path) -> None:
    _rewrite_manifest(d, lambda m: m.files.add(path="../outside", size=0, sha256=""))


def _corrupt_absolute(d: pathlib.Path) -> None:
    _rewrite_manifest(d, lambda m: m.files.add(path="/etc/passwd", size=0, sha256=""))


def _corrupt_pickled_variable(d: pathlib.Path) -> None:
    np.save(d / "variables" / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _list_file(d, "variables/obj.npy")


def _corrupt_raw_pickle(d: pathlib.Path) -> None:
    (d / "variables" / "p.npy").write_bytes(pickle.dumps(np.zeros(3)))
    _list_file(d, "variables/p.npy")


def _corrupt_npz(d: pathlib.Path) -> None:
    np.savez(d / "variables" / "z.npy", a=np.zeros(3))
    (d / "variables" / "z.npy.npz").rename(d / "variables" / "z.npy")
    _list_file(d, "variables/z.npy")


def _corrupt_string_variable(d: pathlib.Path) -> None:
    np.save(d / "variables" / "s.npy", np.array(["abc"]))
    _list_file(d, "variables/s.npy")


def _corrupt_structured_variable(d: pathlib.Path) -> None:
    np.save(d / "variables" / "r.npy", np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]))
    _list_file(d, "variables/r.npy")


def _corrupt_graph(d: pathlib.Path) -> None:
    (d / "graph.pb").write_bytes(b"\xff\xff\xff")
    _rewrite_manifest(d, lambda m: [m.files.remove(f) for f in list(m.files) if f.path == "graph.pb"])
    _list_file(d, "graph.pb")


def _corrupt_symlink(d: pathlib.Path) -> None:
    (d / "assets" / "link").symlink_to("/etc/hostname")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_corrupt_missing_manifest, r"MANIFEST\.pb is missing: incomplete export"),
        (_corrupt_missing_file, r"vocab\.txt: listed in MANIFEST\.pb but missing"),
        (_corrupt_size, r"vocab\.txt: size 6 differs from the manifest's 4"),
        (_corrupt_checksum, r"vocab\.txt: sha256 checksum differs"),
        (_corrupt_unlisted, r"extra\.txt: file present but not listed"),
        (_corrupt_format, r"unknown format_version 99"),
        (_corrupt_traversal, r"unsafe file name in bundle: '\.\./outside'"),
        (_corrupt_absolute, r"unsafe file name in bundle: '/etc/passwd'"),
        (_corrupt_pickled_variable, r"obj\.npy: cannot load variable"),
        (_corrupt_raw_pickle, r"p\.npy: not a \.npy file"),
        (_corrupt_npz, r"z\.npy: not a \.npy file"),
        (_corrupt_string_variable, r"variable 's'.*not a plain numeric"),
        (_corrupt_structured_variable, r"variable 'r'.*not a plain numeric"),
        (_corrupt_graph, r"graph\.pb: not a valid MetaGraph"),
        (_corrupt_symlink, r"link: a symbolic link to /etc/hostname, outside the base path"),
    ],
)
def test_reader_refuses_corrupt_bundle(bundle_dir: pathlib.Path, corrupt, message: str) -> None:  # noqa: ANN001
    read_bundle(bundle_dir)  # sound before the damage
    corrupt(bundle_dir)
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle_dir)


def test_verify_false_skips_only_checksums(bundle_dir: pathlib.Path) -> None:
    _corrupt_checksum(bundle_dir)
    assert read_bundle(bundle_dir, verify=False).version == 42
    _corrupt_unlisted(bundle_dir)
    with pytest.raises(BundleError, match="not listed"):
        read_bundle(bundle_dir, verify=False)


def test_not_a_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BundleError, match="no such bundle directory"):
        read_bundle(tmp_path / "missing")


def test_file_uri_is_read_in_place(bundle_dir: pathlib.Path) -> None:
    bundle = read_bundle(f"file://{bundle_dir}")
    assert bundle.path == bundle_dir and bundle.version == 42


# ---------------------------------------------------------------------------------------------
# Bundles stay inside their base path (issue 9, point 8)


def test_a_version_directory_linked_out_of_the_base_path_is_refused(bundle_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    other_base = tmp_path / "elsewhere"
    other_base.mkdir()
    outside = other_base / "7"
    bundle_dir.rename(outside)  # a whole, sound bundle, outside `base`
    read_bundle(outside)
    link = tmp_path / "base" / "43"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(BundleError, match=r"43: the version directory is a symbolic link to .*elsewhere/7, outside the base path .*base: refused"):
        read_bundle(link)
    # The same through a relative link, and a link to the base path itself.
    relative = tmp_path / "base" / "44"
    relative.symlink_to(pathlib.Path("..") / "elsewhere" / "7")
    with pytest.raises(BundleError, match="outside the base path"):
        read_bundle(relative)
    (tmp_path / "base" / "45").symlink_to(tmp_path / "base")
    with pytest.raises(BundleError, match="outside the base path"):
        read_bundle(tmp_path / "base" / "45")


@pytest.mark.parametrize("what", ["graph.pb", "variables", "assets", "assets/vocab.txt", "assets.extra"])
def test_anything_under_a_version_linked_out_of_the_base_path_is_refused(bundle_dir: pathlib.Path, tmp_path: pathlib.Path, what: str) -> None:
    target = bundle_dir / what
    moved = tmp_path / "outside" / what.replace("/", "_")
    moved.parent.mkdir(exist_ok=True)
    target.rename(moved)
    target.symlink_to(moved)
    with pytest.raises(BundleError, match=rf"{what}: a symbolic link to .*outside.*, outside the base path"):
        read_bundle(bundle_dir)


def test_links_inside_the_base_path_and_a_linked_base_path_are_fine(bundle_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # A version that is a link to another version of the same base path (a "current" alias).
    (tmp_path / "base" / "50").symlink_to("0042")
    assert read_bundle(tmp_path / "base" / "50").path.name == "50"
    # A base path that is itself a link (a mounted volume): the operator's choice.
    (tmp_path / "mounted").symlink_to(tmp_path / "base")
    assert read_bundle(tmp_path / "mounted" / "0042").version == 42


def test_a_link_inside_a_bundle_is_refused_even_when_it_stays_in_the_base_path(bundle_dir: pathlib.Path) -> None:
    (bundle_dir / "assets" / "again").symlink_to(bundle_dir / "assets" / "vocab.txt")
    with pytest.raises(BundleError, match="again: symbolic links are not allowed"):
        read_bundle(bundle_dir)
