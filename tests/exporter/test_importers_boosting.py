"""XGBoost and LightGBM through onnxmltools: the bundle, read back from disk, equals predict_proba /
predict within 1e-5 (iris, a binary synthetic set, diabetes), over Predict and Classify/Regress."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.datasets import load_diabetes, load_iris, make_classification
from xgboost import XGBClassifier, XGBRegressor

from exporter.errors import ExportError
from exporter.importers import lightgbm as lgbm_importer
from exporter.importers import xgboost as xgb_importer
from tests.exporter.importers_testlib import check_classifier, check_regressor, fit

IRIS = load_iris()
IRIS_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
TRAIN, TEST = np.arange(150) % 3 != 0, np.arange(150) % 3 == 0
DIABETES = load_diabetes()
# Both libraries compare float32 features: the test data is float32, as a tf.Example carries it.
DX = DIABETES.data.astype(np.float32)

IMPORTERS = {"xgboost": xgb_importer.convert, "lightgbm": lgbm_importer.convert}
CLASSIFIERS = {
    "xgboost": lambda: XGBClassifier(n_estimators=6, max_depth=3, random_state=0),
    "lightgbm": lambda: LGBMClassifier(n_estimators=6, num_leaves=7, min_child_samples=5, verbose=-1, random_state=0),
}
REGRESSORS = {
    "xgboost": lambda: XGBRegressor(n_estimators=6, max_depth=3, random_state=0),
    "lightgbm": lambda: LGBMRegressor(n_estimators=6, num_leaves=7, verbose=-1, random_state=0),
}


@pytest.mark.parametrize("library", sorted(IMPORTERS))
def test_multiclass_classifier_on_iris(tmp_path: pathlib.Path, library: str) -> None:
    X = IRIS.data.astype(np.float32)
    est = fit(CLASSIFIERS[library](), X[TRAIN], IRIS.target[TRAIN])
    model = IMPORTERS[library](est, feature_names=IRIS_NAMES, class_labels=IRIS.target_names)
    check_classifier(tmp_path, est, model, X[TEST])


@pytest.mark.parametrize("library", sorted(IMPORTERS))
def test_binary_classifier(tmp_path: pathlib.Path, library: str) -> None:
    X, y = make_classification(n_samples=300, n_features=5, random_state=0)
    X = X.astype(np.float32)
    est = fit(CLASSIFIERS[library](), X[:200], y[:200])
    servable = check_classifier(tmp_path, est, IMPORTERS[library](est, feature_names=list("abcde")), X[200:])
    assert servable.signatures["predict"].outputs["probabilities"].shape == (None, 2)
    assert servable.signatures["predict"].outputs["class_ids"].shape == (None,)


@pytest.mark.parametrize("library", sorted(IMPORTERS))
def test_regressor_on_diabetes(tmp_path: pathlib.Path, library: str) -> None:
    est = fit(REGRESSORS[library](), DX[:300], DIABETES.target[:300])
    check_regressor(tmp_path, est, IMPORTERS[library](est, feature_names=DIABETES.feature_names), DX[300:])


def test_wrong_models_are_refused() -> None:
    from sklearn.linear_model import Ridge

    ridge = fit(Ridge(), IRIS.data, IRIS.target)
    with pytest.raises(ExportError, match="expected a fitted XGBClassifier or XGBRegressor, got Ridge"):
        xgb_importer.convert(ridge)
    with pytest.raises(ExportError, match="expected a fitted LGBMClassifier or LGBMRegressor"):
        lgbm_importer.convert(ridge)
    with pytest.raises(ExportError, match="not fitted"):
        xgb_importer.convert(XGBRegressor())
    est = fit(REGRESSORS["xgboost"](), DX[:100], DIABETES.target[:100])
    with pytest.raises(ExportError, match="class_labels given for a regressor"):
        xgb_importer.convert(est, class_labels=["a"])


@pytest.mark.parametrize("library", sorted(IMPORTERS))
def test_models_fitted_on_a_dataframe_take_its_column_names(tmp_path: pathlib.Path, library: str) -> None:
    import pandas as pd

    frame = pd.DataFrame(IRIS.data.astype(np.float32), columns=IRIS_NAMES)
    est = fit(CLASSIFIERS[library](), frame[TRAIN], IRIS.target[TRAIN])
    model = IMPORTERS[library](est)  # xgboost's own names would stop onnxmltools: the importer clears them
    assert model.feature_names == tuple(IRIS_NAMES)

    class OnRows:  # the estimator, asked with rows as the bundle gets them
        classes_ = est.classes_

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            return est.predict_proba(pd.DataFrame(X, columns=IRIS_NAMES))

        def predict(self, X: np.ndarray) -> np.ndarray:
            return est.predict(pd.DataFrame(X, columns=IRIS_NAMES))

    check_classifier(tmp_path, OnRows(), model, IRIS.data[TEST].astype(np.float32))
