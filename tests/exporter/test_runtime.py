"""Graph building, load-time validation and execution of the numpy runtime."""

from __future__ import annotations

import numpy as np
import pytest

from exporter import dtypes
from exporter.errors import GraphError, InvalidInputError
from exporter.graph import GraphBuilder
from exporter.ops import core, math
from exporter.outputs import ClassificationOutput, PredictOutput, RegressionOutput
from exporter.runtime import Runtime
from exporter.signature import check_feeds
from protos.tessera import bundle_pb2


def _dense_model() -> tuple[bundle_pb2.MetaGraph, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, 4), name="x")
    logits = math.bias_add(math.matmul(x, g.variable(w, "w")), g.variable(b, "b"))
    probs = math.softmax(logits)
    unused = math.tanh(logits, name="only_for_other_head")
    sig = PredictOutput({"probabilities": probs, "class_ids": math.argmax(probs)}).as_signature_def({"x": x})
    meta = bundle_pb2.MetaGraph(graph=g.to_proto())
    meta.signatures["serving_default"].CopyFrom(sig)
    other = PredictOutput({"t": unused}).as_signature_def({"x": x})
    meta.signatures["other"].CopyFrom(other)
    return meta, g.variables, w, b


def test_predict_matches_numpy() -> None:
    meta, variables, w, b = _dense_model()
    rt = Runtime(meta, variables)
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
    out = rt.run("serving_default", {"x": x})
    logits = x @ w + b
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-6)
    np.testing.assert_array_equal(out["class_ids"], expected.argmax(1))
    assert out["class_ids"].dtype == np.int64


def test_plans_are_pruned_per_signature_and_filter() -> None:
    meta, variables, *_ = _dense_model()
    rt = Runtime(meta, variables)
    nodes = {s.node for s in rt._plan("serving_default", None).steps}
    assert not any("only_for_other_head" in n for n in nodes)
    only_probs = {s.node for s in rt._plan("serving_default", ["probabilities"]).steps}
    assert not any(n.startswith("ArgMax") for n in only_probs)
    out = rt.run("serving_default", {"x": np.zeros((1, 4), np.float32)}, output_filter=["class_ids"])
    assert set(out) == {"class_ids"}


def test_bad_feeds_are_rejected_with_clear_messages() -> None:
    meta, variables, *_ = _dense_model()
    rt = Runtime(meta, variables)
    # Feeds are checked where a request enters (the replica, warmup, batch prediction, `tessera
    # run`), against the runtime's signature; the runtime itself trusts them.
    signature = rt.signatures["serving_default"]
    with pytest.raises(InvalidInputError, match="to be float32 but float64"):
        check_feeds(signature, {"x": np.zeros((1, 4))})
    with pytest.raises(InvalidInputError, match="expected shape"):
        check_feeds(signature, {"x": np.zeros((1, 5), np.float32)})
    with pytest.raises(InvalidInputError, match="Sent extra: {y}"):
        check_feeds(signature, {"x": np.zeros((1, 4), np.float32), "y": np.zeros(1)})
    with pytest.raises(InvalidInputError, match="not found"):
        rt.run("nope", {"x": np.zeros((1, 4), np.float32)})
    with pytest.raises(InvalidInputError, match="output tensor alias not found"):
        rt.run("serving_default", {"x": np.zeros((1, 4), np.float32)}, output_filter=["zzz"])


def test_build_time_type_errors_name_the_node() -> None:
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, 4), name="x")
    i = g.placeholder(dtypes.INT64, (None, 4), name="i")
    with pytest.raises(GraphError, match="'bad_add'.*different dtypes"):
        math.add(x, i, name="bad_add")
    with pytest.raises(GraphError, match="inner dimensions"):
        math.matmul(x, g.constant(np.zeros((3, 2), np.float32)))
    with pytest.raises(GraphError, match="unknown op"):
        g.apply("NoSuchOp", [x])


def _meta_with(nodes: list[bundle_pb2.NodeDef]) -> bundle_pb2.MetaGraph:
    return bundle_pb2.MetaGraph(graph=bundle_pb2.GraphDef(nodes=nodes))


