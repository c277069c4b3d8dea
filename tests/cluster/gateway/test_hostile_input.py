"""Hostile input at the gateway (issue 9, points 1 and 2): work bounded by what was sent, right codes.

Each case is one the issue measured: a 39-byte Predict that claimed bool [2^31-1] made the gateway
allocate 2 GB; three unknown aliases of uint8 [2^31-1] took 6 GB; an undecodable message came back
UNKNOWN with the Python exception's name. Allocation is measured with tracemalloc (numpy reports
its buffers to it), never timed.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from cluster import errors
from cluster.gateway import converters
from exporter import dtypes
from exporter.signature import Signature, TensorInfo
from protos.tensorflow.core.framework import tensor_pb2
from protos.tensorflow_serving.apis import predict_pb2
from tests.cluster.gateway.grpc_testlib import MODEL, Client, FakeAPI, run

pytestmark = pytest.mark.timeout(60)

HUGE = 2**31 - 1
SIGNATURE = Signature(
    "serving_default", "tensorflow/serving/predict", {"x": TensorInfo("x:0", dtypes.FLOAT, (None,))}, {}
)
BOOLS = Signature(
    "serving_default", "tensorflow/serving/predict", {"x": TensorInfo("x:0", dtypes.BOOL, (None,))}, {}
)


def _claim(request: predict_pb2.PredictRequest, alias: str, dtype: int, shape: list[int], **values: Any) -> None:
    tensor: tensor_pb2.TensorProto = request.inputs[alias]
    tensor.dtype = dtype
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    for field, items in values.items():
        getattr(tensor, field).extend(items)


def _one_bool_claiming_2g() -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    _claim(request, "x", dtypes.BOOL, [HUGE], bool_val=[True])
    return request


@contextmanager
def _allocated() -> Iterator[Callable[[], int]]:
    """Yields a function giving the peak bytes traced since entry."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_39_byte_predict_is_refused_by_dtype_before_anything_is_allocated() -> None:
    request = _one_bool_claiming_2g()
    assert request.ByteSize() < 40
    with _allocated() as peak:
        with pytest.raises(errors.InvalidArgument, match="Expects arg 'x' to be float32 but bool is provided"):
            converters.predict_request(request, signature=SIGNATURE)
        assert peak() < 1024 * 1024


def test_a_fill_past_the_budget_is_refused_with_the_flag_named_and_none_is_allocated() -> None:
    request = _one_bool_claiming_2g()
    with _allocated() as peak:
        # The dtype and shape fit the signature: only the fill budget stands between it and 2 GB.
        with pytest.raises(errors.InvalidArgument, match=r"--max_request_fill_bytes"):
            converters.predict_request(request, signature=BOOLS)
        # Without a signature (the servable could not be resolved), the budget still holds.
        with pytest.raises(errors.InvalidArgument, match=r"claim 2147483646 bytes more"):
            converters.predict_request(request)
        assert peak() < 1024 * 1024
    # The budget is per request, over all its tensors.
    two = predict_pb2.PredictRequest()
    two.model_spec.name = MODEL
    _claim(two, "a", dtypes.FLOAT, [600], float_val=[1.0])
    _claim(two, "b", dtypes.FLOAT, [600], float_val=[1.0])
    with pytest.raises(errors.InvalidArgument, match="the limit is 4000 bytes"):
        converters.predict_request(two, max_fill_bytes=4000)
    assert converters.predict_request(two, max_fill_bytes=5000).inputs["a"].shape == (600,)


def test_a_fill_within_the_budget_is_tf_fill() -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    _claim(request, "x", dtypes.FLOAT, [4], float_val=[1.0, 2.5])
    domain = converters.predict_request(request, signature=SIGNATURE, max_fill_bytes=8)
    assert domain.inputs["x"].tolist() == [1.0, 2.5, 2.5, 2.5]
    with pytest.raises(errors.InvalidArgument, match="the limit is 7 bytes"):
        converters.predict_request(request, signature=SIGNATURE, max_fill_bytes=7)


def test_unknown_aliases_claiming_gigabytes_are_refused_before_anything_is_allocated() -> None:
    # The case is uint8 [2^31-1] three times (6 GB); 2^29 each keeps a regression of this
    # test at 1.5 GB on a shared machine, and the bound below catches it as surely.
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    for alias in ("a", "b", "c"):
        _claim(request, alias, dtypes.UINT8, [2**29], int_val=[1])
    assert request.ByteSize() < 90
    with _allocated() as peak:
        with pytest.raises(errors.InvalidArgument, match=r"input size does not match signature: 3!=1"):
            converters.predict_request(request, signature=SIGNATURE)
        one = predict_pb2.PredictRequest()
        one.model_spec.name = MODEL
        _claim(one, "a", dtypes.UINT8, [2**29], int_val=[1])
        with pytest.raises(errors.InvalidArgument, match="input tensor alias not found in signature: a"):
            converters.predict_request(one, signature=SIGNATURE)
        assert peak() < 1024 * 1024


