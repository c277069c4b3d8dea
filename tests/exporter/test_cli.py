"""`tessera inspect` and `tessera run` (cluster.cli dispatching to exporter.cli)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from cluster import cli
from exporter import dtypes
from exporter.bundle import write_bundle
from exporter.cli import _jsonable
from protos.tessera import bundle_pb2


def _hand_made_meta_graph() -> bundle_pb2.MetaGraph:
    """A MetaGraph proto written by hand: inspect must not need a runnable graph."""
    meta = bundle_pb2.MetaGraph(tags=["serve"])
    sig = meta.signatures["predict"]
    sig.method_name = "tensorflow/serving/predict"
    sig.inputs["x"].CopyFrom(bundle_pb2.TensorSpec(name="x:0", dtype=bundle_pb2.DT_FLOAT, shape=bundle_pb2.Shape(dim=[-1, 4])))
    sig.outputs["probabilities"].CopyFrom(
        bundle_pb2.TensorSpec(name="softmax:0", dtype=bundle_pb2.DT_FLOAT, shape=bundle_pb2.Shape(dim=[-1, 3]))
    )
    sig.outputs["class_ids"].CopyFrom(
        bundle_pb2.TensorSpec(name="argmax:0", dtype=bundle_pb2.DT_INT64, shape=bundle_pb2.Shape(dim=[-1]))
    )
    cls = meta.signatures["serving_default"]
    cls.method_name = "tensorflow/serving/classify"
    cls.inputs["inputs"].CopyFrom(bundle_pb2.TensorSpec(name="examples:0", dtype=bundle_pb2.DT_STRING, shape=bundle_pb2.Shape(dim=[-1])))
    cls.outputs["scores"].CopyFrom(bundle_pb2.TensorSpec(name="s:0", dtype=bundle_pb2.DT_FLOAT, shape=bundle_pb2.Shape(unknown_rank=True)))
    return meta


@pytest.fixture
def base(tmp_path: pathlib.Path) -> pathlib.Path:
    base = tmp_path / "iris"
    write_bundle(base / "1", _hand_made_meta_graph(), {}, {}, {})
    write_bundle(base / "0002", _hand_made_meta_graph(), {}, {}, {})
    (base / "3").mkdir()  # a half-written export: no manifest
    (base / ".tmp-4-abc").mkdir()
    return base


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_inspect_base_path_lists_versions(base: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(capsys, "inspect", base)
    assert status == 1  # version 3 is incomplete
    lines = out.splitlines()
    assert lines[0] == f"The base path {base} contains the following versions:"
    assert lines[1] == "  1  signatures: predict, serving_default"
    assert lines[2] == "  2  signatures: predict, serving_default"
    assert lines[3].startswith("  3  INCOMPLETE OR CORRUPT:") and "MANIFEST.pb is missing" in lines[3]
    assert "signature_def" not in out and ".tmp-4" not in out and len(lines) == 4


def test_inspect_all_shows_every_signature(base: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, "inspect", base, "--all")
    assert out.count("signature_def['predict']:") == 2


def test_inspect_version_shows_signatures_like_saved_model_cli(
    base: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = _run(capsys, "inspect", base / "0002")
    assert status == 0
    expected_predict = """\
signature_def['predict']:
  The given SignatureDef contains the following input(s):
    inputs['x'] tensor_info:
        dtype: DT_FLOAT
        shape: (-1, 4)
        name: x:0
  The given SignatureDef contains the following output(s):
    outputs['class_ids'] tensor_info:
        dtype: DT_INT64
        shape: (-1)
        name: argmax:0
    outputs['probabilities'] tensor_info:
        dtype: DT_FLOAT
        shape: (-1, 3)
        name: softmax:0
  Method name is: tensorflow/serving/predict
