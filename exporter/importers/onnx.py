"""Any ONNX file (torch.onnx.export, tf2onnx, skl2onnx, ...) -> a bundle with the heads you name.

    model = import_onnx("mlp.onnx", classify="probs", class_labels=["cat", "dog"],
                        feature_names=["f0", "f1", ...])      # optional: see below
    export_model(base, model.model_fn, None, signatures=model.signatures())

or, on the command line, ``tessera export-onnx mlp.onnx BASE --classify probs --class-labels cat,dog``.

Inputs. The raw receiver takes each ONNX input as the graph declares it (name, dtype, shape; dim
0 the batch): Predict over it is what Triton serves. The parsing receiver (tf.Examples) reads one
feature per ONNX input, named like it, with the input's shape beyond the batch (it must be fully
known) and float32 / int64 / bytes values cast to the input's dtype; or, with `feature_names`, a
model whose one input is a matrix [batch, n] reads n scalar features by those names (as the
scikit-learn importer does; the raw receiver then takes the matrix as ``input_key``).

Heads. Predict always: every ONNX output under its own name. `classify=OUTPUT` adds Classify
(scores = that output, float [batch, k], cast to float32; classes = `class_labels`, default "0" ..
"k-1") and Predict's ``probabilities`` and ``class_ids`` (its argmax); `regress=OUTPUT` adds Regress
over that output ([batch] or [batch, 1]) and Predict's ``predictions``. `serving_default` is the
Classify/Regress head over tf.Examples when there is one and the inputs can be parsed, else Predict.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from exporter import dtypes
from exporter.errors import ExportError, GraphError
from exporter.importers.model import (
    HeadsFn,
    ImportedModel,
    MatrixInput,
    ModelInput,
    TensorInput,
    classifier_heads_fn,
    predict_heads_fn,
    regressor_heads_fn,
    string_labels,
    with_outputs,
)
from exporter.signature import TensorInfo


class OnnxFileModel(ImportedModel):
    """An imported ONNX file: `model_fn`, receivers, `signatures()`; its ONNX inputs and outputs."""

    def __init__(
        self,
        model: bytes,
        *,
        feature_names: Sequence[str] | None = None,
        input_key: str | None = None,
        classify: str | None = None,
        class_labels: Sequence[str | bytes] | None = None,
        regress: str | None = None,
    ) -> None:
        from exporter.ops.onnx import model_infos

        try:
            self.onnx_inputs, self.onnx_outputs = model_infos(model)
        except GraphError as e:
            raise ExportError(str(e)) from None
        if classify and regress:
            raise ExportError("name one head: classify= or regress=, not both")
        for name in (classify, regress):
            if name and name not in self.onnx_outputs:
                raise ExportError(f"the model has no output {name!r}; its outputs: {', '.join(self.onnx_outputs)}")
        self.feature_names = tuple(feature_names) if feature_names is not None else None
        inputs = self._inputs(input_key)
        self.labels: list[bytes] | None = None
        heads: HeadsFn
        if classify:
            shape = self.onnx_outputs[classify].shape
            k = shape[1] if shape is not None and len(shape) == 2 else None
            if class_labels is None and k is None:
                raise ExportError(f"output {classify!r} is {shape}: give class_labels= (its size is not known)")
            self.labels = string_labels(range(k or len(class_labels or ())), class_labels)
            heads, head = with_outputs(classifier_heads_fn(classify, None, range(len(self.labels)), self.labels)), "classification"
        elif regress:
            shape = self.onnx_outputs[regress].shape
            if shape is not None and not (len(shape) == 1 or (len(shape) == 2 and shape[1] in (1, None))):
                raise ExportError(f"output {regress!r} is {shape}: a regression output is [batch] or [batch, 1]")
            heads, head = with_outputs(regressor_heads_fn(regress)), "regression"
        else:
            if class_labels is not None:
                raise ExportError("class_labels needs classify=OUTPUT")
            heads, head = predict_heads_fn(), "predict"
        super().__init__(model, inputs, heads, head)

    def _inputs(self, input_key: str | None) -> list[ModelInput]:
        if self.feature_names is not None:
            if len(self.onnx_inputs) != 1:
                raise ExportError(f"feature_names= needs a model with one input; it has {', '.join(self.onnx_inputs)}")
            (info,) = self.onnx_inputs.values()
            if info.shape is None or len(info.shape) != 2 or info.shape[1] not in (None, len(self.feature_names)):
                raise ExportError(f"feature_names= needs one [batch, {len(self.feature_names)}] input; "
                                  f"{info.name!r} is {info.shape}")  # fmt: skip
            return [MatrixInput(info.name, info.dtype, len(self.feature_names), self.feature_names,
                                input_key or info.name, raw_dtype=info.dtype)]  # fmt: skip
        if input_key is not None:
            raise ExportError("input_key= names the matrix input of feature_names=")
        return [_tensor_input(info) for info in self.onnx_inputs.values()]


def _tensor_input(info: TensorInfo) -> TensorInput:
    if info.shape is None or not info.shape:
        raise ExportError(f"ONNX input {info.name!r} has no batch dimension (shape {info.shape})")
    if dtypes.to_numpy(info.dtype).kind not in "fiubO":
        raise ExportError(f"ONNX input {info.name!r} is {dtypes.name(info.dtype)}: not a type a request carries")
    rest = info.shape[1:]
    sizes = tuple(int(d) for d in rest if d is not None)
    known = sizes if len(sizes) == len(rest) else None
    return TensorInput(info.name, info.dtype, known, info.name, info.dtype, rest)


def read_model(model: bytes | str | os.PathLike[str]) -> bytes:
    """The model's bytes: given as bytes, or read from a local .onnx file."""
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    path = pathlib.Path(model)
    if not path.is_file():
        raise ExportError(f"no ONNX file at {path}")
    return path.read_bytes()


def import_onnx(
    model: bytes | str | os.PathLike[str],
    *,
    feature_names: Sequence[str] | None = None,
    input_key: str | None = None,
    classify: str | None = None,
    class_labels: Sequence[str | bytes] | None = None,
    regress: str | None = None,
) -> OnnxFileModel:
    """Wraps an ONNX model (bytes or a path) with receivers and heads; see the module docstring.

    ExportError if the model does not open (exporter.onnx_model checks it: it parses, its opsets
    are supported, it has no external data), or a named output or input does not fit.
    """
    return OnnxFileModel(
        read_model(model), feature_names=feature_names, input_key=input_key,
        classify=classify, class_labels=class_labels, regress=regress,
    )  # fmt: skip
