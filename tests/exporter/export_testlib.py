"""A small exported model: `model_fn` (a linear classifier over x, with W and B), its `raw` receiver
and `expected_probs`, the answers the exported bundle must give."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from exporter import dtypes
from exporter.features import FixedLenFeature
from exporter.graph import GraphBuilder
from exporter.ops import core
from exporter.ops import math as tfm
from exporter.outputs import ClassificationOutput, ExportOutput, PredictOutput, RegressionOutput
from exporter.receivers import build_raw_serving_input_receiver_fn

W = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]], np.float32)


B = np.array([0.1, -0.2], np.float32)


SPEC = {"x": FixedLenFeature((3,), dtypes.FLOAT)}


def model_fn(g: GraphBuilder, features: Mapping[str, Any]) -> dict[str, ExportOutput]:
    """A two-class softmax model: classification, regression (score of class 1) and predict heads."""
    logits = tfm.bias_add(tfm.matmul(features["x"], g.variable(W, "w")), g.variable(B, "b"))
    probs = tfm.softmax(logits)
    labels = core.broadcast_to_batch(g.constant(np.array([b"no", b"yes"], dtype=object)), probs)
    score = core.reshape(tfm.reduce_sum(tfm.mul(probs, g.constant(np.array([0, 1], np.float32))), 1), (-1,))
    return {
        "classification": ClassificationOutput(scores=probs, classes=labels),
        "regression": RegressionOutput(score),
        "predict": PredictOutput({"probabilities": probs, "logits": logits}),
    }


def expected_probs(x: np.ndarray) -> np.ndarray:
    logits = x @ W + B
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


raw = build_raw_serving_input_receiver_fn({"x": (dtypes.FLOAT, (None, 3))})
