"""What the importer tests share: export a model, read the bundle back from disk through the loader
registry, and compare its answers with the source library's, over both receivers."""

from __future__ import annotations

import pathlib
import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from exporter.export import export_model
from exporter.importers.model import ImportedModel
from exporter.servable import Servable, load_servable
from protos.tessera import example_pb2

TOL = {"rtol": 1e-5, "atol": 1e-5}


def fit(est: Any, X: np.ndarray, y: np.ndarray | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # small max_iter keeps the tests fast
        warnings.simplefilter("ignore", UserWarning)  # LightGBM's chatter about feature names
        return est.fit(X, y)


def examples(model: Any, X: np.ndarray) -> np.ndarray:
    """One serialized tf.Example per row, one feature per input column of `model`."""
    out = []
    for row in X:
        ex = example_pb2.Example()
        for name, value in zip(model.feature_names, row, strict=True):
            feature = ex.features.feature[name]
            if isinstance(value, str):
                feature.bytes_list.value.append(value.encode())
            elif isinstance(value, int | np.integer):
                feature.int64_list.value.append(int(value))
            else:
                feature.float_list.value.append(float(value))
        out.append(ex.SerializeToString())
    return np.array(out, dtype=object)


def raw_feeds(model: Any, X: np.ndarray) -> dict[str, np.ndarray]:
    if not getattr(model, "column_dtypes", None):
        return {"x": X.astype(np.float32)}
    feeds = {}
    for j, name in enumerate(model.feature_names):
        column = X[:, j]
        if isinstance(column[0], str):
            feeds[name] = np.array([v.encode() for v in column], dtype=object)
        elif isinstance(column[0], int | np.integer):
            feeds[name] = column.astype(np.int64)
        else:
            feeds[name] = column.astype(np.float32)
    return feeds


def export(tmp_path: pathlib.Path, model: ImportedModel) -> Servable:
    """Exports `model` with its signatures and loads it back from disk, as a server would."""
    path = export_model(str(tmp_path), model.model_fn, None, signatures=model.signatures())
    return load_servable("tensorflow", path)


def check_classifier(tmp_path: pathlib.Path, est: Any, model: ImportedModel, X_test: np.ndarray) -> Servable:
    """predict_proba and predict, through Predict (raw) and Classify (tf.Examples)."""
    servable = export(tmp_path, model)
    expected = est.predict_proba(X_test)
    out = servable.run("predict", raw_feeds(model, X_test))
    assert out["probabilities"].dtype == np.float32 and out["class_ids"].dtype == np.int64
    np.testing.assert_allclose(out["probabilities"], expected, **TOL)
    assert est.classes_[out["class_ids"]].tolist() == est.predict(X_test).tolist()
    classified = servable.run("serving_default", {"inputs": examples(model, X_test)})
    np.testing.assert_allclose(classified["scores"], expected, **TOL)
    assert classified["classes"][0].tolist() == model.labels  # type: ignore[attr-defined]
    return servable


def check_regressor(tmp_path: pathlib.Path, est: Any, model: ImportedModel, X_test: np.ndarray) -> Servable:
    """predict, through Predict (raw) and Regress (tf.Examples)."""
    servable = export(tmp_path, model)
    expected = est.predict(X_test)
    np.testing.assert_allclose(servable.run("predict", raw_feeds(model, X_test))["predictions"], expected, **TOL)
    regressed = servable.run("serving_default", {"inputs": examples(model, X_test)})["outputs"]
    np.testing.assert_allclose(regressed, expected, **TOL)
    return servable
