"""export_model: receivers + heads -> signatures, written, published, read back and run."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from exporter import dtypes, storage, warmup
from exporter.bundle import read_bundle
from exporter.errors import ExportError
from exporter.export import build_model, export_model
from exporter.graph import GraphBuilder
from exporter.ops import categorical
from exporter.outputs import ExportOutput, PredictOutput
from exporter.receivers import build_parsing_serving_input_receiver_fn, build_raw_serving_input_receiver_fn
from exporter.runtime import Runtime
from protos.tessera import example_pb2
from tests.exporter.export_testlib import SPEC, expected_probs, model_fn, raw
from tests.s3_testlib import S3


def examples(x: np.ndarray) -> np.ndarray:
    out = []
    for row in x:
        ex = example_pb2.Example()
        ex.features.feature["x"].float_list.value.extend(row.tolist())
        out.append(ex.SerializeToString())
    return np.array(out, dtype=object)


parsing = build_parsing_serving_input_receiver_fn(SPEC)
X = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)


def load(path: str) -> Runtime:
    return Runtime.from_bundle(read_bundle(path))


def test_default_mode_every_head_is_a_signature(tmp_path: pathlib.Path) -> None:
    path = export_model(str(tmp_path), model_fn, parsing, default_head="classification", now=1_700_000_000)
    assert path == str(tmp_path / "1700000000")
    bundle = read_bundle(path)
    assert list(bundle.meta_graph.tags) == ["serve"]
    rt = Runtime.from_bundle(bundle)
    methods = {k: s.method_name.rsplit("/", 1)[1] for k, s in rt.signatures.items()}
    assert methods == {"serving_default": "classify", "classification": "classify", "regression": "regress",
                       "predict": "predict"}  # fmt: skip
    assert list(rt.signatures["predict"].inputs) == ["examples"]  # a parsing receiver's Predict alias
    out = rt.run("serving_default", {"inputs": examples(X)})
    np.testing.assert_allclose(out["scores"], expected_probs(X), rtol=1e-6)
    assert out["classes"].tolist() == [[b"no", b"yes"]] * len(X)
    np.testing.assert_allclose(rt.run("regression", {"inputs": examples(X)})["outputs"], expected_probs(X)[:, 1], rtol=1e-6)


def test_loaded_bundle_runs_like_the_in_memory_graph(tmp_path: pathlib.Path) -> None:
    built = build_model(model_fn, parsing, default_head="predict")
    in_memory = built.runtime()
    loaded = load(export_model(str(tmp_path), model_fn, parsing, default_head="predict"))
    assert set(loaded.signatures) == set(in_memory.signatures)
    for key, sig in loaded.signatures.items():
        feeds = {alias: examples(X) for alias in sig.inputs}
        a, b = in_memory.run(key, feeds), loaded.run(key, feeds)
        assert a.keys() == b.keys()
        for alias in a:
            np.testing.assert_array_equal(a[alias], b[alias])


def test_heads_that_do_not_fit_a_raw_receiver_are_left_out(tmp_path: pathlib.Path) -> None:
    # Classify/Regress need one string input; on a raw receiver only predict remains: the default.
    rt = load(export_model(str(tmp_path), model_fn, raw))
    assert set(rt.signatures) == {"predict", "serving_default"}
    out = rt.run("serving_default", {"x": X})
    np.testing.assert_allclose(out["probabilities"], expected_probs(X), rtol=1e-6)
    with pytest.raises(ExportError, match="does not fit"):
        build_model(model_fn, raw, default_head="classification")


def test_default_head_choice_errors() -> None:
    with pytest.raises(ExportError, match="none is the default"):
        build_model(model_fn, parsing)
    with pytest.raises(ExportError, match="not one of the model's heads"):
        build_model(model_fn, parsing, default_head="nope")
    with pytest.raises(ExportError, match="non-empty mapping"):
        build_model(lambda g, f: {}, parsing)

    def named_default(g: GraphBuilder, features: Mapping[str, Any]) -> dict[str, ExportOutput]:
        heads = model_fn(g, features)
        return {**heads, "serving_default": heads["regression"]}

    meta = build_model(named_default, parsing).meta_graph
    assert meta.signatures["serving_default"].method_name == "tensorflow/serving/regress"


def test_alternative_mode_builds_each_receiver_once_and_shares_variables(tmp_path: pathlib.Path) -> None:
    signatures = {
        "serving_default": (parsing, "classification"),
        "regression": (parsing, "regression"),
        "predict": (raw, "predict"),
    }
    calls: list[str] = []

    def counting(g: GraphBuilder, features: Mapping[str, Any]) -> dict[str, ExportOutput]:
        calls.append(features["x"].name)
        return model_fn(g, features)

    path = export_model(str(tmp_path), counting, None, signatures=signatures)
    assert len(calls) == 2  # one model per distinct receiver
    bundle = read_bundle(path)
    assert sorted(bundle.variables) == ["b", "w"]  # stored once, shared by both receivers
    rt = Runtime.from_bundle(bundle)
    assert set(rt.signatures) == set(signatures)
    classify = rt.run("serving_default", {"inputs": examples(X)})["scores"]
    predict = rt.run("predict", {"x": X})["probabilities"]
    np.testing.assert_array_equal(classify, predict)
    with pytest.raises(ExportError, match="no head 'nope'"):
        build_model(model_fn, None, signatures={"serving_default": (raw, "nope")})
    with pytest.raises(ExportError, match="does not fit its receiver"):
        build_model(model_fn, None, signatures={"serving_default": (raw, "classification")})


def test_versions_bump_never_overwrite_and_keep(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path / "m")
    first = export_model(base, model_fn, raw, now=1000)
    second = export_model(base, model_fn, raw, now=1000)  # same second: bumped past the newest
    assert (first, second) == (f"{base}/1000", f"{base}/1001")
    third = export_model(base, model_fn, raw, now=999, keep=2)
    assert third == f"{base}/1002"
    assert list(storage.list_versions(base)) == [1001, 1002]
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "m").iterdir())


def test_warmup_and_assets_extra_are_written(tmp_path: pathlib.Path) -> None:
    logs = [
        warmup.predict_log("predict", {"x": X[:2]}),
        warmup.classify_log("", list(examples(X[:3]))),  # empty name: serving_default
    ]
    path = export_model(
        str(tmp_path), model_fn, None,
        signatures={"serving_default": (parsing, "classification"), "predict": (raw, "predict")},
        warmup_requests=[log.SerializeToString() for log in logs], assets_extra={"notes.txt": b"hello"},
    )  # fmt: skip
    bundle = read_bundle(path)
    assert warmup.read_warmup(bundle.assets_extra_dir / warmup.WARMUP_FILE) == logs
    assert (bundle.assets_extra_dir / "notes.txt").read_bytes() == b"hello"


def test_bad_warmup_records_are_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ExportError, match="names signature 'missing'"):
        export_model(str(tmp_path), model_fn, raw, warmup_requests=[warmup.predict_log("missing", {"x": X})])
    with pytest.raises(ExportError, match="not a serialized PredictionLog"):
        export_model(str(tmp_path), model_fn, raw, warmup_requests=[b"\xff\xff"])
    with pytest.raises(ExportError, match="both"):
        export_model(str(tmp_path), model_fn, raw, warmup_requests=[warmup.predict_log("predict", {"x": X})],
                     assets_extra={warmup.WARMUP_FILE: b""})  # fmt: skip
    assert storage.list_versions(str(tmp_path), missing_ok=True) == {}


def test_a_bundle_that_would_not_load_is_never_published(tmp_path: pathlib.Path) -> None:
    def missing_asset(g: GraphBuilder, features: Mapping[str, Any]) -> dict[str, ExportOutput]:
        ids = categorical.vocabulary_lookup(features["k"], "not_added.txt")  # the asset was never added
        return {"predict": PredictOutput({"ids": ids})}

    receiver = build_raw_serving_input_receiver_fn({"k": (dtypes.STRING, (None,))})
    with pytest.raises(ExportError, match="does not load"):
        export_model(str(tmp_path / "m"), missing_asset, receiver)
    assert storage.list_versions(str(tmp_path / "m"), missing_ok=True) == {}


def test_export_to_s3_and_run(s3: S3, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
    base = s3.uri("export-test/m")
    location = export_model(base, model_fn, raw, now=42)
    assert location == s3.uri("export-test/m/42")
    out = load(location).run("predict", {"x": X})
    np.testing.assert_allclose(out["probabilities"], expected_probs(X), rtol=1e-6)