def test_load_rejects_unknown_op_bad_wiring_and_cycles() -> None:
    with pytest.raises(GraphError, match="'n1'.*unknown op 'Bogus'"):
        Runtime(_meta_with([bundle_pb2.NodeDef(name="n1", op="Bogus")]))
    with pytest.raises(GraphError, match="'n1'.*names no node"):
        Runtime(_meta_with([bundle_pb2.NodeDef(name="n1", op="Identity", inputs=["ghost:0"])]))
    cyc = [
        bundle_pb2.NodeDef(name="a", op="Identity", inputs=["b"]),
        bundle_pb2.NodeDef(name="b", op="Identity", inputs=["a"]),
    ]
    with pytest.raises(GraphError, match="cycle"):
        Runtime(_meta_with(cyc))


def test_load_rejects_dtype_mismatch_and_missing_variable() -> None:
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, 2), name="x")
    math.matmul(x, g.variable(np.ones((2, 2), np.float32), "w"), name="mm")
    graph = g.to_proto()
    # Tamper: the variable now claims to be int64, which MatMul with a float cannot take.
    graph.nodes[1].attrs["dtype"].i = dtypes.INT64
    with pytest.raises(GraphError, match="'mm'.*different dtypes"):
        Runtime(bundle_pb2.MetaGraph(graph=graph), {"w": np.ones((2, 2), np.int64)})
    with pytest.raises(GraphError, match="variable 'w' is not in the bundle"):
        Runtime(bundle_pb2.MetaGraph(graph=g.to_proto()), {})


def test_signature_needing_an_unfed_placeholder_is_rejected() -> None:
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, 2), name="x")
    y = g.placeholder(dtypes.FLOAT, (None, 2), name="y")
    meta = bundle_pb2.MetaGraph(graph=g.to_proto())
    meta.signatures["s"].CopyFrom(PredictOutput({"z": math.add(x, y)}).as_signature_def({"x": x}))
    meta.graph.CopyFrom(g.to_proto())
    with pytest.raises(GraphError, match="needs placeholder 'y'"):
        Runtime(meta)


def test_ops_semantics() -> None:
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, 3), name="x")
    vals, idx = math.top_k(x, 2)
    labels = core.broadcast_to_batch(g.constant(["a", "b", "c"]), x)
    outs = {
        "sig": math.sigmoid(x),
        "relu": math.relu(x),
        "lsm": math.log_softmax(x),
        "vals": vals,
        "idx": idx,
        "labels": labels,
        "oh": math.one_hot(math.argmax(x), 3),
        "cat": core.concat([x, x], axis=1),
        "sq": core.squeeze(core.reshape(math.reduce_sum(x, axis=1), (-1, 1)), axis=1),
    }
    meta = bundle_pb2.MetaGraph(graph=g.to_proto())
    meta.signatures["s"].CopyFrom(PredictOutput(outs).as_signature_def({"x": x}))
    rt = Runtime(meta)
    data = np.array([[1.0, 3.0, 3.0], [-800.0, 0.0, 800.0]], np.float32)
    out = rt.run("s", {"x": data})
    np.testing.assert_allclose(out["sig"][1], [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(out["idx"], [[1, 2], [2, 1]])  # ties: lower index first
    np.testing.assert_array_equal(out["vals"], [[3, 3], [800, 0]])
    assert out["labels"].tolist() == [[b"a", b"b", b"c"]] * 2
    np.testing.assert_array_equal(out["oh"], [[0, 1, 0], [0, 0, 1]])
    assert np.isfinite(out["lsm"]).all()
    assert out["cat"].shape == (2, 6)
    np.testing.assert_allclose(out["sq"], data.sum(1))


def test_classification_and_regression_outputs_need_a_string_input() -> None:
    g = GraphBuilder()
    x = g.placeholder(dtypes.FLOAT, (None, 3), name="x")
    scores = math.softmax(x)
    with pytest.raises(Exception, match="single string Tensor"):
        ClassificationOutput(scores=scores).as_signature_def({"x": x})
    with pytest.raises(Exception, match="float32"):
        RegressionOutput(math.argmax(x))
