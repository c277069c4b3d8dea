"""Canned models from given weights, like TF's canned Estimators, ready for `export_model`.

`LinearClassifier`, `LinearRegressor`, `DNNClassifier` and `DNNRegressor` are built over feature
columns (exporter.feature_columns). Each has a `model_fn(g, features)` returning TF's heads:

- classifiers: ``serving_default`` and ``classification`` (ClassificationOutput: ``scores`` =
  probabilities [batch, n], ``classes`` = the labels [batch, n], the same row for every example),
  ``predict`` (logits, probabilities, class_ids int64 [batch], classes string [batch]; a binary
  classifier adds ``logistic``) and, for a binary classifier, ``regression`` (the logistic);
- regressors: ``serving_default`` and ``regression`` (RegressionOutput of the prediction [batch]),
  ``predict`` (``predictions`` [batch]). A regressor with label_dimension > 1 has only ``predict``
  (``predictions`` [batch, label_dimension]).

Weights: a linear model takes `weights[column.name]` of shape [width, logits_dim] (width = the
column's num_buckets for a categorical column, its dimension otherwise) and `bias` [logits_dim];
categorical columns are combined sparsely with "sum", as TF's linear model does. A DNN takes one
(kernel, bias) pair per hidden layer and one for the logits layer, over `input_layer(columns)`.
logits_dim is 1 for a binary classifier (sigmoid) and n_classes otherwise (softmax).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exporter.feature_columns import (
    CategoricalColumn,
    DenseColumn,
    FeatureColumn,
    dense_columns,
    input_layer,
    safe_name,
    sorted_columns,
)
from exporter.graph import GraphBuilder, Tensor
from exporter.ops import core, embedding
from exporter.ops import math as tfm
from exporter.outputs import ClassificationOutput, ExportOutput, PredictOutput, RegressionOutput

ACTIVATIONS = {"relu": tfm.relu, "tanh": tfm.tanh, "sigmoid": tfm.sigmoid}


def class_labels(n_classes: int, label_vocabulary: Sequence[str | bytes] | None) -> list[bytes]:
    """The class label strings: the vocabulary, or "0" .. "n-1" as TF's heads use by default."""
    if label_vocabulary is None:
        return [str(i).encode() for i in range(n_classes)]
    labels = [v.encode() if isinstance(v, str) else bytes(v) for v in label_vocabulary]
    if len(labels) != n_classes or len(set(labels)) != n_classes:
        raise ValueError(f"label_vocabulary must hold {n_classes} distinct labels, got {label_vocabulary!r}")
    return labels


def classifier_heads(
    probabilities: Tensor,
    class_ids: Tensor,
    labels: Sequence[bytes],
    extra_predictions: Mapping[str, Tensor] | None = None,
) -> dict[str, ExportOutput]:
    """TF's classifier heads over float32 probabilities [batch, n] and int64 class_ids [batch]."""
    g = probabilities.graph
    label_row = g.constant(np.array(list(labels), dtype=object), name="class_labels")
    classes = core.broadcast_to_batch(label_row, probabilities, name="classes")
    head = ClassificationOutput(scores=probabilities, classes=classes)
    predict = {"probabilities": probabilities, "class_ids": class_ids, **(extra_predictions or {})}
    return {"serving_default": head, "classification": head, "predict": PredictOutput(predict)}


def regressor_heads(predictions: Tensor) -> dict[str, ExportOutput]:
    """TF's regressor heads over float32 predictions [batch] (or [batch, d] with d > 1: predict only)."""
    predict = PredictOutput({"predictions": predictions})
    if predictions.shape is not None and len(predictions.shape) == 2 and predictions.shape[1] != 1:
        return {"predict": predict}
    head = RegressionOutput(predictions)
    return {"serving_default": head, "regression": head, "predict": predict}


def _logits_heads(logits: Tensor, n_classes: int, labels: Sequence[bytes]) -> dict[str, ExportOutput]:
    g = logits.graph
    if n_classes == 2:
        logistic = tfm.sigmoid(logits, name="logistic")
        one = g.constant(np.float32(1.0))
        probabilities = core.concat([tfm.sub(one, logistic), logistic], axis=1, name="probabilities")
        # class_ids from the logits, as TF does (argmax of [0, logit]): exact even where the
        # float32 sigmoid rounds to 0.5.
        zero = core.broadcast_to_batch(g.constant(np.zeros(1, np.float32)), logits)
        class_ids = tfm.argmax(core.concat([zero, logits], axis=1), axis=1, name="class_ids")
    else:
        probabilities = tfm.softmax(logits, name="probabilities")
        class_ids = tfm.argmax(logits, axis=1, name="class_ids")
    label_row = g.constant(np.array(list(labels), dtype=object), name="label_vocabulary")
    extra = {"logits": logits, "classes": embedding.gather(label_row, class_ids, name="predicted_classes")}
    if n_classes == 2:
        extra["logistic"] = logistic
    heads = classifier_heads(probabilities, class_ids, labels, extra)
    if n_classes == 2:
        heads["regression"] = RegressionOutput(core.reshape(logistic, (-1,)))
    return heads


class _Model:
    """Shared by the four canned models: logits from features, then the heads."""

    logits_dim: int

    def logits(self, g: GraphBuilder, features: Mapping[str, Any]) -> Tensor:
        raise NotImplementedError

    def model_fn(self, g: GraphBuilder, features: Mapping[str, Any]) -> dict[str, ExportOutput]:
        raise NotImplementedError


class _Classifier(_Model):
    def __init__(self, n_classes: int, label_vocabulary: Sequence[str | bytes] | None) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.n_classes = n_classes
        self.labels = class_labels(n_classes, label_vocabulary)
        self.logits_dim = 1 if n_classes == 2 else n_classes

    def model_fn(self, g: GraphBuilder, features: Mapping[str, Any]) -> dict[str, ExportOutput]:
        return _logits_heads(self.logits(g, features), self.n_classes, self.labels)


