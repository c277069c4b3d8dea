"""exporter.onnx_model: the checks before onnxruntime sees a model, the session, and its errors.

Every model is built here with onnx.helper; no converter is needed.
"""

from __future__ import annotations

import os
import pathlib
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from exporter import dtypes
from exporter.errors import BundleError, InvalidInputError
from exporter.onnx_check import check_model
from exporter.onnx_model import OnnxModel, default_intra_op_threads
from exporter.servable import LoadOptions
from exporter.signature import TensorInfo

W = np.arange(12, dtype=np.float32).reshape(4, 3)


def _model(nodes, inputs, outputs, initializers=(), opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 9
    return model


def linear() -> onnx.ModelProto:
    """y = x @ W + 1 with a symbolic batch dimension."""
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "one"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.ones(3, np.float32), "one")],
    )


def gather() -> onnx.ModelProto:
    """Rows of a 3x2 table by id: an id out of range is the data's fault."""
    return _model(
        [helper.make_node("Gather", ["table", "ids"], ["rows"])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "table")],
    )


def test_signature_and_run() -> None:
    model = OnnxModel(linear().SerializeToString())
    assert dict(model.inputs) == {"x": TensorInfo("x", dtypes.FLOAT, (None, 4))}
    assert dict(model.outputs) == {"y": TensorInfo("y", dtypes.FLOAT, (None, 3))}
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = model.run({"x": x})
    assert out.keys() == {"y"}
    np.testing.assert_allclose(out["y"], x @ W + 1)
    assert model.run({"x": x}, ["y"]).keys() == {"y"}


def test_resident_bytes_counts_the_weights() -> None:
    data = linear().SerializeToString()
    assert OnnxModel(data).resident_bytes >= W.nbytes
    assert OnnxModel(data).resident_bytes >= len(data)


@pytest.mark.parametrize(
    "feeds, message",
    [
        ({"x": np.ones((2, 5), np.float32)}, "dimensions"),
        ({"x": np.ones((2, 4), np.float64)}, "type"),
        ({"x": np.ones((4,), np.float32)}, "rank"),
    ],
)
def test_feeds_the_graph_refuses_are_input_errors(feeds, message) -> None:
    model = OnnxModel(linear().SerializeToString())
    with pytest.raises(InvalidInputError, match=message):
        model.run(feeds)


def test_a_kernel_refusing_values_is_an_input_error() -> None:
    model = OnnxModel(gather().SerializeToString())
    np.testing.assert_array_equal(model.run({"ids": np.array([2, 0])})["rows"], [[4, 5], [0, 1]])
    with pytest.raises(InvalidInputError, match="Gather"):
        model.run({"ids": np.array([5])})


def test_unknown_output_is_an_input_error() -> None:
    with pytest.raises(InvalidInputError, match="'z'"):
        OnnxModel(linear().SerializeToString()).run({"x": np.ones((1, 4), np.float32)}, ["z"])


def test_strings_are_bytes_in_and_out() -> None:
    model = OnnxModel(
        _model(
            [helper.make_node("Identity", ["s"], ["o"])],
            [helper.make_tensor_value_info("s", TensorProto.STRING, [None])],
            [helper.make_tensor_value_info("o", TensorProto.STRING, [None])],
        ).SerializeToString()
    )
    assert model.inputs["s"].dtype == dtypes.STRING
    feed = np.empty(2, dtype=object)
    feed[:] = [b"abc", "é".encode()]
    out = model.run({"s": feed})["o"]
    assert out.dtype == object and list(out) == [b"abc", "é".encode()]
    feed[:] = [b"abc", b"\xff"]
    with pytest.raises(InvalidInputError, match="UTF-8"):
        model.run({"s": feed})


def test_run_is_thread_safe_on_one_session() -> None:
    model = OnnxModel(linear().SerializeToString())
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        x = np.random.default_rng(seed).random((8, 4), dtype=np.float32)
        try:
            for _ in range(50):
                np.testing.assert_allclose(model.run({"x": x})["y"], x @ W + 1, rtol=1e-6)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_closed_model_does_not_run() -> None:
    model = OnnxModel(linear().SerializeToString())
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        model.run({"x": np.ones((1, 4), np.float32)})


