"""A ServingAPI wrapper that counts and times every call.

One per entrypoint (grpc, rest), around the same dispatcher. Per request: one perf_counter pair
and one pre-bound counter/histogram child. (Failures are logged at the transport edges, which
know the request id.)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from cluster.config import ServerConfig
from cluster.gateway.status import code_of
from cluster.metrics import GatewayMetrics
from cluster.requests import (
    ClassifyResult,
    ExamplesRequest,
    ModelMetadata,
    ModelSpec,
    MultiInferenceRequest,
    PredictRequest,
    PredictResult,
    RegressResult,
    ServingAPI,
)
from cluster.types import VersionStatus

T = TypeVar("T")

class InstrumentedAPI:
    """Implements ServingAPI by delegating to `api`, recording metrics for `entrypoint`.

    `held` (default: never) holds readiness back while it is true, whatever `api` says: the health
    service and /readyz report not ready, requests are still answered.
    """

    def __init__(
        self,
        api: ServingAPI,
        metrics: GatewayMetrics,
        entrypoint: str,
        is_known_model: Callable[[str], bool] = lambda name: True,
        held: Callable[[], bool] = lambda: False,
    ) -> None:
        self._api = api
        self._metrics = metrics
        self._entrypoint = entrypoint
        self._is_known = is_known_model
        self._held = held

    async def _observe(
        self, method: str, spec: ModelSpec | None, call: Awaitable[T], *, per_signature: bool = True
    ) -> T:
        started = time.perf_counter()
        status = "OK"
        try:
            return await call
        except Exception as exc:
            status = code_of(exc).name
            raise
        finally:
            self._record(method, spec, status, per_signature, started)

    def _record(self, method: str, spec: ModelSpec | None, status: str, per_signature: bool, started: float) -> None:
        # Label values come from known models and, on success, real signatures only, so a
        # client cannot blow up the number of series with made-up names.
        model = spec.name if spec is not None and self._is_known(spec.name) else ""
        signature = spec.signature_key if spec is not None and per_signature and status == "OK" else ""
        self._metrics.observe(model, signature, method, status, self._entrypoint, time.perf_counter() - started)

    async def refuse(self, method: str, spec: ModelSpec | None, error: BaseException) -> NoReturn:
        """Counts a request the gateway refused before it reached the service (a Predict whose
        tensors do not fit the signature is refused before they are decoded), and raises `error`."""

        async def fail() -> NoReturn:
            raise error

        await self._observe(method, spec, fail())
        raise error  # unreachable: _observe re-raises

    async def predict(self, request: PredictRequest) -> PredictResult:
        # `_observe` written out: one coroutine fewer on the path every Predict takes.
        started = time.perf_counter()
        status = "OK"
        try:
            return await self._api.predict(request)
        except Exception as exc:
            status = code_of(exc).name
            raise
        finally:
            self._record("predict", request.spec, status, True, started)

    async def classify(self, request: ExamplesRequest) -> ClassifyResult:
        return await self._observe("classify", request.spec, self._api.classify(request))

    async def regress(self, request: ExamplesRequest) -> RegressResult:
        return await self._observe("regress", request.spec, self._api.regress(request))

    async def multi_inference(self, request: MultiInferenceRequest) -> list[ClassifyResult | RegressResult]:
        spec = request.tasks[0].spec if request.tasks else None
        return await self._observe("multi_inference", spec, self._api.multi_inference(request))

    async def model_metadata(self, spec: ModelSpec) -> ModelMetadata:
        return await self._observe("metadata", spec, self._api.model_metadata(spec), per_signature=False)

    async def model_status(self, name: str, version: int | None) -> list[VersionStatus]:
        return await self._observe(
            "status", ModelSpec(name), self._api.model_status(name, version), per_signature=False
        )

    async def reload_config(self, config: ServerConfig) -> None:
        return await self._observe("reload_config", None, self._api.reload_config(config))

    def is_ready(self) -> bool:
        return not self._held() and self._api.is_ready()
