"""A frozen SavedModel signature to ONNX: cut at its tf.Example parse, pruned, converted by tf2onnx.

`convert_frozen_signature` takes one signature's frozen graph (variables as constants, lookup
tables read out: `savedmodel_tf` freezes TF1 and TF2 SavedModels alike) and its tensor names. A
tf.Example parse at its start is cut off (`savedmodel_cut`: it becomes Tessera's parsing receiver),
the graph is pruned to what the outputs need and tf2onnx converts the rest. tf2onnx keeps an op it
cannot convert as an unknown node instead of failing, so every node of the result is checked
against ONNX's operator schemas: one that is not an ONNX operator fails the import, naming its
TensorFlow op, its node and the signature. Signatures over the same graph share one ONNX body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import onnx
import tensorflow as tf
from tf2onnx.convert import _convert_common  # the CLI's own path, with tables

from exporter.errors import ExportError
from exporter.importers.savedmodel_cut import Cut, cut_parse_example
from exporter.importers.savedmodel_types import ConvertedSignature, Feed
from exporter.signature import Shape, TensorInfo

# TensorFlow's protos (GraphDef, TensorShapeProto, TensorInfo ...) and objects (sessions, concrete
# functions): the tensorflow package ships no type information, so they are Any here.
TF = Any

OPSET = 17


def _quiet() -> None:
    """tf2onnx logs every op it cannot convert at ERROR; the import raises with them instead."""
    for name in [n for n in logging.root.manager.loggerDict if n.startswith(("tf2onnx", "tensorflow"))]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _unconverted(model: onnx.ModelProto) -> list[str]:
    bad = []
    for node in model.graph.node:
        if not onnx.defs.has(node.op_type, node.domain):
            bad.append(f"{node.op_type} (node {node.name!r})")
    return bad


def _declare_output_shapes(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> None:
    """Gives an output tf2onnx could not infer a shape for the shape the SavedModel declares
    (onnx's checker refuses a graph output without one); unknown dimensions stay symbolic."""
    for output in model.graph.output:
        tensor_type = output.type.tensor_type
        shape = shapes.get(output.name)
        if tensor_type.HasField("shape") or shape is None:
            continue
        tensor_type.shape.SetInParent()
        for i, d in enumerate(shape):
            dim = tensor_type.shape.dim.add()
            if d is None:
                dim.dim_param = f"{output.name.split(':')[0]}_dim{i}"
            else:
                dim.dim_value = d


def _convert(
    key: str, graph_def: object, inputs: list[str], outputs: list[str], tables: object, shapes: Mapping[str, Shape]
) -> bytes:
    _quiet()
    try:
        with tf.device("/cpu:0"):
            model, _ = _convert_common(
                # One name for every signature: identical bodies give identical bytes, so signatures
                # that alias one function (Keras: serve, serving_default) share one asset and session.
                graph_def, name="savedmodel", continue_on_error=False, opset=OPSET,
                input_names=inputs, output_names=outputs, initialized_tables=tables,
            )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - tf2onnx raises whatever its handler raised
        raise ExportError(f"signature {key!r}: tf2onnx cannot convert it: {type(e).__name__}: {e}") from None
    _declare_output_shapes(model, shapes)
    bad = _unconverted(model)
    if bad:
        raise ExportError(
            f"signature {key!r}: TensorFlow op(s) with no ONNX conversion: {', '.join(bad)}"
        )
    return model.SerializeToString()


def _prune(graph_def: TF, outputs: list[str]) -> TF:
    return tf.compat.v1.graph_util.extract_sub_graph(graph_def, sorted({o.split(":")[0] for o in outputs}))


def convert_frozen_signature(
    key: str, inputs: dict[str, TensorInfo], outputs: dict[str, TensorInfo], frozen: TF, tables: TF,
    in_names: dict[str, str], out_names: dict[str, str], method: str, converted: dict[bytes, bytes],
) -> ConvertedSignature:
    """Cut, prune and convert one frozen signature graph (tensor names: `in_names`/`out_names`)."""
    cut: Cut | None = cut_parse_example(frozen, key, in_names)
    flat_out = sorted(set(out_names.values()))
    pruned = _prune(cut.graph_def if cut else frozen, flat_out)
    placeholders = {f"{n.name}:0" for n in pruned.node if n.op == "Placeholder"}
    feeds: dict[str, Feed] = {}
    for alias, name in in_names.items():
        if name in placeholders:
            if cut and alias == cut.examples_alias:
                raise ExportError(
                    f"signature {key!r}: the graph reads the serialized examples {alias!r} beyond parsing them "
                    "(only a parse at the start can become Tessera's parsing receiver)"
                )
            feeds[name] = Feed(alias=alias)
    if cut:
        feeds.update({name: feed for name, feed in cut.feeds.items() if name in placeholders})
    if not feeds:
        raise ExportError(f"signature {key!r}: its outputs do not depend on its inputs (a constant model)")
    shapes = {out_names[alias]: info.shape for alias, info in outputs.items()}
    # Signatures over the same graph (an Estimator's serving_default and its head's key) get the
    # same ONNX bytes, so the bundle stores one model and a load opens one session for both.
    same = pruned.SerializeToString(deterministic=True) + repr((sorted(feeds), flat_out, sorted(shapes.items()))).encode()
    if same not in converted:
        converted[same] = _convert(key, pruned, sorted(feeds), flat_out, tables, shapes)
    model = converted[same]
    return ConvertedSignature(
        key=key, method_name=method, inputs=inputs, outputs=outputs, onnx_model=model,
        feeds=dict(sorted(feeds.items())), fetches=dict(out_names),
        examples_alias=cut.examples_alias if cut else None, feature_spec=dict(cut.feature_spec) if cut else {},
    )  # fmt: skip
