"""The parse-example cut: a frozen signature graph that starts with `tf.io.parse_example` is split
into Tessera's parsing receiver (a feature spec) and the graph after it (what becomes ONNX).

ONNX has no tf.Example parser: tf2onnx leaves a ParseExampleV2 node in its output as an unknown
op, and onnxruntime refuses the file. So the ParseExampleV2 (or TF1's ParseExample) node is taken
out of the graph: its keys, dense shapes and dense defaults (constants in a frozen graph) become a
`features.FixedLenFeature` / `VarLenFeature` spec, and each of its outputs the rest of the graph
reads becomes a Placeholder, fed at serving time by Tessera's own parser (exporter.features, which
matches tf.io.parse_example). A `tf.io.SparseFeature` needs no special case: TF parses it as two
var-len lists and assembles the SparseTensor with ordinary ops after the parse, which stay in the
ONNX body.

Refused, with the signature's key and the reason: a parse whose serialized input is not a
signature input (through Identity nodes), ragged features, FixedLenSequenceFeature (a dense shape
with an unknown dimension), two parse nodes on different inputs, and a graph that still reads the
serialized examples after the cut.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import graph_pb2, tensor_shape_pb2, types_pb2
from tensorflow.python.framework import tensor_util

from exporter.errors import ExportError
from exporter.features import FeatureSpec, FixedLenFeature, VarLenFeature
from exporter.importers.savedmodel_types import Feed

PARSE_OPS = ("ParseExampleV2", "ParseExample")
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class Cut:
    """A graph with its parse node replaced by placeholders, and what replaces the parse."""

    graph_def: graph_pb2.GraphDef
    examples_alias: str  # the signature input holding the serialized tf.Examples
    feature_spec: dict[str, FeatureSpec]
    feeds: dict[str, Feed]  # placeholder tensor name -> parsed feature part


def _base(tensor: str) -> tuple[str, int]:
    name, _, port = tensor.lstrip("^").partition(":")
    return name, int(port or 0)


def _source(nodes: Mapping[str, graph_pb2.NodeDef], tensor: str) -> graph_pb2.NodeDef:
    """The node a tensor comes from, looking through Identity nodes."""
    node = nodes[_base(tensor)[0]]
    while node.op in ("Identity", "IdentityN", "StopGradient") and node.input:
        node = nodes[_base(node.input[0])[0]]
    return node


def _constant(nodes: Mapping[str, graph_pb2.NodeDef], tensor: str, key: str, what: str) -> np.ndarray:
    node = _source(nodes, tensor)
    if node.op != "Const":
        raise ExportError(
            f"signature {key!r}: the {what} of the tf.Example parse is computed ({node.op} {node.name!r}), "
            "not a constant; only a parse with a fixed feature spec can become Tessera's parsing receiver"
        )
    return tensor_util.MakeNdarray(node.attr["value"].tensor)


def _texts(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def _dims(shape: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...]:
    return tuple(int(d.size) for d in shape.dim)


@dataclass(frozen=True)
class _Parse:
    """One parse node read: its keys and types, and the flat output index of each part."""

    serialized: str
    spec: dict[str, FeatureSpec]
    outputs: dict[int, tuple[str, str, int, tuple[int | None, ...]]]  # index -> (key, part, dtype, shape)


def _read_parse(nodes: Mapping[str, graph_pb2.NodeDef], node: graph_pb2.NodeDef, key: str) -> _Parse:
    attr = node.attr
    if node.op == "ParseExampleV2":
        num_sparse = int(attr["num_sparse"].i)
        if attr["ragged_value_types"].list.type:
            raise ExportError(f"signature {key!r}: the tf.Example parse has ragged features, which Tessera cannot parse")
        sparse_keys = _texts(_constant(nodes, node.input[2], key, "sparse keys"))
        dense_keys = _texts(_constant(nodes, node.input[3], key, "dense keys"))
        defaults = list(node.input[5 : 5 + len(dense_keys)])
    else:  # TF1's ParseExample: serialized, names, sparse_keys[Nsparse], dense_keys[Ndense], dense_defaults
        num_sparse, num_dense = int(attr["Nsparse"].i), int(attr["Ndense"].i)
        sparse_keys = [_texts(_constant(nodes, t, key, "sparse keys"))[0] for t in node.input[2 : 2 + num_sparse]]
        start = 2 + num_sparse
        dense_keys = [_texts(_constant(nodes, t, key, "dense keys"))[0] for t in node.input[start : start + num_dense]]
        defaults = list(node.input[start + num_dense : start + 2 * num_dense])
    sparse_types = list(attr["sparse_types"].list.type)
    dense_types = list(attr["Tdense"].list.type)
    dense_shapes = [_dims(s) for s in attr["dense_shapes"].list.shape]
    if len(sparse_keys) != num_sparse or not (len(dense_keys) == len(dense_types) == len(dense_shapes) == len(defaults)):
        raise ExportError(f"signature {key!r}: the tf.Example parse node {node.name!r} is malformed")
    spec: dict[str, FeatureSpec] = {}
    outputs: dict[int, tuple[str, str, int, tuple[int | None, ...]]] = {}
    try:
        for i, (name, dtype) in enumerate(zip(sparse_keys, sparse_types, strict=True)):
            spec[name] = VarLenFeature(int(dtype))
            outputs[i] = (name, "indices", types_pb2.DT_INT64, (None, 2))
            outputs[num_sparse + i] = (name, "values", int(dtype), (None,))
            outputs[2 * num_sparse + i] = (name, "dense_shape", types_pb2.DT_INT64, (2,))
        for i, (name, dtype, shape, default) in enumerate(zip(dense_keys, dense_types, dense_shapes, defaults, strict=True)):
            if any(d < 0 for d in shape):
                raise ExportError(
                    f"signature {key!r}: feature {name!r} is a FixedLenSequenceFeature (shape {list(shape)}), "
                    "which Tessera's parser does not support; use a VarLenFeature"
                )
            value = _constant(nodes, default, key, f"default of feature {name!r}")
            spec[name] = FixedLenFeature(shape, int(dtype), None if value.size == 0 else value)
            outputs[3 * num_sparse + i] = (name, "dense", int(dtype), (None, *shape))
    except ValueError as e:  # a dtype or default our features module refuses
        raise ExportError(f"signature {key!r}: the tf.Example parse cannot be served: {e}") from None
    if len(spec) != len(sparse_keys) + len(dense_keys):
        raise ExportError(f"signature {key!r}: a feature is parsed twice by {node.name!r}")
    return _Parse(node.input[0], spec, outputs)


def _placeholder(graph: graph_pb2.GraphDef, name: str, dtype: int, shape: tuple[int | None, ...]) -> None:
    node = graph.node.add(name=name, op="Placeholder")
    node.attr["dtype"].type = dtype
    for d in shape:
        node.attr["shape"].shape.dim.add(size=-1 if d is None else d)


def cut_parse_example(graph_def: graph_pb2.GraphDef, key: str, inputs: Mapping[str, str]) -> Cut | None:
    """Cuts `graph_def` (a frozen signature) at its tf.Example parse; None if it has none.

    `inputs` maps the signature's input aliases to their tensor names in the graph.
    """
    nodes = {n.name: n for n in graph_def.node}
    parses = [n for n in graph_def.node if n.op in PARSE_OPS]
    if not parses:
        return None
    by_tensor = {_base(t): alias for alias, t in inputs.items()}
    read = [_read_parse(nodes, n, key) for n in parses]
    sources = {(_source(nodes, p.serialized).name, 0) for p in read}
    if len(sources) != 1 or next(iter(sources)) not in by_tensor:
        raise ExportError(
            f"signature {key!r}: the tf.Example parse must read serialized examples fed as one signature input; "
            f"it reads {sorted(s for s, _ in sources)}"
        )
    examples_alias = by_tensor[next(iter(sources))]
    spec: dict[str, FeatureSpec] = {}
    for p in read:
        for name, feature in p.spec.items():
            if name in spec and spec[name] != feature:
                raise ExportError(f"signature {key!r}: feature {name!r} is parsed twice with different specs")
            spec[name] = feature

    cut = graph_pb2.GraphDef()
    cut.versions.CopyFrom(graph_def.versions)
    cut.library.CopyFrom(graph_def.library)
    replaced: dict[tuple[str, int], str] = {}
    feeds: dict[str, Feed] = {}

    def placeholder_for(feature: str, part: str, dtype: int, shape: tuple[int | None, ...]) -> str:
        name = f"tessera_parsed/{_SAFE.sub('_', feature)}_{len(feeds)}/{part}"
        _placeholder(cut, name, dtype, shape)
        feeds[f"{name}:0"] = Feed(feature=feature, part=part)
        return f"{name}:0"

    parse_names = {n.name for n in parses}
    for node in graph_def.node:
        if node.name in parse_names:
            continue
        copy = cut.node.add()
        copy.CopyFrom(node)
        for i, tensor in enumerate(copy.input):
            source = _base(tensor)
            if source[0] not in parse_names or tensor.startswith("^"):
                continue
            if source not in replaced:
                parse = read[[n.name for n in parses].index(source[0])]
                if source[1] not in parse.outputs:
                    raise ExportError(f"signature {key!r}: {node.name!r} reads an unknown output of the parse")
                replaced[source] = placeholder_for(*parse.outputs[source[1]])
            copy.input[i] = replaced[source]
    # Control dependencies on the parse (rare) are dropped with it: the parse has no side effect.
    for node in cut.node:
        kept = [t for t in node.input if not (t.startswith("^") and _base(t)[0] in parse_names)]
        del node.input[:]
        node.input.extend(kept)
    return Cut(cut, examples_alias, spec, feeds)
