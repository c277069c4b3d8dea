"""Storage of bundle versions through pyarrow.fs: local paths and URIs (s3://, gs://, hdfs://, file://).

A base path holds one directory per version, named by a positive int64 (TF Serving's layout,
spec §12). Writers publish atomically so that a reader polling the base path never loads half a
version:

- where the filesystem can rename a directory (local disk, HDFS), the bundle is copied into a
  non-numeric temporary sibling (``.tmp-<version>-<uuid>``, ignored by `list_versions`) and renamed
  into ``<base>/<version>``;
- on object stores (S3, GCS), where "rename" is a copy of every object, the files are copied
  straight into ``<base>/<version>/`` with the manifest (``MANIFEST.pb``) copied LAST. A reader
  treats a version without a manifest as incomplete, so the manifest's arrival is the commit.

S3 endpoints for S3-compatible servers (MinIO, moto, ...) come from the URI query, which pyarrow
parses: ``s3://bucket/models/iris?endpoint_override=http://127.0.0.1:9000&region=us-east-1``
(or ``endpoint_override=127.0.0.1:9000&scheme=http``), or from the ``AWS_ENDPOINT_URL`` environment
variable. Credentials come from the usual AWS environment variables. Every function also takes an
explicit `filesystem`, in which case the path is used as is.

Reading a version on a serving host (links refused, remote versions cached locally) is
`exporter.local_versions`'s.
"""

from __future__ import annotations

import os
import pathlib
import re
import uuid
from typing import Final

import pyarrow.fs as pafs

from exporter.errors import BundleError, ExportError

MANIFEST_FILE: Final = "MANIFEST.pb"
TEMP_PREFIX: Final = ".tmp-"
_INT64_MAX: Final = 2**63 - 1
# absl::SimpleAtoi: ASCII whitespace around an optional sign and base-10 digits (leading zeros ok).
_SIMPLE_ATOI: Final = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*", re.ASCII)
# Filesystems whose directory rename is a real, atomic rename (not a copy of every object).
_RENAMES_DIRECTORIES: Final = frozenset({"local", "hdfs"})


def is_uri(path_or_uri: str | os.PathLike[str]) -> bool:
    """True when the argument is a URI (``scheme://...``) rather than a plain local path."""
    return isinstance(path_or_uri, str) and "://" in path_or_uri


