"""exporter.loaders.onnx: ONNX models in Triton's layout (`<version>/model.onnx`) as Servables."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from exporter import dtypes, servable
from exporter.errors import BundleError, InvalidInputError
from exporter.loaders.onnx import OnnxServable
from exporter.signature import DEFAULT_SERVING_SIGNATURE, PREDICT_METHOD, TensorInfo
from tests.exporter.onnx_testlib import scale_model, write_onnx_version


@pytest.mark.parametrize("platform", ["onnx", "onnxruntime_onnx"])
def test_tritons_layout_serves_the_graph_as_serving_default(tmp_path: pathlib.Path, platform: str) -> None:
    root = write_onnx_version(tmp_path / "m", 1, 3.0)
    loaded = servable.load_servable(platform, str(root))
    assert isinstance(loaded, OnnxServable) and isinstance(loaded, servable.Servable)
    (sig,) = loaded.signatures.values()
    assert sig.key == DEFAULT_SERVING_SIGNATURE and sig.method_name == PREDICT_METHOD
    assert dict(sig.inputs) == {"x": TensorInfo("x", dtypes.FLOAT, (None, 2))}
    assert dict(sig.outputs) == {
        "y": TensorInfo("y", dtypes.FLOAT, (None, 2)),
        "ids": TensorInfo("ids", dtypes.INT64, (None,)),
    }
    x = np.array([[1, 2], [4, 3]], np.float32)
    out = loaded.run(DEFAULT_SERVING_SIGNATURE, {"x": x})
    np.testing.assert_array_equal(out["y"], 3 * x)
    np.testing.assert_array_equal(out["ids"], [1, 0])
    assert loaded.run(DEFAULT_SERVING_SIGNATURE, {"x": x}, ["ids"]).keys() == {"ids"}
    assert loaded.resident_bytes > 0 and loaded.assets_extra_dir is None
    loaded.close()


def test_run_errors_are_input_errors(tmp_path: pathlib.Path) -> None:
    loaded = servable.load_servable("onnx", str(write_onnx_version(tmp_path / "m", 1, 1.0)))
    x = np.ones((1, 2), np.float32)
    with pytest.raises(InvalidInputError, match='signature key "predict" not found'):
        loaded.run("predict", {"x": x})
    with pytest.raises(InvalidInputError, match="output tensor alias not found in signature: z"):
        loaded.run(DEFAULT_SERVING_SIGNATURE, {"x": x}, ["z"])
    with pytest.raises(InvalidInputError):
        loaded.run(DEFAULT_SERVING_SIGNATURE, {"x": np.ones((1, 3), np.float32)})


def test_assets_extra_is_the_versions(tmp_path: pathlib.Path) -> None:
    root = write_onnx_version(tmp_path / "m", 2, 1.0, warmup_rows=1)
    assert servable.load_servable("onnx", str(root)).assets_extra_dir == root / "assets.extra"


def test_a_corrupt_model_file_is_a_load_error(tmp_path: pathlib.Path) -> None:
    root = write_onnx_version(tmp_path / "m", 1, 1.0)
    (root / "model.onnx").write_bytes(b"\x08\x07garbage that is not a model")
    with pytest.raises(BundleError, match="ONNX"):
        servable.load_servable("onnx", str(root))


def test_a_missing_model_file_names_the_layout(tmp_path: pathlib.Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(BundleError, match=r"no model.onnx \(Triton's layout"):
        servable.load_servable("onnx", str(tmp_path / "m" / "1"))


def test_another_file_name_is_told_to_be_model_onnx(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "m" / "1"
    root.mkdir(parents=True)
    (root / "resnet.onnx").write_bytes(scale_model(1.0).SerializeToString())
    with pytest.raises(BundleError, match="rename it to .*/model.onnx"):
        servable.load_servable("onnx", str(root))


def test_a_fixed_batch_dimension_is_reported_as_is(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "m" / "1"
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(scale_model(1.0, batch=1).SerializeToString())
    loaded = servable.load_servable("onnx", str(root))
    assert loaded.signatures[DEFAULT_SERVING_SIGNATURE].inputs["x"].shape == (1, 2)


def test_describe_of_an_onnx_version_is_its_signature(tmp_path: pathlib.Path) -> None:
    root = write_onnx_version(tmp_path / "m", 1, 1.0)
    assert set(servable.describe("onnx", str(root))) == {DEFAULT_SERVING_SIGNATURE}


def test_an_onnx_version_linked_out_of_its_base_path_is_refused(tmp_path: pathlib.Path) -> None:
    """Issue 9, point 8, for every platform: `load_servable` checks before any loader reads."""
    outside = write_onnx_version(tmp_path / "elsewhere", 1, 2.0)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BundleError, match="version directory is a symbolic link to .*, outside the base path"):
        servable.load_servable("onnx", str(tmp_path / "m" / "2"))
    with pytest.raises(BundleError, match="outside the base path"):
        servable.describe("onnx", str(tmp_path / "m" / "2"))
    inside = write_onnx_version(tmp_path / "m", 3, 2.0)
    (inside / "model.onnx").unlink()
    (inside / "model.onnx").symlink_to(outside / "model.onnx")
    with pytest.raises(BundleError, match=r"model\.onnx: a symbolic link to .*, outside the base path"):
        servable.load_servable("onnx", str(inside))
