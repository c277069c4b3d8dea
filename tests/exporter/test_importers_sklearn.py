"""scikit-learn through skl2onnx: the bundle, read back from disk through the loader registry,
equals predict_proba / predict within 1e-5 on held-out data (iris, diabetes, digits, a synthetic
set with NaNs), through a raw receiver (Predict) and a parsing receiver (Classify/Regress)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_digits, load_iris, make_classification
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import (
    AdaBoostClassifier,
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, RidgeClassifier
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler
from sklearn.svm import SVC, SVR, LinearSVC
from sklearn.tree import DecisionTreeClassifier

from exporter.errors import ExportError, InvalidInputError
from exporter.export import export_model
from exporter.importers.sklearn import convert
from exporter.servable import load_servable
from tests.exporter.importers_testlib import (
    TOL,
    check_classifier,
    check_regressor,
    examples,
    export,
    fit,
    raw_feeds,
)

IRIS = load_iris()
IRIS_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
TRAIN, TEST = np.arange(150) % 3 != 0, np.arange(150) % 3 == 0
DIABETES = load_diabetes()
D_TRAIN, D_TEST = slice(0, 300), slice(300, None)


def test_logistic_regression_multinomial(tmp_path: pathlib.Path) -> None:
    est = fit(LogisticRegression(max_iter=300), IRIS.data[TRAIN], IRIS.target[TRAIN])
    check_classifier(tmp_path, est, convert(est, feature_names=IRIS_NAMES, class_labels=IRIS.target_names), IRIS.data[TEST])
    assert convert(est).labels == [b"0", b"1", b"2"]  # without class_labels: str(classes_)


def test_logistic_regression_binary_string_classes(tmp_path: pathlib.Path) -> None:
    X, y = make_classification(n_samples=200, n_features=5, random_state=0)
    labels = np.array(["no", "yes"])[y]
    est = fit(LogisticRegression(C=0.5), X[:150], labels[:150])
    servable = check_classifier(tmp_path, est, convert(est, feature_names=[f"f{i}" for i in range(5)]), X[150:])
    assert servable.signatures["predict"].outputs["probabilities"].shape == (None, 2)


def test_linear_regression_and_ridge(tmp_path: pathlib.Path) -> None:
    X, y = DIABETES.data, DIABETES.target
    for name, est in (("ridge", Ridge(alpha=0.3)), ("ols", LinearRegression())):
        est = fit(est, X[D_TRAIN], y[D_TRAIN])
        check_regressor(tmp_path / name, est, convert(est, feature_names=DIABETES.feature_names), X[D_TEST])


def test_multi_target_linear_regression_is_predict_only(tmp_path: pathlib.Path) -> None:
    X, y = DIABETES.data, np.stack([DIABETES.target, DIABETES.data[:, 0] * 3], axis=1)
    est = fit(LinearRegression(), X[D_TRAIN], y[D_TRAIN])
    model = convert(est)
    servable = load_servable("tensorflow", export_model(str(tmp_path), model.model_fn, model.raw_receiver_fn()))
    assert set(servable.signatures) == {"serving_default", "predict"}
    np.testing.assert_allclose(servable.run("predict", {"x": X[D_TEST].astype(np.float32)})["predictions"],
                               est.predict(X[D_TEST]), **TOL)  # fmt: skip


@pytest.mark.parametrize("activation", ["logistic", "relu"])
def test_mlp_classifier_multiclass(tmp_path: pathlib.Path, activation: str) -> None:
    est = fit(MLPClassifier(hidden_layer_sizes=(8, 5), activation=activation, max_iter=60, random_state=0),
              IRIS.data[TRAIN], IRIS.target[TRAIN])  # fmt: skip
    check_classifier(tmp_path, est, convert(est, feature_names=IRIS_NAMES), IRIS.data[TEST])


def test_mlp_regressor(tmp_path: pathlib.Path) -> None:
    X, y = DIABETES.data, DIABETES.target
    est = fit(MLPRegressor(hidden_layer_sizes=(10,), max_iter=100, learning_rate_init=0.05, random_state=0),
              X[D_TRAIN], y[D_TRAIN])  # fmt: skip
    check_regressor(tmp_path, est, convert(est, feature_names=DIABETES.feature_names), X[D_TEST])


@pytest.mark.parametrize(
    "est",
    [
        RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0),
        ExtraTreesClassifier(n_estimators=5, max_depth=4, random_state=0),
        GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0),
        HistGradientBoostingClassifier(max_iter=5, random_state=0),
        CalibratedClassifierCV(SVC(), ensemble=False),  # scikit-learn 1.9's SVC(probability=True)
        KNeighborsClassifier(n_neighbors=5),
    ],
    ids=lambda e: type(e).__name__,
)
def test_classifiers_on_iris(tmp_path: pathlib.Path, est) -> None:  # type: ignore[no-untyped-def]
    est = fit(est, IRIS.data[TRAIN], IRIS.target[TRAIN])
    check_classifier(tmp_path, est, convert(est, feature_names=IRIS_NAMES, class_labels=IRIS.target_names), IRIS.data[TEST])


@pytest.mark.parametrize(
    "est",
    [
        RandomForestRegressor(n_estimators=5, max_depth=4, random_state=0),
        ExtraTreesRegressor(n_estimators=5, max_depth=4, random_state=0),
        GradientBoostingRegressor(n_estimators=5, max_depth=2, random_state=0),
        HistGradientBoostingRegressor(max_iter=5, random_state=0),
        SVR(C=50.0),
        KNeighborsRegressor(n_neighbors=5),
    ],
    ids=lambda e: type(e).__name__,
)
def test_regressors_on_diabetes(tmp_path: pathlib.Path, est) -> None:  # type: ignore[no-untyped-def]
    X, y = DIABETES.data, DIABETES.target
    est = fit(est, X[D_TRAIN], y[D_TRAIN])
    check_regressor(tmp_path, est, convert(est, feature_names=DIABETES.feature_names), X[D_TEST])


def test_pipeline_scaler_random_forest_on_digits(tmp_path: pathlib.Path) -> None:
    digits = load_digits()
    X, y = digits.data[:600], digits.target[:600]
    est = fit(make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=4, max_depth=6, random_state=0)),
              X[:450], y[:450])  # fmt: skip
    model = convert(est)  # 64 unnamed pixel columns: Predict over x, Classify needs names
    servable = export(tmp_path, model)
    assert set(servable.signatures) == {"serving_default", "predict"}
    out = servable.run("predict", {"x": X[450:].astype(np.float32)})
    np.testing.assert_allclose(out["probabilities"], est.predict_proba(X[450:]), **TOL)
    assert out["class_ids"].tolist() == est.predict(X[450:]).tolist()


@pytest.mark.parametrize("est", [SVC(), LinearSVC(), RidgeClassifier()], ids=lambda e: type(e).__name__)
def test_classifiers_without_probabilities_classify_by_their_decision(tmp_path: pathlib.Path, est) -> None:  # type: ignore[no-untyped-def]
    est = fit(est, IRIS.data[TRAIN], IRIS.target[TRAIN])
    model = convert(est, feature_names=IRIS_NAMES, class_labels=IRIS.target_names)
    servable = export(tmp_path, model)
    X = IRIS.data[TEST]
    assert servable.run("predict", raw_feeds(model, X))["class_ids"].tolist() == est.predict(X).tolist()
    classes = servable.run("serving_default", {"inputs": examples(model, X)})["classes"]
    assert classes[:, 0].tolist() == [IRIS.target_names[c].encode() for c in est.predict(X)]


def test_kmeans_cluster_index_and_distances(tmp_path: pathlib.Path) -> None:
    est = fit(KMeans(n_clusters=3, n_init=2, random_state=0), IRIS.data[TRAIN])
    servable = export(tmp_path, convert(est, feature_names=IRIS_NAMES))
    out = servable.run("predict", {"x": IRIS.data[TEST].astype(np.float32)})
    assert out["cluster_index"].tolist() == est.predict(IRIS.data[TEST]).tolist()
    np.testing.assert_allclose(out["distances"], est.transform(IRIS.data[TEST]), **TOL)


def nan_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic classification set with a fifth of its values missing (NaN)."""
    X, y = make_classification(n_samples=n, n_features=6, n_informative=4, random_state=seed)
    X[np.random.default_rng(seed).random(X.shape) < 0.2] = np.nan
    return X, y


