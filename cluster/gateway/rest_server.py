"""The REST gateway: TF Serving's `/v1/...` JSON API (spec §8) on aiohttp, beside grpc.aio.

    server = RestServer(api, options)
    server.add_get_route("/monitoring/prometheus/metrics", metrics_handler)   # optional, before start
    port = await server.start("0.0.0.0", 8501)   # port 0 picks a free port
    ...
    await server.stop(grace=5.0)

It runs on the caller's asyncio loop, the one the gRPC gateway uses. Paths outside `/v1/` answer
aiohttp's plain 404, except the routes added with `add_get_route` and two probes for Kubernetes
(JSON, outside `/v1/` because TF's grammar would read them as model names):

* `GET /healthz`: liveness, 200 `{"status": "alive"}` while the process serves HTTP;
* `GET /readyz`: readiness, 200 `{"status": "ready"}` once `api.is_ready()` (every configured model
  has an AVAILABLE version), else 503 `{"status": "not ready"}`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import unquote

from aiohttp import web

from cluster import errors
from cluster.config import ServeOptions
from cluster.gateway import rest_converters as convert
from cluster.gateway import rest_examples
from cluster.gateway.connection_age import ConnectionAge
from cluster.gateway.offload import OFFLOAD_BYTES, ConversionProcess
from cluster.gateway.rest_json import dumps, error_body
from cluster.gateway.status import log_failure, status_of
from cluster.logs import REQUEST_ID
from cluster.requests import ModelMetadata, ModelSpec, ServingAPI
from cluster.types import VersionRequest

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MetadataLookup = Callable[[ModelSpec], Awaitable[ModelMetadata]]
DEFAULT_MAX_BODY_BYTES: Final = 256 * 1024 * 1024
JSON: Final = "application/json"
LIVENESS_PATH: Final = "/healthz"
READINESS_PATH: Final = "/readyz"
_CORS_HEADERS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}


_INT64_MAX: Final = 2**63 - 1
# Spec §8.2. Literal parts match case-insensitively; a verb is then compared case-sensitively.
_MODEL_PATH: Final = re.compile(
    r"/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>classify|regress|predict))?",
    re.IGNORECASE,
)
_MODELS_LIST: Final = re.compile(r"/v1/models/?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Route:
    """What a `/v1/` request asks for: verb is predict|classify|regress|metadata|status."""

    verb: str
    name: str
    version: VersionRequest


def parse_route(method: str, raw_path: str) -> Route:
    """The route of a `/v1/` request (raw, percent-encoded path without the query), or InvalidArgument."""
    match = _MODEL_PATH.fullmatch(raw_path)
    if match is None:
        if method == "GET" and _MODELS_LIST.fullmatch(raw_path):
            raise errors.InvalidArgument("Missing model name in request.")
        raise errors.InvalidArgument(f"Malformed request: {method} {raw_path}")
    verb = match["verb"]
    if verb is not None:
        if method != "POST" or verb not in ("classify", "regress", "predict"):
            raise errors.InvalidArgument(f"Malformed request: {method} {raw_path}")
    elif method == "GET":
        verb = "metadata" if match["metadata"] else "status"
    else:
        raise errors.InvalidArgument(f"Malformed request: {method} {raw_path}")
    return Route(verb, unquote(match["name"]), _version(match["version"], match["label"]))


def _version(version: str | None, label: str | None) -> VersionRequest:
    if version is not None:
        number = int(version)
        if number > _INT64_MAX:
            raise errors.InvalidArgument(f"Failed to convert version: {version}")
        return VersionRequest.specific(number)
    if label is not None:
        return VersionRequest.labelled(unquote(label))
    return VersionRequest.latest()


T = TypeVar("T")


class RestServer:
    """TF Serving's REST API over a `ServingAPI`, on aiohttp.

    Every `/v1/` reply is JSON; errors are `{ "error": "<message>" }` with the HTTP status of the
    status table. `options.rest_api_timeout_in_ms` (<= 0: none) is each request's deadline;
    request bodies over `max_body_bytes` (after gzip decompression) get a 413.

    Predict types its JSON by the signature, so it first looks the version's signatures up with
    `metadata_lookup` (default `api.model_metadata`). Pass the uninstrumented service's method
    when `api` counts requests, or every REST Predict would also count as a metadata request.

    `options.rest_max_connection_age_ms` (> 0) ends keep-alive connections after that age
    (`cluster.gateway.connection_age`); `connection_age` replaces the one it would make (tests).
    """

    def __init__(
        self,
        api: ServingAPI,
        options: ServeOptions | None = None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        metadata_lookup: MetadataLookup | None = None,
        connection_age: ConnectionAge | None = None,
    ) -> None:
        options = options or ServeOptions()
        self._api = api
        self._metadata = metadata_lookup or api.model_metadata
        timeout_ms = options.rest_api_timeout_in_ms
        self._timeout = timeout_ms / 1000.0 if timeout_ms > 0 else None
        self._cors = options.rest_api_enable_cors_support
        self._max_body_bytes = max_body_bytes
        age_ms = options.rest_max_connection_age_ms
        self.connection_age = connection_age or (ConnectionAge(age_ms) if age_ms > 0 else None)
        self._routes: dict[str, Handler] = {LIVENESS_PATH: self._liveness, READINESS_PATH: self._readiness}
        self._runner: web.AppRunner | None = None
        self._converter = ConversionProcess()  # started on the first big body

    def add_get_route(self, path: str, handler: Handler) -> None:
        """Serves `handler` for GET (and HEAD) on the exact `path`, e.g. the Prometheus metrics route."""
        if self._runner is not None:
            raise RuntimeError("add routes before start()")
        if path.lower().startswith("/v1/"):
            raise ValueError(f"{path} is inside TF Serving's /v1/ namespace")
        self._routes[path] = handler

    async def start(self, host: str = "0.0.0.0", port: int = 8501, *, reuse_port: bool = False) -> int:
        """Binds `host:port` (0: any free port), starts serving and returns the bound port.
        `reuse_port`: SO_REUSEPORT, so several gateway processes share the port."""
        if self._runner is not None:
            raise RuntimeError("the REST server is already started")
        # No middleware without an age: each one is a call per request.
        ages = [self.connection_age.middleware] if self.connection_age else []
        app = web.Application(client_max_size=self._max_body_bytes, middlewares=ages)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # access_log=None: no log line per request (DESIGN: nothing per request on the hot path).
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        return int(runner.addresses[0][1])

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting; in-flight requests get `grace` seconds (None: aiohttp's 60 s) to finish."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if grace is not None:
            runner._shutdown_timeout = grace  # noqa: SLF001 - aiohttp only takes it at construction
        await runner.cleanup()
        self._converter.kill()

    # -- HTTP ----------------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        extra = self._routes.get(path)
        if extra is not None and request.method in ("GET", "HEAD"):
            return await extra(request)
        if not path.lower().startswith("/v1/"):
            raise web.HTTPNotFound()  # TF answers libevent's plain 404 page here, not JSON
        if request.method == "OPTIONS" and self._cors:
            return self._preflight(request)
        # Set on every /v1 request (None without the header): nothing carries over to the next one.
        REQUEST_ID.set(request.headers.get("x-request-id"))
        try:
            route = parse_route(request.method, path)
            deadline = None if self._timeout is None else time.monotonic() + self._timeout
            body = await self._body(request) if request.method == "POST" else b""
            async with asyncio.timeout(self._timeout):
                payload = await self._serve(route, body, deadline)
        except TimeoutError:
            return self._error(errors.DeadlineExceeded("Deadline Exceeded"))
        except web.HTTPRequestEntityTooLarge:
            message = f"Request body too large: the limit is {self._max_body_bytes} bytes"
            return self._reply(413, error_body(message))
        except Exception as exc:  # noqa: BLE001 - every error must become a JSON reply
            return self._error(exc)
        return self._reply(200, payload)

    async def _serve(self, route: Route, body: bytes, deadline: float | None) -> bytes:
        """One REST call: convert, await the api, convert back.

        A body of OFFLOAD_BYTES or more is converted (both ways) in the conversion process, which
        is killed if the REST timeout cancels this call: see `cluster.gateway.offload`.
        """
        api, name, version = self._api, route.name, route.version
        big = len(body) >= OFFLOAD_BYTES

        async def cpu(fn: Callable[..., T], *args: Any) -> T:
            return await self._converter.call(fn, *args, deadline=deadline) if big else fn(*args)

        if route.verb == "predict":
            # All the version's signatures: the one the body names is picked during conversion.
            metadata = await self._metadata(ModelSpec(name, version))
            request, row_format = await cpu(convert.predict_conversion, body, name, metadata, deadline)
            return await cpu(convert.predict_response, await api.predict(request), row_format)
        if route.verb in ("classify", "regress"):
            examples = await cpu(rest_examples.examples_request, body, name, version, deadline)
            if route.verb == "classify":
                return rest_examples.classify_response(await api.classify(examples))
            return rest_examples.regress_response(await api.regress(examples))
        if route.verb == "metadata":
            return convert.metadata_response(await api.model_metadata(ModelSpec(name, version)))
        # A version label is ignored by GetModelStatus, as in TF (spec §7.5).
        return convert.status_response(await api.model_status(name, version.version))

    @property
    def conversion_pid(self) -> int | None:
        """The conversion process's id while one runs (for tests and the chaos scenarios)."""
        return self._converter.pid

    async def _body(self, request: web.Request) -> bytes:
        # aiohttp inflates `Content-Encoding: gzip` (and deflate/br) bodies itself; the size limit
        # applies to the inflated bytes, so a small bomb cannot blow up memory either.
        try:
            return await self._read(request)
        except web.HTTPRequestEntityTooLarge:
            raise
        except Exception as exc:  # noqa: BLE001 - a body that cannot be read or inflated
            detail = getattr(exc.__cause__, "message", None) or " ".join(str(exc).split())
            raise errors.InvalidArgument(f"Could not read the request body: {detail}") from exc

    async def _read(self, request: web.Request) -> bytes:
        """The body as `request.read()` reads it, without its last copy on the loop: aiohttp joins
        the chunks into a bytearray and copies that into bytes (~100 ms for 100 MB, holding the
        loop); a big body's chunks are joined in a worker thread (`bytes.join` lets go of the GIL)."""
        # As aiohttp does: a compressed body inflates in big chunks, not many small pause/resume cycles.
        request.content.set_read_chunk_size(self._max_body_bytes)
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > self._max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=self._max_body_bytes, actual_size=size)
            chunks.append(chunk)
        if size >= OFFLOAD_BYTES:
            return await asyncio.to_thread(b"".join, chunks)
        return b"".join(chunks)

    def _preflight(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        if not origin.lower().startswith(("http://", "https://")):
            return self._error(errors.FailedPrecondition("CORS preflight request without an http(s) Origin header"))
        return self._reply(200, b"")

    def _error(self, exc: BaseException) -> web.Response:
        status = status_of(exc)
        log_failure(logger, "REST request", exc, status, REQUEST_ID.get())
        return self._reply(status.http_status, error_body(status.message))

    def _reply(self, status: int, body: bytes) -> web.Response:
        response = web.Response(status=status, body=body, content_type=JSON)
        if self._cors:
            response.headers.update(_CORS_HEADERS)
        return response

    # -- probes --------------------------------------------------------------------------------
    async def _liveness(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=dumps({"status": "alive"}), content_type=JSON)

    async def _readiness(self, request: web.Request) -> web.StreamResponse:
        ready = bool(self._api.is_ready())
        body = dumps({"status": "ready" if ready else "not ready"})
        return web.Response(status=200 if ready else 503, body=body, content_type=JSON)
