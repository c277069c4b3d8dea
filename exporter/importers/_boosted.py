"""What the XGBoost and LightGBM importers share: a boosted model over n numeric columns, as ONNX
from onnxmltools, with the same receivers and heads as the scikit-learn importer.

onnxmltools' tree ensembles read float32 (both libraries compare float32 features with their
thresholds at predict time too), so the ONNX input is float32 [batch, n] and the answers equal
predict / predict_proba on the same float32 features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from exporter import dtypes
from exporter.errors import ExportError
from exporter.importers.model import (
    ImportedModel,
    MatrixInput,
    classifier_heads_fn,
    regressor_heads_fn,
    string_labels,
)

ONNX_INPUT = "x"


def feature_names_of(model: Any, feature_names: Sequence[str] | None, n_features: int) -> tuple[str, ...] | None:
    if feature_names is None and hasattr(model, "feature_names_in_"):
        feature_names = [str(n) for n in model.feature_names_in_]
    if feature_names is not None and len(feature_names) != n_features:
        raise ExportError(f"{len(feature_names)} feature names for {n_features} input features")
    return None if feature_names is None else tuple(feature_names)


class BoostedModel(ImportedModel):
    """A converted boosted model: `model_fn`, receivers and `signatures()` (see exporter.importers.model)."""

    def __init__(
        self,
        onnx_model: bytes,
        *,
        n_features: int,
        feature_names: tuple[str, ...] | None,
        input_key: str,
        classes: Sequence[Any] | None,
        class_labels: Sequence[str | bytes] | None,
    ) -> None:
        from exporter.ops.onnx import model_infos

        self.n_features = n_features
        self.feature_names = feature_names
        self.input_key = input_key
        self.column_dtypes: dict[int, int] = {}
        inputs = [MatrixInput(ONNX_INPUT, dtypes.FLOAT, n_features, feature_names, input_key)]
        outputs = list(model_infos(onnx_model)[1])
        self.labels: list[bytes] | None = None
        if classes is not None:
            self.labels = string_labels(classes, class_labels)
            super().__init__(onnx_model, inputs, classifier_heads_fn(outputs[1], outputs[0], classes, self.labels),
                             "classification")  # fmt: skip
        else:
            if class_labels is not None:
                raise ExportError("class_labels given for a regressor")
            super().__init__(onnx_model, inputs, regressor_heads_fn(outputs[0]), "regression")


def convert_boosted(
    model: Any,
    to_onnx: Callable[[int], Any],
    *,
    classifier: bool,
    feature_names: Sequence[str] | None,
    input_key: str,
    class_labels: Sequence[str | bytes] | None,
) -> BoostedModel:
    """What every boosted-model importer shares: the fitted check, the conversion's failure as an
    ExportError with onnxmltools' reason, and the bundle's model. `to_onnx(n_features)` is the
    library's own onnxmltools call (kept in its importer module, the only one that imports it)."""
    n = int(getattr(model, "n_features_in_", 0))
    if not n:
        raise ExportError(f"{type(model).__name__} is not fitted")
    try:
        proto = to_onnx(n)
    except Exception as e:  # noqa: BLE001 - onnxmltools raises RuntimeError, NotImplementedError, ...
        raise ExportError(f"onnxmltools cannot convert {type(model).__name__}: {type(e).__name__}: {e}") from None
    return BoostedModel(
        proto.SerializeToString(), n_features=n, feature_names=feature_names_of(model, feature_names, n),
        input_key=input_key, classes=list(model.classes_) if classifier else None, class_labels=class_labels,
    )  # fmt: skip