def test_shapes_and_bad_headers_are_refused_before_decoding() -> None:
    fixed = Signature("serving_default", "p", {"x": TensorInfo("x:0", dtypes.FLOAT, (None, 3))}, {})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    _claim(request, "x", dtypes.FLOAT, [HUGE // 8, 2], float_val=[1.0])
    with pytest.raises(errors.InvalidArgument, match=r"expected shape \[-1, 3\], got \[268435455, 2\]"):
        converters.predict_request(request, signature=fixed)
    request.inputs["x"].tensor_content = b"\x00" * 3
    with pytest.raises(errors.InvalidArgument, match="tensor parsing error: x"):
        converters.predict_request(request, signature=fixed)


def test_a_conversion_that_is_no_longer_wanted_stops() -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    _claim(request, "x", dtypes.STRING, [300_000], string_val=[b"ab"] * 300_000)
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) > 1:  # between tensors first, then between chunks of the string list
            raise errors.DeadlineExceeded("Deadline exceeded while the request was converted")

    with pytest.raises(errors.DeadlineExceeded):
        converters.predict_request(request, check=check)
    assert len(calls) == 2


# ---------------------------------------------------------------------------------------------
# Through the gRPC server


METHODS = [
    "/tensorflow.serving.PredictionService/Predict",
    "/tensorflow.serving.PredictionService/Classify",
    "/tensorflow.serving.PredictionService/Regress",
    "/tensorflow.serving.PredictionService/MultiInference",
    "/tensorflow.serving.PredictionService/GetModelMetadata",
    "/tensorflow.serving.ModelService/GetModelStatus",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
]


def test_an_undecodable_message_is_invalid_argument_on_every_method() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        for method in METHODS:
            call = client.channel.unary_unary(method)  # bytes in, bytes out: no serializer
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"\x0a\xff\xff\xff\xff\x0f")  # field 1, a length past the end
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "DecodeError" not in info.value.details() and "<class" not in info.value.details()
            assert "Could not parse" in info.value.details()

    run(test)


def test_hostile_predicts_are_refused_and_the_gateway_keeps_serving() -> None:
    async def test(client: Client, api: FakeAPI) -> None:
        # Claims of 256 MB, not 2 GB: on a regression this test must not take a shared machine's memory.
        claim = 2**28
        one = predict_pb2.PredictRequest()
        one.model_spec.name = MODEL
        _claim(one, "x", dtypes.BOOL, [claim], bool_val=[True])
        three = predict_pb2.PredictRequest()
        three.model_spec.name = MODEL
        for alias in ("a", "b", "c"):
            _claim(three, alias, dtypes.UINT8, [claim], int_val=[1])
        calls = [client.prediction.Predict(one), client.prediction.Predict(three)] * 2
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for outcome in outcomes:
            assert isinstance(outcome, grpc.aio.AioRpcError) and outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert not [r for r in api.seen if isinstance(r, object) and getattr(r, "inputs", None)]  # never decoded
        good = predict_pb2.PredictRequest()
        good.model_spec.name = MODEL
        _claim(good, "x", dtypes.FLOAT, [3], float_val=[1.0, 2.0, 4.0])
        response = await client.prediction.Predict(good)
        assert list(response.outputs["y"].float_val) == [2.5, 3.0, 4.0]

    run(test)


