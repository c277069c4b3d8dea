"""The gRPC gateway tests' fake ServingAPI and harness: a real GatewayServer on a loopback port in front of
`FakeAPI`, which computes its answers from the requests it gets (no Ray)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
import numpy as np
import pytest

from cluster import errors
from cluster.config import ServerConfig
from cluster.gateway.grpc_server import GatewayServer
from cluster.requests import (
    ClassifyResult,
    ExamplesRequest,
    ModelMetadata,
    ModelSpec,
    MultiInferenceRequest,
    PredictRequest,
    PredictResult,
    RegressResult,
    ResolvedSpec,
)
from cluster.types import ServableState, VersionStatus
from exporter import dtypes
from exporter.signature import Signature, TensorInfo
from exporter.tensor_encode import array_to_proto
from protos.tensorflow_serving.apis import (
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tests.cluster.gateway.fake_api_testlib import FakeServables

MODEL = "half_plus_two"


BIG = 2**31 - 1


CLIENT_OPTIONS = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]


SIGNATURE = Signature(
    "serving_default",
    "tensorflow/serving/predict",
    {"x": TensorInfo("x:0", dtypes.FLOAT, (None,))},
    {"y": TensorInfo("y:0", dtypes.FLOAT, (None,))},
)


@dataclass
class FakeAPI(FakeServables):
    """A ServingAPI with one model, versions 1 and 2, labels stable=1 and canary=2."""

    MODELS: ClassVar[tuple[str, ...]] = (MODEL,)

    config: ServerConfig | None = None

    async def predict(self, request: PredictRequest) -> PredictResult:
        self.seen.append(request)
        spec = self._resolve(request.spec)
        if spec.signature_key != "serving_default":
            raise errors.FailedPrecondition(f'Serving signature key "{spec.signature_key}" not found.')
        x = request.inputs["x"]
        outputs = {
            "y": x * np.float32(0.5) + np.float32(2.0),
            "version": np.array(spec.version, dtype=np.int64),
        }
        wanted = request.output_filter or tuple(outputs)
        return PredictResult(spec, {k: outputs[k] for k in wanted})

    async def multi_inference(self, request: MultiInferenceRequest) -> list[ClassifyResult | RegressResult]:
        results: list[ClassifyResult | RegressResult] = []
        for task in request.tasks:
            one = ExamplesRequest(task.spec, request.examples, request.deadline, request.context)
            if task.method == "tensorflow/serving/classify":
                results.append(await self.classify(one))
            elif task.method == "tensorflow/serving/regress":
                results.append(await self.regress(one))
            else:
                raise errors.Unimplemented(f"Unsupported signature method_name: {task.method}")
        return results

    async def model_metadata(self, spec: ModelSpec) -> ModelMetadata:
        resolved = self._resolve(spec)
        return ModelMetadata(
            ResolvedSpec(resolved.name, resolved.version, ""), {"serving_default": SIGNATURE}
        )

    async def model_status(self, name: str, version: int | None) -> list[VersionStatus]:
        if name != MODEL:
            raise errors.NotFound(f"Could not find any versions of model {name}")
        statuses = [VersionStatus(v, s) for v, s in self.versions.items()]
        statuses.append(
            VersionStatus(3, ServableState.END, "checksum mismatch in variables/w", "BundleError")
        )
        return [s for s in statuses if version is None or s.version == version]

    async def reload_config(self, config: ServerConfig) -> None:
        if any(m.base_path == "/bad" for m in config.models):
            raise errors.FailedPrecondition(
                "Request to assign label to version 9 of model m, which is not currently available for inference"
            )
        self.config = config

    def is_ready(self) -> bool:
        return self.ready


@dataclass
class Client:
    channel: grpc.aio.Channel
    prediction: prediction_service_pb2_grpc.PredictionServiceStub
    model: model_service_pb2_grpc.ModelServiceStub
    server: GatewayServer


@contextlib.asynccontextmanager
async def serving(api: FakeAPI, **kwargs: Any) -> AsyncIterator[Client]:
    server = GatewayServer(api, readiness_poll_seconds=0.02, **kwargs)
    port = await server.start("127.0.0.1", 0)
    assert port > 0
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS)
    try:
        yield Client(
            channel,
            prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel),
            server,
        )
    finally:
        await channel.close()
        await server.stop(None)


def run(
    test: Callable[[Client, FakeAPI], Awaitable[None]], api: FakeAPI | None = None, **kwargs: Any
) -> FakeAPI:
    api = api or FakeAPI()

    async def main() -> None:
        async with serving(api, **kwargs) as client:
            await test(client, api)

    asyncio.run(main())
    return api


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, details: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code
    assert info.value.details() == details


def predict_request(x: np.ndarray, **spec: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec={"name": MODEL, **spec})
    array_to_proto(x, request.inputs["x"], use_tensor_content=False)
    return request
