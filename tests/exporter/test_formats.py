"""A version directory in another format fails with the format named and what serves it (issue 8 §4),
through the loader registry and through `tessera inspect` and `tessera run`."""

from __future__ import annotations

import pathlib

import pytest

from cluster import cli
from exporter import servable
from exporter.errors import BundleError
from exporter.export import export_model
from tests.exporter.export_testlib import model_fn, raw
from tests.exporter.onnx_testlib import write_onnx_version


def _version(tmp_path: pathlib.Path, *files: str) -> pathlib.Path:
    root = tmp_path / "m" / "1"
    root.mkdir(parents=True)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\x00")
    return root


CASES = [
    (("saved_model.pb", "variables/variables.index"), "tensorflow", r"TensorFlow SavedModel \(saved_model.pb\).*`tessera import SRC DEST`"),
    (("model.onnx",), "tensorflow", r'ONNX model \(model.onnx\).*model_platform: "onnx"'),
    (("model.pt",), "tensorflow", r"PyTorch checkpoint \(model.pt\).*torch.onnx.export"),
    (("weights.pth",), "onnx", r"PyTorch checkpoint \(weights.pth\).*torch.onnx.export"),
    (("saved_model.pb",), "onnx", r"TensorFlow SavedModel.*tessera import"),
    (("model.pkl",), "tensorflow", r"Python pickle \(model.pkl\).*never"),
]


@pytest.mark.parametrize(("files", "platform", "message"), CASES)
def test_a_foreign_format_names_what_serves_it(tmp_path: pathlib.Path, files, platform, message) -> None:  # noqa: ANN001
    root = _version(tmp_path, *files)
    with pytest.raises(BundleError, match=message):
        servable.load_servable(platform, str(root))


def test_a_bundle_under_onnx_is_told_to_use_the_default_platform(tmp_path: pathlib.Path) -> None:
    path = export_model(str(tmp_path / "m"), model_fn, raw, now=1000)
    with pytest.raises(BundleError, match=r'Tessera bundle \(MANIFEST.pb\).*model_platform: "tensorflow"'):
        servable.load_servable("onnx", path)


@pytest.mark.parametrize("files", [(), ("graph.pb", "model.onnx")])  # empty; a bundle with an ONNX file, half written
def test_a_half_written_bundle_is_still_an_incomplete_export(tmp_path: pathlib.Path, files) -> None:  # noqa: ANN001
    root = _version(tmp_path, *files)
    with pytest.raises(BundleError, match="MANIFEST.pb is missing: incomplete export"):
        servable.load_servable("tensorflow", str(root))


def _cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_inspect_and_run_say_what_serves_a_savedmodel(tmp_path: pathlib.Path, capsys) -> None:  # noqa: ANN001
    root = _version(tmp_path, "saved_model.pb")
    for argv in (("inspect", root), ("run", root, "--inputs", "{}")):
        status, _, err = _cli(capsys, *argv)
        assert status == 1 and "tessera import SRC DEST" in err, err
    status, out, _ = _cli(capsys, "inspect", root.parent)  # the base path: each version's error
    assert status == 1 and "INCOMPLETE OR CORRUPT" in out and "TensorFlow SavedModel" in out


def test_inspect_and_run_an_onnx_version(tmp_path: pathlib.Path, capsys) -> None:  # noqa: ANN001
    root = write_onnx_version(tmp_path / "m", 1, 2.0)
    status, out, err = _cli(capsys, "inspect", root)
    assert status == 0, err
    assert "signature_def['serving_default']:" in out and "inputs['x'] tensor_info:" in out
    assert "shape: (-1, 2)" in out and "dtype: DT_INT64" in out
    status, out, _ = _cli(capsys, "inspect", root.parent)
    assert status == 0 and "  1  signatures: serving_default" in out
    status, out, err = _cli(capsys, "run", root.parent, "--inputs", '{"x": [[1, 3]]}')
    assert status == 0, err
    assert '"y": [[2.0, 6.0]]' in out and '"ids": [1]' in out
    # Asked for the wrong platform, the CLI says which one serves it.
    status, _, err = _cli(capsys, "inspect", root, "--model_platform", "tensorflow")
    assert status == 1 and 'model_platform: "onnx"' in err
