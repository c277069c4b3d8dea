"""MultiInference on a replica: several signatures on one parse of the examples, the same answers as
separate Classify/Regress runs, on the TF-serialized Examples of tests/testdata/parse_example.json.

Parses are counted where the wire format is read: the C scan (`exporter._example_scan.parse`)
that every parse of a batch of Examples goes through, in the graph's ParseExample node or outside.
"""

from __future__ import annotations

import base64
import json
import pathlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from cluster import errors
from cluster.client.examples import make_example
from cluster.replica import wire
from cluster.replica.contract import task_output, task_outputs
from cluster.replica.replica import Replica
from cluster.replica.tasks import TaskPlanner
from exporter import _example_scan, bundle, dtypes, example_parser, storage
from exporter.example_parser import with_context
from exporter.features import FixedLenFeature
from exporter.graph import GraphBuilder
from exporter.ops import core, math
from exporter.ops.parsing import parse_example
from exporter.outputs import ClassificationOutput, PredictOutput, RegressionOutput
from exporter.servable import LoadOptions, Servable, load_servable, register_loader
from exporter.signature import Signature, Tensors
from protos.tessera import bundle_pb2

SPEC = {
    "age": FixedLenFeature((1,), dtypes.FLOAT),
    "vec": FixedLenFeature((3,), dtypes.FLOAT),
    "missing_float": FixedLenFeature((2,), dtypes.FLOAT, default_value=[0.5, -1.0]),
}
VEC_ONLY = {"vec": FixedLenFeature((3,), dtypes.FLOAT)}
TASKS = ("classify", "regress", "regress_same_spec", "regress_vec")


def _meta_graph() -> tuple[bundle_pb2.MetaGraph, dict[str, np.ndarray]]:
    """Four Example signatures: classify and regress over one receiver, regress_same_spec over a
    second receiver with the same spec, regress_vec over a third with another spec."""
    g = GraphBuilder()
    w = g.variable(np.array([0.5, -1.0, 2.0, 0.25, 1.0, -0.5], np.float32), "w")

    def receiver(name: str, spec: dict[str, FixedLenFeature]) -> tuple[Any, dict[str, Any]]:
        serialized = g.placeholder(dtypes.STRING, (None,), name=name)
        return serialized, parse_example(serialized, spec, name=f"{name}_parse")

    one, feats = receiver("examples", SPEC)
    row = math.mul(core.concat([feats["age"], feats["vec"], feats["missing_float"]], axis=1), w)
    scores = math.softmax(row)
    classes = core.broadcast_to_batch(g.constant(["a", "b", "c", "d", "e", "f"]), scores)
    two, same = receiver("examples_again", SPEC)
    three, vec = receiver("vec_examples", VEC_ONLY)

    def total(x: Any) -> Any:
        return core.squeeze(math.reduce_sum(x, axis=1, keepdims=True), axis=1)

    signatures = {
        "classify": ClassificationOutput(scores=scores, classes=classes).as_signature_def({"inputs": one}),
        "regress": RegressionOutput(total(row)).as_signature_def({"inputs": one}),
        "regress_same_spec": RegressionOutput(
            total(math.mul(core.concat([same["age"], same["vec"], same["missing_float"]], axis=1), w))
        ).as_signature_def({"inputs": two}),
        "regress_vec": RegressionOutput(total(vec["vec"])).as_signature_def({"examples": three}),
        "serving_default": PredictOutput({"row": row}).as_signature_def({"examples": one}),
    }
    meta = bundle_pb2.MetaGraph(format_version=1, graph=g.to_proto(), tags=["serve"])
    for key, sig in signatures.items():
        meta.signatures[key].CopyFrom(sig)
    return meta, g.variables


@pytest.fixture(scope="module")
def version_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    meta, variables = _meta_graph()
    with tempfile.TemporaryDirectory() as staging:
        bundle.write_bundle(staging, meta, variables, {}, {})
        return storage.publish(staging, str(tmp_path_factory.mktemp("m") / "m"), 1)


