"""Converted SavedModel signatures -> a Tessera bundle: parsing receiver, ONNX body, TF's signatures.

No TensorFlow here: this module takes `ConvertedSignature`s (plain data) and builds the graph with
Tessera's own ops. Per signature, in its own name scope:

- each input alias becomes a Placeholder with the dtype and shape saved_model.pb declares;
- where the signature parsed tf.Examples, Tessera's ParseExample node (exporter.ops.parsing) runs
  the cut-off feature spec on the serialized-examples input;
- one OnnxModel node (exporter.ops.onnx) runs the ONNX body on those tensors; signatures whose
  bodies are byte-identical share one stored model and one session;
- the SignatureDef keeps the SavedModel's key, method name, aliases, dtypes and shapes, so
  GetModelMetadata, Classify, Regress, Predict and MultiInference see what TF Serving shows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from exporter import dtypes
from exporter.bundle import FORMAT_VERSION
from exporter.errors import ExportError
from exporter.graph import GraphBuilder, Tensor
from exporter.importers.savedmodel_types import ConvertedSignature
from exporter.ops.onnx import onnx_call
from exporter.ops.parsing import parse_example
from exporter.signature import Shape, TensorInfo
from protos.tessera import bundle_pb2

SERVE_TAG = "serve"
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def _spec(tensor: Tensor, declared: TensorInfo, where: str) -> bundle_pb2.TensorSpec:
    if tensor.dtype != declared.dtype:
        raise ExportError(
            f"{where}: the ONNX body gives {dtypes.name(tensor.dtype)}, the SavedModel declares "
            f"{dtypes.name(declared.dtype)}"
        )
    return bundle_pb2.TensorSpec(name=tensor.name, dtype=dtypes.as_enum(declared.dtype), shape=_shape(declared.shape))


def _shape(shape: Shape) -> bundle_pb2.Shape:
    proto = bundle_pb2.Shape()
    if shape is None:
        proto.unknown_rank = True
    else:
        proto.dim.extend(-1 if d is None else d for d in shape)
    return proto


def _scope(key: str, taken: set[str]) -> str:
    base = _SAFE.sub("_", key) or "signature"
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _signature(g: GraphBuilder, sig: ConvertedSignature) -> bundle_pb2.SignatureDef:
    placeholders = {
        alias: g.placeholder(info.dtype, info.shape, name=_SAFE.sub("_", alias) or "input")
        for alias, info in sig.inputs.items()
    }
    parsed = parse_example(placeholders[sig.examples_alias], sig.feature_spec) if sig.examples_alias else {}
    feeds: dict[str, Tensor] = {}
    for name, feed in sig.feeds.items():
        if feed.feature is None:
            assert feed.alias is not None  # Feed's contract: an input fed as is names its alias
            feeds[name] = placeholders[feed.alias]
        else:
            value = parsed[feed.feature]
            feeds[name] = value if isinstance(value, Tensor) else getattr(value, feed.part)
    outs = onnx_call(sig.onnx_model, feeds, sorted(set(sig.fetches.values())), name="savedmodel")
    proto = bundle_pb2.SignatureDef(method_name=sig.method_name)
    for alias, tensor in placeholders.items():
        proto.inputs[alias].CopyFrom(_spec(tensor, sig.inputs[alias], f"signature {sig.key!r} input {alias!r}"))
    for alias, name in sig.fetches.items():
        proto.outputs[alias].CopyFrom(_spec(outs[name], sig.outputs[alias], f"signature {sig.key!r} output {alias!r}"))
    return proto


def build_bundle_graph(
    signatures: Sequence[ConvertedSignature], source: str, converter: str
) -> tuple[GraphBuilder, bundle_pb2.MetaGraph]:
    """The graph (with the ONNX bodies as assets) and MetaGraph of one imported version."""
    g = GraphBuilder()
    meta = bundle_pb2.MetaGraph(format_version=FORMAT_VERSION, tags=[SERVE_TAG])
    taken: set[str] = set()
    for sig in signatures:
        with g.name_scope(_scope(sig.key, taken)):
            meta.signatures[sig.key].CopyFrom(_signature(g, sig))
    meta.graph.CopyFrom(g.to_proto())
    meta.info["producer"] = "tessera.importers.savedmodel"
    meta.info["source"] = source
    meta.info["converter"] = converter
    return g, meta