def test_simple_imputer_pipelines_on_data_with_nans(tmp_path: pathlib.Path) -> None:
    X, y = nan_data(300, 0)
    names = [f"f{i}" for i in range(6)]
    est = fit(make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression()), X[:200], y[:200])
    check_classifier(tmp_path / "logreg", est, convert(est, feature_names=names), X[200:])
    forest = fit(make_pipeline(SimpleImputer(), RandomForestRegressor(n_estimators=4, random_state=0)), X[:200], y[:200] * 1.5)
    check_regressor(tmp_path / "forest", forest, convert(forest, feature_names=names), X[200:])
    imputer = fit(SimpleImputer(strategy="mean"), X[:200])  # a transformer alone: Predict of transform()
    out = export(tmp_path / "imputer", convert(imputer)).run("predict", {"x": X[200:].astype(np.float32)})
    np.testing.assert_allclose(out["outputs"], imputer.transform(X[200:]), **TOL)


def test_hist_gradient_boosting_takes_nans_itself(tmp_path: pathlib.Path) -> None:
    X, y = nan_data(300, 1)
    est = fit(HistGradientBoostingClassifier(max_iter=8, random_state=0), X[:200], y[:200])
    check_classifier(tmp_path, est, convert(est, feature_names=[f"f{i}" for i in range(6)]), X[200:])