class _Regressor(_Model):
    def __init__(self, label_dimension: int) -> None:
        if label_dimension < 1:
            raise ValueError(f"label_dimension must be >= 1, got {label_dimension}")
        self.logits_dim = label_dimension

    def model_fn(self, g: GraphBuilder, features: Mapping[str, Any]) -> dict[str, ExportOutput]:
        logits = self.logits(g, features)
        predictions = core.reshape(logits, (-1,), name="predictions") if self.logits_dim == 1 else logits
        return regressor_heads(predictions)


def _f32(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if array.shape != shape:
        raise ValueError(f"{what}: expected shape {list(shape)}, got {list(array.shape)}")
    return array


class _Linear:
    def _init_linear(
        self, columns: Sequence[FeatureColumn], weights: Mapping[str, Any], bias: Any, logits_dim: int
    ) -> None:
        self.columns = sorted_columns(columns)
        names = {c.name for c in self.columns}
        if set(weights) != names:
            raise ValueError(f"weights must be keyed by the column names {sorted(names)}, got {sorted(weights)}")
        self.weights = {}
        for c in self.columns:
            if isinstance(c, CategoricalColumn):  # categorical first, as in `logits`
                width = c.num_buckets
            elif isinstance(c, DenseColumn):
                width = c.dimension
            else:
                raise TypeError(f"column {c.name!r} is neither dense nor categorical")
            self.weights[c.name] = _f32(weights[c.name], (width, logits_dim), f"weights[{c.name!r}]")
        self.bias = _f32(bias, (logits_dim,), "bias")

    def logits(self, g: GraphBuilder, features: Mapping[str, Any]) -> Tensor:
        terms = []
        for c in self.columns:
            w = g.variable(self.weights[c.name], f"linear.{safe_name(c.name)}.weights")
            if isinstance(c, CategoricalColumn):  # categorical first: a bucketized column is both
                terms.append(embedding.embedding_combine(w, c.sparse_ids(g, features), combiner="sum"))
            elif isinstance(c, DenseColumn):
                terms.append(tfm.matmul(c.dense(g, features), w))
            else:
                raise TypeError(f"column {c.name!r} is neither dense nor categorical")
        total = terms[0]
        for term in terms[1:]:
            total = tfm.add(total, term)
        return tfm.bias_add(total, g.variable(self.bias, "linear.bias"), name="logits")


class _DNN:
    def _init_dnn(
        self,
        hidden_units: Sequence[int],
        columns: Sequence[FeatureColumn],
        layers: Sequence[tuple[Any, Any]],
        activation: str,
        logits_dim: int,
    ) -> None:
        self.columns = dense_columns(columns)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        sizes = [sum(c.dimension for c in self.columns), *hidden_units, logits_dim]
        if len(layers) != len(sizes) - 1:
            raise ValueError(f"{len(hidden_units)} hidden layers + logits need {len(sizes) - 1} (kernel, bias) pairs")
        self.layers = [
            (_f32(k, (sizes[i], sizes[i + 1]), f"layer {i} kernel"), _f32(b, (sizes[i + 1],), f"layer {i} bias"))
            for i, (k, b) in enumerate(layers)
        ]

    def logits(self, g: GraphBuilder, features: Mapping[str, Any]) -> Tensor:
        x = input_layer(features, self.columns)
        last = len(self.layers) - 1
        for i, (kernel, bias) in enumerate(self.layers):
            name = "logits" if i == last else f"hiddenlayer_{i}"
            x = tfm.matmul(x, g.variable(kernel, f"dnn.{name}.kernel"))
            x = tfm.bias_add(x, g.variable(bias, f"dnn.{name}.bias"), name=name if i == last else None)
            if i != last:
                x = ACTIVATIONS[self.activation](x)
        return x


class LinearClassifier(_Linear, _Classifier):
    def __init__(self, feature_columns: Sequence[FeatureColumn], weights: Mapping[str, Any], bias: Any,
                 n_classes: int = 2, label_vocabulary: Sequence[str | bytes] | None = None) -> None:  # fmt: skip
        _Classifier.__init__(self, n_classes, label_vocabulary)
        self._init_linear(feature_columns, weights, bias, self.logits_dim)


class LinearRegressor(_Linear, _Regressor):
    def __init__(self, feature_columns: Sequence[FeatureColumn], weights: Mapping[str, Any], bias: Any,
                 label_dimension: int = 1) -> None:  # fmt: skip
        _Regressor.__init__(self, label_dimension)
        self._init_linear(feature_columns, weights, bias, self.logits_dim)


class DNNClassifier(_DNN, _Classifier):
    def __init__(self, hidden_units: Sequence[int], feature_columns: Sequence[FeatureColumn],
                 layers: Sequence[tuple[Any, Any]], n_classes: int = 2, activation: str = "relu",
                 label_vocabulary: Sequence[str | bytes] | None = None) -> None:  # fmt: skip
        _Classifier.__init__(self, n_classes, label_vocabulary)
        self._init_dnn(hidden_units, feature_columns, layers, activation, self.logits_dim)


class DNNRegressor(_DNN, _Regressor):
    def __init__(self, hidden_units: Sequence[int], feature_columns: Sequence[FeatureColumn],
                 layers: Sequence[tuple[Any, Any]], activation: str = "relu", label_dimension: int = 1) -> None:  # fmt: skip
        _Regressor.__init__(self, label_dimension)
        self._init_dnn(hidden_units, feature_columns, layers, activation, self.logits_dim)
