"""Fitted LightGBM models (LGBMClassifier, LGBMRegressor) -> bundles, through onnxmltools.

    model = convert(fitted, feature_names=["sepal_length", ...], class_labels=["setosa", ...])
    export_model(base, model.model_fn, None, signatures=model.signatures())

The same receivers and heads as the scikit-learn importer (see exporter.importers.xgboost).
Classifiers are converted without ZipMap, so probabilities are one tensor. A model onnxmltools does
not convert raises ExportError with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exporter.errors import ExportError
from exporter.importers._boosted import ONNX_INPUT, BoostedModel, convert_boosted


def convert(
    model: Any,
    *,
    feature_names: Sequence[str] | None = None,
    input_key: str = "x",
    class_labels: Sequence[str | bytes] | None = None,
) -> BoostedModel:
    """Converts a fitted LGBMClassifier or LGBMRegressor (the scikit-learn API of LightGBM)."""
    import onnxmltools
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.common.data_types import FloatTensorType

    if not isinstance(model, LGBMClassifier | LGBMRegressor):
        raise ExportError(f"expected a fitted LGBMClassifier or LGBMRegressor, got {type(model).__name__}")
    return convert_boosted(
        model,
        lambda n: onnxmltools.convert_lightgbm(
            model, initial_types=[(ONNX_INPUT, FloatTensorType([None, n]))], zipmap=False
        ),
        classifier=isinstance(model, LGBMClassifier), feature_names=feature_names, input_key=input_key,
        class_labels=class_labels,
    )  # fmt: skip
