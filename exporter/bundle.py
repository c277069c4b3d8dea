"""The on-disk format of one bundle version, and its reader.

A version directory holds::

    graph.pb                  tessera.bundle.MetaGraph (graph, signatures)
    variables/<name>.npy      one plain numeric/bool array each (np.save, never pickled)
    assets/<file>             vocabularies, ...
    assets.extra/<file>       tf_serving_warmup_requests, ...
    MANIFEST.pb               tessera.bundle.Manifest: every other file's path, size, sha256

The manifest is written LAST: a reader that finds it finds a whole bundle, and a reader refuses a
directory without one. Variables load by memory map (no copy); loading never unpickles and never
executes anything from the bundle.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow.fs as pafs
from google.protobuf.message import DecodeError

from exporter import local_versions, storage
from exporter.errors import BundleError, ExportError
from protos.tessera import bundle_pb2

FORMAT_VERSION: Final = 1
GRAPH_FILE: Final = "graph.pb"
MANIFEST_FILE: Final = storage.MANIFEST_FILE
VARIABLES_DIR: Final = "variables"
ASSETS_DIR: Final = "assets"
ASSETS_EXTRA_DIR: Final = "assets.extra"
_NPY_MAGIC: Final = b"\x93NUMPY"
_PLAIN_KINDS: Final = frozenset("biuf")  # bool, signed, unsigned, floating: nothing that holds objects
_DEFAULT_CACHE: Final = pathlib.Path.home() / ".cache" / "tessera" / "bundles"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle version on local disk (remote ones are read from a local cached copy)."""

    path: pathlib.Path
    version: int | None
    meta_graph: bundle_pb2.MetaGraph
    variables: Mapping[str, np.ndarray]
    assets_dir: pathlib.Path | None
    assets_extra_dir: pathlib.Path | None
    manifest: bundle_pb2.Manifest


def check_name(relpath: str) -> str:
    """Returns `relpath` if it is a safe '/'-separated relative path inside a bundle, else raises.

    Refused: absolute paths, '..', '.', empty components, backslashes, NUL and control characters.
    """
    parts = relpath.split("/")
    if (
        not relpath
        or relpath.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or any(c == "\\" or ord(c) < 32 for c in relpath)
        or (len(parts[0]) >= 2 and parts[0][1] == ":")  # a Windows drive
    ):
        raise BundleError(f"unsafe file name in bundle: {relpath!r}")
    return relpath


def _check_variable(name: str, dtype: np.dtype, error: type[Exception]) -> None:
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise error(f"variable {name!r}: dtype {dtype} is not a plain numeric or bool array")


