"""Fitted scikit-learn models -> bundles, through skl2onnx: every estimator and pipeline it converts.

    model = convert(fitted, feature_names=["sepal_length", ...], class_labels=["setosa", ...])
    export_model(base, model.model_fn, None, signatures=model.signatures())

skl2onnx turns the model into ONNX (classifiers without ZipMap, so probabilities are one tensor);
the bundle runs it in one ONNX node (exporter.ops.onnx) between our receivers and heads
(exporter.importers.model). What the ONNX model reads:

- all-numeric models: one matrix [batch, n], computed in float64 where onnxruntime has float64
  kernels for every step (linear models, SVC, neighbours, MLPs, scalers, imputers), else float32
  (tree ensembles, SVR: as scikit-learn's own trees compare float32 features);
- models with one-hot or ordinal encoded columns: one input per column ([batch, 1], string or int64
  for the encoded columns, float for the others), as skl2onnx's ColumnTransformer reads them.

So the model_fn reads either the matrix ``features[input_key]`` ([batch, n], a raw receiver) or one
feature per named column ([batch] or [batch, 1], a parsing receiver). Heads (exporter.canned):
classifiers with predict_proba give ``serving_default``/``classification`` (scores = probabilities,
classes = labels) and ``predict`` (``probabilities`` float32 [batch, n], ``class_ids`` int64
[batch]: the class predict() returns, as an index into classes_); classifiers without it
(SVC(probability=False)) give ``classification`` with the predicted class only and ``predict``
(``class_ids``, ``decision``); regressors ``serving_default``/``regression`` and ``predict``
(``predictions`` float32 [batch]); clusterers ``predict`` (``cluster_index``, ``distances``);
transformers ``predict`` (``outputs``). A model skl2onnx does not convert raises ExportError with
skl2onnx's own reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

from exporter import dtypes
from exporter.dtypes import DType
from exporter.errors import ExportError, GraphError
from exporter.graph import GraphBuilder, Tensor
from exporter.importers.model import (
    HeadsFn,
    ImportedModel,
    MatrixInput,
    ModelInput,
    TensorInput,
    class_ids_of,
    classifier_heads_fn,
    clusterer_heads_fn,
    predict_heads_fn,
    regressor_heads_fn,
    string_labels,
)
from exporter.ops import core, embedding
from exporter.outputs import ClassificationOutput, ExportOutput, PredictOutput

ONNX_INPUT = "x"  # the ONNX input of an all-numeric model


def _category_dtype(categories: np.ndarray, where: str) -> DType:
    """STRING for str categories, INT64 for integer ones; anything else cannot be fed by name."""
    values = [v for v in categories if not (isinstance(v, float) and np.isnan(v))]
    if values and all(isinstance(v, str) for v in values):
        return dtypes.STRING
    if values and all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) for v in values):
        return dtypes.INT64
    raise ExportError(f"{where}: categories {values!r} are neither all strings nor all integers")


def _column_indices(columns: Any, n: int, names: tuple[str, ...] | None) -> list[int]:
    if not isinstance(columns, str):
        try:  # integer indices, a boolean mask or a slice
            return [int(j) for j in np.atleast_1d(np.arange(n)[columns])]
        except (IndexError, TypeError, ValueError):
            pass  # column names
    keys = [columns] if isinstance(columns, str) else list(columns)
    if names is None or not all(k in names for k in keys):
        raise ExportError(f"ColumnTransformer columns {columns!r} do not name input columns {names}")
    return [names.index(k) for k in keys]


def column_dtypes(step: Any, n: int, names: tuple[str, ...] | None) -> dict[int, DType]:
    """The dtype each input column must be fed in, where it is not a number (encoded categories)."""
    if isinstance(step, Pipeline):
        return column_dtypes(step.steps[0][1], n, names) if step.steps else {}
    if isinstance(step, OneHotEncoder | OrdinalEncoder):
        return {j: _category_dtype(c, f"{type(step).__name__} column {j}") for j, c in enumerate(step.categories_)}
    if isinstance(step, ColumnTransformer):
        out: dict[int, DType] = {}
        for _, transformer, columns in step.transformers_:
            indices = _column_indices(columns, n, names)
            sub = None if names is None else tuple(names[j] for j in indices)
            for k, dtype in column_dtypes(transformer, len(indices), sub).items():
                out[indices[k]] = dtype
        return out
    return {}


@contextlib.contextmanager
def _protobuf7_attributes() -> Iterator[None]:
    """skl2onnx 1.20 passes Python bools in integer-list node attributes (HistGradientBoosting's
    nodes_missing_value_tracks_true); protobuf 7, which this project needs, refuses them. While we
    convert, integer lists get ints: the same values, the type protobuf asks for."""
    from skl2onnx.common import _container

    original = getattr(_container, "make_node", None)
    if original is None:  # a skl2onnx that builds nodes some other way: nothing to adapt
        yield
        return

    def make_node(*args: Any, **attrs: Any) -> Any:
        fixed = {
            k: [int(x) if isinstance(x, bool | np.bool_) else x for x in v] if isinstance(v, list) else v
            for k, v in attrs.items()
        }
        return original(*args, **fixed)

    _container.make_node = make_node
    try:
        yield
    finally:
        _container.make_node = original


def _to_onnx(estimator: Any, initial_types: list[tuple[str, Any]], final: Any) -> bytes:
    from skl2onnx import convert_sklearn

    options = {id(final): {"zipmap": False}} if is_classifier(final) else None
    with _protobuf7_attributes():
        try:
            proto = convert_sklearn(estimator, initial_types=initial_types, options=options)
        except NameError as e:  # a classifier without probabilities has no ZipMap to turn off
            if options is None or "'zipmap'" not in str(e):
                raise
            proto = convert_sklearn(estimator, initial_types=initial_types)
    return proto.SerializeToString()


_FLOAT32_MODULES = (
    "sklearn.tree", "sklearn.ensemble._forest", "sklearn.ensemble._gb",
    "sklearn.ensemble._hist_gradient_boosting", "sklearn.ensemble._iforest",
)  # fmt: skip


def _compares_float32(final: Any) -> bool:
    """scikit-learn's tree models cast their input to float32 before comparing with thresholds."""
    return type(final).__module__.startswith(_FLOAT32_MODULES)


