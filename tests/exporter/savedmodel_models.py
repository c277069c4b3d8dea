"""SavedModels built with TensorFlow for the SavedModel importer's tests, and TensorFlow's answers.

Each builder writes ``<base>/1/`` and returns the base path. Building costs seconds (TF's import,
Keras), so tests build them once per module. Weights come from fixed seeds; nothing is downloaded.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

VOCAB = ["red", "green", "blue"]
# Feature spec of the parsing models: FixedLen with and without defaults, VarLen, a string feature.
SPEC = {
    "age": tf.io.FixedLenFeature([1], tf.float32, default_value=[30.0]),
    "x": tf.io.FixedLenFeature([2], tf.float32),
    "tags": tf.io.VarLenFeature(tf.int64),
    "color": tf.io.FixedLenFeature([], tf.string, default_value="red"),
}
CLASS_LABELS = [b"low", b"mid", b"high"]


def dense_classifier(base: pathlib.Path) -> pathlib.Path:
    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential([
        tf.keras.Input((4,)),
        tf.keras.layers.Dense(16, activation="relu"),
        tf.keras.layers.Dense(3, activation="softmax"),
    ])  # fmt: skip
    model.export(str(base / "1"), verbose=False)
    return base


def conv2d(base: pathlib.Path) -> pathlib.Path:
    tf.keras.utils.set_random_seed(2)
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        tf.keras.layers.Conv2D(8, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])  # fmt: skip
    model.export(str(base / "1"), verbose=False)
    return base


def two_outputs(base: pathlib.Path) -> pathlib.Path:
    tf.keras.utils.set_random_seed(3)
    inputs = tf.keras.Input((8,), name="features")
    hidden = tf.keras.layers.Dense(16, activation="tanh")(inputs)
    outputs = {
        "probs": tf.keras.layers.Dense(3, activation="softmax", name="probs")(hidden),
        "value": tf.keras.layers.Dense(1, name="value")(hidden),
    }
    tf.keras.Model(inputs, outputs).export(str(base / "1"), verbose=False)
    return base


def _features_to_logits(features: Mapping[str, tf.Tensor], table: tf.lookup.StaticHashTable, w: tf.Tensor) -> tf.Tensor:
    # Out-of-vocabulary colors map to their own index (3): ONNX's OneHot would wrap a -1 around.
    color = tf.one_hot(table.lookup(features["color"]), len(VOCAB) + 1)
    tags = tf.sparse.to_dense(features["tags"])
    tag_sum = tf.cast(tf.reduce_sum(tags, axis=1, keepdims=True), tf.float32)
    tag_count = tf.cast(tf.reduce_sum(tf.ones_like(tags), axis=1, keepdims=True), tf.float32)
    dense = tf.concat([features["age"] / 100.0, features["x"], tag_sum / 10.0, tag_count, color], axis=1)
    return tf.matmul(dense, w)


def _table() -> tf.lookup.StaticHashTable:
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(VOCAB), tf.constant([0, 1, 2], tf.int64))
    return tf.lookup.StaticHashTable(init, default_value=len(VOCAB))


def _weights() -> np.ndarray:
    return np.random.RandomState(4).randn(9, 3).astype(np.float32)


class ParsingModule(tf.Module):
    """A tf.Module whose signature parses serialized tf.Examples (a hand-written receiver)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(_weights())
        self.table = _table()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def predict(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = _features_to_logits(tf.io.parse_example(examples, SPEC), self.table, self.w)
        return {"scores": tf.nn.softmax(logits), "logits": logits}


def parsing_module(base: pathlib.Path) -> pathlib.Path:
    module = ParsingModule()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.predict})
    return base


def estimator_style(base: pathlib.Path, warmup: bytes | None = None) -> pathlib.Path:
    """TF1's SavedModelBuilder over a parsing receiver, as an Estimator exports: classify (the
    default), regress and predict signatures on one `input_example_tensor`."""
    sdu = tf.compat.v1.saved_model.signature_def_utils
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="input_example_tensor")
        w = tf.compat.v1.get_variable("w", initializer=_weights())
        logits = _features_to_logits(tf.io.parse_example(serialized, SPEC), _table(), w)
        scores = tf.nn.softmax(logits)
        classes = tf.tile(tf.constant([CLASS_LABELS]), [tf.shape(scores)[0], 1])
        value = tf.reduce_sum(logits, axis=1, keepdims=True)
        sess.run(tf.compat.v1.global_variables_initializer())
        sess.run(tf.compat.v1.tables_initializer())
        classify = sdu.classification_signature_def(serialized, classes, scores)
        builder = tf.compat.v1.saved_model.Builder(str(base / "1"))
        builder.add_meta_graph_and_variables(
            sess, ["serve"],
            signature_def_map={
                "serving_default": classify,
                "classification": classify,
                "regression": sdu.regression_signature_def(serialized, value),
                "predict": sdu.predict_signature_def({"examples": serialized}, {"logits": logits, "scores": scores}),
            },
            main_op=tf.compat.v1.tables_initializer(),
        )  # fmt: skip
        builder.save()
    if warmup is not None:
        (base / "1" / "assets.extra").mkdir()
        (base / "1" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(warmup)
    return base


def make_examples(n: int, seed: int = 0) -> list[bytes]:
    """Examples that exercise every part of SPEC: missing defaults, empty and long var-len lists,
    in- and out-of-vocabulary colors."""
    rng = np.random.RandomState(seed)
    colors = [*VOCAB, "purple", ""]
    out = []
    for i in range(n):
        feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=rng.randn(2).tolist()))}
        if i % 3:
            feature["age"] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(rng.randint(1, 90))]))
        feature["tags"] = tf.train.Feature(int64_list=tf.train.Int64List(value=rng.randint(0, 9, i % 4).tolist()))
        if i % 5:
            feature["color"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[colors[i % len(colors)].encode()]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def tf_outputs(version_dir: pathlib.Path | str, key: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TensorFlow's answer: signature `key` of the original SavedModel on `feeds`."""
    function = tf.saved_model.load(str(version_dir)).signatures[key]
    return {k: v.numpy() for k, v in function(**{a: tf.constant(v) for a, v in feeds.items()}).items()}


def signature_keys(version_dir: pathlib.Path | str) -> Sequence[str]:
    return sorted(k for k in tf.saved_model.load(str(version_dir)).signatures)
