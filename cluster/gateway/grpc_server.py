"""The gRPC gateway: TF Serving's two services, health checking and reflection on one grpc.aio server.

    server = GatewayServer(api)
    port = await server.start("0.0.0.0", 8500)   # port 0 picks a free port
    ...
    await server.stop(grace=5.0)

The health service reports NOT_SERVING for the TF Serving services until `api.is_ready()` is
true (polled while the server runs), then SERVING; `set_serving` takes over by hand (e.g. to
drain before a shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cluster.gateway.converters import DEFAULT_MAX_FILL_BYTES
from cluster.gateway.servicers import MetadataLookup, ModelServicer, PredictionServicer
from cluster.requests import ServingAPI
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2,
    prediction_service_pb2,
    regression_pb2,
)

PREDICTION_SERVICE: Final = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
MODEL_SERVICE: Final = model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
# TF Serving registers the short names; clients that follow grpc's convention use the full ones.
HEALTH_SERVICE_NAMES: Final = ("", PREDICTION_SERVICE, MODEL_SERVICE, "PredictionService", "ModelService")
MAX_MESSAGE_BYTES: Final = 2**31 - 1  # INT32_MAX, as TF Serving's SetMaxMessageSize
READINESS_POLL_SECONDS: Final = 0.5


def _unary(method: Any, response_type: Any | None) -> grpc.RpcMethodHandler:
    # No deserializer: every handler receives the request's bytes and parses them itself, so an
    # undecodable message gets INVALID_ARGUMENT (grpc's own failure would be UNKNOWN, with the
    # Python exception's name), and a big one is parsed off the event loop. response_type None:
    # the handler returns its response serialized (Predict: big answers are written off the loop).
    serializer = None if response_type is None else response_type.SerializeToString
    return grpc.unary_unary_rpc_method_handler(method, response_serializer=serializer)


def prediction_handlers(servicer: PredictionServicer) -> dict[str, grpc.RpcMethodHandler]:
    return {
        "Classify": _unary(servicer.Classify, classification_pb2.ClassificationResponse),
        "Regress": _unary(servicer.Regress, regression_pb2.RegressionResponse),
        "Predict": _unary(servicer.Predict, None),
        "MultiInference": _unary(servicer.MultiInference, inference_pb2.MultiInferenceResponse),
        "GetModelMetadata": _unary(servicer.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataResponse),
    }


def model_handlers(servicer: ModelServicer) -> dict[str, grpc.RpcMethodHandler]:
    return {
        "GetModelStatus": _unary(servicer.GetModelStatus, get_model_status_pb2.GetModelStatusResponse),
        "HandleReloadConfigRequest": _unary(
            servicer.HandleReloadConfigRequest, model_management_pb2.ReloadConfigResponse
        ),
    }


class GatewayServer:
    """One grpc.aio server with PredictionService, ModelService, health and reflection.

    `tensor_content` sends Predict outputs as raw `tensor_content` (TF's
    `--enable_serialization_as_tensor_content`); by default they use the typed `*_val` fields.
    `options` are extra grpc channel arguments (the message size limits are always INT32_MAX: they
    come first, and grpc keeps the first of two arguments with one key).
    `metadata_lookup` and `max_fill_bytes`: see `PredictionServicer`.
    """

    def __init__(
        self,
        api: ServingAPI,
        *,
        tensor_content: bool = False,
        options: Sequence[tuple[str, Any]] = (),
        readiness_poll_seconds: float = READINESS_POLL_SECONDS,
        credentials: grpc.ServerCredentials | None = None,
        socket_path: str = "",
        metadata_lookup: MetadataLookup | None = None,
        max_fill_bytes: int = DEFAULT_MAX_FILL_BYTES,
    ) -> None:
        self._api = api
        self._metadata_lookup = metadata_lookup
        self._max_fill_bytes = max_fill_bytes
        self._tensor_content = tensor_content
        self._options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            *options,
        ]
        self._poll_seconds = readiness_poll_seconds
        self._credentials = credentials  # TF's --ssl_config_file; None: plaintext
        self._socket_path = socket_path  # TF's --grpc_socket_path: also listen on a UNIX socket
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    @property
    def health(self) -> health.aio.HealthServicer | None:
        return self._health

    async def start(self, host: str = "0.0.0.0", port: int = 8500) -> int:
        """Binds `host:port` (0: any free port), starts serving and returns the bound port."""
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        server = grpc.aio.server(options=self._options)
        self._register(
            server,
            PREDICTION_SERVICE,
            prediction_handlers(
                PredictionServicer(
                    self._api, tensor_content=self._tensor_content, metadata_lookup=self._metadata_lookup,
                    max_fill_bytes=self._max_fill_bytes,
                )
            ),
        )
        self._register(server, MODEL_SERVICE, model_handlers(ModelServicer(self._api)))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (PREDICTION_SERVICE, MODEL_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = self._listen(server, address)
        if bound == 0:
            raise OSError(f"could not bind the gRPC gateway to {address}")
        if self._socket_path and not self._listen(server, f"unix:{self._socket_path}"):
            raise OSError(f"could not bind the gRPC gateway to unix:{self._socket_path}")
        await self._publish(self._api.is_ready())
        await server.start()
        self._server = server
        self._watcher = asyncio.create_task(self._watch_readiness(), name="gateway-readiness")
        return bound

    def _listen(self, server: grpc.aio.Server, address: str) -> int:
        if self._credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self._credentials)

    @staticmethod
    def _register(server: grpc.aio.Server, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        # Both, as generated code does: registered methods skip the generic lookup per call.
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        server.add_registered_method_handlers(service, handlers)

    async def set_serving(self, serving: bool) -> None:
        """Sets the health status by hand; readiness polling stops (the caller is in charge now)."""
        await self._stop_watcher()
        await self._publish(serving)

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, then stops: in-flight RPCs get `grace` seconds to finish."""
        await self._stop_watcher()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _publish(self, serving: bool) -> None:
        if serving == self._serving or self._health is None:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in HEALTH_SERVICE_NAMES:
            await self._health.set(name, status)

    async def _watch_readiness(self) -> None:
        # Readiness can be lost again (a reload that removes every version), so keep mirroring it.
        while True:
            await asyncio.sleep(self._poll_seconds)
            await self._publish(bool(self._api.is_ready()))

    async def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
