"""What `tessera import` refuses, and how it says so: ops without an ONNX conversion (named, with
the signature's key), parses that cannot become Tessera's receiver, and a converted body that would
answer differently from TensorFlow. Nothing is published for a refused version."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from exporter.errors import ExportError  # noqa: E402
from exporter.importers.savedmodel import import_saved_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _save(base: pathlib.Path, fn: Callable, spec: tf.TensorSpec, key: str = "serving_default") -> pathlib.Path:
    module = tf.Module()
    module.f = tf.function(fn, input_signature=[spec])
    tf.saved_model.save(module, str(base / "1"), signatures={key: module.f})
    return base


def _refused(tmp_path: pathlib.Path, base: pathlib.Path, match: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(ExportError, match=match):
        import_saved_model(str(base), str(dest))
    assert not dest.exists() or not any(dest.iterdir())  # nothing published, no staging left


def test_an_op_without_onnx_conversion_fails_naming_the_op_and_the_signature(tmp_path) -> None:
    base = _save(tmp_path / "m", lambda x: {"y": tf.math.igamma(x + 2.0, x + 1.0)},
                 tf.TensorSpec([None, 2], tf.float32, name="x"), key="my_signature")  # fmt: skip
    _refused(tmp_path, base, r"signature 'my_signature': TensorFlow op\(s\) with no ONNX conversion: Igamma \(node '.*Igamma'\)")


def test_a_parse_of_computed_strings_is_refused(tmp_path) -> None:
    spec = {"x": tf.io.FixedLenFeature([1], tf.float32)}
    base = _save(tmp_path / "m", lambda s: {"y": tf.io.parse_example(tf.strings.join([s, s]), spec)["x"]},
                 tf.TensorSpec([None], tf.string, name="examples"))  # fmt: skip
    _refused(tmp_path, base, "parse must read serialized examples fed as one signature input")


def test_a_graph_that_reads_the_examples_beyond_parsing_them_is_refused(tmp_path) -> None:
    spec = {"x": tf.io.FixedLenFeature([1], tf.float32)}

    def fn(s: tf.Tensor) -> dict:
        length = tf.cast(tf.strings.length(s), tf.float32)[:, None]
        return {"y": tf.io.parse_example(s, spec)["x"] + length}

    base = _save(tmp_path / "m", fn, tf.TensorSpec([None], tf.string, name="examples"))
    _refused(tmp_path, base, "reads the serialized examples 'examples' beyond parsing them")


def test_fixed_len_sequence_features_are_refused(tmp_path) -> None:
    spec = {"x": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)}
    base = _save(tmp_path / "m", lambda s: {"y": tf.reduce_sum(tf.io.parse_example(s, spec)["x"], axis=1)},
                 tf.TensorSpec([None], tf.string, name="examples"))  # fmt: skip
    _refused(tmp_path, base, "feature 'x' is a FixedLenSequenceFeature")


def test_ragged_features_are_refused(tmp_path) -> None:
    spec = {"x": tf.io.RaggedFeature(tf.float32)}
    base = _save(tmp_path / "m", lambda s: {"y": tf.reduce_sum(tf.io.parse_example(s, spec)["x"], axis=1)},
                 tf.TensorSpec([None], tf.string, name="examples"))  # fmt: skip
    _refused(tmp_path, base, "ragged features")


def test_a_body_that_answers_differently_from_tensorflow_is_never_published(tmp_path) -> None:
    # tf.one_hot of -1 (an out-of-vocabulary lookup) is all zeros; tf2onnx's ONNX OneHot counts -1
    # from the end. The import-time check runs both on a synthetic example and refuses the body.
    spec = {"color": tf.io.FixedLenFeature([], tf.string, default_value="red")}
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(["red", "blue"]), tf.constant([0, 1], tf.int64)), -1
    )
    module = tf.Module()
    module.table = table

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def f(s: tf.Tensor) -> dict:
        return {"y": tf.one_hot(module.table.lookup(tf.io.parse_example(s, spec)["color"]), 2)}

    module.f = f
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": f})
    _refused(tmp_path, tmp_path / "m", "output 'y' of the converted ONNX body differs from TensorFlow's")


def test_an_imported_model_with_raw_string_and_int_inputs(tmp_path) -> None:
    # Inputs other than float: int64 indices and strings go straight into the ONNX body.
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(["a", "b"]), tf.constant([1, 2], tf.int64)), 0
    )
    module = tf.Module()
    module.table = table

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="word"), tf.TensorSpec([None], tf.int64, name="n")])
    def f(word: tf.Tensor, n: tf.Tensor) -> dict:
        return {"y": tf.cast(module.table.lookup(word) * n, tf.float32)}

    module.f = f
    tf.saved_model.save(module, str(tmp_path / "m" / "1"), signatures={"serving_default": f})
    (result,) = import_saved_model(str(tmp_path / "m"), str(tmp_path / "dest"))
    from exporter.servable import load_servable

    servable = load_servable("tensorflow", result.path)
    words = np.array([b"a", b"b", b"zz"], dtype=object)
    got = servable.run("serving_default", {"word": words, "n": np.array([3, 4, 5], dtype=np.int64)})
    np.testing.assert_array_equal(got["y"], [3.0, 8.0, 0.0])