def test_gateway_sources_send_no_exception_names_to_clients() -> None:
    import pathlib
    import re

    import cluster.gateway

    root = pathlib.Path(cluster.gateway.__file__).parent.parent
    pattern = re.compile(r"f[\"'].*\{type\([^)]*\)\.__name__")
    # The gateway's own messages (its subpackages included), and the replica's, which the gateway
    # passes on as they are.
    files = sorted([*(root / "gateway").rglob("*.py"), *(root / "replica").rglob("*.py")])
    assert root / "gateway" / "converters" / "requests.py" in files
    hits = [f"{p.parent.name}/{p.name}:{n}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


# ---------------------------------------------------------------------------------------------
# REST


BAD_JSON = {
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "nested deep inside the body": b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "an integer of 5,000 digits": b'{"instances": [' + b"1" * 5000 + b"]}",
    "bad UTF-8": b'{"instances": ["\xff"]}',
    "a lone surrogate": b'{"inputs": {"a": [[1, 2]], "s": ["\\ud800"]}, "signature_name": "multi"}',
    "more dimensions than numpy has": b'{"instances": ' + b"[" * 70 + b"1" + b"]" * 70 + b"}",
}
BAD_EXAMPLES_JSON = {
    "examples nested 100,000 deep": b'{"examples": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
    "a feature of 5,000 digits": b'{"examples": [{"x": ' + b"1" * 5000 + b"}]}",
    "a lone surrogate in a feature": b'{"examples": [{"x": "\\ud800"}]}',
    "a lone surrogate in a context key": b'{"context": {"\\ud800": 1}, "examples": [{"x": 1}]}',
}


@pytest.mark.parametrize("verb_body", [("predict", b) for b in BAD_JSON.values()]
                         + [("classify", b) for b in BAD_EXAMPLES_JSON.values()],
                         ids=list(BAD_JSON) + list(BAD_EXAMPLES_JSON))
def test_unacceptable_json_is_400_never_500(verb_body: tuple[str, bytes]) -> None:
    from tests.cluster.gateway.rest_testlib import Client as RestClient
    from tests.cluster.gateway.rest_testlib import run as run_rest

    verb, body = verb_body

    async def test(c: RestClient) -> None:
        reply = await c.call("POST", f"/v1/models/half:{verb}", raw=body)
        assert reply.status == 400, reply.text[:300]
        assert "Error" not in reply.json["error"] and "<class" not in reply.json["error"], reply.json

    run_rest(test)


def _state(pid: int) -> str:
    """The process's state letter from /proc (R, S, Z, ...), or "" when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def test_a_big_rest_body_is_killed_at_its_timeout_and_the_gateway_stays_responsive() -> None:
    import os

    from cluster.config import ServeOptions
    from tests.cluster.gateway.rest_testlib import Client as RestClient
    from tests.cluster.gateway.rest_testlib import run as run_rest

    # ~24 MB of numbers: seconds of json.loads and typing, one C call that holds the GIL throughout.
    body = b'{"instances": [' + b",".join([b"1.25"] * 5_000_000) + b"]}"

    async def test(c: RestClient) -> None:
        big = asyncio.ensure_future(c.call("POST", "/v1/models/half:predict", raw=body))
        pids: list[int] = []
        answered_meanwhile = 0
        while not big.done():
            # The loop keeps answering while the big body converts elsewhere.
            probe = await c.call("GET", "/healthz")
            assert probe.status == 200
            answered_meanwhile += 1
            if c.server.conversion_pid is not None:
                pids.append(c.server.conversion_pid)
            await asyncio.sleep(0.02)
        reply = await big
        assert reply.status == 504, reply.text[:200]
        assert pids and answered_meanwhile >= 3
        # Nothing keeps running after the 504: the conversion process was killed (SIGKILL before
        # the answer), and is reaped off the loop soon after.
        assert c.server.conversion_pid is None
        with pytest.raises(ProcessLookupError):
            for _ in range(500):
                if _state(pids[-1]) in ("Z", "X"):  # killed, not reaped yet: not running
                    raise ProcessLookupError
                os.kill(pids[-1], 0)
                await asyncio.sleep(0.01)
        # The next big body gets a new process (and a small one never needs one).
        assert (await c.call("POST", "/v1/models/half:predict", {"instances": [1.0]})).status == 200

    run_rest(test, options=ServeOptions(rest_api_timeout_in_ms=1500))


def test_a_big_rest_body_within_its_timeout_converts_in_the_process_with_the_same_answer() -> None:
    from tests.cluster.gateway.rest_testlib import Client as RestClient
    from tests.cluster.gateway.rest_testlib import run as run_rest

    values = [float(i % 89) / 8 for i in range(100_000)]

    async def test(c: RestClient) -> None:
        reply = await c.call("POST", "/v1/models/half:predict", raw=json.dumps({"instances": values}).encode())
        assert reply.status == 200, reply.text[:200]
        assert reply.json["predictions"] == [2 * v for v in values]
        bad = json.dumps({"instances": values, "signature_name": "zz"}).encode()
        reply = await c.call("POST", "/v1/models/half:predict", raw=bad)
        assert (reply.status, reply.json) == (400, {"error": 'Serving signature key "zz" not found.'})
        examples = json.dumps({"context": {"c": "x" * 1000}, "examples": [{"x": v} for v in values[:20_000]]})
        reply = await c.call("POST", "/v1/models/half:regress", raw=examples.encode())
        assert reply.status == 200 and len(reply.json["results"]) == 20_000

    run_rest(test)
