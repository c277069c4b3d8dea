"""cluster.gateway.instrumented: every call through InstrumentedAPI is counted once, with its status,
and timed, with labels a client cannot multiply (unknown models and failed signatures are blank)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cluster import errors
from cluster.config import ServerConfig
from cluster.gateway.instrumented import InstrumentedAPI
from cluster.metrics import GatewayMetrics
from cluster.requests import (
    ExamplesRequest,
    InferenceTask,
    ModelSpec,
    MultiInferenceRequest,
    PredictRequest,
    PredictResult,
)
from cluster.types import VersionRequest
from tests.cluster.gateway.grpc_testlib import MODEL, FakeAPI

T = TypeVar("T")


def run(call: Awaitable[T]) -> T:
    async def main() -> T:
        return await call

    return asyncio.run(main())


class Instrumented:
    """An InstrumentedAPI over the gRPC tests' FakeAPI (model `half_plus_two`), on its own registry."""

    def __init__(self, api: Any = None, entrypoint: str = "grpc", known: tuple[str, ...] = (MODEL, "crash")) -> None:
        self.registry = CollectorRegistry()
        self.fake = api or FakeAPI()
        self.api = InstrumentedAPI(self.fake, GatewayMetrics(self.registry), entrypoint, lambda n: n in known)

    def requests(self, model: str, signature: str, method: str, status: str, entrypoint: str = "grpc") -> float:
        labels = {"model": model, "signature": signature, "method": method, "status": status, "entrypoint": entrypoint}
        return self.registry.get_sample_value("tessera_requests_total", labels) or 0.0

    def total(self) -> float:
        return sum(
            s.value for m in self.registry.collect() if m.name == "tessera_requests" for s in m.samples
            if s.name == "tessera_requests_total"
        )

    def latency(self, model: str, method: str, suffix: str = "count", entrypoint: str = "grpc") -> float:
        labels = {"model": model, "method": method, "entrypoint": entrypoint}
        return self.registry.get_sample_value(f"tessera_request_latency_seconds_{suffix}", labels) or 0.0


def predict(name: str = MODEL, signature: str = "") -> PredictRequest:
    return PredictRequest(ModelSpec(name, VersionRequest.latest(), signature), {"x": np.float32([1.0, 2.0])})


def examples(name: str = MODEL, signature: str = "") -> ExamplesRequest:
    from protos.tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(0.25)
    return ExamplesRequest(ModelSpec(name, VersionRequest.latest(), signature), [example.SerializeToString()])


def test_a_successful_predict_is_counted_once_with_its_resolved_signature_and_timed() -> None:
    t = Instrumented(entrypoint="rest")
    result = run(t.api.predict(predict()))
    assert isinstance(result, PredictResult)
    np.testing.assert_array_equal(result.outputs["y"], np.float32([2.5, 3.0]))  # the service's answer, as is
    assert t.requests(MODEL, "serving_default", "predict", "OK", "rest") == 1
    assert t.total() == 1
    assert t.latency(MODEL, "predict", entrypoint="rest") == 1


def test_the_latency_covers_the_whole_call() -> None:
    class Slow(FakeAPI):
        async def predict(self, request: PredictRequest) -> PredictResult:
            await asyncio.sleep(0.05)
            return await super().predict(request)

    t = Instrumented(Slow())
    run(t.api.predict(predict()))
    assert t.latency(MODEL, "predict", "sum") >= 0.05


def test_an_error_is_counted_with_its_code_and_reaches_the_caller_unchanged() -> None:
    t = Instrumented()
    with pytest.raises(errors.FailedPrecondition, match='Serving signature key "nope" not found.'):
        run(t.api.predict(predict(signature="nope")))
    # A failed request's signature is not a label value: a client could invent any number of them.
    assert t.requests(MODEL, "", "predict", "FAILED_PRECONDITION") == 1
    assert t.total() == 1
    assert t.latency(MODEL, "predict") == 1


def test_an_unexpected_exception_is_internal() -> None:
    t = Instrumented()
    with pytest.raises(RuntimeError, match="crashed on purpose"):
        run(t.api.predict(predict("crash")))
    assert t.requests("crash", "", "predict", "INTERNAL") == 1


def test_unknown_model_names_are_recorded_blank() -> None:
    t = Instrumented()
    for i in range(3):
        with pytest.raises(errors.NotFound):
            run(t.api.predict(predict(f"made-up-{i}")))
    assert t.requests("", "", "predict", "NOT_FOUND") == 3
    assert t.latency("", "predict") == 3
    assert t.total() == 3  # one series for all of them


def test_classify_regress_and_multi_inference_are_counted_by_method() -> None:
    t = Instrumented()
    run(t.api.classify(examples(signature="c")))
    run(t.api.regress(examples(signature="r")))
    request = examples()
    multi = MultiInferenceRequest(
        [InferenceTask(ModelSpec(MODEL, VersionRequest.latest(), "c"), "tensorflow/serving/classify")],
        request.examples,
    )
    assert len(run(t.api.multi_inference(multi))) == 1
    assert t.requests(MODEL, "c", "classify", "OK") == 1
    assert t.requests(MODEL, "r", "regress", "OK") == 1
    assert t.requests(MODEL, "c", "multi_inference", "OK") == 1  # labelled by its first task
    assert t.total() == 3


def test_a_multi_inference_without_tasks_has_no_model() -> None:
    t = Instrumented()
    assert run(t.api.multi_inference(MultiInferenceRequest([], []))) == []
    assert t.requests("", "", "multi_inference", "OK") == 1


def test_metadata_and_status_are_counted_without_a_signature() -> None:
    t = Instrumented()
    run(t.api.model_metadata(ModelSpec(MODEL)))
    statuses = run(t.api.model_status(MODEL, None))
    assert [s.version for s in statuses] == [1, 2, 3]
    with pytest.raises(errors.NotFound):
        run(t.api.model_status("elsewhere", None))
    assert t.requests(MODEL, "", "metadata", "OK") == 1
    assert t.requests(MODEL, "", "status", "OK") == 1
    assert t.requests("", "", "status", "NOT_FOUND") == 1


def test_reload_config_is_counted_without_a_model() -> None:
    t = Instrumented()
    config = ServerConfig(models=())
    run(t.api.reload_config(config))
    assert t.fake.config is config
    assert t.requests("", "", "reload_config", "OK") == 1


def test_a_refused_request_is_counted_and_its_error_raised() -> None:
    t = Instrumented()
    refusal = errors.InvalidArgument("input x is float, the signature wants int64")
    with pytest.raises(errors.InvalidArgument) as info:
        run(t.api.refuse("predict", ModelSpec(MODEL), refusal))
    assert info.value is refusal
    assert t.fake.seen == []  # it never reached the service
    assert t.requests(MODEL, "", "predict", "INVALID_ARGUMENT") == 1


def test_readiness_is_the_service_s() -> None:
    t = Instrumented()
    assert not t.api.is_ready()
    t.fake.ready = True
    assert t.api.is_ready()
    assert t.total() == 0  # readiness probes are not requests


def test_readiness_held_back_while_held_and_requests_still_answered() -> None:
    held = [True]
    fake = FakeAPI()
    fake.ready = True
    api = InstrumentedAPI(fake, GatewayMetrics(CollectorRegistry()), "grpc", held=lambda: held[0])
    assert not api.is_ready()  # e.g. `tessera serve`'s own gateway before its siblings joined
    assert isinstance(run(api.predict(predict())), PredictResult)
    held[0] = False
    assert api.is_ready()
    fake.ready = False
    assert not api.is_ready()  # the service's own word still counts
