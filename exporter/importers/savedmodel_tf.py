"""The TensorFlow side of importing a SavedModel: read its signatures, freeze each one, cut it at
its tf.Example parse, convert the rest with tf2onnx, and check the ONNX body against TensorFlow.

This module (with `savedmodel_onnx`, the conversion of a frozen graph, and `savedmodel_cut`) is the
only one that imports tensorflow and tf2onnx; it runs only where a SavedModel is imported
(`tessera import`, or the import subprocess a server starts), never in a serving replica.

Per signature (the SavedModel's MetaGraph tagged "serve"):
1. The SignatureDef as written in saved_model.pb gives what TF Serving reports and checks: the
   method name and, per input and output alias, the dtype and shape.
2. The signature is frozen (variables become constants, lookup tables are read out): a TF2
   SavedModel's concrete function with tf2onnx's loader, a TF1 one (SavedModelBuilder, Estimator)
   in a TF1 session. A tf.Example parse at its start is cut off (`savedmodel_cut`); the graph is
   pruned to what the outputs need.
3. tf2onnx converts the rest. It keeps an op it cannot convert as an unknown node instead of
   failing, so every node of the result is checked against ONNX's operator schemas: one that is not
   an ONNX operator fails the import with its TensorFlow op and node names and the signature's key.
4. The ONNX body is opened with exporter.onnx_model and run on a small synthetic batch (parsed by
   Tessera's own tf.Example parser where the signature parses); TensorFlow runs the original
   signature on the same batch, and the answers must agree. A body that onnxruntime refuses or that
   answers differently is never published.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

import tensorflow as tf  # noqa: E402 - after the TF log level
import tf2onnx  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow.python.ops import lookup_ops  # noqa: E402
from tf2onnx import tf_loader  # noqa: E402
from tf2onnx.tf_utils import get_hash_table_info  # noqa: E402

from exporter import dtypes  # noqa: E402
from exporter.errors import ExportError  # noqa: E402
from exporter.importers.savedmodel_check import ReferenceRefused, check_signature  # noqa: E402
from exporter.importers.savedmodel_onnx import OPSET, TF, convert_frozen_signature  # noqa: E402
from exporter.importers.savedmodel_types import ConvertedSignature  # noqa: E402
from exporter.signature import Shape, TensorInfo  # noqa: E402

# A signature as saved_model.pb declares it: (method name, inputs, outputs).
Declared = tuple[str, dict[str, TensorInfo], dict[str, TensorInfo]]

SERVE_TAG = "serve"


def _shape(proto: TF) -> Shape:
    if proto.unknown_rank:
        return None
    return tuple(None if d.size < 0 else int(d.size) for d in proto.dim)


def _infos(specs: Mapping[str, TF], key: str, kind: str) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for alias, info in specs.items():
        if info.WhichOneof("encoding") != "name":
            raise ExportError(f"signature {key!r} {kind} {alias!r} is a composite tensor, which Tessera cannot serve")
        try:
            dtypes.to_numpy(info.dtype)
        except (KeyError, ValueError):
            raise ExportError(f"signature {key!r} {kind} {alias!r} has dtype {info.dtype}, which Tessera cannot carry") from None
        out[alias] = TensorInfo(info.name, int(info.dtype), _shape(info.tensor_shape))
    return out


def read_signature_defs(version_dir: str) -> dict[str, Declared]:
    """key -> (method name, inputs, outputs) of the serve MetaGraph, as saved_model.pb declares them."""
    path = pathlib.Path(version_dir) / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    metas = [m for m in saved.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
    if not metas:
        raise ExportError(f"{version_dir}: the SavedModel has no MetaGraph tagged {SERVE_TAG!r}")
    out = {}
    for key, sig in metas[0].signature_def.items():
        if key.startswith("__"):  # __saved_model_init_op and friends are not entry points
            continue
        out[key] = (sig.method_name, _infos(sig.inputs, key, "input"), _infos(sig.outputs, key, "output"))
    if not out:
        raise ExportError(f"{version_dir}: the SavedModel has no signatures to serve")
    return out


def _is_tf1(version_dir: str) -> bool:
    """A SavedModel written by TF1's builder (or an Estimator) has no object graph."""
    saved = saved_model_pb2.SavedModel.FromString((pathlib.Path(version_dir) / "saved_model.pb").read_bytes())
    metas = [m for m in saved.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
    return not metas[0].object_graph_def.nodes


def _tf_failure(key: str, what: str, e: Exception) -> ExportError:
    return ExportError(f"signature {key!r}: TensorFlow cannot {what} it: {type(e).__name__}: {str(e).splitlines()[0]}")


def _convert_tf2(version_dir: str, declared: Mapping[str, Declared]) -> list[ConvertedSignature]:
    imported = tf.saved_model.load(version_dir, tags=[SERVE_TAG])
    converted: list[ConvertedSignature] = []
    bodies: dict[bytes, bytes] = {}
    for key in sorted(declared):
        method, inputs, outputs = declared[key]
        if key not in imported.signatures:
            raise ExportError(f"signature {key!r} is in saved_model.pb but TensorFlow does not load it")
        function = imported.signatures[key]
        structured_in = function.structured_input_signature[1]
        if set(structured_in) != set(inputs) or set(function.structured_outputs) != set(outputs):
            raise ExportError(f"signature {key!r}: its function and saved_model.pb disagree on its aliases")
        flat_in = [t.name for t in function.inputs if t.dtype != tf.resource][: len(structured_in)]
        in_names = dict(zip(sorted(structured_in), flat_in, strict=True))
        flat_out = [t.name for t in function.outputs]
        out_names = dict(zip(sorted(function.structured_outputs), flat_out, strict=True))
        # A fresh load for the reference: tf2onnx's freezing rewrites the function's captures.
        original = tf.saved_model.load(version_dir, tags=[SERVE_TAG]).signatures[key]

        def reference(raw: Mapping[str, np.ndarray], original: TF = original) -> dict[str, np.ndarray]:
            try:
                result = original(**{alias: tf.constant(value) for alias, value in raw.items()})
            except (tf.errors.OpError, ValueError, TypeError) as e:
                raise ReferenceRefused(str(e).splitlines()[0]) from None
            return {alias: value.numpy() for alias, value in result.items()}

        try:
            frozen, tables = tf_loader.from_trackable(imported, function, flat_in, flat_out, False)
        except Exception as e:  # noqa: BLE001 - freezing failures come as many types
            raise _tf_failure(key, "freeze", e) from None
        sig = convert_frozen_signature(key, inputs, outputs, frozen, tables, in_names, out_names, method, bodies)
        check_signature(sig, reference)
        converted.append(sig)
    return converted


def _freeze_tf1(sess: TF, inputs: list[str], outputs: list[str]) -> tuple[TF, dict[str, tuple[np.ndarray, ...]]]:
    """tf2onnx's freeze_session, without its TF1-only table export: variables become constants,
    lookup tables (initialized when the SavedModel was loaded) are read out by shared name."""
    graph_def = sess.graph.as_graph_def(add_shapes=True)
    for node in graph_def.node:
        node.device = ""
    graph_def = tf.compat.v1.graph_util.convert_variables_to_constants(
        sess, graph_def, sorted({t.split(":")[0] for t in outputs})
    )
    tables = {}
    with sess.graph.as_default():
        for info in get_hash_table_info(graph_def):
            if info.shared_name is None:
                continue
            handle = lookup_ops.hash_table_v2(info.key_dtype, info.val_dtype, shared_name=info.shared_name)
            keys, values = lookup_ops.lookup_table_export_v2(handle, info.key_dtype, info.val_dtype)
            tables[info.shared_name] = tuple(sess.run([keys, values]))
    with tf.Graph().as_default():  # grappler reads the default graph's collections: not the session's
        return tf_loader.tf_optimize(inputs, outputs, graph_def), tables


def _convert_tf1(version_dir: str, declared: Mapping[str, Declared]) -> list[ConvertedSignature]:
    converted: list[ConvertedSignature] = []
    bodies: dict[bytes, bytes] = {}
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        try:
            tf.compat.v1.saved_model.loader.load(sess, [SERVE_TAG], version_dir)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{version_dir}: TensorFlow cannot load the SavedModel: {e}") from None
        for key in sorted(declared):
            method, inputs, outputs = declared[key]
            in_names = {alias: info.name for alias, info in inputs.items()}
            out_names = {alias: info.name for alias, info in outputs.items()}

            def reference(raw: Mapping[str, np.ndarray], in_names: dict[str, str] = in_names, out_names: dict[str, str] = out_names
            ) -> dict[str, np.ndarray]:
                aliases = sorted(out_names)
                try:
                    values = sess.run([out_names[a] for a in aliases], {in_names[a]: v for a, v in raw.items()})
                except (tf.errors.OpError, ValueError, TypeError) as e:
                    raise ReferenceRefused(str(e).splitlines()[0]) from None
                return dict(zip(aliases, values, strict=True))

            flat_in, flat_out = sorted(set(in_names.values())), sorted(set(out_names.values()))
            try:
                frozen, tables = _freeze_tf1(sess, flat_in, flat_out)
            except Exception as e:  # noqa: BLE001
                raise _tf_failure(key, "freeze", e) from None
            sig = convert_frozen_signature(key, inputs, outputs, frozen, tables, in_names, out_names, method, bodies)
            check_signature(sig, reference)
            converted.append(sig)
    return converted


def convert_saved_model(version_dir: str) -> list[ConvertedSignature]:
    """Every signature of one SavedModel version, converted and checked (see the module docstring)."""
    declared = read_signature_defs(version_dir)
    if _is_tf1(version_dir):
        return _convert_tf1(version_dir, declared)
    return _convert_tf2(version_dir, declared)


def versions() -> str:
    """The versions of the libraries an import used (recorded in the bundle's info)."""
    return f"tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}, opset {OPSET}"
