"""ONNX models the tests build in memory: `scale_model` (y = scale * x) written in Triton's layout by
`write_onnx_version`, and a small MLP classifier (`mlp`) with inputs `X`."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporter import warmup
from exporter.signature import DEFAULT_SERVING_SIGNATURE


def scale_model(scale: float, *, batch: str | int = "batch") -> onnx.ModelProto:
    """y = x * scale and ids = argmax(y) over x: float32 [batch, 2]."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["y"]),
            helper.make_node("ArgMax", ["y"], ["ids"], axis=1, keepdims=0),
        ],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [batch]),
        ],
        [numpy_helper.from_array(np.full(2, scale, np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def write_onnx_version(base: pathlib.Path | str, version: int, scale: float, *, warmup_rows: int = 0) -> pathlib.Path:
    """`<base>/<version>/model.onnx` (Triton's layout), with a warmup file if `warmup_rows`."""
    root = pathlib.Path(base) / str(version)
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(scale_model(scale).SerializeToString())
    if warmup_rows:
        (root / "assets.extra").mkdir(exist_ok=True)
        record = warmup.predict_log(DEFAULT_SERVING_SIGNATURE, {"x": np.ones((warmup_rows, 2), np.float32)})
        (root / "assets.extra" / warmup.WARMUP_FILE).write_bytes(warmup.encode_warmup([record]))
    return root


RNG = np.random.default_rng(0)
W1, B1 = RNG.normal(size=(4, 8)).astype(np.float32), RNG.normal(size=8).astype(np.float32)
W2, B2 = RNG.normal(size=(8, 3)).astype(np.float32), RNG.normal(size=3).astype(np.float32)


def mlp(input_name: str = "input:0", out_dtype: int = TensorProto.FLOAT) -> bytes:
    """4 -> 8 (relu) -> 3, outputs `probs` (softmax) and `logits`, as torch.onnx.export would write it."""
    nodes = [
        helper.make_node("Gemm", [input_name, "W1", "B1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["logits_f"]),
        helper.make_node("Softmax", ["logits_f"], ["probs"], axis=1),
        helper.make_node("Cast", ["logits_f"], ["logits"], to=out_dtype),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("logits", out_dtype, ["N", 3])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (B1, "B1"), (W2, "W2"), (B2, "B2"))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


X = RNG.normal(size=(7, 4)).astype(np.float32)
