"""The REST gateway end to end on loopback: aiohttp client -> RestServer -> a fake ServingAPI.

The fake computes its answers from the requests (y = 2x, echoes of strings, no Ray), so these tests
check every REST form of spec §8, the URL grammar and each error case, not canned replies.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from cluster.config import ServeOptions
from cluster.gateway.rest_server import RestServer, parse_route
from cluster.logs import REQUEST_ID
from cluster.requests import (
    ModelMetadata,
    ModelSpec,
    PredictRequest,
    PredictResult,
)
from cluster.types import VersionRequest
from tests.cluster.gateway.rest_testlib import Client, FakeAPI, fake_signatures, run

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# Predict


def test_row_predict_one_input_without_content_type_and_with_deadline() -> None:
    async def test(c: Client) -> None:
        # TF's example exchange shape; no Content-Type header at all (curl --data-binary style).
        reply = await c.call("POST", "/v1/models/half:predict", {"instances": [1.0, 2.0, 5.0]})
        assert reply.status == 200 and reply.text == '{"predictions": [2.0, 4.0, 10.0]}'
        request = c.api.seen[-1]
        assert request.spec == ModelSpec("half", VersionRequest.specific(2), "")
        assert 0 < request.deadline - time.monotonic() <= 30.0

    run(test)


def test_columnar_predict_nan_infinity_and_float_text() -> None:
    async def test(c: Client) -> None:
        reply = await c.call("POST", "/v1/models/half:predict", raw=b'{"inputs": [1.5, NaN, -Infinity, 0.05, 3]}')
        assert reply.text == '{"outputs": [3.0, NaN, -Infinity, 0.1, 6.0]}'
        assert c.api.seen[-1].inputs["x"].dtype == np.float32

    run(test)


def test_several_inputs_and_outputs_b64_and_bytes_suffix() -> None:
    async def test(c: Client) -> None:
        blob = base64.b64encode(b"\x00\xffbin").decode()
        rows = {"signature_name": "multi", "instances": [{"a": [1, 2], "s": "hi"}, {"a": [0.5, 3], "s": {"b64": blob}}]}
        reply = await c.call("POST", "/v1/models/half/versions/1:predict", rows)
        assert reply.status == 200, reply.text
        assert reply.json == {"predictions": [
            {"double": [2.0, 4.0], "text": "hi", "text_bytes": {"b64": base64.b64encode(b"hi").decode()}},
            {"double": [1.0, 6.0], "text": "\x00\ufffdbin",
             "text_bytes": {"b64": blob}},
        ]}
        assert c.api.seen[-1].spec.version == VersionRequest.specific(1)
        columns = {"signature_name": "multi", "inputs": {"a": [[1, 2]], "s": ["x"], "extra": 1}}
        reply = await c.call("POST", "/v1/models/half/labels/stable:predict", columns)
        assert reply.json == {"outputs": {"double": [[2.0, 4.0]], "text": ["x"], "text_bytes": [{"b64": "eA=="}]}}
        assert c.api.seen[-1].spec.version == VersionRequest.specific(1)  # label resolved, then pinned

    run(test)


def test_int_inputs_and_urlencoded_model_name_case_insensitive_literals() -> None:
    async def test(c: Client) -> None:
        reply = await c.call("POST", "/V1/Models/my%20model/VERSIONS/2:predict", {"signature_name": "ints", "inputs": [1, -2]})
        assert reply.text == '{"outputs": [2, -4]}'
        assert c.api.seen[-1].spec.name == "my model"
        await c.error("POST", "/v1/models/half:predict", {"signature_name": "ints", "inputs": [1, 1.0]}, 400,
                      "JSON value of input 'n' is not of expected type: int32 (a JSON integer in its range)")

    run(test)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"nothing": 1}, "Missing 'inputs' or 'instances' key"),
        ({"inputs": [1], "instances": [1]},
         "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exclusively"),
        ({"instances": [1], "signature_name": 5}, "'signature_name' key must be a string value."),
        ({"signature_name": "multi", "instances": [{"a": [1, 2]}]},
         "Expecting object with keys ['a', 's'] at item 0 of 'instances', got ['a']"),
        ({"instances": [[1, 2], [3]]}, "The instances of input 'x' do not all have the same shape"),
        ({"inputs": [[1, 2], [3]]}, "Input 'x' is not a rectangular list: its sub-lists differ in length"),
        ({"signature_name": "multi", "inputs": {"a": [[1, 2]]}}, "Missing named input: s in 'inputs' object."),
        ({"instances": ["a"]}, "JSON value of input 'x' is not of expected type: float32 (a JSON number)"),
    ],
)
def test_predict_body_errors(body: Any, message: str) -> None:
    async def test(c: Client) -> None:
        await c.error("POST", "/v1/models/half:predict", body, 400, message)

    run(test)


def test_predict_resolution_errors() -> None:
    async def test(c: Client) -> None:
        await c.error("POST", "/v1/models/nope:predict", {"instances": [1]}, 404,
                      "Servable not found for request: Latest(nope)")
        await c.error("POST", "/v1/models/half/versions/9:predict", {"instances": [1]}, 404,
                      "Servable not found for request: Specific(half, 9)")
        await c.error("POST", "/v1/models/half/labels/beta:predict", {"instances": [1]}, 400,
                      "Unrecognized servable version label: beta")
        await c.error("POST", "/v1/models/half:predict", {"instances": [1], "signature_name": "zz"}, 400,
                      'Serving signature key "zz" not found.')
        await c.error("POST", "/v1/models/crash:predict", {"instances": [1]}, 500, "the fake crashed on purpose")

    run(test)


# ---------------------------------------------------------------------------------------------
# Classify / Regress


def test_classify_and_regress_with_and_without_context() -> None:
    async def test(c: Client) -> None:
        reply = await c.call("POST", "/v1/models/half:classify",
                             {"signature_name": "classify", "examples": [{"x": 0.25}, {"x": 1.0}]})
        assert reply.json == {"results": [[["pos", 0.25], ["neg", 0.75]], [["pos", 1.0], ["neg", 0.0]]]}
        assert c.api.seen[-1].spec == ModelSpec("half", VersionRequest.latest(), "classify")
        reply = await c.call("POST", "/v1/models/half/labels/canary:regress",
                             {"signature_name": "regress", "context": {"x": 1.5}, "examples": [{}, {"x": 2.0}]})
        assert reply.text == '{"results": [3.0, 4.0]}'
        assert c.api.seen[-1].spec.version == VersionRequest.labelled("canary")
        await c.error("POST", "/v1/models/half:regress", {"instances": [1]}, 400,
                      "Invalid request: key 'examples' is expected and was not found")
        await c.error("POST", "/v1/models/half:regress", {"examples": [{"x": None}]}, 400,
                      "Feature 'x': null is not a feature value")

    run(test)


# ---------------------------------------------------------------------------------------------
# Status and metadata


def test_status_all_versions_one_version_and_label_ignored() -> None:
    async def test(c: Client) -> None:
        reply = await c.call("GET", "/v1/models/half")
        assert reply.json == {"model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]}
        assert [s["version"] for s in (await c.call("GET", "/v1/models/half/versions/1")).json["model_version_status"]] == ["1"]
        await c.call("GET", "/v1/models/half/labels/stable")
        assert c.api.seen[-1] == ("half", None)
        await c.error("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope")

    run(test)


def test_metadata_shape_with_version_and_label() -> None:
    async def test(c: Client) -> None:
        document = (await c.call("GET", "/v1/models/half/labels/stable/metadata")).json
        assert document["model_spec"] == {"name": "half", "signature_name": "", "version": "1"}
        signatures = document["metadata"]["signature_def"]["signature_def"]
        assert set(signatures) == set(fake_signatures())
        assert signatures["serving_default"]["inputs"]["x"] == {
            "dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False},
            "name": "x:0",
        }
        assert (await c.call("GET", "/v1/models/half/versions/2/METADATA")).json["model_spec"]["version"] == "2"

    run(test)


# ---------------------------------------------------------------------------------------------
# URL grammar and HTTP


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v1/models", 400, "Missing model name in request."),
        ("GET", "/v1/models/", 400, "Missing model name in request."),
        ("POST", "/v1/models/half:PREDICT", 400, "Malformed request: POST /v1/models/half:PREDICT"),
        ("POST", "/v1/models/half:explain", 400, "Malformed request: POST /v1/models/half:explain"),
        ("GET", "/v1/models/half:predict", 400, "Malformed request: GET /v1/models/half:predict"),
        ("POST", "/v1/models/half", 400, "Malformed request: POST /v1/models/half"),
        ("POST", "/v1/models/half/versions/x1:predict", 400, "Malformed request: POST /v1/models/half/versions/x1:predict"),
        ("PUT", "/v1/models/half/metadata", 400, "Malformed request: PUT /v1/models/half/metadata"),
        ("GET", "/v1/other", 400, "Malformed request: GET /v1/other"),
        ("POST", "/v1/models/half/versions/9223372036854775808:predict", 400,
         "Failed to convert version: 9223372036854775808"),
    ],
)
def test_url_grammar_errors(method: str, path: str, status: int, message: str) -> None:
    async def test(c: Client) -> None:
        await c.error(method, path, {"instances": [1]}, status, message)

    run(test)


def test_parse_route_accepts_the_int64_maximum() -> None:
    route = parse_route("POST", "/v1/models/a%2Fb/versions/9223372036854775807:regress")
    assert (route.verb, route.name, route.version.version) == ("regress", "a/b", 2**63 - 1)


def test_non_v1_paths_are_plain_404() -> None:
    async def test(c: Client) -> None:
        reply = await c.call("GET", "/models/half")
        assert reply.status == 404 and "application/json" not in reply.headers["Content-Type"]

    run(test)


def test_gzip_request_body() -> None:
    async def test(c: Client) -> None:
        body = gzip.compress(json.dumps({"instances": [1, 2]}).encode())
        reply = await c.call("POST", "/v1/models/half:predict", raw=body, headers={"Content-Encoding": "gzip"})
        assert reply.text == '{"predictions": [2.0, 4.0]}'
        bad = await c.call("POST", "/v1/models/half:predict", raw=b"not gzip", headers={"Content-Encoding": "gzip"})
        assert bad.status == 400 and "Could not read the request body" in bad.json["error"]

    run(test)


def test_oversized_body_is_413_json_also_after_gzip() -> None:
    async def test(c: Client) -> None:
        big = json.dumps({"instances": [1.0] * 2000}).encode()
        assert len(big) > 4096 and len(gzip.compress(big)) < 4096
        message = "Request body too large: the limit is 4096 bytes"
        await c.error("POST", "/v1/models/half:predict", None, 413, message, raw=big)
        await c.error("POST", "/v1/models/half:predict", None, 413, message, raw=gzip.compress(big),
                      headers={"Content-Encoding": "gzip"})
        ok = await c.call("POST", "/v1/models/half:predict", {"instances": [1.0] * 100})
        assert ok.status == 200

    run(test, max_body_bytes=4096)


def test_timeout_is_504() -> None:
    async def test(c: Client) -> None:
        started = time.monotonic()
        await c.error("POST", "/v1/models/half:predict", {"instances": [1]}, 504, "Deadline Exceeded")
        assert time.monotonic() - started < 3.0
        assert c.api.seen[-1].deadline - started < 0.5

    run(test, FakeAPI(delay=5.0), ServeOptions(rest_api_timeout_in_ms=200))


def test_health_probes_and_extra_route() -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="tessera_requests_total 1\n")

    async def test(c: Client) -> None:
        assert (await c.call("GET", "/healthz")).json == {"status": "alive"}
        not_ready = await c.call("GET", "/readyz")
        assert (not_ready.status, not_ready.json) == (503, {"status": "not ready"})
        c.api.ready = True
        ready = await c.call("GET", "/readyz")
        assert (ready.status, ready.json) == (200, {"status": "ready"})
        assert ready.headers["Content-Type"] == "application/json"
        assert (await c.call("GET", "/monitoring/prometheus/metrics")).text == "tessera_requests_total 1\n"
        with pytest.raises(RuntimeError):
            c.server.add_get_route("/late", metrics)

    async def main() -> None:
        api = FakeAPI()
        server = RestServer(api, ServeOptions())
        server.add_get_route("/monitoring/prometheus/metrics", metrics)
        with pytest.raises(ValueError):
            server.add_get_route("/v1/metrics", metrics)
        port = await server.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as session:
                await test(Client(session, f"http://127.0.0.1:{port}", server, api))
        finally:
            await server.stop(1.0)

    asyncio.run(main())


def test_cors_headers_and_preflight() -> None:
    async def test(c: Client) -> None:
        reply = await c.call("POST", "/v1/models/half:predict", {"instances": [1]})
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
        assert reply.headers["Access-Control-Allow-Methods"] == "POST, GET"
        assert reply.headers["Access-Control-Allow-Headers"] == "Content-Type"
        preflight = await c.call("OPTIONS", "/v1/models/half:predict", headers={"Origin": "https://app.example"})
        assert preflight.status == 200 and preflight.headers["Access-Control-Allow-Origin"] == "*"
        await c.error("OPTIONS", "/v1/models/half:predict", None, 400,
                      "CORS preflight request without an http(s) Origin header")

    run(test, options=ServeOptions(rest_api_enable_cors_support=True))


def test_without_cors_no_headers_and_options_is_malformed() -> None:
    async def test(c: Client) -> None:
        reply = await c.call("POST", "/v1/models/half:predict", {"instances": [1]})
        assert "Access-Control-Allow-Origin" not in reply.headers
        await c.error("OPTIONS", "/v1/models/half:predict", None, 400, "Malformed request: OPTIONS /v1/models/half:predict",
                      headers={"Origin": "https://app.example"})

    run(test)


def test_stop_closes_the_port() -> None:
    async def main() -> None:
        server = RestServer(FakeAPI(), ServeOptions())
        port = await server.start("127.0.0.1", 0)
        await server.stop(0.5)
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()

    asyncio.run(main())


def test_metadata_lookup_is_injectable_and_request_id_is_set() -> None:
    looked_up: list[ModelSpec] = []
    request_ids: list[str | None] = []

    class Counting(FakeAPI):
        async def model_metadata(self, spec: ModelSpec) -> ModelMetadata:
            raise AssertionError("predict must use the injected lookup")

        async def predict(self, request: PredictRequest) -> PredictResult:
            request_ids.append(REQUEST_ID.get())
            return await super().predict(request)

    plain = FakeAPI()

    async def lookup(spec: ModelSpec) -> ModelMetadata:
        looked_up.append(spec)
        return await plain.model_metadata(spec)

    async def test(c: Client) -> None:
        reply = await c.call("POST", "/v1/models/half:predict", {"instances": [1]}, headers={"x-request-id": "r-1"})
        assert reply.status == 200, reply.text
        assert looked_up == [ModelSpec("half", VersionRequest.latest(), "")]
        await c.call("POST", "/v1/models/half:predict", {"instances": [1]})
        assert request_ids == ["r-1", None]

    run(test, Counting(), metadata_lookup=lookup)


def test_a_large_body_is_converted_off_the_event_loop_with_the_same_answer() -> None:
    from cluster.gateway.rest_server import OFFLOAD_BYTES

    async def test(c: Client) -> None:
        values = [float(i % 97) / 4 for i in range(120_000)]
        body = json.dumps({"inputs": values}).encode()
        assert len(body) > OFFLOAD_BYTES
        reply = await c.call("POST", "/v1/models/half:predict", raw=body)
        assert reply.status == 200, reply.text[:200]
        assert reply.json["outputs"] == [v * 2 for v in values]

    run(test)