def _with_float32_final(estimator: Any) -> Any:
    """The same fitted steps, with a cast to float32 in front of the final estimator."""
    from skl2onnx.sklapi import CastTransformer

    steps = list(estimator.steps) if isinstance(estimator, Pipeline) else [("model", estimator)]
    cast = CastTransformer(dtype=np.float32).fit(np.zeros((1, 1)))
    return Pipeline([*steps[:-1], ("tessera_float32", cast), steps[-1]])


def _opens(model: bytes) -> str | None:
    """None if onnxruntime opens `model` (exporter.onnx_model checks it), else why not."""
    from exporter.ops.onnx import model_infos

    try:
        model_infos(model)
    except GraphError as e:
        return str(e)
    return None


class SklearnModel(ImportedModel):
    """A converted estimator: `model_fn` for export_model, receivers that fit its inputs, signatures."""

    def __init__(
        self,
        estimator: Any,
        feature_names: Sequence[str] | None = None,
        input_key: str = "x",
        class_labels: Sequence[str | bytes] | None = None,
    ) -> None:
        steps = list(estimator.steps) if isinstance(estimator, Pipeline) else [("model", estimator)]
        final = steps[-1][1]
        self.n_features = int(getattr(estimator, "n_features_in_", 0)) or None
        if self.n_features is None:
            raise ExportError(f"{type(estimator).__name__} is not fitted (no n_features_in_)")
        if feature_names is None and hasattr(estimator, "feature_names_in_"):
            feature_names = [str(n) for n in estimator.feature_names_in_]
        self.feature_names = tuple(feature_names) if feature_names is not None else None
        if self.feature_names is not None and len(self.feature_names) != self.n_features:
            raise ExportError(f"{len(self.feature_names)} feature names for {self.n_features} input features")
        self.input_key = input_key
        first = steps[0][1] if len(steps) > 1 else None
        self.column_dtypes: dict[int, DType] = column_dtypes(first, self.n_features, self.feature_names)
        if self.column_dtypes and self.feature_names is None:
            # Encoded columns are fed one by one, so they need names; scikit-learn's defaults.
            self.feature_names = tuple(f"x{j}" for j in range(self.n_features))
        self.labels: list[bytes] | None = None
        if is_classifier(final):
            self.labels = string_labels(final.classes_, class_labels)
        elif class_labels is not None:
            raise ExportError("class_labels given for a model that is not a classifier")
        onnx_model, inputs = self._convert(estimator, final)
        super().__init__(onnx_model, inputs, *self._choose_heads(estimator, final, onnx_model))

    def _convert(self, estimator: Any, final: Any) -> tuple[bytes, list[ModelInput]]:
        """The ONNX model, in the most precise form onnxruntime runs: float64 throughout; else
        float64 up to the final estimator, whose input is cast to float32 (what scikit-learn's trees
        do to the scaled values: so a threshold compares the same number); else float32."""
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

        attempts = [(DoubleTensorType, False), (DoubleTensorType, True), (FloatTensorType, False)]
        if _compares_float32(final):
            # Trees compare float32 features with their thresholds: the same cast, where it happens.
            attempts = attempts[1:]
        reasons = []
        for number, float32_final in attempts:
            types, inputs = self._onnx_inputs(number)
            try:
                model = _to_onnx(_with_float32_final(estimator) if float32_final else estimator, types, final)
            except Exception as e:  # noqa: BLE001 - skl2onnx raises RuntimeError, NameError, ...
                reasons.append(f"{type(e).__name__}: {e}")
                continue
            why = _opens(model)
            if why is None:
                return model, inputs
            reasons.append(why)  # e.g. no float64 tree kernels in onnxruntime
        raise ExportError(f"skl2onnx cannot convert {type(estimator).__name__}: {reasons[-1]}")

    def _onnx_inputs(self, number: Any) -> tuple[list[tuple[str, Any]], list[ModelInput]]:
        """skl2onnx's initial types and our inputs: one matrix, or one column each when encoded."""
        from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType, StringTensorType

        kind = dtypes.DOUBLE if number is DoubleTensorType else dtypes.FLOAT
        if not self.column_dtypes:
            n = self.n_features or 0
            return [(ONNX_INPUT, number([None, n]))], [
                MatrixInput(ONNX_INPUT, kind, n, self.feature_names, self.input_key)
            ]
        assert self.feature_names is not None
        types: list[tuple[str, Any]] = []
        inputs: list[ModelInput] = []
        for j, name in enumerate(self.feature_names):
            fed = self.column_dtypes.get(j)
            tensor_type = {dtypes.STRING: StringTensorType, dtypes.INT64: Int64TensorType}.get(fed or kind, number)
            types.append((name, tensor_type([None, 1])))
            inputs.append(TensorInput(name, fed or kind, (1,), name, fed or dtypes.FLOAT, ()))
        return types, inputs

    # Not `_heads`: ImportedModel keeps the chosen heads function under that name.
    def _choose_heads(self, estimator: Any, final: Any, model: bytes) -> tuple[HeadsFn, str]:
        from exporter.ops.onnx import model_infos

        outputs = list(model_infos(model)[1])
        if is_classifier(final):
            assert self.labels is not None
            label, scores = outputs[0], outputs[1]
            if hasattr(estimator, "predict_proba"):
                return classifier_heads_fn(scores, label, final.classes_, self.labels), "classification"
            return _decision_heads_fn(label, scores, final.classes_, self.labels), "classification"
        if is_regressor(final):
            return regressor_heads_fn(outputs[0]), "regression"
        if hasattr(final, "cluster_centers_") and len(outputs) == 2:
            return clusterer_heads_fn(outputs[0], outputs[1]), "predict"
        return predict_heads_fn({outputs[0]: "outputs"} if len(outputs) == 1 else None), "predict"


def _decision_heads_fn(label: str, decision: str, classes: Sequence[Any], labels: Sequence[bytes]) -> HeadsFn:
    """A classifier without predict_proba: Classify gives the predicted class ([batch, 1]); Predict
    its index (``class_ids``) and the decision function (``decision``)."""

    def heads(g: GraphBuilder, outputs: Mapping[str, Tensor]) -> dict[str, ExportOutput]:
        ids = class_ids_of(g, outputs[label], classes)
        names = g.constant(np.array(list(labels), dtype=object), name="class_labels")
        predicted = core.reshape(embedding.gather(names, ids), (-1, 1), name="classes")
        head = ClassificationOutput(classes=predicted)
        predict = PredictOutput({"class_ids": ids, "decision": outputs[decision]})
        return {"serving_default": head, "classification": head, "predict": predict}

    return heads


def convert(
    estimator: Any,
    *,
    feature_names: Sequence[str] | None = None,
    input_key: str = "x",
    class_labels: Sequence[str | bytes] | None = None,
) -> SklearnModel:
    """Converts a fitted estimator or Pipeline; ExportError names what is not supported and why."""
    return SklearnModel(estimator, feature_names, input_key, class_labels)
