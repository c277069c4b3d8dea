"""Import TensorFlow SavedModels as Tessera bundles: `import_saved_model(source, dest_base)`.

`source` is one SavedModel version directory (``<base>/<version>/saved_model.pb``) or a base
path holding several; a local path or any pyarrow.fs URI. Each version becomes a bundle under
`dest_base` with the same version number, written like an export: staged locally, loaded back (a
bundle that does not load is never published), then published atomically (never overwriting: a
version already imported is skipped). Every signature keeps its key, method name, input and
output aliases, dtypes and shapes; its compute is an ONNX body converted by tf2onnx and checked
against TensorFlow (exporter.importers.savedmodel_tf), behind Tessera's parsing receiver where
the signature parses tf.Examples. ``assets.extra/`` (TF Serving's warmup requests) is copied.

TensorFlow and tf2onnx (the `tensorflow` extra) are imported only when a version is converted, so
this module can be imported, and SavedModels recognised, without them.
"""

from __future__ import annotations

import importlib.util
import logging
import pathlib
import shutil
import tempfile
import time
from dataclasses import dataclass

import pyarrow.fs as pafs

from exporter import bundle, storage
from exporter.errors import BundleError, ExportError, GraphError

SAVED_MODEL_FILE = "saved_model.pb"
ASSETS_EXTRA_DIR = "assets.extra"
INSTALL_HINT = "pip install 'tessera-serving[tensorflow]'"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportResult:
    version: int
    path: str  # where the bundle is (path or URI, as dest_base was given)
    imported: bool  # False: that version was already there and was left alone
    signatures: tuple[str, ...] = ()


def require_tensorflow() -> None:
    """ExportError saying what to install unless TensorFlow and tf2onnx can be imported."""
    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"importing a TensorFlow SavedModel needs {' and '.join(missing)}, which this Python "
            f"does not have: {INSTALL_HINT}"
        )


def is_saved_model(version_dir: str) -> bool:
    """True if the directory (path or URI) holds a SavedModel and is not already a bundle."""
    fs, root = storage.resolve(version_dir)
    root = root.rstrip("/")

    def has(name: str) -> bool:
        return bool(fs.get_file_info(f"{root}/{name}").type == pafs.FileType.File)

    return has(SAVED_MODEL_FILE) and not has(bundle.MANIFEST_FILE)


def saved_model_versions(source: str) -> dict[int, str]:
    """version -> location (as `source` was spelled) of every SavedModel version under `source`.

    `source` may be a version directory itself (named by its number, as TF Serving requires).
    """
    fs, root = storage.resolve(source)
    if fs.get_file_info(f"{root.rstrip('/')}/{SAVED_MODEL_FILE}").type == pafs.FileType.File:
        version = storage.parse_version(root.rstrip("/").rsplit("/", 1)[-1])
        if version is None:
            raise ExportError(
                f"{source} is a SavedModel directory but not named by a version number; "
                "put it under a base path as <base>/<version>/ (e.g. .../1/)"
            )
        return {version: source}
    found = {}
    for version, fs_path in storage.list_versions(source).items():
        location = storage.join(source, fs_path.rsplit("/", 1)[-1])
        if is_saved_model(location):
            found[version] = location
    if not found:
        raise ExportError(f"no SavedModel versions (<base>/<version>/{SAVED_MODEL_FILE}) under {source}")
    return found


def _local_copy(location: str, scratch: pathlib.Path) -> str:
    """TensorFlow reads local paths: a remote version is copied to `scratch` first."""
    if not storage.is_uri(location):
        return location
    fs, src = storage.resolve(location)
    dest = scratch / "savedmodel"
    pafs.copy_files(src, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return str(dest)


def _assets_extra(version_dir: str) -> dict[str, bytes]:
    root = pathlib.Path(version_dir) / ASSETS_EXTRA_DIR
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def import_version(location: str, dest_base: str, version: int, *, now: float | None = None) -> ImportResult:
    """Imports one SavedModel version as `<dest_base>/<version>` (skipped if it already exists)."""
    from exporter.importers import savedmodel_bundle
    from exporter.runtime import Runtime

    existing = storage.list_versions(dest_base, missing_ok=True)
    if version in existing:
        return ImportResult(version, storage.join(dest_base, existing[version].rsplit("/", 1)[-1]), False)
    require_tensorflow()
    from exporter.importers import savedmodel_tf  # TensorFlow and tf2onnx: seconds to import

    scratch = pathlib.Path(tempfile.mkdtemp(prefix="tessera-import-"))
    try:
        local = _local_copy(location, scratch)
        signatures = savedmodel_tf.convert_saved_model(local)
        try:
            g, meta = savedmodel_bundle.build_bundle_graph(signatures, str(location), savedmodel_tf.versions())
        except GraphError as e:
            raise ExportError(f"{location}: the imported graph is invalid: {e}") from None
        staging = scratch / "bundle"
        bundle.write_bundle(
            staging, meta, g.variables, g.assets, _assets_extra(local),
            producer="tessera.importers.savedmodel", created_unix_seconds=int(time.time() if now is None else now),
        )  # fmt: skip
        try:  # the same checks a server runs at load: refuse to publish what would not load
            Runtime.from_bundle(bundle.read_bundle(staging)).close()
        except (BundleError, GraphError) as e:
            raise ExportError(f"{location}: the imported bundle does not load: {e}") from None
        path = storage.publish(staging, dest_base, version)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return ImportResult(version, path, True, tuple(s.key for s in signatures))


def import_saved_model(source: str, dest_base: str, *, now: float | None = None) -> list[ImportResult]:
    """Imports every SavedModel version under `source` (or the one version it is) into `dest_base`.

    Raises ExportError naming the version and signature that cannot be imported (nothing is
    published for that version; versions before it stay published).
    """
    results = []
    for version, location in sorted(saved_model_versions(source).items()):
        try:
            results.append(import_version(location, dest_base, version, now=now))
        except ExportError as e:
            raise ExportError(f"version {version}: {e}") from None
    return results
