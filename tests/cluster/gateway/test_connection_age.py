"""`--grpc_channel_arguments=grpc.max_connection_age_ms=…` and `--rest_max_connection_age_ms`: a
client that keeps one channel (or one HTTP/1.1 keep-alive connection) open is moved between gateway
processes that share a port, with no failed call.

gRPC clients keep one HTTP/2 connection for as long as it lives, and SO_REUSEPORT (or a Kubernetes
Service) balances connections, not calls, so without a connection age every call of one channel
goes to the same process for ever. With one, the server sends GOAWAY when the connection is that
old, the client opens a new connection for its next calls, and the kernel may give it to the other
process. Two real server processes (`reuseport_server_testlib`) on one loopback port, one client
channel: the control (no channel arguments) stays on one process; with a 200 ms age the calls reach
both, and every call succeeds across the reconnections.

REST alike: one `requests.Session` (one keep-alive connection at a time) stays on one process
without an age; with a 200 ms age its requests reach both processes (the response after the age
says `Connection: close`, the session opens a new connection), none failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import grpc
import requests

from protos.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from tests.conftest import REPO_ROOT

AGE_MS = 200
# A bound on the calls, not a time: at least 5 ms apart, 4,000 calls span 100 connection ages or more,
# so a client that is moved at all reaches both processes long before (each new connection has an
# even chance to land on either).
MAX_CALLS = 4000


def _server(flags: list[str]) -> tuple[subprocess.Popen[str], tuple[int, int]]:
    """One server process; its bound gRPC and REST ports (REST 0 without --with_rest)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.gateway.reuseport_server_testlib", "--ray_address=auto",
         "--host=127.0.0.1", "--reuse_port", *flags],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    words = proc.stdout.readline().split()
    assert len(words) == 2 and all(w.isdigit() for w in words), f"the server did not start (exit status {proc.poll()})"
    return proc, (int(words[0]), int(words[1]))


@contextlib.contextmanager
def _two_servers(flags: list[str], *, rest: bool = False) -> Iterator[tuple[int, set[int]]]:
    """Two server processes on one port (the first binds a free one): the port (REST's with
    `rest`, gRPC's otherwise) and their pids."""
    procs: list[subprocess.Popen[str]] = []
    try:
        first, (grpc_port, rest_port) = _server(["--port=0", *flags, *(["--with_rest", "--rest_api_port=0"] * rest)])
        procs.append(first)
        second, ports = _server([f"--port={grpc_port}", *flags,
                                 *(["--with_rest", f"--rest_api_port={rest_port}"] * rest)])
        procs.append(second)
        assert ports == (grpc_port, rest_port)
        yield rest_port if rest else grpc_port, {p.pid for p in procs}
    finally:
        for proc in procs:  # ours, by pid
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _calls(port: int, done: Callable[[list[int], float], bool]) -> tuple[list[int], list[grpc.StatusCode]]:
    """GetModelStatus on ONE channel until `done(pids so far, seconds so far)` or MAX_CALLS: the pid
    that answered each call, and the codes of the calls that failed."""
    async def main() -> tuple[list[int], list[grpc.StatusCode]]:
        pids: list[int] = []
        failures: list[grpc.StatusCode] = []
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "half_plus_two"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            started = time.monotonic()
            while len(pids) + len(failures) < MAX_CALLS and not done(pids, time.monotonic() - started):
                try:
                    response = await stub.GetModelStatus(request, timeout=30)
                    pids.append(response.model_version_status[0].version)
                except grpc.aio.AioRpcError as exc:
                    failures.append(exc.code())
                await asyncio.sleep(0.005)
        return pids, failures

    return asyncio.run(main())


def test_without_a_connection_age_one_channel_stays_on_one_process() -> None:
    with _two_servers([]) as (port, servers):
        # Five connection ages' worth of calls: with the age below, the channel would have reconnected
        # about five times by then.
        pids, failures = _calls(port, lambda pids, seconds: seconds >= 5 * AGE_MS / 1000)
    assert not failures
    assert set(pids) <= servers and len(set(pids)) == 1 and len(pids) > 1


def test_a_connection_age_spreads_one_channel_over_both_processes_with_no_failed_call() -> None:
    arguments = f"grpc.max_connection_age_ms={AGE_MS},grpc.max_connection_age_grace_ms=5000"
    with _two_servers([f"--grpc_channel_arguments={arguments}"]) as (port, servers):
        pids, failures = _calls(port, lambda pids, seconds: set(pids) == servers and len(pids) >= 20)
    assert not failures, failures
    assert set(pids) == servers, f"{len(pids)} calls, all on one process"


def _rest_calls(port: int, done: Callable[[list[int], float], bool]) -> tuple[list[int], list[str]]:
    """REST GetModelStatus on ONE requests.Session until `done(pids so far, seconds so far)` or
    MAX_CALLS: the pid that answered each request, and what went wrong with those that failed."""
    pids: list[int] = []
    failures: list[str] = []
    with requests.Session() as session:
        started = time.monotonic()
        while len(pids) + len(failures) < MAX_CALLS and not done(pids, time.monotonic() - started):
            try:
                reply = session.get(f"http://127.0.0.1:{port}/v1/models/half_plus_two", timeout=30)
                if reply.status_code == 200:
                    pids.append(int(reply.json()["model_version_status"][0]["version"]))
                else:
                    failures.append(f"{reply.status_code} {reply.text}")
            except requests.RequestException as exc:
                failures.append(repr(exc))
            time.sleep(0.005)
    return pids, failures


def test_without_a_rest_connection_age_one_keep_alive_client_stays_on_one_process() -> None:
    with _two_servers([], rest=True) as (port, servers):
        pids, failures = _rest_calls(port, lambda pids, seconds: seconds >= 5 * AGE_MS / 1000)
    assert not failures
    assert set(pids) <= servers and len(set(pids)) == 1 and len(pids) > 1


def test_a_rest_connection_age_spreads_one_keep_alive_client_over_both_processes_with_no_failed_request() -> None:
    with _two_servers([f"--rest_max_connection_age_ms={AGE_MS}"], rest=True) as (port, servers):
        pids, failures = _rest_calls(port, lambda pids, seconds: set(pids) == servers and len(pids) >= 20)
    assert not failures, failures
    assert set(pids) == servers, f"{len(pids)} requests, all on one process"
