"""`tessera import`: SavedModels built with TensorFlow (a Keras Dense classifier, a Keras Conv2D
model on 28x28 inputs, a Keras model with two outputs, a tf.Module that parses tf.Examples, an
Estimator-style TF1 export with classify/regress/predict) become bundles whose signatures keep TF's
keys, methods, aliases, dtypes and shapes, and whose answers equal TensorFlow's within 1e-5.

TensorFlow runs in one subprocess per module (savedmodel_testlib); this process loads the bundles
as a server does (`load_servable("tensorflow", ...)`), with no TensorFlow.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest

from exporter import bundle
from exporter.errors import InvalidInputError
from exporter.servable import load_servable
from exporter.signature import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD
from exporter.warmup import read_warmup
from protos.tessera import example_pb2
from tests.exporter.savedmodel_testlib import (
    Built,
    assert_close,
    build,
    import_with_cli,
    skip_without_the_extra,
)
from tests.s3_testlib import S3

skip_without_the_extra()
pytestmark = pytest.mark.timeout(600)
NAMES = ("dense", "conv", "two", "parsing", "estimator")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    models = build(tmp_path_factory.mktemp("savedmodels"), NAMES)
    for name in NAMES:
        assert models[name].error is None, models[name].error
    return models


def _specs(infos: dict) -> dict:
    return {alias: (info.dtype, info.shape) for alias, info in infos.items()}


def _declared(built: Built) -> dict:
    def shape(dims: list | None) -> tuple | None:
        return None if dims is None else tuple(None if d < 0 else d for d in dims)

    return {
        key: (sig["method"], {a: (d, shape(s)) for a, (d, s) in sig["inputs"].items()},
              {a: (d, shape(s)) for a, (d, s) in sig["outputs"].items()})
        for key, sig in built.declared.items()
    }  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_every_signature_keeps_key_method_aliases_dtypes_and_shapes(built, name: str) -> None:
    servable = load_servable("tensorflow", built[name].bundle)
    got = {k: (s.method_name, _specs(s.inputs), _specs(s.outputs)) for k, s in servable.signatures.items()}
    assert got == _declared(built[name])


@pytest.mark.parametrize("name", NAMES)
def test_answers_equal_tensorflows_within_1e_5(built, name: str) -> None:
    servable = load_servable("tensorflow", built[name].bundle)
    assert built[name].cases
    for case in built[name].cases.values():
        assert_close(servable.run(case.signature, case.inputs), case.outputs)


def test_the_shapes_of_the_models(built) -> None:
    conv = load_servable("tensorflow", built["conv"].bundle).signatures["serving_default"]
    assert [i.shape for i in conv.inputs.values()] == [(None, 28, 28, 1)]
    assert sorted(c.split("@")[1] for c in built["conv"].cases if c.startswith("serving_default")) == ["1", "64", "9"]
    two = load_servable("tensorflow", built["two"].bundle)
    assert set(two.signatures["serving_default"].outputs) == {"probs", "value"}
    case = built["two"].cases["serving_default@17"]
    assert_close(two.run("serving_default", case.inputs, output_filter=["value"]), {"value": case.outputs["value"]})
    est = load_servable("tensorflow", built["estimator"].bundle).signatures
    assert {k: s.method_name for k, s in est.items()} == {
        "serving_default": CLASSIFY_METHOD, "classification": CLASSIFY_METHOD,
        "regression": REGRESS_METHOD, "predict": PREDICT_METHOD,
    }  # fmt: skip


def test_a_parse_example_signature_becomes_tesseras_parsing_receiver(built) -> None:
    _, meta = bundle.read_meta_graph(built["parsing"].bundle)
    ops = [node.op for node in meta.graph.nodes]
    assert ops.count("ParseExample") == 1 and ops.count("OnnxModel") == 1  # parse in Tessera, the rest in ONNX
    servable = load_servable("tensorflow", built["parsing"].bundle)
    no_x = example_pb2.Example().SerializeToString()  # 'x' has no default: it is required, as in TF
    with pytest.raises(InvalidInputError, match="Feature: x .* is required"):
        servable.run("serving_default", {"examples": np.array([no_x], dtype=object)})
    with pytest.raises(InvalidInputError, match="Could not parse example input"):
        servable.run("serving_default", {"examples": np.array([b"\xff\xff not an example"], dtype=object)})


def test_warmup_requests_of_the_saved_model_are_kept(built) -> None:
    servable = load_servable("tensorflow", built["estimator"].bundle)
    (log,) = read_warmup(servable.assets_extra_dir / "tf_serving_warmup_requests")
    assert log.classify_log.request.model_spec.signature_name == "classification"


def test_tessera_import_takes_a_base_path_of_versions_and_keeps_their_numbers(built, tmp_path) -> None:
    source = tmp_path / "src"
    shutil.copytree(built["dense"].base / "1", source / "3")
    shutil.copytree(built["two"].base / "1", source / "12")
    (source / "not-a-version").mkdir()
    dest = tmp_path / "dest"
    done = import_with_cli(str(source), str(dest))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "version 3: imported to" in done.stdout and "version 12: imported to" in done.stdout
    assert sorted(p.name for p in dest.iterdir()) == ["12", "3"]  # published atomically: no staging left
    assert "features" in load_servable("tensorflow", str(dest / "12")).signatures["serving_default"].inputs
    again = import_with_cli(str(source), str(dest))
    assert again.returncode == 0 and "version 3: already in" in again.stdout  # never overwritten
    # One version directory works too (its number kept), and so does a URI.
    one = import_with_cli(f"file://{source / '12'}", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    assert (tmp_path / "one" / "12" / "MANIFEST.pb").is_file()


def test_tessera_import_refuses_what_is_not_a_versioned_saved_model(built, tmp_path: pathlib.Path) -> None:
    done = import_with_cli(str(tmp_path), str(tmp_path / "out"))
    assert done.returncode == 1 and "no SavedModel versions" in done.stderr
    shutil.copytree(built["dense"].base / "1", tmp_path / "mymodel")
    done = import_with_cli(str(tmp_path / "mymodel"), str(tmp_path / "out"))
    assert done.returncode == 1 and "not named by a version number" in done.stderr


def test_signatures_over_one_graph_share_one_onnx_body(built) -> None:
    def bodies(name: str) -> list[str]:
        return sorted(p.name for p in (pathlib.Path(built[name].bundle) / "assets").glob("*.onnx"))

    assert len(bodies("dense")) == 1  # Keras: serve and serving_default are one function
    assert len(bodies("estimator")) == 3  # serving_default is the classification head; regression, predict


def test_tessera_import_from_and_to_an_object_store(built, s3: S3, tmp_path) -> None:
    import pyarrow.fs as pafs

    pafs.copy_files(str(built["two"].base), f"{s3.bucket}/saved/two", destination_filesystem=s3.fs)
    done = import_with_cli(s3.uri("saved/two"), s3.uri("bundles/two"))
    assert done.returncode == 0, done.stderr[-2000:]
    servable = load_servable("tensorflow", s3.uri("bundles/two/1"))
    case = built["two"].cases["serving_default@17"]
    assert_close(servable.run("serving_default", case.inputs), case.outputs)