@pytest.fixture(scope="module")
def replica(version_path: str) -> Replica:
    r = Replica("m")
    r.load(1, version_path)
    return r


class PlainServable:
    """A bundle's servable seen through the bare `Servable` protocol: no features to feed it."""

    def __init__(self, inner: Servable) -> None:
        self._inner = inner
        self.resident_bytes = inner.resident_bytes
        self.assets_extra_dir = None

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self._inner.signatures

    def run(self, signature_key: str, feeds: Mapping[str, object], output_filter: Sequence[str] | None = None) -> Tensors:
        return self._inner.run(signature_key, feeds, output_filter)

    def close(self) -> None:
        self._inner.close()


def load_plain(path: str, options: LoadOptions) -> PlainServable:
    return PlainServable(load_servable("tensorflow", path, options))


@pytest.fixture(scope="module")
def plain_replica(version_path: str) -> Replica:
    """The same bundle behind a servable that cannot be fed parsed features."""
    register_loader("plain-tasks-test", f"{__name__}:load_plain")
    r = Replica("m")
    r.load(1, version_path, platform="plain-tasks-test")
    assert isinstance(r.servable(1), PlainServable)
    return r


@pytest.fixture(scope="module")
def examples(testdata_dir: pathlib.Path) -> np.ndarray:
    case = json.loads((testdata_dir / "parse_example.json").read_text())["cases"][0]
    assert {"age", "vec", "missing_float"} <= set(case["spec"])  # the TF-serialized Examples have them
    column = np.empty(len(case["examples_b64"]), dtype=object)
    column[:] = [base64.b64decode(b) for b in case["examples_b64"]]
    return column


class _CountingScan:
    """`exporter._example_scan` as it is, counting the batches of Examples it parses."""

    def __init__(self) -> None:
        self.batches = 0

    def parse(self, batch: Any, keys: Any) -> Any:
        if keys:  # a context is only checked to decode, with no keys: not a parse of the batch
            self.batches += 1
        return _example_scan.parse(batch, keys)


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> Iterator[_CountingScan]:
    counting = _CountingScan()
    monkeypatch.setattr(example_parser, "_example_scan", counting)
    yield counting


def _alone(replica: Replica, key: str, column: np.ndarray) -> dict[str, np.ndarray]:
    (alias,) = replica.servable(1).signatures[key].inputs
    (result,) = replica.run(1, key, [{alias: column}])
    assert not isinstance(result, BaseException), result
    return dict(result)


@pytest.mark.parametrize("which", ["replica", "plain_replica"])
def test_tasks_answer_as_separate_classify_and_regress(which: str, request: pytest.FixtureRequest,
                                                       examples: np.ndarray) -> None:
    replica: Replica = request.getfixturevalue(which)
    (outputs,) = replica.run(1, TASKS, [{"inputs": examples}])
    assert not isinstance(outputs, BaseException), outputs
    per_task = task_outputs(outputs, len(TASKS))
    for key, own in zip(TASKS, per_task, strict=True):
        alone = _alone(replica, key, examples)
        assert own.keys() == alone.keys()
        for alias in alone:
            np.testing.assert_array_equal(own[alias], alone[alias])
            assert own[alias].dtype == alone[alias].dtype
    assert per_task[0]["scores"].shape == (len(examples), 6)
    np.testing.assert_array_equal(per_task[1]["outputs"], per_task[2]["outputs"])


def test_a_context_is_merged_as_in_a_separate_run(replica: Replica, examples: np.ndarray) -> None:
    context = make_example({"missing_float": [3.0, 1.0]}).SerializeToString()
    column = with_context(context, examples.tolist())
    (outputs,) = replica.run(1, ("regress", "regress_vec"), [{"inputs": column}])
    assert not isinstance(outputs, BaseException), outputs
    np.testing.assert_array_equal(outputs[task_output(0, "outputs")], _alone(replica, "regress", column)["outputs"])
    # The context's missing_float fills what the examples lack, where the spec's default did before.
    assert not np.array_equal(outputs[task_output(0, "outputs")], _alone(replica, "regress", examples)["outputs"])