"""
    assert expected_predict in out
    assert "Method name is: tensorflow/serving/classify" in out
    assert "dtype: DT_STRING" in out and "shape: unknown_rank" in out
    _, only, _ = _run(capsys, "inspect", base / "1", "--signature", "serving_default")
    assert "predict" not in only.replace("tensorflow/serving/classify", "")


def test_inspect_errors(tmp_path: pathlib.Path, base: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    status, out, _ = _run(capsys, "inspect", tmp_path / "empty")
    assert status == 1 and "No versions found" in out
    status, _, err = _run(capsys, "inspect", tmp_path / "missing")
    assert status == 1 and "Could not find base path" in err
    status, _, err = _run(capsys, "inspect", base / "1", "--signature", "nope")
    assert status == 1 and "no signature 'nope'" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve"])  # serve needs --model_base_path or --model_config_file
    assert exit_info.value.code == 2


# --- run -------------------------------------------------------------------------------------


@pytest.fixture
def model(tmp_path: pathlib.Path) -> tuple[pathlib.Path, np.ndarray, np.ndarray]:
    from exporter.graph import GraphBuilder
    from exporter.ops import math
    from exporter.outputs import PredictOutput

    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, 4), name="x")
    probs = math.softmax(math.bias_add(math.matmul(x, g.variable(w, "w")), g.variable(b, "b")))
    sig = PredictOutput({"probabilities": probs, "class_ids": math.argmax(probs)}).as_signature_def({"x": x})
    meta = bundle_pb2.MetaGraph(graph=g.to_proto())
    meta.signatures["predict"].CopyFrom(sig)
    base = tmp_path / "m"
    write_bundle(base / "5", meta, g.variables, g.assets, {})
    # An older version with other weights: `run BASE` must pick the newest.
    write_bundle(base / "4", meta, {"w": np.zeros_like(w), "b": np.zeros_like(b)}, g.assets, {})
    return base, w, b


def test_run_prints_outputs_as_json(model, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    base, w, b = model
    x = [[1, 2, 3, 4], [0.5, -1, 0, 2]]  # ints in JSON: converted to the input's float32
    for path in (base / "5", base):
        status, out, err = _run(capsys, "run", path, "--signature", "predict", "--inputs", json.dumps({"x": x}))
        assert status == 0, err
        outputs = json.loads(out)["outputs"]
        logits = np.asarray(x, np.float32) @ w + b
        expected = np.exp(logits - logits.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(outputs["probabilities"], expected, rtol=1e-5)
        assert outputs["class_ids"] == expected.argmax(1).tolist()


def test_run_filter_file_and_errors(model, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    base, *_ = model
    (tmp_path / "in.json").write_text('{"x": [[0, 0, 0, 0]]}')
    status, out, _ = _run(
        capsys, "run", base, "--signature", "predict", "--inputs", f"@{tmp_path / 'in.json'}", "--output-filter", "class_ids"
    )
    assert status == 0 and set(json.loads(out)["outputs"]) == {"class_ids"}
    status, _, err = _run(capsys, "run", base, "--inputs", '{"x": [[0, 0, 0, 0]]}')
    assert status == 1 and "no signature 'serving_default'" in err and "predict" in err
    status, _, err = _run(capsys, "run", base, "--signature", "predict", "--inputs", '{"y": [[0, 0, 0, 0]]}')
    assert status == 1 and "y" in err
    status, _, err = _run(capsys, "run", base, "--signature", "predict", "--inputs", "[1, 2]")
    assert status == 1 and "JSON object" in err
    status, _, err = _run(capsys, "run", base, "--signature", "predict", "--inputs", '{"x": [[0, 0, 0]]}')
    assert status == 1 and "error:" in err


def test_string_outputs_are_text_or_b64() -> None:
    array = dtypes.as_array([[b"setosa", b"\xff\x00"]], dtypes.STRING)
    assert _jsonable(array) == [["setosa", {"b64": "/wA="}]]


def test_console_script_entry_point(base: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "inspect", str(base / "1")],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert "signature_def['predict']:" in result.stdout
