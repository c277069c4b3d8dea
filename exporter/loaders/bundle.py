"""The loader of Tessera bundles (`MANIFEST.pb`, `graph.pb`, `variables/`): the numpy graph runtime."""

from __future__ import annotations

from collections.abc import Mapping

from exporter import bundle as bundle_io
from exporter.loaders.formats import refuse_foreign
from exporter.runtime import Runtime
from exporter.servable import LoadOptions
from exporter.signature import Shape, Signature, TensorInfo
from protos.tessera import bundle_pb2


def load(path: str, options: LoadOptions) -> Runtime:
    """Reads and verifies the bundle at `path` and plans its graph (see `exporter.servable`).

    A directory holding another format (a SavedModel, an ONNX or PyTorch file) is refused with
    what serves it, rather than as an incomplete export.
    """
    refuse_foreign(path, "tensorflow")
    return Runtime.from_bundle(bundle_io.read_bundle(path, cache_dir=options.cache_dir), options)


def describe(path: str, options: LoadOptions) -> dict[str, Signature]:
    """The signatures a bundle declares, from MANIFEST.pb and graph.pb only (nothing is copied, no
    variable is read, the graph is not planned)."""
    refuse_foreign(path, "tensorflow")
    _, meta_graph = bundle_io.read_meta_graph(path)
    return {key: _signature(key, sig) for key, sig in meta_graph.signatures.items()}


def _signature(key: str, sig: bundle_pb2.SignatureDef) -> Signature:
    def infos(specs: Mapping[str, bundle_pb2.TensorSpec]) -> dict[str, TensorInfo]:
        return {alias: TensorInfo(s.name, s.dtype, _shape(s.shape)) for alias, s in specs.items()}

    return Signature(key, sig.method_name, infos(sig.inputs), infos(sig.outputs))


def _shape(proto: bundle_pb2.Shape) -> Shape:
    return None if proto.unknown_rank else tuple(None if d < 0 else int(d) for d in proto.dim)