def test_tasks_of_one_spec_share_one_parse(replica: Replica, examples: np.ndarray, scans: _CountingScan) -> None:
    replica.run(1, ("classify", "regress"), [{"inputs": examples}])
    assert scans.batches == 1
    scans.batches = 0
    # Two receivers (two ParseExample nodes) with the same spec: still one parse.
    replica.run(1, ("classify", "regress_same_spec"), [{"inputs": examples}])
    assert scans.batches == 1
    scans.batches = 0
    replica.run(1, TASKS, [{"inputs": examples}])
    assert scans.batches == 2  # two distinct specs
    scans.batches = 0
    # What MultiInference cost before: one parse per task.
    _alone(replica, "classify", examples)
    _alone(replica, "regress", examples)
    assert scans.batches == 2


def test_a_servable_that_cannot_bypass_its_receiver_parses_per_task(
    plain_replica: Replica, examples: np.ndarray, scans: _CountingScan
) -> None:
    (outputs,) = plain_replica.run(1, ("classify", "regress"), [{"inputs": examples}])
    assert not isinstance(outputs, BaseException)
    assert scans.batches == 2


def test_what_a_replica_refuses(replica: Replica, examples: np.ndarray) -> None:
    bad = examples.copy()
    bad[1] = b"\xff not an example"
    ok, refused = replica.run(1, ("classify", "regress"), [{"inputs": examples}, {"inputs": bad}])
    assert not isinstance(ok, BaseException)
    assert isinstance(refused, errors.InvalidArgument) and "Index: 1" in str(refused)
    (missing,) = replica.run(1, ("classify", "nope"), [{"inputs": examples}])
    assert isinstance(missing, errors.FailedPrecondition) and "nope" in str(missing)
    (gone,) = replica.run(2, ("classify",), [{"inputs": examples}])
    assert isinstance(gone, errors.NotFound)
    (two,) = replica.run(1, ("classify",), [{"inputs": examples, "other": examples}])
    assert isinstance(two, errors.InvalidArgument)


def test_a_tasks_call_crosses_the_wire(examples: np.ndarray) -> None:
    frame = b"".join(bytes(c) for c in wire.encode_call(7, "m", 1, ("classify", "regress"), [{"inputs": examples}], (), None))
    call_id, header, payload = wire.split_frame(memoryview(frame)[4:])
    model, version, target, requests, _, _ = wire.decode_call(header, payload)
    assert (call_id, model, version, target) == (7, "m", 1, ("classify", "regress"))
    assert requests[0]["inputs"].tolist() == examples.tolist()
    with pytest.raises(errors.InvalidArgument):
        wire.decode_call({**header, "signature": [1, 2]}, payload)


def test_a_planner_checks_each_key_once_whatever_task_lists_arrive(replica: Replica) -> None:
    # Task lists are the client's to vary (order, repeats): the planner's state is per signature
    # key, so every list reuses the same parsers, and one spec's keys share one.
    planner = TaskPlanner(replica.servable(1))
    first = planner.plan(("classify", "regress_vec"))
    other = planner.plan(("regress_vec", "regress", "classify", "regress_same_spec", "regress_vec"))
    assert other.parsers[0] is other.parsers[4] is first.parsers[1]
    assert other.parsers[1] is other.parsers[2] is other.parsers[3] is first.parsers[0]
    assert other.parsers[0] is not other.parsers[1]  # VEC_ONLY against SPEC
    with pytest.raises(errors.FailedPrecondition, match='"nope" not found'):
        planner.plan(("classify", "nope"))
    with pytest.raises(errors.InvalidArgument, match="at least one task"):
        planner.plan(())
