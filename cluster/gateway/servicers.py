"""grpc.aio servicers for TF Serving's PredictionService and ModelService.

Each method converts the request, awaits the `ServingAPI` and converts the result back; every
error leaves through the status table (`cluster.gateway.status`). Every method receives the
request's raw bytes (`grpc_server` registers no deserializers): parsing is the servicer's, so an
undecodable message is INVALID_ARGUMENT like any other bad request, and a big one is parsed off
the event loop. Classify, Regress and MultiInference never decode their Examples at all (see
`converters.examples_request`).

Predict is checked against the signature before its tensors are decoded: the servicer first looks
up the signatures of the version the request resolves to (`metadata_lookup`), so a tiny message
that claims a huge tensor of the wrong dtype, shape or alias allocates nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
import numpy as np

from cluster import errors
from cluster.gateway import config_converters, converters, predict_bytes
from cluster.gateway.offload import OFFLOAD_BYTES, Abort, in_thread
from cluster.gateway.status import log_failure, status_of
from cluster.requests import ClassifyResult, ModelMetadata, ModelSpec, ServingAPI
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    regression_pb2,
)

logger = logging.getLogger(__name__)

Response = TypeVar("Response")
T = TypeVar("T")
MetadataLookup = Callable[[ModelSpec], Awaitable[ModelMetadata]]
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


async def _convert(raw: bytes, abort: Abort, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args)` inline for a small request, in a worker thread for a big one (by wire size)."""
    if len(raw) < OFFLOAD_BYTES:
        return fn(*args, **kwargs)
    return await in_thread(abort, fn, *args, **kwargs)


