"""scikit-learn converters: the exported bundle, read back and run, equals predict_proba / predict
within 1e-5 on held-out data, through a raw receiver and through a parsing receiver."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from exporter.bundle import read_bundle
from exporter.converters.sklearn import SklearnModel, convert
from exporter.errors import ExportError, InvalidInputError
from exporter.export import export_model
from exporter.runtime import Runtime
from protos.tessera import example_pb2

TOL = {"rtol": 1e-5, "atol": 1e-5}


def fit(est, X, y):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # small max_iter keeps the tests fast
        return est.fit(X, y)


def examples(model: SklearnModel, X: np.ndarray) -> np.ndarray:
    out = []
    for row in X:
        ex = example_pb2.Example()
        for name, value in zip(model.feature_names, row, strict=True):  # type: ignore[arg-type]
            feature = ex.features.feature[name]
            if isinstance(value, str):
                feature.bytes_list.value.append(value.encode())
            elif isinstance(value, int | np.integer):
                feature.int64_list.value.append(int(value))
            else:
                feature.float_list.value.append(float(value))
        out.append(ex.SerializeToString())
    return np.array(out, dtype=object)


def raw_feeds(model: SklearnModel, X: np.ndarray) -> dict[str, np.ndarray]:
    if not model.column_dtypes:
        return {"x": X.astype(np.float32)}
    feeds = {}
    for j, name in enumerate(model.feature_names):  # type: ignore[arg-type]
        column = X[:, j]
        if isinstance(column[0], str):
            feeds[name] = np.array([v.encode() for v in column], dtype=object)
        elif isinstance(column[0], int | np.integer):
            feeds[name] = column.astype(np.int64)
        else:
            feeds[name] = column.astype(np.float32)
    return feeds


def export(tmp_path: pathlib.Path, model: SklearnModel) -> Runtime:
    head = "classification" if model.labels is not None else "regression"
    signatures = {"serving_default": (model.parsing_receiver_fn(), head), "predict": (model.raw_receiver_fn(), "predict")}
    return Runtime.from_bundle(read_bundle(export_model(str(tmp_path), model.model_fn, None, signatures=signatures)))


def check_classifier(tmp_path: pathlib.Path, est, X_test: np.ndarray, **kwargs) -> Runtime:  # type: ignore[no-untyped-def]
    model = convert(est, **kwargs)
    rt = export(tmp_path, model)
    expected = est.predict_proba(X_test)
    out = rt.run("predict", raw_feeds(model, X_test))
    assert out["probabilities"].dtype == np.float32 and out["class_ids"].dtype == np.int64
    np.testing.assert_allclose(out["probabilities"], expected, **TOL)
    assert est.classes_[out["class_ids"]].tolist() == est.predict(X_test).tolist()
    classified = rt.run("serving_default", {"inputs": examples(model, X_test)})
    np.testing.assert_allclose(classified["scores"], expected, **TOL)
    assert classified["classes"][0].tolist() == model.labels
    return rt


def check_regressor(tmp_path: pathlib.Path, est, X_test: np.ndarray, **kwargs) -> None:  # type: ignore[no-untyped-def]
    model = convert(est, **kwargs)
    rt = export(tmp_path, model)
    expected = est.predict(X_test)
    np.testing.assert_allclose(rt.run("predict", raw_feeds(model, X_test))["predictions"], expected, **TOL)
    regressed = rt.run("serving_default", {"inputs": examples(model, X_test)})["outputs"]
    np.testing.assert_allclose(regressed, expected, **TOL)


IRIS = load_iris()
IRIS_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
TRAIN, TEST = np.arange(150) % 3 != 0, np.arange(150) % 3 == 0
DIABETES = load_diabetes()


def test_logistic_regression_multinomial(tmp_path: pathlib.Path) -> None:
    est = fit(LogisticRegression(max_iter=300), IRIS.data[TRAIN], IRIS.target[TRAIN])
    check_classifier(tmp_path, est, IRIS.data[TEST], feature_names=IRIS_NAMES, class_labels=IRIS.target_names)
    assert convert(est).labels == [b"0", b"1", b"2"]  # without class_labels: str(classes_)


def test_logistic_regression_binary_sigmoid(tmp_path: pathlib.Path) -> None:
    X, y = make_classification(n_samples=200, n_features=5, random_state=0)
    labels = np.array(["no", "yes"])[y]
    est = fit(LogisticRegression(C=0.5), X[:150], labels[:150])
    rt = check_classifier(tmp_path, est, X[150:], feature_names=[f"f{i}" for i in range(5)])
    assert rt.signatures["predict"].outputs["probabilities"].shape == (None, 2)


def test_linear_regression_and_ridge(tmp_path: pathlib.Path) -> None:
    X, y = DIABETES.data, DIABETES.target
    check_regressor(tmp_path / "ridge", fit(Ridge(alpha=0.3), X[:300], y[:300]), X[300:],
                    feature_names=DIABETES.feature_names)  # fmt: skip
    check_regressor(tmp_path / "ols", fit(LinearRegression(), X[:300], y[:300]), X[300:],
                    feature_names=DIABETES.feature_names)  # fmt: skip


def test_multi_target_linear_regression_is_predict_only(tmp_path: pathlib.Path) -> None:
    X, y = DIABETES.data, np.stack([DIABETES.target, DIABETES.data[:, 0] * 3], axis=1)
    est = fit(LinearRegression(), X[:300], y[:300])
    model = convert(est)
    rt = Runtime.from_bundle(read_bundle(export_model(str(tmp_path), model.model_fn, model.raw_receiver_fn())))
    assert set(rt.signatures) == {"serving_default", "predict"}
    np.testing.assert_allclose(rt.run("predict", {"x": X[300:].astype(np.float32)})["predictions"],
                               est.predict(X[300:]), **TOL)  # fmt: skip


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_mlp_classifier_multiclass(tmp_path: pathlib.Path, activation: str) -> None:
    est = fit(MLPClassifier(hidden_layer_sizes=(8, 5), activation=activation, max_iter=60, random_state=0),
              IRIS.data[TRAIN], IRIS.target[TRAIN])  # fmt: skip
    check_classifier(tmp_path, est, IRIS.data[TEST], feature_names=IRIS_NAMES)


def test_mlp_classifier_binary_logistic_output(tmp_path: pathlib.Path) -> None:
    X, y = make_classification(n_samples=200, n_features=4, n_informative=3, n_redundant=0, random_state=1)
    est = fit(MLPClassifier(hidden_layer_sizes=(6,), activation="tanh", max_iter=80, random_state=0), X[:150], y[:150])
    assert est.out_activation_ == "logistic"
    check_classifier(tmp_path, est, X[150:], feature_names=["a", "b", "c", "d"])


def test_mlp_regressor(tmp_path: pathlib.Path) -> None:
    X, y = DIABETES.data, DIABETES.target
    est = fit(MLPRegressor(hidden_layer_sizes=(10,), max_iter=100, learning_rate_init=0.05, random_state=0), X[:300], y[:300])
    check_regressor(tmp_path, est, X[300:], feature_names=DIABETES.feature_names)


def test_pipeline_standard_scaler(tmp_path: pathlib.Path) -> None:
    est = fit(make_pipeline(StandardScaler(), LogisticRegression()), IRIS.data[TRAIN], IRIS.target[TRAIN])
    check_classifier(tmp_path, est, IRIS.data[TEST], feature_names=IRIS_NAMES)


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
    pre = ColumnTransformer(
        [("onehot", OneHotEncoder(handle_unknown=handle_unknown), [0, 1]), ("scale", StandardScaler(), [2, 3])]
    )
    return make_pipeline(pre, final)


def test_pipeline_column_transformer_one_hot(tmp_path: pathlib.Path) -> None:
    X, y = mixed_data(160, 0)
    est = fit(mixed_pipeline(LogisticRegression()), X[:120], y[:120])
    X_test = X[120:].copy()
    X_test[0, 0], X_test[1, 1] = "purple", 4  # unseen categories: zero rows with "ignore"
    names = ["color", "size", "weight", "height"]
    rt = check_classifier(tmp_path / "logreg", est, X_test, feature_names=names)
    assert rt.signatures["predict"].inputs.keys() == set(names)
    mlp = fit(mixed_pipeline(MLPRegressor(hidden_layer_sizes=(5,), max_iter=50, random_state=0)), X[:120], y[:120].astype(float))
    check_regressor(tmp_path / "mlp", mlp, X_test, feature_names=names)


def test_unknown_category_with_handle_unknown_error_fails_the_request(tmp_path: pathlib.Path) -> None:
    X, y = mixed_data(100, 1)
    est = fit(mixed_pipeline(LogisticRegression(), handle_unknown="error"), X, y)
    model = convert(est)  # default column names x0..x3, as scikit-learn names them
    assert model.feature_names == ("x0", "x1", "x2", "x3")
    rt = check_classifier(tmp_path, est, X[:10])
    bad = X[:2].copy()
    bad[1, 0] = "purple"
    with pytest.raises(InvalidInputError, match="out of range"):
        rt.run("predict", raw_feeds(model, bad))


def test_unsupported_models_are_refused() -> None:
    from sklearn.tree import DecisionTreeClassifier

    with pytest.raises(ExportError, match="unsupported scikit-learn estimator DecisionTreeClassifier"):
        convert(fit(DecisionTreeClassifier(), IRIS.data, IRIS.target))
    with pytest.raises(ExportError, match="feature names"):
        convert(fit(Ridge(), IRIS.data, IRIS.target), feature_names=["a"])
    with pytest.raises(ExportError, match="class_labels given for a regressor"):
        convert(fit(Ridge(), IRIS.data, IRIS.target), class_labels=["a"])


def test_exporter_core_never_imports_sklearn() -> None:
    import subprocess
    import sys

    code = (
        "import sys, exporter.export, exporter.canned, exporter.feature_columns, exporter.converters, "
        "exporter.runtime; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
