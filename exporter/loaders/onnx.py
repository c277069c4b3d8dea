"""The loader of ONNX models in Triton's layout: `<base_path>/<version>/model.onnx`.

Platforms "onnx" and "onnxruntime_onnx" (Triton's name). The version directory may also hold the
model's external-data files (beside model.onnx, never outside the directory) and TF Serving's
`assets.extra/tf_serving_warmup_requests`. The model is served with one Predict signature,
`serving_default`, whose inputs and outputs are the graph's: ONNX names as aliases, their dtypes and
shapes, a symbolic (or unknown) first dimension being the batch. A model whose first dimension is
fixed still serves, but requests then cannot share a batch (each merged batch is refused by the
graph and its requests run alone).

Remote versions (s3://, gs://, ...) are copied to the local cache first, keyed by their listing,
so a changed version is copied again.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import uuid
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import pyarrow.fs as pafs

from exporter import storage
from exporter.errors import BundleError, InvalidInputError
from exporter.loaders.formats import ONNX_FILE, refuse_foreign
from exporter.onnx_model import OnnxModel
from exporter.servable import LoadOptions
from exporter.signature import DEFAULT_SERVING_SIGNATURE, PREDICT_METHOD, Signature, Tensors

ASSETS_EXTRA_DIR = "assets.extra"
_DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "tessera", "onnx")


class OnnxServable:
    """A `Servable` over one `OnnxModel`: the `serving_default` Predict signature of its graph."""

    def __init__(self, model: OnnxModel, assets_extra_dir: pathlib.Path | None = None) -> None:
        self._model = model
        self.assets_extra_dir = assets_extra_dir
        # Plain dicts: signatures travel to the controller and the gateways (pickled by Ray).
        signature = Signature(DEFAULT_SERVING_SIGNATURE, PREDICT_METHOD, dict(model.inputs), dict(model.outputs))
        self.signatures: Mapping[str, Signature] = MappingProxyType({DEFAULT_SERVING_SIGNATURE: signature})

    @property
    def resident_bytes(self) -> int:
        return self._model.resident_bytes

    def run(
        self, signature_key: str, feeds: Mapping[str, np.ndarray], output_filter: Sequence[str] | None = None
    ) -> Tensors:
        signature = self.signatures.get(signature_key)
        if signature is None:
            raise InvalidInputError(f'Serving signature key "{signature_key}" not found.')
        for alias in output_filter or ():
            if alias not in signature.outputs:
                raise InvalidInputError(f"output tensor alias not found in signature: {alias}")
        return self._model.run(feeds, output_filter)

    def close(self) -> None:
        self._model.close()


def load(path: str, options: LoadOptions) -> OnnxServable:
    """Checks and opens `<path>/model.onnx` (see `exporter.servable` for the contract)."""
    root = _local_dir(path, options.cache_dir)
    model_file = root / ONNX_FILE
    if not model_file.is_file():
        refuse_foreign(root, "onnx")
        raise BundleError(f"{path}: no {ONNX_FILE} (Triton's layout: <base_path>/<version>/{ONNX_FILE})")
    model = OnnxModel(model_file.read_bytes(), base_dir=root, options=options)
    extra = root / ASSETS_EXTRA_DIR
    return OnnxServable(model, extra if extra.is_dir() else None)


def _local_dir(path: str, cache_dir: str | None) -> pathlib.Path:
    fs, fs_path = storage.resolve(path)
    if fs.type_name == "local":
        root = pathlib.Path(fs_path)
        if not root.is_dir():
            raise BundleError(f"{path}: no such version directory")
        return root
    cache = pathlib.Path(cache_dir or os.environ.get("TESSERA_CACHE_DIR", _DEFAULT_CACHE))
    listing = storage.list_tree(path)
    if not listing:
        raise BundleError(f"{path}: no such version directory, or it is empty")
    key = hashlib.sha256(repr((path, listing)).encode()).hexdigest()[:24]
    dest = cache / key / (fs_path.rstrip("/").rsplit("/", 1)[-1] or "model")
    if dest.is_dir():
        return dest  # the same files (names, sizes, mtimes) were copied before
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.parent / f"{storage.TEMP_PREFIX}{uuid.uuid4().hex}"
    try:
        temp.mkdir()
        pafs.copy_files(fs_path, str(temp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            os.replace(temp, dest)
        except OSError:
            if not dest.is_dir():  # another process copied the same version meanwhile: keep theirs
                raise
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return dest