def mixed_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns: color (string), size (int), weight (float), height (float)."""
    rng = np.random.default_rng(seed)
    colors = rng.choice(["red", "green", "blue"], n)
    sizes = rng.choice([1, 2, 3, 5], n)
    floats = rng.normal(size=(n, 2)) * [10, 2] + [50, 0]
    y = ((colors == "red") ^ (floats[:, 1] > 0) ^ (sizes > 2)).astype(int)
    X = np.empty((n, 4), dtype=object)
    X[:, 0], X[:, 1], X[:, 2:] = colors, sizes.tolist(), floats
    return X, y


def mixed_pipeline(final, handle_unknown: str = "ignore"):  # type: ignore[no-untyped-def]
    numeric = make_pipeline(SimpleImputer(), StandardScaler())
    pre = ColumnTransformer([("onehot", OneHotEncoder(handle_unknown=handle_unknown), [0, 1]), ("scale", numeric, [2, 3])])
    return make_pipeline(pre, final)


def test_pipeline_column_transformer_one_hot(tmp_path: pathlib.Path) -> None:
    X, y = mixed_data(160, 0)
    est = fit(mixed_pipeline(LogisticRegression()), X[:120], y[:120])
    X_test = X[120:].copy()
    X_test[0, 0], X_test[1, 1] = "purple", 4  # unseen categories: zero rows with "ignore"
    names = ["color", "size", "weight", "height"]
    servable = check_classifier(tmp_path / "logreg", est, convert(est, feature_names=names), X_test)
    assert servable.signatures["predict"].inputs.keys() == set(names)
    mlp = fit(mixed_pipeline(MLPRegressor(hidden_layer_sizes=(5,), max_iter=50, random_state=0)), X[:120], y[:120].astype(float))
    check_regressor(tmp_path / "mlp", mlp, convert(mlp, feature_names=names), X_test)


def test_unknown_category_with_handle_unknown_error_fails_the_request(tmp_path: pathlib.Path) -> None:
    X, y = mixed_data(100, 1)
    est = fit(mixed_pipeline(LogisticRegression(), handle_unknown="error"), X, y)
    model = convert(est)  # default column names x0..x3, as scikit-learn names them
    assert model.feature_names == ("x0", "x1", "x2", "x3")
    servable = check_classifier(tmp_path, est, model, X[:10])
    bad = X[:2].copy()
    bad[1, 0] = "purple"
    with pytest.raises(InvalidInputError, match="Unknown Category"):  # onnxruntime refuses it: the request fails
        servable.run("predict", raw_feeds(model, bad))


def test_unsupported_models_fail_with_the_converters_reason() -> None:
    from sklearn.semi_supervised import LabelSpreading

    with pytest.raises(ExportError, match="cannot convert LabelSpreading.*Unable to find a shape calculator"):
        convert(fit(LabelSpreading(), IRIS.data, IRIS.target))
    with pytest.raises(ExportError, match="feature names"):
        convert(fit(Ridge(), IRIS.data, IRIS.target), feature_names=["a"])
    with pytest.raises(ExportError, match="class_labels given for a model that is not a classifier"):
        convert(fit(Ridge(), IRIS.data, IRIS.target), class_labels=["a"])


def test_exporter_core_never_imports_sklearn_or_onnxruntime() -> None:
    import subprocess
    import sys

    code = (
        "import sys, exporter.export, exporter.canned, exporter.feature_columns, exporter.importers, "
        "exporter.importers.model, exporter.runtime, exporter.ops.onnx; "
        "assert 'sklearn' not in sys.modules, 'sklearn imported'; "
        "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_pipeline_fitted_on_a_dataframe_selects_columns_by_name(tmp_path: pathlib.Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"city": rng.choice(["a", "b", "c"], 200), "age": rng.normal(40, 10, 200),
                       "income": rng.normal(5, 2, 200)})  # fmt: skip
    df.loc[::9, "age"] = np.nan
    y = (df.city == "a") ^ (df.income > 5)
    numeric = make_pipeline(SimpleImputer(), StandardScaler())
    pre = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]), ("num", numeric, ["age", "income"])])
    est = fit(make_pipeline(pre, GradientBoostingClassifier(n_estimators=5, random_state=0)), df[:150], y[:150])
    model = convert(est)  # the names come from the DataFrame
    assert model.feature_names == ("city", "age", "income")

    class OnRows:  # the estimator, asked with rows as the bundle gets them
        classes_ = est.classes_

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            return est.predict_proba(pd.DataFrame(X, columns=df.columns).astype({"age": float, "income": float}))

        def predict(self, X: np.ndarray) -> np.ndarray:
            return est.predict(pd.DataFrame(X, columns=df.columns).astype({"age": float, "income": float}))

    check_classifier(tmp_path, OnRows(), model, df[150:].to_numpy(dtype=object))


@pytest.mark.parametrize(
    "est",
    [DecisionTreeClassifier(max_depth=3, random_state=0), AdaBoostClassifier(n_estimators=5, random_state=0),
     GaussianNB(), LinearDiscriminantAnalysis()],
    ids=lambda e: type(e).__name__,
)  # fmt: skip
def test_more_classifiers_skl2onnx_converts(tmp_path: pathlib.Path, est) -> None:  # type: ignore[no-untyped-def]
    est = fit(est, IRIS.data[TRAIN], IRIS.target[TRAIN])
    check_classifier(tmp_path, est, convert(est, feature_names=IRIS_NAMES), IRIS.data[TEST])


@pytest.mark.parametrize("est", [PCA(n_components=2), MinMaxScaler(), StandardScaler()], ids=lambda e: type(e).__name__)
def test_transformers_alone_predict_their_transform(tmp_path: pathlib.Path, est) -> None:  # type: ignore[no-untyped-def]
    est = fit(est, IRIS.data[TRAIN])
    out = export(tmp_path, convert(est)).run("predict", {"x": IRIS.data[TEST].astype(np.float32)})
    np.testing.assert_allclose(out["outputs"], est.transform(IRIS.data[TEST]), **TOL)


def test_column_transformer_passthrough_drop_and_remainder(tmp_path: pathlib.Path) -> None:
    X, y = mixed_data(160, 0)
    X[:, 1] = X[:, 1].astype(float)  # size as a plain number here: passed through, not encoded
    names = ["color", "size", "weight", "height"]
    ct = ColumnTransformer([("oh", OneHotEncoder(handle_unknown="ignore"), [0]), ("pass", "passthrough", [2]),
                            ("drop", "drop", [3])], remainder="passthrough")  # fmt: skip
    est = fit(make_pipeline(ct, LogisticRegression(max_iter=500)), X[:120], y[:120])
    check_classifier(tmp_path / "passthrough", est, convert(est, feature_names=names), X[120:])
    X2, y2 = mixed_data(160, 1)
    ct = ColumnTransformer([("oh", OneHotEncoder(handle_unknown="ignore"), [0, 1])], remainder=StandardScaler())
    est = fit(make_pipeline(ct, LogisticRegression(max_iter=500)), X2[:120], y2[:120])
    check_classifier(tmp_path / "remainder", est, convert(est, feature_names=names), X2[120:])