def resolve(
    path_or_uri: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a local path or a URI.

    A plain path is local (made absolute); a URI goes through `pyarrow.fs.FileSystem.from_uri`.
    With an explicit `filesystem`, the argument is returned unchanged as the path in it.
    """
    if filesystem is not None:
        return filesystem, os.fspath(path_or_uri)
    if is_uri(path_or_uri):
        return pafs.FileSystem.from_uri(path_or_uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.fspath(path_or_uri))


def join(path_or_uri: str | os.PathLike[str], *parts: str) -> str:
    """Appends path components to a local path or a URI, keeping a URI's ``?query`` at the end."""
    text = os.fspath(path_or_uri)
    base, sep, query = text.partition("?") if is_uri(text) else (text, "", "")
    for part in parts:
        base = base.rstrip("/") + "/" + part
    return base + sep + query


def parse_version(name: str) -> int | None:
    """The version a child name denotes under absl ``SimpleAtoi`` rules (int64), else None.

    ``"123"``, ``"00123"``, ``" 123 "`` and ``"+123"`` are 123; ``"tmp"``, ``"1.tmp"``, ``".tmp-5"``,
    ``"1_000"`` and values outside int64 are not versions. Unlike Python's `int`, no underscores and
    no non-ASCII digits.
    """
    match = _SIMPLE_ATOI.fullmatch(name)
    if match is None:
        return None
    value = int(match.group(1))
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def _children(fs: pafs.FileSystem, base: str, missing_ok: bool) -> list[pafs.FileInfo]:
    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        # On object stores an empty prefix and a missing one are the same thing.
        if missing_ok:
            return []
        raise BundleError(f"Could not find base path {base}")
    return fs.get_file_info(pafs.FileSelector(base, recursive=False))


def list_versions(
    base_path: str | os.PathLike[str],
    *,
    filesystem: pafs.FileSystem | None = None,
    missing_ok: bool = False,
) -> dict[int, str]:
    """The versions under a base path: ``{version: full path of its directory}``, sorted ascending.

    A direct child is a version when its name parses as a positive int64 (`parse_version`); temporary
    and stray entries are ignored. When two names parse to the same number (``"7"`` and ``"007"``),
    the canonical spelling wins, else the lexicographically smallest name, so the choice does not
    depend on listing order. The paths are in the filesystem's own terms (no URI scheme).
    A missing base path raises `BundleError` unless `missing_ok`.
    """
    fs, base = resolve(base_path, filesystem)
    names: dict[int, str] = {}
    for info in _children(fs, base, missing_ok):
        version = parse_version(info.base_name)
        if version is None or version <= 0:
            continue
        chosen = names.get(version)
        if chosen is None or _preferred(info.base_name, chosen, version):
            names[version] = info.base_name
    return {v: base.rstrip("/") + "/" + names[v] for v in sorted(names)}


def list_tree(
    path_or_uri: str | os.PathLike[str], *, filesystem: pafs.FileSystem | None = None
) -> tuple[tuple[str, int, int], ...]:
    """Every file under a directory as sorted ``(relative path, size, mtime in ns)``: what a reader
    compares between polls to tell a version still being written from a finished one."""
    fs, root = resolve(path_or_uri, filesystem)
    root = root.rstrip("/")
    entries = []
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            mtime = info.mtime_ns if info.mtime_ns is not None else -1
            entries.append((info.path[len(root) + 1 :], int(info.size or 0), int(mtime)))
    return tuple(sorted(entries))


def _preferred(candidate: str, current: str, version: int) -> bool:
    canonical = str(version)
    if current == canonical:
        return False
    return candidate == canonical or candidate < current


def next_version(
    base_path: str | os.PathLike[str], now_seconds: float, *, filesystem: pafs.FileSystem | None = None
) -> int:
    """The version for a new export: Unix seconds, bumped past the newest existing version."""
    existing = list_versions(base_path, filesystem=filesystem, missing_ok=True)
    candidate = max(int(now_seconds), 1)
    if existing:
        candidate = max(candidate, max(existing) + 1)
    return candidate


def publish(
    local_staging_dir: str | os.PathLike[str],
    base_path: str | os.PathLike[str],
    version: int,
    *,
    filesystem: pafs.FileSystem | None = None,
) -> str:
    """Publishes a staged bundle (a local dir holding ``MANIFEST.pb``) as ``<base>/<version>``.

    Returns the version's location in the form `base_path` was given (a path or a URI).
    Raises `ExportError` if that version already exists (under any spelling) or the staged dir has
    no manifest; an existing version is never overwritten.
    """
    if not isinstance(version, int) or not 0 < version <= _INT64_MAX:
        raise ExportError(f"version must be a positive int64, got {version!r}")
    staging = pathlib.Path(local_staging_dir)
    if not (staging / MANIFEST_FILE).is_file():
        raise ExportError(f"{staging} has no {MANIFEST_FILE}: not a finished bundle, refusing to publish")
    fs, base = resolve(base_path, filesystem)
    fs.create_dir(base, recursive=True)
    final = base.rstrip("/") + "/" + str(version)
    _refuse_existing(fs, base, version)
    local = pafs.LocalFileSystem()
    if fs.type_name in _RENAMES_DIRECTORIES:
        temp = f"{base.rstrip('/')}/{TEMP_PREFIX}{version}-{uuid.uuid4().hex}"
        try:
            pafs.copy_files(str(staging), temp, source_filesystem=local, destination_filesystem=fs)
            # Checked again just before the rename: another exporter may have won the race meanwhile.
            _refuse_existing(fs, base, version)
            _rename_dir(fs, temp, final)
        except BaseException:
            if fs.get_file_info(temp).type != pafs.FileType.NotFound:
                fs.delete_dir(temp)
            raise
    else:
        # Object store: no directory rename. Every other file first, the manifest last.
        for src in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = src.relative_to(staging).as_posix()
            if rel != MANIFEST_FILE:
                pafs.copy_files(str(src), f"{final}/{rel}", source_filesystem=local, destination_filesystem=fs)
        pafs.copy_files(
            str(staging / MANIFEST_FILE), f"{final}/{MANIFEST_FILE}",
            source_filesystem=local, destination_filesystem=fs,
        )
    return final if filesystem is not None else join(base_path, str(version))


def _rename_dir(fs: pafs.FileSystem, src: str, dest: str) -> None:
    # One place for the commit step of a rename-publish (tests interrupt it here).
    fs.move(src, dest)


def _refuse_existing(fs: pafs.FileSystem, base: str, version: int) -> None:
    existing = list_versions(base, filesystem=fs, missing_ok=True)
    if version in existing:
        raise ExportError(f"version {version} already exists at {existing[version]}; never overwriting")


def keep(
    base_path: str | os.PathLike[str], n: int, *, filesystem: pafs.FileSystem | None = None
) -> list[int]:
    """Deletes all but the `n` newest versions under a base path; returns the deleted versions."""
    if n < 1:
        raise ValueError(f"keep needs n >= 1, got {n}")
    fs, base = resolve(base_path, filesystem)
    versions = list_versions(base, filesystem=fs, missing_ok=True)
    doomed = sorted(versions)[:-n]
    for version in doomed:
        fs.delete_dir(versions[version])
    return doomed
