"""examples/export_models.py: both example models exported as issue 2 specifies, equal to scikit-learn."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from examples import export_models
from exporter import storage, warmup
from exporter.bundle import read_bundle
from exporter.runtime import Runtime
from exporter.signature import Signature

REPO = pathlib.Path(__file__).resolve().parents[2]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def io(sig: Signature) -> tuple[str, dict, dict]:
    def shape(d: tuple) -> list[int]:
        return [-1 if x is None else x for x in d]

    return (
        sig.method_name.rsplit("/", 1)[1],
        {a: (i.dtype, shape(i.shape)) for a, i in sig.inputs.items()},
        {a: (i.dtype, shape(i.shape)) for a, i in sig.outputs.items()},
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("models")
    assert export_models.main(["--base", str(base)]) == 0
    return base


def load(base: pathlib.Path, name: str) -> Runtime:
    versions = storage.list_versions(base / name)
    assert len(versions) == 1
    return Runtime.from_bundle(read_bundle(versions[max(versions)]))


def test_iris_signatures_and_outputs_equal_sklearn(exported: pathlib.Path) -> None:
    rt = load(exported, "iris")
    assert io(rt.signatures["serving_default"]) == (
        "classify", {"inputs": (7, [-1])}, {"classes": (7, [-1, 3]), "scores": (1, [-1, 3])}
    )
    assert io(rt.signatures["predict"]) == (
        "predict", {"x": (1, [-1, 4])}, {"probabilities": (1, [-1, 3]), "class_ids": (9, [-1])}
    )
    trained = export_models.train_iris()
    X = trained.x_test
    expected = trained.estimator.predict_proba(X)
    out = rt.run("predict", {"x": X.astype(np.float32)})
    np.testing.assert_allclose(out["probabilities"], expected, **TOL)
    np.testing.assert_array_equal(out["class_ids"], trained.estimator.predict(X))
    examples = np.array(export_models.serialize_examples(export_models.IRIS_FEATURES, X), dtype=object)
    classified = rt.run("serving_default", {"inputs": examples})
    np.testing.assert_allclose(classified["scores"], expected, **TOL)
    assert classified["classes"][0].tolist() == [b"setosa", b"versicolor", b"virginica"]


def test_diabetes_signatures_and_outputs_equal_sklearn(exported: pathlib.Path) -> None:
    rt = load(exported, "diabetes")
    assert io(rt.signatures["serving_default"]) == ("regress", {"inputs": (7, [-1])}, {"outputs": (1, [-1])})
    assert io(rt.signatures["predict"]) == ("predict", {"x": (1, [-1, 10])}, {"predictions": (1, [-1])})
    trained = export_models.train_diabetes()
    X = trained.x_test
    expected = trained.estimator.predict(X)
    np.testing.assert_allclose(rt.run("predict", {"x": X.astype(np.float32)})["predictions"], expected, **TOL)
    names = trained.model.feature_names
    assert names == tuple(export_models.load_diabetes().feature_names)
    examples = np.array(export_models.serialize_examples(names, X), dtype=object)
    np.testing.assert_allclose(rt.run("serving_default", {"inputs": examples})["outputs"], expected, **TOL)


@pytest.mark.parametrize("name", ["iris", "diabetes"])
def test_warmup_requests_name_both_signatures(exported: pathlib.Path, name: str) -> None:
    bundle = read_bundle(storage.list_versions(exported / name).popitem()[1])
    logs = warmup.read_warmup(bundle.assets_extra_dir / warmup.WARMUP_FILE)
    kinds = {log.WhichOneof("log_type"): getattr(log, log.WhichOneof("log_type")).request.model_spec.signature_name
             for log in logs}  # fmt: skip
    assert kinds == {"classify_log" if name == "iris" else "regress_log": "serving_default", "predict_log": "predict"}


def test_if_missing_skips_and_the_script_runs_as_a_file(tmp_path: pathlib.Path) -> None:
    # As a file (python examples/export_models.py DIR), then again with --if-missing: nothing new.
    script = REPO / "examples" / "export_models.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, capture_output=True, timeout=120)
    before = {m: list(storage.list_versions(tmp_path / m)) for m in ("iris", "diabetes")}
    assert all(len(v) == 1 for v in before.values())
    assert export_models.export_all(str(tmp_path), if_missing=True) == {"iris": None, "diabetes": None}
    assert {m: list(storage.list_versions(tmp_path / m)) for m in ("iris", "diabetes")} == before
