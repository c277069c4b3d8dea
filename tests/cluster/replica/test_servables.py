"""The replica over the Servable seam (no Ray): versions load by platform through the registry,
one execution path isolates a failing request (with and without batch queues), faults stay in
their batch, close() on unload, warmup finds the examples input by lookup, ONNX in Triton's layout."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from cluster import errors
from cluster.client.examples import make_example
from cluster.config import BatchingConfig
from cluster.replica.actor import threads_for
from cluster.replica.batched import BatchedRunner
from cluster.replica.replica import Replica
from exporter import dtypes, servable, warmup
from exporter.errors import InvalidInputError
from exporter.servable import LoadOptions
from exporter.signature import (
    DEFAULT_SERVING_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    Signature,
    TensorInfo,
)
from tests.exporter.onnx_testlib import write_onnx_version

PREDICT = Signature(
    DEFAULT_SERVING_SIGNATURE, PREDICT_METHOD,
    {"x": TensorInfo("x", dtypes.FLOAT, (None, 1))}, {"y": TensorInfo("y", dtypes.FLOAT, (None, 1))},
)
# A regress signature whose examples input is not called "inputs".
REGRESS = Signature(
    "regress", REGRESS_METHOD,
    {"examples": TensorInfo("examples", dtypes.STRING, (None,))},
    {"outputs": TensorInfo("outputs", dtypes.FLOAT, (None,))},
)


class FakeServable:
    """y = 2x; a negative x is the data's fault; x == 13 is a bug in the servable."""

    instances: list[FakeServable] = []

    def __init__(self, path: str, options: LoadOptions) -> None:
        self.path, self.options = path, options
        self.signatures = {PREDICT.key: PREDICT, REGRESS.key: REGRESS}
        self.resident_bytes = 1234
        root = pathlib.Path(path) / "assets.extra"
        self.assets_extra_dir = root if root.is_dir() else None
        self.closed = False
        self.calls: list[tuple[str, int]] = []
        FakeServable.instances.append(self)

    def run(self, key: str, feeds: Mapping[str, np.ndarray], output_filter: Sequence[str] | None = None) -> dict:
        assert not self.closed
        if key == "regress":
            self.calls.append((key, len(feeds["examples"])))
            return {"outputs": np.zeros(len(feeds["examples"]), np.float32)}
        x = feeds["x"]
        self.calls.append((key, len(x)))
        if (x == 13).any():
            raise RuntimeError("bug")
        if (x < 0).any():
            raise InvalidInputError("x must not be negative")
        return {"y": 2 * x}

    def close(self) -> None:
        self.closed = True


def load_fake(path: str, options: LoadOptions) -> FakeServable:
    return FakeServable(path, options)


@pytest.fixture(autouse=True)
def fake_platform() -> None:
    servable.register_loader("fake", f"{__name__}:load_fake")
    FakeServable.instances.clear()


def _x(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, np.float32).reshape(-1, 1)}


def test_the_platform_picks_the_loader_and_the_options_reach_it(tmp_path: pathlib.Path) -> None:
    replica = Replica("m", options=LoadOptions(intra_op_threads=3))
    signatures = replica.load(1, str(tmp_path), "fake")
    assert set(signatures) == {DEFAULT_SERVING_SIGNATURE, "regress"}
    (fake,) = FakeServable.instances
    assert fake.path == str(tmp_path) and fake.options.intra_op_threads == 3
    assert replica.memory()["variables"] == 1234


def test_one_bad_request_fails_alone_and_the_batch_ran_merged_first(tmp_path: pathlib.Path) -> None:
    replica = Replica("m")
    replica.load(1, str(tmp_path), "fake")
    results = replica.run(1, DEFAULT_SERVING_SIGNATURE, [_x(1), _x(-1, 2), _x(3)])
    np.testing.assert_array_equal(results[0]["y"], [[2]])
    assert isinstance(results[1], errors.InvalidArgument) and "negative" in str(results[1])
    np.testing.assert_array_equal(results[2]["y"], [[6]])
    assert FakeServable.instances[0].calls[0] == (DEFAULT_SERVING_SIGNATURE, 4)  # one merged run first


