"""Drop-in serving of SavedModels: a version that is a SavedModel is imported once, into a cache
keyed by its content, by a separate process; the server then loads the bundle like any other.

`resolve_version(platform, path, cache)` is what the controller calls before it asks replicas to
load a version: under model_platform "tensorflow" (TF Serving's default) a directory holding
``saved_model.pb`` (and no MANIFEST.pb) maps to ``<cache>/<content key>/<version>``, a bundle
written by ``python -m exporter.importers.savedmodel_cli`` in a subprocess: TensorFlow is never
loaded into the controller or a replica, and a crash or a hang of the import (bounded by
`timeout`) fails only that version. Every other path is returned as it is.

The content key is a digest of every file's relative path, size and SHA-256 (plus the importer's
format), so a version is imported once however often it is listed, by however many controllers,
and a version re-made in place with other content is imported again. Two imports of one key race
harmlessly: publishing never overwrites, and the loser finds the winner's bundle.

The cache is a local directory by default (`default_cache_dir`); on a multi-node cluster, where
replicas on other nodes must read the bundle, point TESSERA_IMPORT_CACHE at shared storage (any
pyarrow.fs URI, e.g. s3://bucket/tessera-imports).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import sys

import pyarrow.fs as pafs

from exporter import bundle, storage
from exporter.errors import BundleError, ExportError
from exporter.importers.savedmodel import INSTALL_HINT, is_saved_model, require_tensorflow

IMPORTER_FORMAT = "savedmodel-onnx-1"  # bump when the importer would write a different bundle
CACHE_ENV = "TESSERA_IMPORT_CACHE"
SAVED_MODEL_PLATFORMS = frozenset({"tensorflow", ""})
DEFAULT_TIMEOUT_S = 900.0
_CHUNK = 1 << 20


def default_cache_dir() -> str:
    """$TESSERA_IMPORT_CACHE, else ~/.cache/tessera/savedmodel-imports."""
    return os.environ.get(CACHE_ENV) or str(pathlib.Path.home() / ".cache" / "tessera" / "savedmodel-imports")


def content_key(version_dir: str) -> str:
    """A digest of every file under the version directory (path, size, SHA-256) and IMPORTER_FORMAT."""
    fs, root = storage.resolve(version_dir)
    root = root.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    digest = hashlib.sha256(IMPORTER_FORMAT.encode())
    for info in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        rel = info.path[len(root) + 1 :]
        file_digest = hashlib.sha256()
        with fs.open_input_stream(info.path) as stream:
            while chunk := stream.read(_CHUNK):
                file_digest.update(chunk)
        digest.update(f"\0{rel}\0{info.size}\0{file_digest.hexdigest()}".encode())
    return digest.hexdigest()[:32]


def _version_of(path: str) -> int:
    version = storage.parse_version(path.rstrip("/").rsplit("/", 1)[-1])
    if version is None:
        raise BundleError(f"{path}: a SavedModel version directory is named by its version number")
    return version


def cached_bundle(path: str, cache_dir: str) -> tuple[str, bool]:
    """(where the bundle of SavedModel version `path` is or will be, whether it is there already)."""
    target_base = storage.join(cache_dir, content_key(path))
    target = storage.join(target_base, str(_version_of(path)))
    fs, root = storage.resolve(target)
    return target, fs.get_file_info(f"{root}/{bundle.MANIFEST_FILE}").type == pafs.FileType.File


def import_command(path: str, cache_dir: str) -> list[str]:
    """The subprocess that imports `path` into the cache (the Python running this server)."""
    base = storage.join(cache_dir, content_key(path))
    return [sys.executable, "-m", "exporter.importers.savedmodel_cli", path, base]


def _failure(path: str, stderr: bytes) -> BundleError:
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    reason = errors[-1][len("error: ") :] if errors else (lines[-1] if lines else "the import process failed")
    return BundleError(f"{path} is a TensorFlow SavedModel and importing it failed: {reason}")


def _check_importable(path: str) -> None:
    try:
        require_tensorflow()
    except ExportError as e:
        raise BundleError(
            f"{path} is a TensorFlow SavedModel; serving it needs it imported, and {e} "
            f"(or import it yourself: tessera import {path} NEW_BASE_PATH; {INSTALL_HINT})"
        ) from None


async def resolve_version(
    platform: str, path: str, cache_dir: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> str:
    """The path replicas should load for version `path` of a model under `platform` (see module doc)."""
    if platform not in SAVED_MODEL_PLATFORMS:
        return path
    if not await asyncio.to_thread(is_saved_model, path):
        return path
    _check_importable(path)
    cache = cache_dir or default_cache_dir()
    target, ready = await asyncio.to_thread(cached_bundle, path, cache)
    if ready:
        return target
    command = await asyncio.to_thread(import_command, path, cache)
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BundleError(f"{path} is a TensorFlow SavedModel and importing it took over {timeout:.0f}s") from None
    except asyncio.CancelledError:  # the version was dropped meanwhile: no import outlives its request
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise _failure(path, stderr)
    return target