async def _respond(arrays: Iterable[np.ndarray | None], fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args)` (a result's conversion to its message) inline, or in a worker thread when the
    result's arrays hold OFFLOAD_BYTES or more: a big answer must not hold the loop either."""
    if _nbytes(arrays) < OFFLOAD_BYTES:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


def _nbytes(arrays: Iterable[np.ndarray | None]) -> int:
    """The bytes `arrays` hold (a loop, not a generator: it runs on every answer)."""
    total = 0
    for array in arrays:
        if array is not None:
            total += array.nbytes
    return total


async def _parse(message_type: type[T], raw: bytes, abort: Abort) -> T:
    return await _convert(raw, abort, converters.parse, message_type, raw)


class PredictionServicer:
    """tensorflow.serving.PredictionService over a ServingAPI.

    `metadata_lookup` (default `api.model_metadata`) gives a Predict's signature before its tensors
    are decoded; pass the uninstrumented service's method when `api` counts requests.
    `max_fill_bytes` bounds what TF's fill may add to one Predict's tensors.
    """

    def __init__(
        self,
        api: ServingAPI,
        *,
        tensor_content: bool = False,
        metadata_lookup: MetadataLookup | None = None,
        max_fill_bytes: int = converters.DEFAULT_MAX_FILL_BYTES,
    ) -> None:
        self._api = api
        self._tensor_content = tensor_content  # TF's --enable_serialization_as_tensor_content
        self._metadata = metadata_lookup or api.model_metadata
        self._max_fill_bytes = max_fill_bytes

    @_guarded
    async def Classify(self, request: bytes, context: Any) -> classification_pb2.ClassificationResponse:
        deadline = _deadline(context)
        domain = await _convert(request, Abort(deadline), converters.examples_request, request, deadline)
        result = await self._api.classify(domain)
        return await _respond((result.labels, result.scores), converters.classification_response, result)

    @_guarded
    async def Regress(self, request: bytes, context: Any) -> regression_pb2.RegressionResponse:
        deadline = _deadline(context)
        domain = await _convert(request, Abort(deadline), converters.examples_request, request, deadline)
        result = await self._api.regress(domain)
        return await _respond((result.values,), converters.regression_response, result)

    @_guarded
    async def Predict(self, request: bytes, context: Any) -> bytes:
        deadline = _deadline(context)
        abort = Abort(deadline)
        # As `_convert` decides, without its coroutines on the small path: inline, or (big) in a thread.
        small = len(request) < OFFLOAD_BYTES
        # A big request's tensor payloads are lifted out as views, never parsed into the message.
        if small:
            message, lifted = predict_bytes.parse_predict_request(request)
        else:
            message, lifted = await in_thread(abort, predict_bytes.parse_predict_request, request)
        spec = converters.predict_spec(message)
        # The signature `spec` resolves to now, or None: then the service refuses the spec itself
        # (with its own error, counted in its metrics), and the tensors are only bounded by the fill limit.
        try:
            signature = (await self._metadata(spec)).signatures.get(spec.signature_key)
        except errors.ServingError:
            signature = None
        try:
            if small:
                domain = converters.predict_request(
                    message, deadline, signature=signature, max_fill_bytes=self._max_fill_bytes,
                    check=abort.check, lifted=lifted, spec=spec,
                )
            else:
                domain = await in_thread(
                    abort, converters.predict_request, message, deadline, signature=signature,
                    max_fill_bytes=self._max_fill_bytes, check=abort.check, lifted=lifted, spec=spec,
                )
        except errors.ServingError as exc:
            # Refused before the service saw it: still counted, as the service's own refusals are.
            refuse = getattr(self._api, "refuse", None)  # InstrumentedAPI's; a plain ServingAPI has none
            if refuse is not None:
                await refuse("predict", spec, exc)
            raise
        result = await self._api.predict(domain)
        # Serialized here, not by grpc on the loop: a big response is written in a worker thread.
        # Written by hand (`predict_bytes`), not built as a message and serialized by upb: faster
        # for a small answer too, and the same bytes.
        if _nbytes(result.outputs.values()) < OFFLOAD_BYTES:
            return predict_bytes.predict_response_bytes(result, tensor_content=self._tensor_content)
        return await asyncio.to_thread(predict_bytes.predict_response_bytes, result, tensor_content=self._tensor_content)

    @_guarded
    async def MultiInference(self, request: bytes, context: Any) -> inference_pb2.MultiInferenceResponse:
        deadline = _deadline(context)
        domain = await _convert(request, Abort(deadline), converters.multi_inference_request, request, deadline)
        results = await self._api.multi_inference(domain)
        arrays = [a for r in results for a in ((r.labels, r.scores) if isinstance(r, ClassifyResult) else (r.values,))]
        return await _respond(arrays, converters.multi_inference_response, results)

    @_guarded
    async def GetModelMetadata(self, request: bytes, context: Any) -> get_model_metadata_pb2.GetModelMetadataResponse:
        message = await _parse(get_model_metadata_pb2.GetModelMetadataRequest, request, Abort(_deadline(context)))
        spec = converters.metadata_request(message)
        return converters.metadata_response(await self._api.model_metadata(spec))


class ModelServicer:
    """tensorflow.serving.ModelService over a ServingAPI."""

    def __init__(self, api: ServingAPI) -> None:
        self._api = api

    @_guarded
    async def GetModelStatus(self, request: bytes, context: Any) -> get_model_status_pb2.GetModelStatusResponse:
        message = await _parse(get_model_status_pb2.GetModelStatusRequest, request, Abort(_deadline(context)))
        name, version = converters.status_request(message)
        return converters.status_response(await self._api.model_status(name, version))

    @_guarded
    async def HandleReloadConfigRequest(self, request: bytes, context: Any) -> model_management_pb2.ReloadConfigResponse:
        message = await _parse(model_management_pb2.ReloadConfigRequest, request, Abort(_deadline(context)))
        # A failure is the RPC's status, not a response body (spec §7.6), as in TF Serving.
        await self._api.reload_config(config_converters.server_config_from_proto(message.config))
        return converters.reload_response()
