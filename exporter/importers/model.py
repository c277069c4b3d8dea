"""`ImportedModel`: an ONNX model, the receivers that feed it, and the heads over its outputs.

What every importer shares. The ONNX model is one graph node (exporter.ops.onnx.onnx_call); the
rest is our own graph, built from the numpy ops:

- inputs (`MatrixInput`, `TensorInput`) say where each ONNX input comes from: a numeric matrix
  ``[batch, n]`` fed either whole (``features[input_key]``, a raw receiver) or one named column at a
  time (``[batch]`` or ``[batch, 1]`` each, as a parsing receiver gives them), or one tensor per
  ONNX input. Values are cast to the ONNX input's dtype in the graph (float32 features into a
  float64 model, int64 ids into int32, ...).
- heads (a `HeadsFn`) turn the ONNX outputs into TF's heads (exporter.outputs, exporter.canned):
  `classifier_heads` (probabilities and the predicted class), `regressor_heads`,
  `clusterer_heads`, or `predict_heads` (every output by name).

`signatures()` pairs them the way `examples/export_models.py` and TF Serving users expect:
``serving_default`` is the Classify/Regress head over the parsing receiver (when the model has one
and its inputs can be parsed), and ``predict`` is Predict over the raw receiver.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exporter import dtypes
from exporter.canned import class_labels as make_labels
from exporter.canned import classifier_heads, regressor_heads
from exporter.dtypes import DType
from exporter.errors import ExportError
from exporter.features import FixedLenFeature
from exporter.graph import GraphBuilder, Tensor
from exporter.ops import categorical, core
from exporter.ops import math as tfm
from exporter.ops.onnx import onnx_call
from exporter.outputs import ExportOutput, PredictOutput
from exporter.receivers import (
    ReceiverFn,
    ServingInputReceiver,
    build_parsing_serving_input_receiver_fn,
    build_raw_serving_input_receiver_fn,
)
from exporter.signature import Shape

_NODE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_NODE_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
HeadsFn = Callable[[GraphBuilder, Mapping[str, Tensor]], dict[str, ExportOutput]]

# The dtype a tf.Example feature carries for values of each kind (float_list, int64_list, bytes_list).
_EXAMPLE_DTYPE = {"f": dtypes.FLOAT, "i": dtypes.INT64, "u": dtypes.INT64, "b": dtypes.INT64, "O": dtypes.STRING}


def example_dtype(dtype: DType) -> DType:
    """The tf.Example feature dtype that carries values of `dtype` (float32, int64 or string)."""
    return _EXAMPLE_DTYPE[dtypes.to_numpy(dtype).kind]


def _cast(x: Tensor, dtype: DType) -> Tensor:
    if x.dtype == dtype:
        return x
    if (x.dtype == dtypes.STRING) != (dtype == dtypes.STRING):
        raise ExportError(f"{x} is fed as {dtypes.name(x.dtype)}, the model reads {dtypes.name(dtype)}")
    return core.cast(x, dtype)


def _feature(features: Mapping[str, Any], key: str) -> Tensor:
    value = features.get(key)
    if not isinstance(value, Tensor):
        raise ExportError(f"the receiver gives no dense feature {key!r} (it gives {sorted(features)})")
    return value


@dataclass(frozen=True)
class MatrixInput:
    """An ONNX input [batch, width]: the matrix ``input_key``, or one numeric feature per column."""

    onnx_name: str
    onnx_dtype: DType
    width: int
    feature_names: tuple[str, ...] | None
    input_key: str = "x"
    raw_dtype: DType | None = None  # default: float32 for a float model, else the model's dtype

    def spec(self) -> dict[str, FixedLenFeature]:
        if self.feature_names is None:
            raise ExportError("the model's input columns have no names: pass feature_names=")
        return {name: FixedLenFeature((1,), example_dtype(self.onnx_dtype)) for name in self.feature_names}

    def raw(self) -> dict[str, tuple[DType, Shape]]:
        # float32, as TF Serving clients send features, whatever precision the model computes in.
        kind = dtypes.FLOAT if self.onnx_dtype in dtypes.FLOATING else self.onnx_dtype
        kind = self.raw_dtype if self.raw_dtype is not None else kind
        return {self.input_key: (kind, (None, self.width))}

    def feed(self, features: Mapping[str, Any]) -> Tensor:
        if self.input_key in features:
            return _cast(_feature(features, self.input_key), self.onnx_dtype)
        if self.feature_names is None:
            raise ExportError(f"the receiver gives no {self.input_key!r} matrix and the columns have no names")
        columns = [core.reshape(_feature(features, n), (-1, 1)) for n in self.feature_names]
        if len({c.dtype for c in columns}) != 1:
            columns = [_cast(c, self.onnx_dtype) for c in columns]
        # One concat, then one cast: fewer steps per request than a cast per column.
        return _cast(columns[0] if len(columns) == 1 else core.concat(columns, axis=1), self.onnx_dtype)


@dataclass(frozen=True)
class TensorInput:
    """An ONNX input fed by one tensor: feature `feature`, of shape [batch, *dims] (`dims` known).

    The raw receiver takes it as `raw_dtype` [batch, *raw_dims]; it is reshaped to the ONNX shape
    (e.g. a column [batch] -> [batch, 1]) and cast to the ONNX dtype.
    """

    onnx_name: str
    onnx_dtype: DType
    dims: tuple[int, ...] | None  # None: not fully known, so it cannot be parsed from tf.Examples
    feature: str
    raw_dtype: DType
    raw_dims: tuple[int | None, ...] | None

    def spec(self) -> dict[str, FixedLenFeature]:
        if self.dims is None:
            raise ExportError(f"ONNX input {self.onnx_name!r} has unknown dims: it cannot be parsed from tf.Examples")
        return {self.feature: FixedLenFeature(self.dims, example_dtype(self.onnx_dtype))}

    def raw(self) -> dict[str, tuple[DType, Shape]]:
        return {self.feature: (self.raw_dtype, None if self.raw_dims is None else (None, *self.raw_dims))}

    def feed(self, features: Mapping[str, Any]) -> Tensor:
        x = _feature(features, self.feature)
        if self.dims is not None and x.shape != (None, *self.dims):
            x = core.reshape(x, (-1, *self.dims))
        return _cast(x, self.onnx_dtype)


ModelInput = MatrixInput | TensorInput


class ImportedModel:
    """An ONNX model with its inputs and heads: `model_fn` for export_model, and its receivers."""

    def __init__(self, onnx_model: bytes, inputs: Sequence[ModelInput], heads: HeadsFn, head: str) -> None:
        self.onnx_model = bytes(onnx_model)
        self.inputs = tuple(inputs)
        self._heads = heads
        self.head = head  # the Classify/Regress head ("classification", "regression") or "predict"

    def parse_example_spec(self) -> dict[str, FixedLenFeature]:
        """The tf.Example features the parsing receiver reads (one per input column)."""
        spec: dict[str, FixedLenFeature] = {}
        for i in self.inputs:
            spec.update(i.spec())
        return spec

    def parsing_receiver_fn(self) -> ReceiverFn:
        return build_parsing_serving_input_receiver_fn(self.parse_example_spec())

    def raw_receiver_fn(self) -> ReceiverFn:
        """Placeholders fed directly (the aliases may be any ONNX name, e.g. ``input:0``)."""
        raw: dict[str, tuple[DType, Shape]] = {}
        for i in self.inputs:
            raw.update(i.raw())
        if all(_NODE_NAME.match(alias) for alias in raw):
            return build_raw_serving_input_receiver_fn(raw)

        def receiver_fn(g: GraphBuilder) -> ServingInputReceiver:
            tensors = {a: g.placeholder(d, s, name=_NODE_CHARS.sub("_", a) or "input") for a, (d, s) in raw.items()}
            return ServingInputReceiver(features=tensors, receiver_tensors=tensors)

        return receiver_fn

    def model_fn(self, g: GraphBuilder, features: Mapping[str, Any]) -> dict[str, ExportOutput]:
        feeds = {i.onnx_name: i.feed(features) for i in self.inputs}
        return self._heads(g, onnx_call(self.onnx_model, feeds, name="onnx_model"))

    def signatures(self) -> dict[str, tuple[ReceiverFn, str]]:
        """``serving_default``: the Classify/Regress head over tf.Examples (Predict over the raw
        receiver if the model has no such head or its inputs cannot be parsed); ``predict``: Predict
        over the raw receiver."""
        raw = self.raw_receiver_fn()
        default: tuple[ReceiverFn, str] = (raw, "predict")
        if self.head != "predict":
            try:
                default = (self.parsing_receiver_fn(), self.head)
            except ExportError:
                pass  # e.g. an image input of unknown size: Predict only
        return {"serving_default": default, "predict": (raw, "predict")}


# -- heads ------------------------------------------------------------------------------------
def _float32(x: Tensor, name: str) -> Tensor:
    if x.dtype not in dtypes.FLOATING:
        raise ExportError(f"{x} is {dtypes.name(x.dtype)}: expected a float output")
    return core.cast(x, dtypes.FLOAT, name=name) if x.dtype != dtypes.FLOAT else x


def _vector(x: Tensor) -> Tensor:
    """[batch] from [batch] or [batch, 1]."""
    return x if x.shape is not None and len(x.shape) == 1 else core.reshape(x, (-1,))


def class_ids_of(g: GraphBuilder, labels: Tensor, classes: Sequence[Any]) -> Tensor:
    """int64 [batch]: the position of each predicted label in `classes` (the model's classes_)."""
    labels = _vector(labels)
    if labels.dtype == dtypes.STRING:
        keys: list[str | bytes | int] = [c if isinstance(c, bytes) else str(c) for c in classes]
    elif labels.dtype in dtypes.INTEGER:
        keys = [int(c) for c in classes]
        labels = _cast(labels, dtypes.INT64)
    else:
        raise ExportError(f"predicted labels are {dtypes.name(labels.dtype)}: expected strings or integers")
    content = categorical.vocabulary_file(keys)
    asset = g.add_asset(f"classes-{hashlib.sha256(content).hexdigest()[:16]}.vocab", content)
    return categorical.vocabulary_lookup(labels, asset, name="class_ids")


def classifier_heads_fn(
    probabilities: str, label: str | None, classes: Sequence[Any], labels: Sequence[bytes]
) -> HeadsFn:
    """TF's classifier heads: scores = output `probabilities`, classes = `labels`; class_ids from
    output `label` (the model's own prediction, looked up in `classes`) or the argmax."""

    def heads(g: GraphBuilder, outputs: Mapping[str, Tensor]) -> dict[str, ExportOutput]:
        p = _float32(outputs[probabilities], "probabilities")
        if p.shape is not None and (len(p.shape) != 2 or p.shape[1] not in (None, len(labels))):
            raise ExportError(f"output {probabilities!r} is {p.shape}: expected [batch, {len(labels)}]")
        ids = class_ids_of(g, outputs[label], classes) if label else tfm.argmax(p, axis=1, name="class_ids")
        return classifier_heads(p, ids, labels)

    return heads


def regressor_heads_fn(output: str) -> HeadsFn:
    """TF's regressor heads over output `output` ([batch] or [batch, 1]; [batch, d]: predict only)."""

    def heads(g: GraphBuilder, outputs: Mapping[str, Tensor]) -> dict[str, ExportOutput]:
        y = outputs[output]
        if y.shape is not None and len(y.shape) == 2 and y.shape[1] == 1:
            y = _vector(y)
        return regressor_heads(_float32(y, "predictions"))

    return heads


def clusterer_heads_fn(label: str, distances: str) -> HeadsFn:
    """Predict: ``cluster_index`` int64 [batch] (predict()) and ``distances`` float32 [batch, k]."""

    def heads(g: GraphBuilder, outputs: Mapping[str, Tensor]) -> dict[str, ExportOutput]:
        index = _cast(_vector(outputs[label]), dtypes.INT64)
        return {"predict": PredictOutput({"cluster_index": index, "distances": _float32(outputs[distances], "distances")})}

    return heads


def predict_heads_fn(aliases: Mapping[str, str] | None = None) -> HeadsFn:
    """Predict over every output, keyed by `aliases` (ONNX name -> alias; default the ONNX names)."""

    def heads(g: GraphBuilder, outputs: Mapping[str, Tensor]) -> dict[str, ExportOutput]:
        named = {(aliases or {}).get(name, name): t for name, t in outputs.items()}
        return {"predict": PredictOutput(named)}

    return heads


def with_outputs(heads_fn: HeadsFn) -> HeadsFn:
    """`heads_fn`, with every ONNX output also in the Predict head under its own name."""

    def heads(g: GraphBuilder, outputs: Mapping[str, Tensor]) -> dict[str, ExportOutput]:
        made = heads_fn(g, outputs)
        predict = made.get("predict")
        if isinstance(predict, PredictOutput):
            made["predict"] = PredictOutput({**outputs, **predict.outputs})
        return made

    return heads


def string_labels(classes: np.ndarray | Sequence[Any], class_labels: Sequence[str | bytes] | None) -> list[bytes]:
    """The label of each class: `class_labels`, else str() of each of the model's classes."""
    names = [str(c) for c in classes] if class_labels is None else list(class_labels)
    try:
        return make_labels(len(classes), names)
    except ValueError as e:
        raise ExportError(str(e)) from None
