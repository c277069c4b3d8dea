"""SavedModels built with TensorFlow for the SavedModel importer's tests, and TensorFlow's answers.

Run as a program, never imported by a test: TensorFlow registers its own `tensorflow.*` protobuf
messages, which clash with the gateway's TF Serving protos in one process (protobuf's descriptor pool
refuses the duplicate names), and pytest collects both. So the tests
(tests/exporter/savedmodel_testlib.py) run ``python -m tests.exporter.savedmodel_models`` once per
module; it builds the SavedModels, imports them with exporter.importers.savedmodel (as `tessera
import` does, in this TensorFlow process) and writes TensorFlow's answers on fixed inputs to JSON.

Each builder writes ``<base>/1/`` and returns the base path. Weights come from fixed seeds;
nothing is downloaded.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence

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


def two_outputs(base: pathlib.Path, seed: int = 3) -> pathlib.Path:
    tf.keras.utils.set_random_seed(seed)
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


# -- models the import must refuse (and one it must take) ------------------------------------------
def _module(base: pathlib.Path, fn: Callable, *specs: tf.TensorSpec, key: str = "serving_default", **attrs: object) -> pathlib.Path:
    module = tf.Module()
    for name, value in attrs.items():
        setattr(module, name, value)
    module.f = tf.function(lambda *args: fn(module, *args), input_signature=list(specs))
    tf.saved_model.save(module, str(base / "1"), signatures={key: module.f})
    return base


_EXAMPLES = tf.TensorSpec([None], tf.string, name="examples")
_X = {"x": tf.io.FixedLenFeature([1], tf.float32)}


def _two_color_table(default: int) -> tf.lookup.StaticHashTable:
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(["red", "blue"]), tf.constant([0, 1], tf.int64))
    return tf.lookup.StaticHashTable(init, default)


ODD_MODELS: dict[str, Callable[[pathlib.Path], pathlib.Path]] = {
    "igamma": lambda b: _module(b, lambda m, x: {"y": tf.math.igamma(x + 2.0, x + 1.0)},
                                tf.TensorSpec([None, 2], tf.float32, name="x"), key="my_signature"),
    "parse_computed": lambda b: _module(b, lambda m, s: {"y": tf.io.parse_example(tf.strings.join([s, s]), _X)["x"]}, _EXAMPLES),
    "parse_and_more": lambda b: _module(
        b, lambda m, s: {"y": tf.io.parse_example(s, _X)["x"] + tf.cast(tf.strings.length(s), tf.float32)[:, None]},
        _EXAMPLES),
    "fixed_len_sequence": lambda b: _module(b, lambda m, s: {"y": tf.reduce_sum(tf.io.parse_example(
        s, {"x": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)})["x"], axis=1)}, _EXAMPLES),
    "ragged": lambda b: _module(b, lambda m, s: {"y": tf.reduce_sum(tf.io.parse_example(
        s, {"x": tf.io.RaggedFeature(tf.float32)})["x"], axis=1)}, _EXAMPLES),
    # tf.one_hot of -1 (out of vocabulary) is all zeros; tf2onnx's ONNX OneHot counts -1 from the end.
    "one_hot_of_minus_one": lambda b: _module(b, lambda m, s: {"y": tf.one_hot(m.table.lookup(tf.io.parse_example(
        s, {"color": tf.io.FixedLenFeature([], tf.string, default_value="red")})["color"]), 2)}, _EXAMPLES,
        table=_two_color_table(-1)),
    # Taken: TF1's ParseExample op (Estimator exports before ParseExampleV2), a default and a var-len list.
    "parse_example_v1_op": lambda b: _module(b, lambda m, s: (lambda p: {"y": p.dense_values[0] * 2.0 + tf.cast(
        tf.reduce_sum(tf.sparse.to_dense(tf.SparseTensor(p.sparse_indices[0], p.sparse_values[0], p.sparse_shapes[0])),
                      axis=1, keepdims=True), tf.float32)})(tf.raw_ops.ParseExample(
        serialized=s, names=tf.constant([], tf.string), sparse_keys=[tf.constant("tags")], dense_keys=[tf.constant("age")],
        dense_defaults=[tf.constant([30.0])], sparse_types=[tf.int64], dense_shapes=[[1]])), _EXAMPLES),
    # Taken: string and int64 inputs fed straight into the ONNX body.
    "string_and_int_inputs": lambda b: _module(b, lambda m, w, n: {"y": tf.cast(m.table.lookup(w) * n, tf.float32)},
                                               tf.TensorSpec([None], tf.string, name="word"),
                                               tf.TensorSpec([None], tf.int64, name="n"), table=_two_color_table(7)),
}  # fmt: skip


# -- the program --------------------------------------------------------------------------------
def tf_outputs(version_dir: pathlib.Path | str, key: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TensorFlow's answer: signature `key` of the original SavedModel on `feeds`."""
    function = tf.saved_model.load(str(version_dir)).signatures[key]
    return {k: v.numpy() for k, v in function(**{a: tf.constant(v) for a, v in feeds.items()}).items()}


