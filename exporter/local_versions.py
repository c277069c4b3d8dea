"""How a serving host reads one version: a local one in place, a remote one from a local copy.

- `check_inside_base`: a local version directory, and every link under it, must stay inside its
  base path; a version that leads elsewhere on the host is refused before anything is read.
- `copy_to_cache`: a remote version (s3://, gs://, hdfs://) is copied once into a local cache
  directory, keyed by its URI, and reused while its manifest is unchanged (versions are immutable);
  the copy is renamed into place whole, so a crash never leaves a half copy that looks whole.

The layout of base paths, and publishing versions into them, is `exporter.storage`'s.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import uuid

import pyarrow.fs as pafs

from exporter.errors import BundleError
from exporter.storage import MANIFEST_FILE, TEMP_PREFIX, resolve


def check_inside_base(version_path: str | os.PathLike[str]) -> None:
    """Refuses a local version directory that leads outside its base path (the directory's parent).

    The version directory itself, and every symbolic link under it (a file, `variables/`,
    `assets/`), must resolve to somewhere strictly inside the base path as it resolves: a link
    could otherwise serve any directory or file of the host (a vocabulary read from /etc, say) as
    a model. A base path that is itself a link (a mounted volume) is the operator's choice and
    fine. Raises BundleError naming the link and where it leads; object stores have no links.
    """
    fs, path = resolve(version_path)
    if fs.type_name != "local":
        return
    version = pathlib.Path(path)
    base = os.path.realpath(version.parent)

    def outside(entry: pathlib.Path | str) -> str | None:
        real = os.path.realpath(entry)
        return None if real.startswith(base.rstrip(os.sep) + os.sep) else real

    escaped = outside(version)
    if escaped is not None:
        raise BundleError(
            f"{version}: the version directory is a symbolic link to {escaped}, outside the base "
            f"path {base}: refused"
        )
    for dirpath, dirnames, filenames in os.walk(version, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full) and (escaped := outside(full)) is not None:
                raise BundleError(f"{full}: a symbolic link to {escaped}, outside the base path {base}: refused")


def copy_to_cache(
    version_uri: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    filesystem: pafs.FileSystem | None = None,
) -> pathlib.Path:
    """Copies one version directory to ``<cache_dir>/<hash of the URI>/<version name>``; returns it.

    A cached copy is reused when its manifest equals the remote one byte for byte (versions are
    immutable; the manifest holds every file's checksum, which the reader verifies). The copy is
    made in a temporary sibling and renamed into place, so a crash never leaves a half copy that
    looks whole. Raises `BundleError` if the remote version has no manifest.
    """
    fs, src = resolve(version_uri, filesystem)
    src = src.rstrip("/")
    key_text = os.fspath(version_uri) if filesystem is None else f"{fs.type_name}:{src}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    name = src.rsplit("/", 1)[-1] or "bundle"
    root = pathlib.Path(cache_dir) / key
    dest = root / name
    if fs.get_file_info(f"{src}/{MANIFEST_FILE}").type != pafs.FileType.File:
        raise BundleError(
            f"{version_uri}: {MANIFEST_FILE} is missing: incomplete export (the manifest is written last)"
        )
    with fs.open_input_stream(f"{src}/{MANIFEST_FILE}") as stream:
        remote_manifest = stream.read()
    cached_manifest = dest / MANIFEST_FILE
    if cached_manifest.is_file() and cached_manifest.read_bytes() == remote_manifest:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    temp = root / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    try:
        pafs.copy_files(src, str(temp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        # The manifest we compared is the one we keep, even if copy_files raced a (bad) rewrite.
        (temp / MANIFEST_FILE).write_bytes(remote_manifest)
        if dest.exists():
            shutil.rmtree(dest)  # a stale copy of an older manifest: the version was re-made
        try:
            os.replace(temp, dest)
        except OSError:
            # Another process cached the same version meanwhile; theirs is as good as ours.
            if not (cached_manifest.is_file() and cached_manifest.read_bytes() == remote_manifest):
                raise
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return dest
