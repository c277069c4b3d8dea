"""grpc.aio servicers for TF Serving's PredictionService and ModelService.

Each method converts the request, awaits the `ServingAPI` and converts the result back; every
error leaves through the status table (`cluster.gateway.status`). Classify, Regress and
MultiInference receive the request as raw bytes (see `converters.examples_request`), which is
why `grpc_server` registers these methods with its own (identity) deserializers.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from cluster.gateway import config_converters, converters
from cluster.gateway.status import log_failure, status_of
from cluster.requests import ServingAPI
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

logger = logging.getLogger(__name__)

Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


def _guarded(method: Handler[Response]) -> Handler[Response]:
    """Answers any exception of `method` with its status (code, TF-truncated message)."""

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every error must become a status
            status = status_of(exc)
            # The metadata is read only on failure: it costs time on every request otherwise.
            log_failure(logger, method.__name__, exc, status, _request_id(context))
            await context.abort(status.code, status.message)
            raise  # unreachable: abort raises

    return handler


def _request_id(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on our monotonic clock, or None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class PredictionServicer:
    """tensorflow.serving.PredictionService over a ServingAPI."""

    def __init__(self, api: ServingAPI, *, tensor_content: bool = False) -> None:
        self._api = api
        self._tensor_content = tensor_content  # TF's --enable_serialization_as_tensor_content

    @_guarded
    async def Classify(self, request: bytes, context: Any) -> classification_pb2.ClassificationResponse:
        domain = converters.examples_request(request, _deadline(context))
        return converters.classification_response(await self._api.classify(domain))

    @_guarded
    async def Regress(self, request: bytes, context: Any) -> regression_pb2.RegressionResponse:
        domain = converters.examples_request(request, _deadline(context))
        return converters.regression_response(await self._api.regress(domain))

    @_guarded
    async def Predict(self, request: predict_pb2.PredictRequest, context: Any) -> predict_pb2.PredictResponse:
        domain = converters.predict_request(request, _deadline(context))
        result = await self._api.predict(domain)
        return converters.predict_response(result, tensor_content=self._tensor_content)

    @_guarded
    async def MultiInference(self, request: bytes, context: Any) -> inference_pb2.MultiInferenceResponse:
        domain = converters.multi_inference_request(request, _deadline(context))
        return converters.multi_inference_response(await self._api.multi_inference(domain))

    @_guarded
    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: Any
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        spec = converters.metadata_request(request)
        return converters.metadata_response(await self._api.model_metadata(spec))


class ModelServicer:
    """tensorflow.serving.ModelService over a ServingAPI."""

    def __init__(self, api: ServingAPI) -> None:
        self._api = api

    @_guarded
    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: Any
    ) -> get_model_status_pb2.GetModelStatusResponse:
        name, version = converters.status_request(request)
        return converters.status_response(await self._api.model_status(name, version))

    @_guarded
    async def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: Any
    ) -> model_management_pb2.ReloadConfigResponse:
        # A failure is the RPC's status, not a response body (spec §7.6), as in TF Serving.
        await self._api.reload_config(config_converters.server_config_from_proto(request.config))
        return converters.reload_response()