def write_bundle(
    directory: str | os.PathLike[str],
    meta_graph: bundle_pb2.MetaGraph,
    variables: Mapping[str, np.ndarray],
    assets: Mapping[str, bytes],
    assets_extra: Mapping[str, bytes],
    *,
    producer: str = "tessera",
    created_unix_seconds: int | None = None,
) -> None:
    """Writes a bundle into a new or empty local directory, the manifest last.

    Variable names may contain '/' (stored as sub-directories of variables/). Raises `ExportError`
    for a non-empty directory, an unsafe name, an unsupported format_version or a variable that is
    not a plain numeric/bool array.
    """
    root = pathlib.Path(directory)
    if root.exists() and any(root.iterdir()):
        raise ExportError(f"{root} is not empty: a bundle is written into a fresh directory")
    if meta_graph.format_version not in (0, FORMAT_VERSION):
        raise ExportError(f"unsupported MetaGraph format_version {meta_graph.format_version}")
    graph = bundle_pb2.MetaGraph()
    graph.CopyFrom(meta_graph)
    graph.format_version = FORMAT_VERSION

    files: dict[str, bytes | np.ndarray] = {GRAPH_FILE: graph.SerializeToString(deterministic=True)}
    for name, array in variables.items():
        array = np.asarray(array)
        _check_variable(name, array.dtype, ExportError)
        # Little-endian on disk whatever the producer's machine, so bundles move between hosts.
        files[f"{VARIABLES_DIR}/{name}.npy"] = array.astype(array.dtype.newbyteorder("<"), copy=False)
    files.update({f"{ASSETS_DIR}/{name}": bytes(data) for name, data in assets.items()})
    files.update({f"{ASSETS_EXTRA_DIR}/{name}": bytes(data) for name, data in assets_extra.items()})

    manifest = bundle_pb2.Manifest(
        format_version=FORMAT_VERSION,
        created_unix_seconds=int(time.time() if created_unix_seconds is None else created_unix_seconds),
        producer=producer,
    )
    root.mkdir(parents=True, exist_ok=True)
    for relpath in sorted(files):
        try:
            check_name(relpath)
        except BundleError as exc:
            raise ExportError(str(exc)) from None
        target = root / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        content = files[relpath]
        with open(target, "wb") as f:
            if isinstance(content, np.ndarray):
                np.save(f, content, allow_pickle=False)
            else:
                f.write(content)
        manifest.files.add(path=relpath, size=target.stat().st_size, sha256=_sha256(target))
    # Written to a temporary name and renamed: a MANIFEST.pb that exists is always complete.
    temp = root / (MANIFEST_FILE + ".partial")
    temp.write_bytes(manifest.SerializeToString(deterministic=True))
    os.replace(temp, root / MANIFEST_FILE)


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_bundle(
    path_or_uri: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> Bundle:
    """Reads and checks one bundle version; raises `BundleError` naming the offending file.

    A remote URI (s3://, gs://, hdfs://) is first copied to `cache_dir` (default
    ``~/.cache/tessera/bundles``, or ``$TESSERA_CACHE_DIR``) with `local_versions.copy_to_cache`; a local
    path or file:// URI is read in place, after `local_versions.check_inside_base` (no link out of the
    base path, the version directory's parent; and no link at all inside a bundle). With `verify`
    every file's sha256 is checked against the manifest (sizes and the file set are always checked).
    """
    fs, fs_path = storage.resolve(path_or_uri)
    if fs.type_name == "local":
        local_versions.check_inside_base(fs_path)  # before anything is read through a link
        root = pathlib.Path(fs_path)
    else:
        cache = cache_dir if cache_dir is not None else os.environ.get("TESSERA_CACHE_DIR", _DEFAULT_CACHE)
        root = local_versions.copy_to_cache(path_or_uri, cache)
    if not root.is_dir():
        raise BundleError(f"{path_or_uri}: no such bundle directory")
    manifest = _read_manifest(root)
    _check_files(root, manifest, verify)
    meta_graph = _parse_meta_graph(root / GRAPH_FILE)
    variables = _load_variables(root, manifest)
    version = storage.parse_version(root.name)
    assets, extra = root / ASSETS_DIR, root / ASSETS_EXTRA_DIR
    return Bundle(
        path=root,
        version=version if version is not None and version > 0 else None,
        meta_graph=meta_graph,
        variables=types.MappingProxyType(variables),
        assets_dir=assets if assets.is_dir() else None,
        assets_extra_dir=extra if extra.is_dir() else None,
        manifest=manifest,
    )


def parse_manifest(data: bytes, where: str) -> bundle_pb2.Manifest:
    """Parses MANIFEST.pb bytes and checks its format version and file names."""
    manifest = bundle_pb2.Manifest()
    try:
        manifest.ParseFromString(data)
    except DecodeError as exc:
        raise BundleError(f"{where}/{MANIFEST_FILE}: not a valid manifest ({exc})") from None
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(
            f"{where}/{MANIFEST_FILE}: unknown format_version {manifest.format_version} "
            f"(this reader knows {FORMAT_VERSION})"
        )
    seen: set[str] = set()
    for entry in manifest.files:
        check_name(entry.path)
        if entry.path in seen or entry.path == MANIFEST_FILE:
            raise BundleError(f"{where}/{MANIFEST_FILE}: {entry.path!r} listed twice or lists itself")
        seen.add(entry.path)
    if GRAPH_FILE not in seen:
        raise BundleError(f"{where}/{MANIFEST_FILE}: {GRAPH_FILE} is not listed")
    return manifest


def _read_manifest(root: pathlib.Path) -> bundle_pb2.Manifest:
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{path} is missing: incomplete export (the manifest is written last)")
    return parse_manifest(path.read_bytes(), str(root))


def _check_files(root: pathlib.Path, manifest: bundle_pb2.Manifest, verify: bool) -> None:
    listed = {entry.path: entry for entry in manifest.files}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = pathlib.Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                # A link could point anywhere on the host: a bundle is plain files only.
                raise BundleError(f"{full}: symbolic links are not allowed in a bundle")
            if name in filenames and rel != MANIFEST_FILE and rel not in listed:
                raise BundleError(f"{full}: file present but not listed in {MANIFEST_FILE}")
    for rel, entry in listed.items():
        full = root / rel
        if not full.is_file():
            raise BundleError(f"{full}: listed in {MANIFEST_FILE} but missing")
        size = full.stat().st_size
        if size != entry.size:
            raise BundleError(f"{full}: size {size} differs from the manifest's {entry.size}")
        if verify and _sha256(full) != entry.sha256:
            raise BundleError(f"{full}: sha256 checksum differs from the manifest")


def _parse_meta_graph(path: pathlib.Path) -> bundle_pb2.MetaGraph:
    return parse_meta_graph(path.read_bytes(), str(path))


def parse_meta_graph(data: bytes, where: str) -> bundle_pb2.MetaGraph:
    """Parses graph.pb bytes and checks the format version."""
    meta_graph = bundle_pb2.MetaGraph()
    try:
        meta_graph.ParseFromString(data)
    except DecodeError as exc:
        raise BundleError(f"{where}: not a valid MetaGraph ({exc})") from None
    if meta_graph.format_version != FORMAT_VERSION:
        raise BundleError(f"{where}: unknown format_version {meta_graph.format_version}")
    return meta_graph


def _load_variables(root: pathlib.Path, manifest: bundle_pb2.Manifest) -> dict[str, np.ndarray]:
    variables: dict[str, np.ndarray] = {}
    prefix = VARIABLES_DIR + "/"
    for entry in manifest.files:
        if not entry.path.startswith(prefix):
            continue
        full = root / entry.path
        if not entry.path.endswith(".npy"):
            raise BundleError(f"{full}: variables must be .npy files")
        with open(full, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
        if magic != _NPY_MAGIC:
            # np.load would also accept .npz archives and pickles: refuse before it guesses.
            raise BundleError(f"{full}: not a .npy file")
        try:
            array = np.load(full, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise BundleError(f"{full}: cannot load variable ({exc})") from None
        name = entry.path[len(prefix) : -len(".npy")]
        _check_variable(name, array.dtype, BundleError)
        variables[name] = array
    return variables


def read_meta_graph(path_or_uri: str | os.PathLike[str]) -> tuple[bundle_pb2.Manifest, bundle_pb2.MetaGraph]:
    """Reads only the manifest and graph.pb of a version, local or remote, without copying it.

    For inspection (`tessera inspect`): graph.pb's size and checksum are verified, the rest is not.
    """
    fs, root = storage.resolve(path_or_uri)
    root = root.rstrip("/")
    if fs.get_file_info(f"{root}/{MANIFEST_FILE}").type != pafs.FileType.File:
        raise BundleError(f"{path_or_uri}: {MANIFEST_FILE} is missing: incomplete export")
    with fs.open_input_stream(f"{root}/{MANIFEST_FILE}") as stream:
        manifest = parse_manifest(stream.read(), str(path_or_uri))
    entry = next(e for e in manifest.files if e.path == GRAPH_FILE)
    try:
        with fs.open_input_stream(f"{root}/{GRAPH_FILE}") as stream:
            data = stream.read()
    except FileNotFoundError:
        raise BundleError(f"{path_or_uri}: {GRAPH_FILE} listed in {MANIFEST_FILE} but missing") from None
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise BundleError(f"{path_or_uri}/{GRAPH_FILE}: size or checksum differs from the manifest")
    return manifest, parse_meta_graph(data, f"{path_or_uri}/{GRAPH_FILE}")
