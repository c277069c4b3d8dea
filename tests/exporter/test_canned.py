"""Canned linear and DNN models from given weights: exported, read back, run, vs numpy by hand."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from exporter import dtypes
from exporter import feature_columns as fc
from exporter.bundle import read_bundle
from exporter.canned import DNNClassifier, DNNRegressor, LinearClassifier, LinearRegressor
from exporter.export import export_model
from exporter.receivers import build_parsing_serving_input_receiver_fn, build_raw_serving_input_receiver_fn
from exporter.runtime import Runtime
from protos.tessera import example_pb2

RNG = np.random.default_rng(7)
X_COL = fc.numeric_column("x", shape=3)
KIND = fc.categorical_column_with_vocabulary_list("kind", ["a", "b", "c"])
X = RNG.normal(size=(6, 3)).astype(np.float32)
KINDS = [["a"], ["c", "b"], [], ["zzz"], ["b", "b"], ["a"]]
MULTI_HOT = np.array([[k.count(v) for v in "abc"] for k in KINDS], np.float64)


def serialized() -> np.ndarray:
    out = []
    for x, kinds in zip(X, KINDS, strict=True):
        ex = example_pb2.Example()
        ex.features.feature["x"].float_list.value.extend(x.tolist())
        ex.features.feature["kind"].bytes_list.value.extend(k.encode() for k in kinds)
        out.append(ex.SerializeToString())
    return np.array(out, dtype=object)


def export_and_load(tmp_path: pathlib.Path, model_fn, columns) -> Runtime:  # type: ignore[no-untyped-def]
    receiver = build_parsing_serving_input_receiver_fn(fc.make_parse_example_spec(columns))
    return Runtime.from_bundle(read_bundle(export_model(str(tmp_path), model_fn, receiver)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_binary_linear_classifier(tmp_path: pathlib.Path) -> None:
    weights = {"x": RNG.normal(size=(3, 1)), "kind": RNG.normal(size=(3, 1))}
    est = LinearClassifier([X_COL, KIND], weights, [0.3], label_vocabulary=["neg", "pos"])
    rt = export_and_load(tmp_path, est.model_fn, [X_COL, KIND])
    assert {k: s.method_name.rsplit("/")[-1] for k, s in rt.signatures.items()} == {
        "serving_default": "classify", "classification": "classify", "regression": "regress", "predict": "predict",
    }  # fmt: skip
    logits = X @ weights["x"] + MULTI_HOT @ weights["kind"] + 0.3  # categorical: sparse "sum"
    p = sigmoid(logits)
    out = rt.run("serving_default", {"inputs": serialized()})
    np.testing.assert_allclose(out["scores"], np.hstack([1 - p, p]), rtol=1e-5, atol=1e-6)
    assert out["classes"].tolist() == [[b"neg", b"pos"]] * len(X)
    np.testing.assert_allclose(rt.run("regression", {"inputs": serialized()})["outputs"], p[:, 0], rtol=1e-5)
    pred = rt.run("predict", {"examples": serialized()})
    assert pred["class_ids"].tolist() == (logits[:, 0] > 0).astype(int).tolist()
    assert pred["classes"].tolist() == [[b"neg", b"pos"][i] for i in pred["class_ids"]]
    np.testing.assert_allclose(pred["logits"], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred["logistic"], p, rtol=1e-5, atol=1e-6)


def test_multiclass_linear_classifier_with_bucketized_and_hashed(tmp_path: pathlib.Path) -> None:
    bucketized = fc.bucketized_column(fc.numeric_column("x", shape=3), [-0.5, 0.5])
    columns = [bucketized, KIND]
    weights = {bucketized.name: RNG.normal(size=(9, 4)), "kind": RNG.normal(size=(3, 4))}
    est = LinearClassifier(columns, weights, RNG.normal(size=4), n_classes=4)
    rt = export_and_load(tmp_path, est.model_fn, columns)
    one_hot = np.zeros((len(X), 9))
    for i, row in enumerate(X):
        for j, v in enumerate(row):
            one_hot[i, 3 * j + np.searchsorted([-0.5, 0.5], v, side="right")] = 1
    logits = one_hot @ weights[bucketized.name] + MULTI_HOT @ weights["kind"] + est.bias
    out = rt.run("serving_default", {"inputs": serialized()})
    np.testing.assert_allclose(out["scores"], softmax(logits), rtol=1e-5, atol=1e-6)
    assert out["classes"][0].tolist() == [b"0", b"1", b"2", b"3"]
    assert rt.run("predict", {"examples": serialized()})["class_ids"].tolist() == logits.argmax(1).tolist()


def test_linear_regressor(tmp_path: pathlib.Path) -> None:
    weights = {"x": RNG.normal(size=(3, 1)), "kind": RNG.normal(size=(3, 1))}
    est = LinearRegressor([X_COL, KIND], weights, [2.0])
    rt = export_and_load(tmp_path, est.model_fn, [X_COL, KIND])
    expected = (X @ weights["x"] + MULTI_HOT @ weights["kind"] + 2.0)[:, 0]
    np.testing.assert_allclose(rt.run("serving_default", {"inputs": serialized()})["outputs"], expected, rtol=1e-5)
    np.testing.assert_allclose(rt.run("predict", {"examples": serialized()})["predictions"], expected, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_dnn_classifier(tmp_path: pathlib.Path, activation: str) -> None:
    columns = [X_COL, fc.indicator_column(KIND)]  # input layer: kind_indicator (3) then x (3)
    layers = [(RNG.normal(size=(6, 5)), RNG.normal(size=5)), (RNG.normal(size=(5, 4)), RNG.normal(size=4)),
              (RNG.normal(size=(4, 3)), RNG.normal(size=3))]  # fmt: skip
    est = DNNClassifier([5, 4], columns, layers, n_classes=3, activation=activation,
                        label_vocabulary=["r", "g", "b"])  # fmt: skip
    rt = export_and_load(tmp_path, est.model_fn, columns)
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "sigmoid": sigmoid}[activation]
    h = np.hstack([MULTI_HOT, X])
    for kernel, bias in layers[:-1]:
        h = act(h @ kernel + bias)
    logits = h @ layers[-1][0] + layers[-1][1]
    out = rt.run("predict", {"examples": serialized()})
    np.testing.assert_allclose(out["probabilities"], softmax(logits), rtol=1e-5, atol=1e-6)
    assert out["classes"].tolist() == [[b"r", b"g", b"b"][i] for i in logits.argmax(1)]


def test_dnn_regressor_on_a_raw_receiver(tmp_path: pathlib.Path) -> None:
    emb = fc.embedding_column(KIND, 2, RNG.normal(size=(3, 2)), combiner="mean")
    columns = [X_COL, emb]
    layers = [(RNG.normal(size=(5, 4)), RNG.normal(size=4)), (RNG.normal(size=(4, 1)), RNG.normal(size=1))]
    est = DNNRegressor([4], columns, layers)
    raw = build_raw_serving_input_receiver_fn({"x": (dtypes.FLOAT, (None, 3)), "kind": (dtypes.STRING, (None, 2))})
    rt = Runtime.from_bundle(read_bundle(export_model(str(tmp_path), est.model_fn, raw)))
    assert set(rt.signatures) == {"serving_default", "predict"}  # the regress head needs examples
    kinds = np.array([[b"a", b"b"], [b"c", b""], [b"", b""]], dtype=object)
    out = rt.run("serving_default", {"x": X[:3], "kind": kinds})["predictions"]
    mean_emb = np.stack([emb.weights[[0, 1]].mean(0), emb.weights[2], np.zeros(2)])
    h = np.maximum(np.hstack([mean_emb, X[:3]]) @ layers[0][0] + layers[0][1], 0)  # kind_embedding < x
    np.testing.assert_allclose(out, (h @ layers[1][0] + layers[1][1])[:, 0], rtol=1e-5, atol=1e-6)


def test_weight_shapes_and_names_are_checked() -> None:
    with pytest.raises(ValueError, match="keyed by the column names"):
        LinearRegressor([X_COL], {"y": np.zeros((3, 1))}, [0.0])
    with pytest.raises(ValueError, match=r"expected shape \[3, 3\]"):
        LinearClassifier([X_COL], {"x": np.zeros((3, 1))}, np.zeros(3), n_classes=3)
    with pytest.raises(ValueError, match="pairs"):
        DNNRegressor([4], [X_COL], [(np.zeros((3, 4)), np.zeros(4))])
    with pytest.raises(ValueError, match="activation"):
        DNNRegressor([], [X_COL], [(np.zeros((3, 1)), np.zeros(1))], activation="gelu")
    with pytest.raises(ValueError, match="distinct labels"):
        LinearClassifier([X_COL], {"x": np.zeros((3, 1))}, [0.0], label_vocabulary=["a"])
