"""Fitted scikit-learn models -> exporter model_fns whose bundles reproduce `predict_proba` / `predict`.

Supported final estimators: LogisticRegression (binary: sigmoid -> [1 - p, p]; multiclass:
softmax), LinearRegression, Ridge, MLPClassifier (binary logistic output or softmax; hidden
activations identity/logistic/tanh/relu), MLPRegressor; in a Pipeline behind StandardScaler,
OneHotEncoder and ColumnTransformer steps (see exporter.converters._sklearn_inputs).

    model = convert(fitted, feature_names=["sepal_length", ...], class_labels=["setosa", ...])
    export_model(base, model.model_fn, model.parsing_receiver_fn())

The model_fn reads either one numeric matrix ``features[input_key]`` ([batch, n], e.g. from a raw
receiver) or one feature per named column ([batch] or [batch, 1], e.g. from a parsing receiver),
so one model serves both kinds of receiver. Its heads are those of exporter.canned: classifiers
give ``serving_default``/``classification`` (scores = probabilities, classes = labels) and
``predict`` (``probabilities`` float32 [batch, n], ``class_ids`` int64 [batch]); regressors give
``serving_default``/``regression`` and ``predict`` (``predictions`` float32 [batch]).
Weights are graph variables (float64: the math is scikit-learn's, in the same precision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline

from exporter import dtypes
from exporter.canned import class_labels as make_labels
from exporter.canned import classifier_heads, regressor_heads
from exporter.dtypes import DType
from exporter.errors import ExportError
from exporter.features import FixedLenFeature
from exporter.graph import GraphBuilder, Tensor
from exporter.ops import core
from exporter.ops import math as tfm
from exporter.outputs import ExportOutput
from exporter.receivers import (
    ReceiverFn,
    build_parsing_serving_input_receiver_fn,
    build_raw_serving_input_receiver_fn,
)

from ._sklearn_inputs import Inputs, apply_step, column_dtypes

_MLP_ACTIVATIONS = {"identity": None, "logistic": tfm.sigmoid, "tanh": tfm.tanh, "relu": tfm.relu}


def _variable(g: GraphBuilder, value: Any, name: str) -> Tensor:
    return g.variable(np.asarray(value, dtype=np.float64), name)


def _affine(g: GraphBuilder, x: Tensor, kernel: Any, bias: Any, name: str) -> Tensor:
    """x @ kernel + bias, with kernel [n, k] and bias [k] as float64 variables."""
    kernel = np.asarray(kernel, np.float64)
    bias = np.asarray(bias, np.float64).reshape(-1)  # LinearRegression's intercept_ may be a scalar
    return tfm.bias_add(tfm.matmul(x, _variable(g, kernel, f"{name}.kernel")), _variable(g, bias, f"{name}.bias"))


def _binary_probabilities(p: Tensor) -> Tensor:
    """[batch, 1] positive-class probability -> [batch, 2] as [1 - p, p] (scikit-learn's order)."""
    one = p.graph.constant(1.0, dtype=dtypes.DOUBLE)
    return core.concat([tfm.sub(one, p), p], axis=1)


def _to_float32(x: Tensor, name: str) -> Tensor:
    return core.cast(x, dtypes.FLOAT, name=name)


class SklearnModel:
    """A converted model: `model_fn` for export_model, and receivers that fit its inputs."""

    def __init__(
        self,
        estimator: Any,
        feature_names: Sequence[str] | None = None,
        input_key: str = "x",
        class_labels: Sequence[str | bytes] | None = None,
    ) -> None:
        pipeline = isinstance(estimator, Pipeline)
        self.steps: list[tuple[str, Any]] = list(estimator.steps) if pipeline else [("model", estimator)]
        self.final = self.steps[-1][1]
        self.n_features = int(getattr(estimator, "n_features_in_", 0)) or None
        if feature_names is None and hasattr(estimator, "feature_names_in_"):
            feature_names = [str(n) for n in estimator.feature_names_in_]
        self.feature_names = tuple(feature_names) if feature_names is not None else None
        if self.feature_names is not None and len(self.feature_names) != (self.n_features or 0):
            raise ExportError(f"{len(self.feature_names)} feature names for {self.n_features} input features")
        self.input_key = input_key
        first = self.steps[0][1] if len(self.steps) > 1 else None
        self.column_dtypes: dict[int, DType] = column_dtypes(first, self.n_features or 0, self.feature_names)
        if self.column_dtypes and self.feature_names is None:
            # Categorical columns are fed one by one, so they need names; scikit-learn's defaults.
            self.feature_names = tuple(f"x{j}" for j in range(self.n_features or 0))
        self.labels: list[bytes] | None = None
        if isinstance(self.final, LogisticRegression | MLPClassifier):
            classes = self.final.classes_
            names = [str(c) for c in classes] if class_labels is None else list(class_labels)
            self.labels = make_labels(len(classes), names)
        elif isinstance(self.final, LinearRegression | Ridge | MLPRegressor):
            if class_labels is not None:
                raise ExportError("class_labels given for a regressor")
        else:
            raise ExportError(f"unsupported scikit-learn estimator {type(self.final).__name__}")

    # -- receivers ------------------------------------------------------------------------------
    def _require_names(self) -> tuple[str, ...]:
        if self.feature_names is None:
            raise ExportError("the model's input columns have no names: pass feature_names=")
        return self.feature_names

    def parse_example_spec(self) -> dict[str, FixedLenFeature]:
        """One required feature per input column (float32, or string/int64 for one-hot columns)."""
        names = self._require_names()
        return {name: FixedLenFeature((1,), self.column_dtypes.get(j, dtypes.FLOAT)) for j, name in enumerate(names)}

    def parsing_receiver_fn(self) -> ReceiverFn:
        return build_parsing_serving_input_receiver_fn(self.parse_example_spec())

    def raw_receiver_fn(self) -> ReceiverFn:
        """`input_key` float32 [batch, n] when every column is numeric, else one [batch] input per column."""
        if not self.column_dtypes and self.n_features:
            return build_raw_serving_input_receiver_fn({self.input_key: (dtypes.FLOAT, (None, self.n_features))})
        names = self._require_names()
        return build_raw_serving_input_receiver_fn(
            {name: (self.column_dtypes.get(j, dtypes.FLOAT), (None,)) for j, name in enumerate(names)}
        )

    # -- the model ------------------------------------------------------------------------------
    def model_fn(self, g: GraphBuilder, features: Mapping[str, Any]) -> dict[str, ExportOutput]:
        src: Inputs | Tensor = Inputs(g, features, self.feature_names, self.input_key)
        for name, step in self.steps[:-1]:
            with g.name_scope(name):
                src = apply_step(step, src, name)
        x = src.matrix() if isinstance(src, Inputs) else src
        with g.name_scope("model"):
            if isinstance(self.final, LogisticRegression | MLPClassifier):
                return self._classifier(g, x)
            return self._regressor(g, x)

    def _classifier(self, g: GraphBuilder, x: Tensor) -> dict[str, ExportOutput]:
        est = self.final
        assert self.labels is not None
        if isinstance(est, LogisticRegression):
            logits = _affine(g, x, np.asarray(est.coef_).T, est.intercept_, "logreg")
            if len(est.classes_) == 2:
                probabilities = _binary_probabilities(tfm.sigmoid(logits))
                # predict() is decision > 0: argmax of [0, decision] (a tie goes to class 0).
                zero = core.broadcast_to_batch(g.constant(np.zeros(1), dtype=dtypes.DOUBLE), logits)
                class_ids = tfm.argmax(core.concat([zero, logits], axis=1), axis=1, name="class_ids")
            else:
                probabilities = tfm.softmax(logits)
                class_ids = tfm.argmax(logits, axis=1, name="class_ids")  # predict() is argmax of the decision function
        else:
            out = self._mlp(g, x)
            if est.out_activation_ == "softmax":
                probabilities = out
            elif est.out_activation_ == "logistic" and est.n_outputs_ == 1:
                probabilities = _binary_probabilities(out)
            else:
                raise ExportError("MLPClassifier: only binary or multiclass (not multilabel) models are supported")
            class_ids = tfm.argmax(probabilities, axis=1, name="class_ids")  # predict() inverts the label binarizer: argmax
        return classifier_heads(_to_float32(probabilities, "probabilities"), class_ids, self.labels)

    def _regressor(self, g: GraphBuilder, x: Tensor) -> dict[str, ExportOutput]:
        est = self.final
        if isinstance(est, MLPRegressor):
            out = self._mlp(g, x)
            single = est.n_outputs_ == 1
        else:
            coef = np.asarray(est.coef_, np.float64)
            out = _affine(g, x, coef.T if coef.ndim == 2 else coef[:, None], est.intercept_, "linear")
            single = coef.ndim == 1  # predict() gives [batch] for a 1-D coef_, [batch, k] for a 2-D one
        predictions = core.reshape(out, (-1,)) if single else out
        return regressor_heads(_to_float32(predictions, "predictions"))

    def _mlp(self, g: GraphBuilder, x: Tensor) -> Tensor:
        est = self.final
        if est.activation not in _MLP_ACTIVATIONS:
            raise ExportError(f"MLP activation {est.activation!r} is not supported")
        last = len(est.coefs_) - 1
        for i, (kernel, bias) in enumerate(zip(est.coefs_, est.intercepts_, strict=True)):
            x = _affine(g, x, kernel, bias, f"mlp.layer{i}")
            activation = _MLP_ACTIVATIONS[est.activation] if i < last else None
            if i == last and est.out_activation_ == "softmax":
                x = tfm.softmax(x)
            elif i == last and est.out_activation_ == "logistic":
                x = tfm.sigmoid(x)
            elif activation is not None:
                x = activation(x)
        return x


def convert(
    estimator: Any,
    *,
    feature_names: Sequence[str] | None = None,
    input_key: str = "x",
    class_labels: Sequence[str | bytes] | None = None,
) -> SklearnModel:
    """Converts a fitted estimator or Pipeline; ExportError names what is not supported."""
    return SklearnModel(estimator, feature_names, input_key, class_labels)
