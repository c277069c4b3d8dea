"""Fitted XGBoost models (XGBClassifier, XGBRegressor) -> bundles, through onnxmltools.

    model = convert(fitted, feature_names=["sepal_length", ...], class_labels=["setosa", ...])
    export_model(base, model.model_fn, None, signatures=model.signatures())

The same receivers and heads as the scikit-learn importer (exporter.importers.sklearn): a parsing
receiver with one float feature per column, a raw receiver ``x`` float32 [batch, n]; classifiers
give Classify (scores = predict_proba, classes = labels) and Predict (``probabilities``,
``class_ids``), regressors Regress and Predict (``predictions``). A model onnxmltools does not
convert raises ExportError with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exporter.errors import ExportError
from exporter.importers._boosted import ONNX_INPUT, BoostedModel, convert_boosted


def _unnamed(model: Any) -> Any:
    """The same model with its booster's feature names cleared: onnxmltools reads features by
    index and refuses names other than f0, f1, ... (a model fitted on a DataFrame has the columns')."""
    booster = model.get_booster()
    if not booster.feature_names:
        return model
    unnamed = booster.copy()
    unnamed.feature_names = None
    clone = type(model)()
    clone.load_model(bytearray(unnamed.save_raw("json")))
    return clone


def convert(
    model: Any,
    *,
    feature_names: Sequence[str] | None = None,
    input_key: str = "x",
    class_labels: Sequence[str | bytes] | None = None,
) -> BoostedModel:
    """Converts a fitted XGBClassifier or XGBRegressor (the scikit-learn API of xgboost)."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType
    from xgboost import XGBClassifier, XGBRegressor

    if not isinstance(model, XGBClassifier | XGBRegressor):
        raise ExportError(f"expected a fitted XGBClassifier or XGBRegressor, got {type(model).__name__}")
    return convert_boosted(
        model,
        lambda n: onnxmltools.convert_xgboost(_unnamed(model), initial_types=[(ONNX_INPUT, FloatTensorType([None, n]))]),
        classifier=isinstance(model, XGBClassifier), feature_names=feature_names, input_key=input_key,
        class_labels=class_labels,
    )  # fmt: skip
