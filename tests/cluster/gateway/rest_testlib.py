"""The REST gateway tests' fake ServingAPI and harness: a real RestServer on a loopback port in front of
`FakeAPI` (y = 2x, echoes of strings, no Ray), and a small aiohttp client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import numpy as np

from cluster import errors
from cluster.config import ServeOptions, ServerConfig
from cluster.gateway.rest_server import RestServer
from cluster.requests import (
    ClassifyResult,
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
from tests.cluster.gateway.fake_api_testlib import FakeServables

MODELS = ("half", "my model")


_T = TensorInfo


def fake_signatures() -> dict[str, Signature]:
    examples = {"inputs": _T("examples:0", dtypes.STRING, (None,))}
    return {
        "serving_default": Signature(
            "serving_default", "tensorflow/serving/predict",
            {"x": _T("x:0", dtypes.FLOAT, (None,))}, {"y": _T("y:0", dtypes.FLOAT, (None,))},
        ),
        "multi": Signature(
            "multi", "tensorflow/serving/predict",
            {"a": _T("a:0", dtypes.FLOAT, (None, 2)), "s": _T("s:0", dtypes.STRING, (None,))},
            {"double": _T("d:0", dtypes.FLOAT, (None, 2)), "text": _T("t:0", dtypes.STRING, (None,)),
             "text_bytes": _T("tb:0", dtypes.STRING, (None,))},
        ),
        "ints": Signature(
            "ints", "tensorflow/serving/predict",
            {"n": _T("n:0", dtypes.INT32, (None,))}, {"n2": _T("n2:0", dtypes.INT64, (None,))},
        ),
        "classify": Signature(
            "classify", "tensorflow/serving/classify", examples,
            {"classes": _T("c:0", dtypes.STRING, (None, 2)), "scores": _T("s:0", dtypes.FLOAT, (None, 2))},
        ),
        "regress": Signature("regress", "tensorflow/serving/regress", examples,
                             {"outputs": _T("o:0", dtypes.FLOAT, (None,))}),
    }


@dataclass
class FakeAPI(FakeServables):
    """Models "half" and "my model", versions 1 and 2, labels stable=1 and canary=2."""

    MODELS: ClassVar[tuple[str, ...]] = MODELS

    delay: float = 0.0

    async def predict(self, request: PredictRequest) -> PredictResult:
        self.seen.append(request)
        await asyncio.sleep(self.delay)
        spec = self._resolve(request.spec)
        inputs = request.inputs
        if spec.signature_key == "multi":
            outputs = {"double": 2 * inputs["a"], "text": inputs["s"], "text_bytes": inputs["s"]}
        elif spec.signature_key == "ints":
            outputs = {"n2": 2 * inputs["n"].astype(np.int64)}
        else:
            outputs = {"y": 2 * inputs["x"]}
        return PredictResult(spec, outputs)

    async def multi_inference(self, request: MultiInferenceRequest) -> list[ClassifyResult | RegressResult]:
        raise errors.Unimplemented("not over REST")

    async def model_metadata(self, spec: ModelSpec) -> ModelMetadata:
        resolved = self._resolve(spec)
        return ModelMetadata(ResolvedSpec(resolved.name, resolved.version, ""), fake_signatures())

    async def model_status(self, name: str, version: int | None) -> list[VersionStatus]:
        self.seen.append((name, version))
        if name not in MODELS:
            raise errors.NotFound(f"Could not find any versions of model {name}")
        statuses = [VersionStatus(2, ServableState.AVAILABLE), VersionStatus(1, ServableState.AVAILABLE)]
        return [s for s in statuses if version is None or s.version == version]

    async def reload_config(self, config: ServerConfig) -> None:
        raise errors.Unimplemented("not over REST")

    def is_ready(self) -> bool:
        return self.ready


@dataclass
class Reply:
    status: int
    headers: Any
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Client:
    session: aiohttp.ClientSession
    base: str
    server: RestServer
    api: FakeAPI

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   headers: dict[str, str] | None = None) -> Reply:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        async with self.session.request(method, self.base + path, data=data, headers=headers,
                                        skip_auto_headers=["Content-Type"]) as response:
            reply = Reply(response.status, response.headers, await response.text())
        if path.lower().startswith("/v1/"):
            assert reply.headers["Content-Type"] == "application/json"
        return reply

    async def error(self, method: str, path: str, body: Any, status: int, message: str, **kw: Any) -> None:
        reply = await self.call(method, path, body, **kw)
        assert (reply.status, reply.json) == (status, {"error": message}), reply.text


@contextlib.asynccontextmanager
async def serving(api: FakeAPI, options: ServeOptions | None = None, **kwargs: Any) -> AsyncIterator[Client]:
    server = RestServer(api, options or ServeOptions(), **kwargs)
    port = await server.start("127.0.0.1", 0)
    assert port > 0
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            yield Client(session, f"http://127.0.0.1:{port}", server, api)
    finally:
        await server.stop(1.0)


def run(test: Callable[[Client], Awaitable[None]], api: FakeAPI | None = None,
        options: ServeOptions | None = None, **kwargs: Any) -> FakeAPI:
    api = api or FakeAPI()

    async def main() -> None:
        async with serving(api, options, **kwargs) as client:
            await test(client)

    asyncio.run(main())
    return api