def test_a_fault_of_the_servable_fails_its_batch_not_the_replica(tmp_path: pathlib.Path) -> None:
    replica = Replica("m")
    replica.load(1, str(tmp_path), "fake")
    results = replica.run(1, DEFAULT_SERVING_SIGNATURE, [_x(13), _x(1)])
    assert all(isinstance(r, errors.Internal) and str(r) == "the servable failed: bug" for r in results)  # no class name
    (ok,) = replica.run(1, DEFAULT_SERVING_SIGNATURE, [_x(1)])
    np.testing.assert_array_equal(ok["y"], [[2]])


def test_unload_closes_the_servable(tmp_path: pathlib.Path) -> None:
    replica = Replica("m")
    replica.load(1, str(tmp_path), "fake")
    replica.unload(1)
    assert FakeServable.instances[0].closed and replica.loaded_versions() == []


def test_batch_queues_isolate_through_the_same_path(tmp_path: pathlib.Path) -> None:
    replica = Replica("m")
    replica.load(1, str(tmp_path), "fake")
    runner = BatchedRunner(replica, BatchingConfig(max_batch_size=8, batch_timeout_micros=20_000))

    async def main() -> list:
        return await asyncio.gather(*(runner.run(1, DEFAULT_SERVING_SIGNATURE, [_x(v)]) for v in (1, -5, 2)))

    (good, bad, other) = [r[0] for r in asyncio.run(main())]
    np.testing.assert_array_equal(good["y"], [[2]])
    np.testing.assert_array_equal(other["y"], [[4]])
    assert isinstance(bad, errors.InvalidArgument) and "negative" in str(bad)
    assert (DEFAULT_SERVING_SIGNATURE, 3) in FakeServable.instances[0].calls  # merged across calls


def _write_warmup(root: pathlib.Path, records: list) -> None:
    (root / "assets.extra").mkdir(parents=True, exist_ok=True)
    (root / "assets.extra" / warmup.WARMUP_FILE).write_bytes(warmup.encode_warmup(records))


def test_warmup_feeds_examples_to_the_signatures_string_input(tmp_path: pathlib.Path) -> None:
    example = make_example({"a": 1.0}).SerializeToString()
    _write_warmup(tmp_path, [warmup.regress_log("regress", [example, example])])
    replica = Replica("m")
    replica.load(1, str(tmp_path), "fake")
    assert FakeServable.instances[0].calls == [("regress", 2)]
    assert replica.warmup_seconds.count == 1


def test_a_failing_warmup_fails_the_load_and_closes_the_servable(tmp_path: pathlib.Path) -> None:
    _write_warmup(tmp_path, [warmup.predict_log(DEFAULT_SERVING_SIGNATURE, {"x": np.full((1, 1), -1, np.float32)})])
    replica = Replica("m")
    with pytest.raises(InvalidInputError, match="negative"):
        replica.load(1, str(tmp_path), "fake")
    assert FakeServable.instances[0].closed and replica.loaded_versions() == []


def test_an_onnx_version_in_tritons_layout_serves_through_the_replica(tmp_path: pathlib.Path) -> None:
    root = write_onnx_version(tmp_path / "m", 4, 2.0, warmup_rows=3)
    replica = Replica("m")
    signatures = replica.load(4, str(root), "onnx")
    assert list(signatures) == [DEFAULT_SERVING_SIGNATURE]
    assert replica.warmup_seconds.count == 1
    x = np.array([[1, 5]], np.float32)
    results = replica.run(4, DEFAULT_SERVING_SIGNATURE, [{"x": x}, {"x": np.ones((1, 3), np.float32)}, {"x": 2 * x}])
    np.testing.assert_array_equal(results[0]["y"], [[2, 10]])
    assert isinstance(results[1], errors.InvalidArgument)
    np.testing.assert_array_equal(results[2]["ids"], [1])
    replica.unload(4)


def test_session_threads_follow_the_cpus_ray_gave_the_replica() -> None:
    assert threads_for(0.5) == 1 and threads_for(None) == 1
    assert threads_for(1) == 1
    assert threads_for(1000) == len(__import__("os").sched_getaffinity(0))


def test_describe_without_a_describe_of_its_own_loads_and_closes(tmp_path: pathlib.Path) -> None:
    assert set(servable.describe("fake", str(tmp_path))) == {DEFAULT_SERVING_SIGNATURE, "regress"}
    assert FakeServable.instances[0].closed
