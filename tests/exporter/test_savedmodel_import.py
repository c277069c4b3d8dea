"""`tessera import`: SavedModels built here with TensorFlow become bundles whose signatures keep
TF's keys, methods, aliases, dtypes and shapes, and whose answers equal TensorFlow's within 1e-5.

The SavedModels are built once per module (TensorFlow and Keras cost seconds). The bundles are
loaded as a server loads them (`load_servable("tensorflow", ...)`), with no TensorFlow involved.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from cluster import cli  # noqa: E402
from exporter.errors import ExportError, InvalidInputError  # noqa: E402
from exporter.importers import savedmodel  # noqa: E402
from exporter.importers.savedmodel import import_saved_model  # noqa: E402
from exporter.servable import load_servable  # noqa: E402
from exporter.signature import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD  # noqa: E402
from exporter.warmup import classify_log, encode_warmup, read_warmup  # noqa: E402
from tests.exporter import savedmodel_models as models  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("savedmodels")
    warmup = encode_warmup([classify_log("classification", models.make_examples(2), model_name="m")])
    return {
        "dense": models.dense_classifier(root / "dense"),
        "conv": models.conv2d(root / "conv"),
        "two": models.two_outputs(root / "two"),
        "parsing": models.parsing_module(root / "parsing"),
        "estimator": models.estimator_style(root / "estimator", warmup=warmup),
    }


@pytest.fixture(scope="module")
def imported(built: dict[str, pathlib.Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, base in built.items():
        (result,) = import_saved_model(str(base), str(root / name))
        assert result.imported and result.version == 1
        out[name] = result.path
    return out


def _close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for alias, value in want.items():
        assert got[alias].shape == value.shape, alias
        if value.dtype == object:
            assert got[alias].tolist() == value.tolist(), alias
        else:
            np.testing.assert_allclose(got[alias], value, atol=ATOL, rtol=0, err_msg=alias)


def _specs(infos: dict) -> dict:
    return {alias: (info.dtype, info.shape) for alias, info in infos.items()}


def test_keras_dense_classifier_keeps_its_signatures_and_answers(built, imported) -> None:
    servable = load_servable("tensorflow", imported["dense"])
    assert sorted(servable.signatures) == models.signature_keys(built["dense"] / "1")
    sig = servable.signatures["serving_default"]
    assert sig.method_name == PREDICT_METHOD
    assert _specs(sig.inputs) == {"keras_tensor": (1, (None, 4))}
    assert _specs(sig.outputs) == {"output_0": (1, (None, 3))}
    x = np.random.RandomState(0).randn(17, 4).astype(np.float32)
    for key in servable.signatures:
        _close(servable.run(key, {"keras_tensor": x}), models.tf_outputs(built["dense"] / "1", key, {"keras_tensor": x}))


@pytest.mark.parametrize("batch", [1, 9])
def test_keras_conv2d_on_28x28_answers_as_tensorflow(built, imported, batch: int) -> None:
    servable = load_servable("tensorflow", imported["conv"])
    (alias,) = servable.signatures["serving_default"].inputs
    assert servable.signatures["serving_default"].inputs[alias].shape == (None, 28, 28, 1)
    x = np.random.RandomState(batch).rand(batch, 28, 28, 1).astype(np.float32)
    got = servable.run("serving_default", {alias: x})
    _close(got, models.tf_outputs(built["conv"] / "1", "serving_default", {alias: x}))


def test_keras_model_with_two_outputs_keeps_both_aliases_and_filters(built, imported) -> None:
    servable = load_servable("tensorflow", imported["two"])
    sig = servable.signatures["serving_default"]
    assert _specs(sig.inputs) == {"features": (1, (None, 8))}
    assert _specs(sig.outputs) == {"probs": (1, (None, 3)), "value": (1, (None, 1))}
    x = np.random.RandomState(5).randn(6, 8).astype(np.float32)
    want = models.tf_outputs(built["two"] / "1", "serving_default", {"features": x})
    _close(servable.run("serving_default", {"features": x}), want)
    _close(servable.run("serving_default", {"features": x}, output_filter=["value"]), {"value": want["value"]})


def test_parse_example_signature_becomes_tesseras_parsing_receiver(built, imported) -> None:
    from exporter import bundle

    _, meta = bundle.read_meta_graph(imported["parsing"])
    ops = {node.op for node in meta.graph.nodes}
    assert {"Placeholder", "ParseExample", "OnnxModel"} <= ops  # the parse runs in Tessera, the rest in ONNX
    servable = load_servable("tensorflow", imported["parsing"])
    sig = servable.signatures["serving_default"]
    assert _specs(sig.inputs) == {"examples": (7, (None,))}
    examples = np.array(models.make_examples(40), dtype=object)  # defaults, empty var-len, out of vocabulary
    got = servable.run("serving_default", {"examples": examples})
    _close(got, models.tf_outputs(built["parsing"] / "1", "serving_default", {"examples": examples}))


def test_parsing_receiver_refuses_bad_examples_as_tf_does(imported) -> None:
    import tensorflow as tf

    servable = load_servable("tensorflow", imported["parsing"])
    no_x = tf.train.Example(features=tf.train.Features(feature={})).SerializeToString()
    with pytest.raises(InvalidInputError, match="Feature: x .* is required"):
        servable.run("serving_default", {"examples": np.array([no_x], dtype=object)})
    with pytest.raises(InvalidInputError, match="Could not parse example input"):
        servable.run("serving_default", {"examples": np.array([b"\xff\xff not an example"], dtype=object)})


def test_estimator_style_classify_regress_predict_keep_tf_serving_methods(built, imported) -> None:
    servable = load_servable("tensorflow", imported["estimator"])
    sigs = servable.signatures
    assert {k: s.method_name for k, s in sigs.items()} == {
        "serving_default": CLASSIFY_METHOD, "classification": CLASSIFY_METHOD,
        "regression": REGRESS_METHOD, "predict": PREDICT_METHOD,
    }  # fmt: skip
    assert _specs(sigs["classification"].inputs) == {"inputs": (7, (None,))}
    assert _specs(sigs["classification"].outputs) == {"classes": (7, (None, 3)), "scores": (1, (None, 3))}
    assert _specs(sigs["regression"].outputs) == {"outputs": (1, (None, 1))}
    assert _specs(sigs["predict"].inputs) == {"examples": (7, (None,))}
    examples = np.array(models.make_examples(25, seed=3), dtype=object)
    for key, alias in (("classification", "inputs"), ("regression", "inputs"), ("predict", "examples")):
        want = models.tf_outputs(built["estimator"] / "1", key, {alias: examples})
        _close(servable.run(key, {alias: examples}), want)


def test_warmup_requests_of_the_saved_model_are_kept(imported) -> None:
    servable = load_servable("tensorflow", imported["estimator"])
    (log,) = read_warmup(servable.assets_extra_dir / "tf_serving_warmup_requests")
    assert log.classify_log.request.model_spec.signature_name == "classification"


def test_base_path_imports_every_version_with_its_number_and_skips_imported_ones(built, tmp_path) -> None:
    import shutil

    source = tmp_path / "src"
    shutil.copytree(built["dense"] / "1", source / "3")
    shutil.copytree(built["two"] / "1", source / "12")
    (source / "not-a-version").mkdir()
    dest = tmp_path / "dest"
    results = import_saved_model(str(source), str(dest))
    assert [(r.version, r.imported) for r in results] == [(3, True), (12, True)]
    assert sorted(p.name for p in dest.iterdir()) == ["12", "3"]  # no staging left behind
    assert "features" in load_servable("tensorflow", str(dest / "12")).signatures["serving_default"].inputs
    again = import_saved_model(str(source), str(dest))
    assert [(r.version, r.imported) for r in again] == [(3, False), (12, False)]
    # One version directory alone works too, and keeps its number.
    (single,) = import_saved_model(str(source / "3"), str(tmp_path / "one"))
    assert single.version == 3


def test_import_from_a_uri(built, tmp_path) -> None:
    (result,) = import_saved_model(f"file://{built['dense']}", str(tmp_path / "dest"))
    assert result.imported and pathlib.Path(result.path, "MANIFEST.pb").is_file()


def test_tessera_import_command(built, tmp_path, capsys) -> None:
    assert cli.main(["import", str(built["two"]), str(tmp_path / "out")]) == 0
    assert "version 1: imported to" in capsys.readouterr().out
    assert cli.main(["import", str(tmp_path), str(tmp_path / "out2")]) == 1
    assert "no SavedModel versions" in capsys.readouterr().err


def test_a_directory_not_named_by_a_version_is_refused(built, tmp_path) -> None:
    import shutil

    shutil.copytree(built["dense"] / "1", tmp_path / "mymodel")
    with pytest.raises(ExportError, match="not named by a version number"):
        import_saved_model(str(tmp_path / "mymodel"), str(tmp_path / "out"))


def test_missing_extra_says_what_to_install(monkeypatch) -> None:
    real = savedmodel.importlib.util.find_spec
    monkeypatch.setattr(savedmodel.importlib.util, "find_spec", lambda n: None if n == "tf2onnx" else real(n))
    with pytest.raises(ExportError, match=r"needs tf2onnx.*pip install 'tessera-serving\[tensorflow\]'"):
        savedmodel.require_tensorflow()
