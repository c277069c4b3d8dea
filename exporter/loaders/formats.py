"""What a version directory holds, when it is not what its platform's loader expects.

A loader that does not find its own file asks `refuse_foreign` before it reports the version as
incomplete: a SavedModel under `model_platform: "tensorflow"`, a `.onnx` file under a bundle
platform, a PyTorch checkpoint anywhere fails with an error naming the format and the config or
command that serves it, instead of "MANIFEST.pb is missing".
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs

from exporter import storage
from exporter.bundle import GRAPH_FILE, MANIFEST_FILE
from exporter.errors import BundleError

ONNX_FILE = "model.onnx"  # Triton's default_model_filename for onnxruntime_onnx


@dataclass(frozen=True)
class Format:
    name: str  # "TensorFlow SavedModel", "ONNX model", ...
    platforms: frozenset[str]  # the platforms that serve it as is (empty: none)
    advice: str  # what to do instead


_SERVE_ONNX = (
    'serve it with model_platform: "onnx" in the model config (or --model_platform=onnx beside '
    "--model_base_path)"
)
_FORMATS: dict[str, Format] = {
    "bundle": Format(
        "Tessera bundle", frozenset({"tensorflow", "tessera"}),
        'serve it with model_platform: "tensorflow" (the default) in the model config',
    ),
    "savedmodel": Format(
        "TensorFlow SavedModel", frozenset(),
        "Tessera does not run TensorFlow graphs itself: import it with `tessera import SRC DEST` "
        "(a Tessera bundle) and serve DEST, or convert it to ONNX with tf2onnx and " + _SERVE_ONNX,
    ),
    "onnx": Format("ONNX model", frozenset({"onnx", "onnxruntime_onnx"}), _SERVE_ONNX),
    "torch": Format(
        "PyTorch checkpoint", frozenset(),
        "loading it would run pickled code, which Tessera never does: export the model to ONNX "
        '(torch.onnx.export(model, example_inputs, "model.onnx")) and ' + _SERVE_ONNX,
    ),
    "pickle": Format(
        "Python pickle", frozenset(),
        "loading it would run pickled code, which Tessera never does: export the estimator with "
        "Tessera's exporter (docs/exporting.md) or convert it to ONNX and " + _SERVE_ONNX,
    ),
    "keras": Format(
        "Keras model", frozenset(),
        "convert it to ONNX (tf2onnx.convert.from_keras) and " + _SERVE_ONNX,
    ),
}


def _kind(name: str) -> str | None:
    lowered = name.lower()
    if name in (MANIFEST_FILE, GRAPH_FILE):  # graph.pb without a manifest: a bundle still being written
        return "bundle"
    if lowered in ("saved_model.pb", "saved_model.pbtxt"):
        return "savedmodel"
    _, ext = posixpath.splitext(lowered)
    return {
        ".onnx": "onnx", ".pt": "torch", ".pth": "torch", ".pt2": "torch",
        ".pkl": "pickle", ".pickle": "pickle", ".joblib": "pickle",
        ".h5": "keras", ".keras": "keras",
    }.get(ext)


def found(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """The (format key, file name) of the first model file in a version directory, if any."""
    fs, root = storage.resolve(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root.rstrip("/"), allow_not_found=True))
    except OSError:
        return None
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    for priority in ("bundle", "savedmodel", "onnx", "torch", "keras", "pickle"):
        for name in names:
            if _kind(name) == priority:
                return priority, name
    return None


def refuse_foreign(path: str | os.PathLike[str], platform: str) -> None:
    """BundleError naming the format and what serves it, if `path` holds a model file that
    `platform` does not serve; returns quietly otherwise (the loader then says what is missing)."""
    hit = found(path)
    if hit is None:
        return
    key, name = hit
    fmt = _FORMATS[key]
    if platform in fmt.platforms:
        if key == "onnx" and name != ONNX_FILE:
            raise BundleError(
                f"{path} holds an ONNX model named {name}; Triton's layout names it {ONNX_FILE}: "
                f"rename it to {path}/{ONNX_FILE}"
            )
        return
    raise BundleError(
        f"{path} holds a {fmt.name} ({name}), which model_platform {platform!r} does not serve: {fmt.advice}"
    )