def test_threads_come_from_the_options_or_the_cpus_given() -> None:
    model = OnnxModel(linear().SerializeToString(), options=LoadOptions(intra_op_threads=1))
    assert model._session.get_session_options().intra_op_num_threads == 1
    given = len(os.sched_getaffinity(0))
    assert default_intra_op_threads() == given
    assert default_intra_op_threads(1.0) == 1
    assert default_intra_op_threads(0.5) == 1
    assert default_intra_op_threads(given + 8) == given
    default = OnnxModel(linear().SerializeToString())
    assert default._session.get_session_options().intra_op_num_threads == given


# -- refusals at load ----------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"", b"\x00\x01garbage", b"PK\x03\x04 a zip, not a model"])
def test_not_onnx_is_refused(data: bytes) -> None:
    with pytest.raises(BundleError, match="not an ONNX model"):
        check_model(data, None)


def test_checker_errors_are_refused() -> None:
    model = _model(
        [helper.make_node("Relu", ["nowhere"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    with pytest.raises(BundleError, match="invalid ONNX model"):
        OnnxModel(model.SerializeToString())


def test_opset_newer_than_onnxruntime_is_refused() -> None:
    model = linear()
    model.opset_import[0].version = 999
    with pytest.raises(BundleError, match=r"opset 999 of 'ai.onnx'.*supports up to \d+"):
        check_model(model.SerializeToString(), None)


def test_unknown_operator_domain_is_refused() -> None:
    model = _model(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        opsets=(("", 17), ("com.example", 1)),
    )
    with pytest.raises(BundleError, match="'com.example'.*custom operators are not loaded"):
        check_model(model.SerializeToString(), None)


def test_zipmap_output_is_refused_with_the_option_that_avoids_it() -> None:
    probabilities = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    model = _model(
        [helper.make_node("ZipMap", ["p"], ["z"], domain="ai.onnx.ml", classlabels_int64s=[0, 1])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 2])],
        [helper.make_value_info("z", probabilities)],
        opsets=(("", 17), ("ai.onnx.ml", 3)),
    )
    with pytest.raises(BundleError, match=r"output 'z' is seq\(map.*'zipmap': False"):
        OnnxModel(model.SerializeToString())


# -- external data -------------------------------------------------------------------------------
def _external(weights_dir: pathlib.Path, location: str = "weights.bin") -> bytes:
    """linear() with its weights written by onnx to `weights_dir`/weights.bin, and the model's
    bytes with each tensor's external-data location rewritten to `location`."""
    model = linear()
    external_data_helper.convert_model_to_external_data(model, location="weights.bin", size_threshold=0)
    external_data_helper.write_external_data_tensors(model, str(weights_dir))  # sets offsets, clears raw_data
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    return model.SerializeToString()


def test_external_data_inside_the_version_directory_loads(tmp_path: pathlib.Path, monkeypatch) -> None:
    data = _external(tmp_path)
    monkeypatch.chdir("/")  # resolved against base_dir, not the working directory
    model = OnnxModel(data, base_dir=tmp_path)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(model.run({"x": x})["y"], x @ W + 1)
    assert model.resident_bytes >= W.nbytes


@pytest.mark.parametrize(
    "location, message",
    [
        ("/etc/passwd", "not a relative path"),
        ("../weights.bin", "not a relative path"),
        ("sub/../../weights.bin", "not a relative path"),
        ("missing.bin", "no such file"),
    ],
)
def test_external_data_outside_or_missing_is_refused(
    tmp_path: pathlib.Path, location: str, message: str
) -> None:
    version = tmp_path / "1"
    version.mkdir()
    _external(version)
    data = _external(tmp_path, location)
    with pytest.raises(BundleError, match=message):
        check_model(data, version)


def test_external_data_through_a_symlink_out_is_refused(tmp_path: pathlib.Path) -> None:
    version = tmp_path / "1"
    version.mkdir()
    data = _external(tmp_path, "link.bin")
    (version / "link.bin").symlink_to(tmp_path / "weights.bin")
    with pytest.raises(BundleError, match="leaves the version directory"):
        check_model(data, version)


def test_external_data_without_a_directory_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(BundleError, match="no directory"):
        check_model(_external(tmp_path), None)


def test_external_data_past_the_end_of_its_file_is_refused(tmp_path: pathlib.Path) -> None:
    data = _external(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 8)  # truncated
    with pytest.raises(BundleError, match="past the end"):
        check_model(data, tmp_path)