def encode(array: np.ndarray) -> dict:
    array = np.asarray(array)
    if array.dtype == object:
        data = [base64.b64encode(bytes(v)).decode() for v in array.reshape(-1)]
        return {"dtype": "bytes", "shape": list(array.shape), "data": data}
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.reshape(-1).tolist()}


def _declared(version_dir: pathlib.Path) -> dict:
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    out = {}
    for key, sig in saved.meta_graphs[0].signature_def.items():
        if key.startswith("__"):
            continue

        def infos(specs: Mapping) -> dict:
            return {a: [int(i.dtype), None if i.tensor_shape.unknown_rank else [d.size for d in i.tensor_shape.dim]]
                    for a, i in specs.items()}  # fmt: skip

        out[key] = {"method": sig.method_name, "inputs": infos(sig.inputs), "outputs": infos(sig.outputs)}
    return out


BATCHES = {"conv": (1, 9, 64), "conv_bench": ()}
TAKEN_ODD_MODELS = ("string_and_int_inputs", "parse_example_v1_op")
PARSING = ("parsing", "estimator", "parse_example_v1_op")
BUILDERS: dict[str, Callable[[pathlib.Path], pathlib.Path]] = {
    "dense": dense_classifier,
    "conv": conv2d,
    "conv_bench": conv2d,
    "two": two_outputs,
    "two_v2": lambda b: two_outputs(b, seed=11),
    "parsing": parsing_module,
    "estimator": lambda b: estimator_style(b, warmup=_warmup()),
    **ODD_MODELS,
}


def _warmup() -> bytes:
    from exporter.warmup import classify_log, encode_warmup

    return encode_warmup([classify_log("classification", make_examples(3), model_name="est")])


def _cases(name: str, version_dir: pathlib.Path, declared: dict) -> dict:
    """TensorFlow's answers for every signature at the model's batch sizes, on fixed inputs."""
    cases = {}
    for key, sig in declared.items():
        for batch in BATCHES.get(name, (17,)):
            rng = np.random.RandomState(batch)
            feeds = {}
            for alias, (dtype, dims) in sig["inputs"].items():
                if dtype == 7 and name in PARSING:
                    feeds[alias] = np.array(make_examples(batch, seed=batch), dtype=object)
                elif dtype == 7:
                    feeds[alias] = np.array([[b"red", b"blue", b"zz"][i % 3] for i in range(batch)], dtype=object)
                elif dtype == 9:
                    feeds[alias] = rng.randint(0, 5, batch).astype(np.int64)
                else:
                    feeds[alias] = rng.rand(batch, *dims[1:]).astype(np.float32)
            outputs = tf_outputs(version_dir, key, feeds)
            cases[f"{key}@{batch}"] = {
                "signature": key,
                "inputs": {a: encode(v) for a, v in feeds.items()},
                "outputs": {a: encode(v) for a, v in outputs.items()},
            }
    return cases


def main(argv: Sequence[str]) -> int:
    """``python -m tests.exporter.savedmodel_models OUT [--no-import] NAME...``: builds each model under
    OUT/NAME (a base path), imports it into OUT/NAME-bundles, writes OUT/manifest.json."""
    from exporter.errors import ExportError
    from exporter.importers.savedmodel import import_saved_model

    out, names = pathlib.Path(argv[0]), [a for a in argv[1:] if not a.startswith("--")]
    manifest = {}
    for name in names:
        base = BUILDERS[name](out / name)
        entry: dict = {"base": str(base), "declared": _declared(base / "1")}
        if name not in ODD_MODELS or name in TAKEN_ODD_MODELS:
            entry["cases"] = _cases(name, base / "1", entry["declared"])
        if "--no-import" not in argv:
            try:
                (result,) = import_saved_model(str(base), str(out / f"{name}-bundles"))
                entry["bundle"] = result.path
            except ExportError as e:
                entry["error"] = str(e)
        manifest[name] = entry
    (out / "manifest.json").write_text(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
