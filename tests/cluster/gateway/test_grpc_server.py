"""The gRPC gateway end to end on loopback: generated stubs -> grpc.aio server -> a fake ServingAPI.

The fake computes its answers from the requests it gets (no Ray), so these tests check that
requests are converted, delegated and answered, and that errors carry TF Serving's codes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from cluster.gateway.grpc_server import GatewayServer
from cluster.gateway.instrumented import InstrumentedAPI
from cluster.metrics import GatewayMetrics
from exporter import dtypes
from exporter.tensor_codec import proto_to_array
from exporter.tensor_encode import array_to_proto
from protos.tensorflow.core.example import example_pb2
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)
from protos.tensorflow_serving.config import model_server_config_pb2
from tests.cluster.gateway.grpc_testlib import (
    MODEL,
    Client,
    FakeAPI,
    expect_error,
    predict_request,
    run,
)

pytestmark = pytest.mark.timeout(60)


def _input(*xs: float) -> dict[str, Any]:
    examples = []
    for x in xs:
        example = example_pb2.Example()
        example.features.feature["x"].float_list.value.append(x)
        examples.append(example)
    return {"example_list": {"examples": examples}}


# ---------------------------------------------------------------------------------------------
# Every RPC


def test_predict_with_version_label_and_deadline() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        x = np.array([1.0, 2.0, 5.0], dtype=np.float32)
        response = await client.prediction.Predict(predict_request(x, version_label="stable"), timeout=20)
        np.testing.assert_array_equal(proto_to_array(response.outputs["y"]), [2.5, 3.0, 4.5])
        assert list(response.outputs["y"].float_val) == [2.5, 3.0, 4.5]  # typed fields by default
        assert (response.model_spec.name, response.model_spec.version.value) == (MODEL, 1)
        assert response.model_spec.signature_name == "serving_default"
        assert not response.model_spec.version_label
        remaining = api.seen[-1].deadline - time.monotonic()
        assert 0 < remaining <= 20.5  # grpc and time.monotonic read different clocks

        request = predict_request(x, version={"value": 2})
        request.output_filter.append("version")
        filtered = await client.prediction.Predict(request)
        assert list(filtered.outputs) == ["version"] and list(filtered.outputs["version"].int64_val) == [2]
        assert api.seen[-1].deadline is None  # no client deadline, none on the request

    run(test)


def test_predict_large_message_and_tensor_content_option() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        x = np.arange(1_500_000, dtype=np.float32)  # 6 MB: over grpc's default 4 MiB limit
        request = predict_pb2.PredictRequest(model_spec={"name": MODEL}, output_filter=["y"])
        array_to_proto(x, request.inputs["x"])
        response = await client.prediction.Predict(request)
        assert len(response.outputs["y"].tensor_content) == x.nbytes and not response.outputs["y"].float_val
        np.testing.assert_array_equal(proto_to_array(response.outputs["y"]), x * 0.5 + 2)

    run(test, tensor_content=True)


def test_classify_and_regress() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        request = classification_pb2.ClassificationRequest(
            model_spec={"name": MODEL}, input=_input(0.25, 0.75)
        )
        response = await client.prediction.Classify(request)
        got = [[(c.label, c.score) for c in e.classes] for e in response.result.classifications]
        assert got == [[("pos", 0.25), ("neg", 0.75)], [("pos", 0.75), ("neg", 0.25)]]
        assert (response.model_spec.version.value, response.model_spec.signature_name) == (
            2,
            "serving_default",
        )
        assert all(isinstance(e, bytes) for e in api.seen[-1].examples)

        context = example_pb2.Example()
        context.features.feature["x"].float_list.value.append(100.0)
        context.features.feature["unused"].float_list.value.append(1.0)
        with_context = {
            "example_list_with_context": {
                "examples": _input(1.5)["example_list"]["examples"],
                "context": context,
            }
        }
        regress = regression_pb2.RegressionRequest(
            model_spec={"name": MODEL, "signature_name": "r"}, input=with_context
        )
        response = await client.prediction.Regress(regress)
        assert [r.value for r in response.result.regressions] == [
            3.0
        ]  # the example's x overrides the context's
        assert response.model_spec.signature_name == "r"

    run(test)


def test_multi_inference() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        request = inference_pb2.MultiInferenceRequest(input=_input(0.5))
        request.tasks.add(
            model_spec={"name": MODEL, "signature_name": "c"}, method_name="tensorflow/serving/classify"
        )
        request.tasks.add(
            model_spec={"name": MODEL, "signature_name": "r"}, method_name="tensorflow/serving/regress"
        )
        response = await client.prediction.MultiInference(request)
        assert [r.model_spec.signature_name for r in response.results] == ["c", "r"]
        assert response.results[0].classification_result.classifications[0].classes[0].score == 0.5
        assert response.results[1].regression_result.regressions[0].value == 1.0

        request.tasks[1].method_name = "tensorflow/serving/predict"
        await expect_error(
            client.prediction.MultiInference(request),
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        )

    run(test)


def test_get_model_metadata() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": MODEL}, metadata_field=["signature_def"]
        )
        response = await client.prediction.GetModelMetadata(request)
        assert (response.model_spec.name, response.model_spec.version.value) == (MODEL, 2)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signatures)
        assert [d.size for d in signatures.signature_def["serving_default"].inputs["x"].tensor_shape.dim] == [
            -1
        ]

    run(test)


def test_get_model_status() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        response = await client.model.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": MODEL})
        )
        entries = [
            (e.version, e.state, e.status.error_code, e.status.error_message)
            for e in response.model_version_status
        ]
        assert entries == [(3, 50, 15, "checksum mismatch in variables/w"), (2, 30, 0, ""), (1, 30, 0, "")]
        one = await client.model.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": MODEL, "version": {"value": 1}})
        )
        assert [e.version for e in one.model_version_status] == [1]
        await expect_error(
            client.model.GetModelStatus(
                get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "nope"})
            ),
            grpc.StatusCode.NOT_FOUND,
            "Could not find any versions of model nope",
        )

    run(test)


def test_handle_reload_config_request() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        request = model_management_pb2.ReloadConfigRequest()
        request.config.model_config_list.config.add(name="a", base_path="/models/a")
        response = await client.model.HandleReloadConfigRequest(request)
        assert response.HasField("status") and response.status.error_code == 0
        assert [m.name for m in api.config.models] == ["a"]

        request.config.model_config_list.config[0].base_path = "/bad"
        await expect_error(
            client.model.HandleReloadConfigRequest(request),
            grpc.StatusCode.FAILED_PRECONDITION,
            "Request to assign label to version 9 of model m, which is not currently available for inference",
        )
        custom = model_management_pb2.ReloadConfigRequest(
            config=model_server_config_pb2.ModelServerConfig(custom_model_config={"type_url": "x/y"})
        )
        await expect_error(
            client.model.HandleReloadConfigRequest(custom),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently supported",
        )
        assert [m.name for m in api.config.models] == ["a"]

    run(test)


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_model_spec_on_every_rpc() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        calls = [
            client.prediction.Predict(predict_pb2.PredictRequest()),
            client.prediction.Classify(classification_pb2.ClassificationRequest(input=_input(1.0))),
            client.prediction.Regress(regression_pb2.RegressionRequest(input=_input(1.0))),
            client.prediction.GetModelMetadata(
                get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            ),
            client.model.GetModelStatus(get_model_status_pb2.GetModelStatusRequest()),
        ]
        for call in calls:
            await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")

    run(test)


def test_empty_name_unknown_model_label_and_signature() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        x = np.ones(2, dtype=np.float32)
        request = predict_request(x)
        request.model_spec.name = ""
        await expect_error(
            client.prediction.Predict(request),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ModelSpec has no name specified.",
        )
        request.model_spec.name = "unknown"
        await expect_error(
            client.prediction.Predict(request),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(unknown)",
        )
        await expect_error(
            client.prediction.Predict(predict_request(x, version={"value": 9})),
            grpc.StatusCode.NOT_FOUND,
            f"Servable not found for request: Specific({MODEL}, 9)",
        )
        await expect_error(
            client.prediction.Predict(predict_request(x, version_label="beta")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: beta",
        )
        await expect_error(
            client.prediction.Predict(predict_request(x, signature_name="nope")),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        )

    run(test)


def test_bad_tensor_bytes() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        request = predict_pb2.PredictRequest(model_spec={"name": MODEL})
        request.inputs["x"].dtype = dtypes.FLOAT
        request.inputs["x"].tensor_shape.dim.add().size = 4
        request.inputs["x"].tensor_content = b"\x00" * 7
        await expect_error(
            client.prediction.Predict(request), grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: x"
        )
        assert api.seen == []  # refused in the gateway

    run(test)


def test_empty_examples() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        empty = {"example_list": {}}
        await expect_error(
            client.prediction.Classify(
                classification_pb2.ClassificationRequest(model_spec={"name": MODEL}, input=empty)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Input is empty.",
        )
        await expect_error(
            client.prediction.Regress(regression_pb2.RegressionRequest(model_spec={"name": MODEL})),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Input is empty.",
        )

    run(test)


def test_metadata_field_missing_or_unsupported() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": MODEL})
        await expect_error(
            client.prediction.GetModelMetadata(request),
            grpc.StatusCode.INVALID_ARGUMENT,
            "GetModelMetadataRequest must specify at least one metadata_field",
        )
        request.metadata_field.append("graph_def")
        await expect_error(
            client.prediction.GetModelMetadata(request),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Metadata field graph_def is not supported",
        )

    run(test)


def test_unexpected_errors_are_internal_and_long_messages_truncated() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        crash = predict_request(np.ones(1, dtype=np.float32))
        crash.model_spec.name = "crash"
        await expect_error(
            client.prediction.Predict(crash), grpc.StatusCode.INTERNAL, "the fake crashed on purpose"
        )
        long_name = "m" * 2000
        status = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": long_name})
        expected = f"Could not find any versions of model {long_name}"[:1024] + "...TRUNCATED"
        await expect_error(client.model.GetModelStatus(status), grpc.StatusCode.NOT_FOUND, expected)
        # The server keeps serving after errors.
        ok = await client.prediction.Predict(predict_request(np.ones(1, dtype=np.float32)))
        assert list(ok.outputs["y"].float_val) == [2.5]

    run(test)


# ---------------------------------------------------------------------------------------------
# Health and reflection


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


def test_health_not_serving_until_ready_then_serving() -> None:
    names = [
        "",
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
        "PredictionService",
        "ModelService",
    ]

    async def test(client: Client, api: FakeAPI) -> None:
        for name in names:
            assert await _health(client.channel, name) == health_pb2.HealthCheckResponse.NOT_SERVING
        api.ready = True
        deadline = time.monotonic() + 10
        while await _health(client.channel, "ModelService") != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "never became SERVING"
            await asyncio.sleep(0.02)
        for name in names:
            assert await _health(client.channel, name) == health_pb2.HealthCheckResponse.SERVING
        await client.server.set_serving(False)  # e.g. draining before a shutdown
        assert (
            await _health(client.channel, "PredictionService") == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await asyncio.sleep(0.1)  # polling stopped: readiness no longer overrides the manual status
        assert await _health(client.channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        await client.server.set_serving(True)
        assert await _health(client.channel, "") == health_pb2.HealthCheckResponse.SERVING

    run(test)


def test_reflection_lists_both_services() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="tensorflow.serving.PredictionService"
            ),
        ]
        responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
        services = {s.name for s in responses[0].list_services_response.service}
        assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"} <= services
        assert "grpc.health.v1.Health" in services
        assert responses[1].file_descriptor_response.file_descriptor_proto  # the descriptors are served

    run(test)


def test_start_twice_is_refused_and_stop_is_idempotent() -> None:
    async def main() -> None:
        server = GatewayServer(FakeAPI())
        await server.start("127.0.0.1", 0)
        with pytest.raises(RuntimeError):
            await server.start("127.0.0.1", 0)
        await server.stop(None)
        await server.stop(None)

    asyncio.run(main())


def test_health_follows_a_held_readiness() -> None:
    held = [True]
    fake = FakeAPI()
    fake.ready = True
    api = InstrumentedAPI(fake, GatewayMetrics(CollectorRegistry()), "grpc", held=lambda: held[0])

    async def test(client: Client, _: Any) -> None:
        await asyncio.sleep(0.1)  # several readiness polls
        assert await _health(client.channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        held[0] = False
        deadline = time.monotonic() + 10
        while await _health(client.channel, "") != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "never became SERVING"
            await asyncio.sleep(0.02)

    run(test, api)  # type: ignore[arg-type]  # an InstrumentedAPI over the FakeAPI
