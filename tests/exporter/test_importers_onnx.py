"""Any ONNX file in a bundle: the OnnxModel op (an asset, typed from the ONNX graph, one session per
load), import_onnx's receivers and heads, and `tessera export-onnx` + `tessera inspect`."""

from __future__ import annotations

import io
import pathlib
from contextlib import redirect_stdout

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter import dtypes
from exporter.bundle import read_bundle
from exporter.cli import main as exporter_main
from exporter.errors import ExportError, GraphError, InvalidInputError
from exporter.export import build_model, export_model
from exporter.importers.onnx import import_onnx
from exporter.ops.onnx import onnx_call
from exporter.outputs import PredictOutput
from exporter.receivers import build_raw_serving_input_receiver_fn
from exporter.servable import load_servable
from protos.tessera import example_pb2
from tests.exporter.onnx_testlib import B1, W1, X, mlp


def reference(model: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def examples(rows: np.ndarray, names: list[str]) -> np.ndarray:
    out = []
    for row in rows:
        ex = example_pb2.Example()
        for name, value in zip(names, row, strict=True):
            ex.features.feature[name].float_list.value.append(float(value))
        out.append(ex.SerializeToString())
    return np.array(out, dtype=object)


NAMES = ["a", "b", "c", "d"]


def test_classify_and_predict_over_an_onnx_file_equal_onnxruntime(tmp_path: pathlib.Path) -> None:
    model_bytes = mlp()
    (tmp_path / "mlp.onnx").write_bytes(model_bytes)
    model = import_onnx(tmp_path / "mlp.onnx", feature_names=NAMES, classify="probs", class_labels=["x", "y", "z"])
    path = export_model(str(tmp_path / "base"), model.model_fn, None, signatures=model.signatures())
    servable = load_servable("tensorflow", path)
    want = reference(model_bytes, {"input:0": X})
    sig = servable.signatures["predict"]
    assert sig.inputs["input:0"].dtype == dtypes.FLOAT and sig.inputs["input:0"].shape == (None, 4)
    out = servable.run("predict", {"input:0": X})
    np.testing.assert_allclose(out["probs"], want["probs"], rtol=1e-6)
    np.testing.assert_allclose(out["logits"], want["logits"], rtol=1e-6)
    np.testing.assert_array_equal(out["probabilities"], out["probs"])
    assert out["class_ids"].tolist() == want["probs"].argmax(axis=1).tolist()
    classified = servable.run("serving_default", {"inputs": examples(X, NAMES)})
    np.testing.assert_allclose(classified["scores"], want["probs"], rtol=1e-6)
    assert classified["classes"][0].tolist() == [b"x", b"y", b"z"]
    # The model is one asset, stored once for both receivers, listed and checksummed in the manifest.
    bundle = read_bundle(path)
    onnx_files = [e.path for e in bundle.manifest.files if e.path.endswith(".onnx")]
    assert len(onnx_files) == 1 and (bundle.path / onnx_files[0]).read_bytes() == model_bytes
    assert servable.resident_bytes >= len(model_bytes)
    servable.close()


def linear() -> bytes:
    """y = x @ w + b: [batch, 4] -> [batch, 1]."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(W1[:, :1].copy(), "w"), numpy_helper.from_array(B1[:1].copy(), "b")],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto.SerializeToString()


def test_regress_head_over_an_onnx_output_and_input_per_name(tmp_path: pathlib.Path) -> None:
    model = import_onnx(linear(), regress="y", feature_names=NAMES)
    servable = load_servable("tensorflow", export_model(str(tmp_path / "reg"), model.model_fn, None, signatures=model.signatures()))
    want = reference(linear(), {"x": X})["y"][:, 0]
    np.testing.assert_allclose(servable.run("serving_default", {"inputs": examples(X, NAMES)})["outputs"], want, rtol=1e-6)
    np.testing.assert_allclose(servable.run("predict", {"x": X})["predictions"], want, rtol=1e-6)
    with pytest.raises(ExportError, match=r"a regression output is \[batch\] or \[batch, 1\]"):
        import_onnx(mlp("features"), regress="logits")  # [batch, 3]
    # One feature per ONNX input, named like it, with its shape beyond the batch.
    model = import_onnx(mlp("features"))
    assert {k: (v.shape, v.dtype) for k, v in model.parse_example_spec().items()} == {"features": ((4,), dtypes.FLOAT)}
    servable = load_servable("tensorflow", export_model(str(tmp_path / "ok"), model.model_fn, None, signatures=model.signatures()))
    assert set(servable.signatures) == {"serving_default", "predict"}
    assert servable.signatures["serving_default"].method_name == "tensorflow/serving/predict"
    np.testing.assert_allclose(servable.run("predict", {"features": X})["logits"],
                               reference(mlp("features"), {"features": X})["logits"], rtol=1e-6)  # fmt: skip


def test_float64_outputs_keep_their_type_and_a_float_head_casts() -> None:
    model = import_onnx(mlp(out_dtype=TensorProto.DOUBLE))
    built = build_model(model.model_fn, model.raw_receiver_fn())
    assert built.meta_graph.signatures["predict"].outputs["logits"].dtype == dtypes.DOUBLE


def test_one_session_per_load_shared_by_both_receivers_and_closed_with_the_runtime(tmp_path: pathlib.Path) -> None:
    model = import_onnx(mlp("x"), feature_names=NAMES, classify="probs")
    built = build_model(model.model_fn, None, signatures=model.signatures())
    assert sum(n.op == "OnnxModel" for n in built.meta_graph.graph.nodes) == 2  # one per receiver
    runtime = built.runtime(tmp_path)
    assert len(runtime._resources) == 1  # noqa: SLF001 - the one session
    runtime.run("predict", {"x": X})
    runtime.close()
    with pytest.raises(RuntimeError, match="closed"):
        runtime.run("predict", {"x": X})


def test_a_graph_that_disagrees_with_its_onnx_asset_does_not_load(tmp_path: pathlib.Path) -> None:
    model = import_onnx(mlp("x"))
    built = build_model(model.model_fn, model.raw_receiver_fn())
    (asset,) = built.graph.assets
    built.graph.assets[asset] = mlp("x", out_dtype=TensorProto.DOUBLE)  # logits now float64
    with pytest.raises(GraphError, match="'logits' is float64.*the graph declares float32"):
        built.runtime(tmp_path)
    built.graph.assets[asset] = b"not onnx"
    with pytest.raises(GraphError, match="not an ONNX model"):
        built.runtime(tmp_path / "2")


def test_onnx_call_checks_its_wiring() -> None:
    def model_fn(inputs):  # type: ignore[no-untyped-def]
        def fn(g, features):  # type: ignore[no-untyped-def]
            return {"predict": PredictOutput(onnx_call(mlp("x"), {k: features[k] for k in inputs}))}

        return fn

    with pytest.raises(GraphError, match="reads inputs"):
        build_model(model_fn(["y"]), build_raw_serving_input_receiver_fn({"y": (dtypes.FLOAT, (None, 4))}))
    with pytest.raises(GraphError, match="is float32, fed float64"):
        build_model(model_fn(["x"]), build_raw_serving_input_receiver_fn({"x": (dtypes.DOUBLE, (None, 4))}))
    with pytest.raises(GraphError, match="has shape"):
        build_model(model_fn(["x"]), build_raw_serving_input_receiver_fn({"x": (dtypes.FLOAT, (None, 5))}))


def test_data_the_model_refuses_fails_the_request_only(tmp_path: pathlib.Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        initializer=[numpy_helper.from_array(np.array([-1, 8], np.int64), "shape")],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = import_onnx(proto.SerializeToString())
    runtime = build_model(model.model_fn, model.raw_receiver_fn()).runtime(tmp_path)
    assert runtime.run("predict", {"x": np.ones((2, 4), np.float32)})["y"].shape == (1, 8)
    with pytest.raises(InvalidInputError):
        runtime.run("predict", {"x": np.ones((3, 4), np.float32)})
    assert runtime.run("predict", {"x": np.ones((4, 4), np.float32)})["y"].shape == (2, 8)


def test_import_refuses_what_it_cannot_serve(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ExportError, match="does not open.*not an ONNX model"):
        import_onnx(b"\x00garbage")
    with pytest.raises(ExportError, match="no ONNX file"):
        import_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ExportError, match="no output 'nope'"):
        import_onnx(mlp(), classify="nope")
    with pytest.raises(ExportError, match=r"one \[batch, 2\] input"):
        import_onnx(mlp(), feature_names=["a", "b"])
    with pytest.raises(ExportError, match="not both"):
        import_onnx(mlp(), classify="probs", regress="logits")


def test_cli_export_onnx_then_inspect_shows_its_signatures(tmp_path: pathlib.Path) -> None:
    onnx.save(onnx.load_from_string(mlp("x")), str(tmp_path / "m.onnx"))
    out = io.StringIO()
    with redirect_stdout(out):
        assert exporter_main(["export-onnx", str(tmp_path / "m.onnx"), str(tmp_path / "base"), "--classify", "probs",
                              "--class-labels", "p,q,r", "--feature-names", "a,b,c,d"]) == 0  # fmt: skip
    version_dir = out.getvalue().strip()
    assert pathlib.Path(version_dir).parent == tmp_path / "base"
    out = io.StringIO()
    with redirect_stdout(out):
        assert exporter_main(["inspect", version_dir]) == 0
    text = out.getvalue()
    assert "signature_def['serving_default']" in text and "tensorflow/serving/classify" in text
    assert "outputs['probabilities']" in text and "inputs['x']" in text
    assert exporter_main(["export-onnx", str(tmp_path / "m.onnx"), str(tmp_path / "base"), "--classify", "zz"]) == 1


def test_feature_columns_parse_and_feed_an_onnx_model_behind_a_classification_head(tmp_path: pathlib.Path) -> None:
    """Feature columns and heads wrap the ONNX node as they wrap the numpy ops."""
    from exporter import feature_columns as fc
    from exporter.canned import classifier_heads
    from exporter.ops import math as tfm
    from exporter.receivers import build_parsing_serving_input_receiver_fn

    color = fc.indicator_column(fc.categorical_column_with_vocabulary_list("color", ["green", "red"]))
    columns = [fc.numeric_column("a"), fc.numeric_column("b"), color]  # input_layer: a, b, color (2)

    def model_fn(g, features):  # type: ignore[no-untyped-def]
        probs = onnx_call(mlp("x"), {"x": fc.input_layer(features, columns)}, outputs=["probs"])["probs"]
        return classifier_heads(probs, tfm.argmax(probs, axis=1), [b"x", b"y", b"z"])

    receiver = build_parsing_serving_input_receiver_fn(fc.make_parse_example_spec(columns))
    servable = load_servable("tensorflow", export_model(str(tmp_path), model_fn, receiver, default_head="classification"))
    rows = [(0.5, -1.0, "red"), (2.0, 0.25, "green"), (-0.3, 0.0, "blue")]  # blue: out of vocabulary, zeros
    serialized = []
    for a, b, c in rows:
        ex = example_pb2.Example()
        ex.features.feature["a"].float_list.value.append(a)
        ex.features.feature["b"].float_list.value.append(b)
        ex.features.feature["color"].bytes_list.value.append(c.encode())
        serialized.append(ex.SerializeToString())
    dense = np.array([[a, b, c == "green", c == "red"] for a, b, c in rows], np.float32)
    got = servable.run("serving_default", {"inputs": np.array(serialized, dtype=object)})["scores"]
    np.testing.assert_allclose(got, reference(mlp("x"), {"x": dense})["probs"], rtol=1e-6)
