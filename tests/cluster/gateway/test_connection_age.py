"""`--grpc_channel_arguments=grpc.max_connection_age_ms=…`: a client that keeps one channel open is
moved between gateway processes that share a port, with no failed call.

gRPC clients keep one HTTP/2 connection for as long as it lives, and SO_REUSEPORT (or a Kubernetes
Service) balances connections, not calls, so without a connection age every call of one channel
goes to the same process for ever. With one, the server sends GOAWAY when the connection is that
old, the client opens a new connection for its next calls, and the kernel may give it to the other
process. Two real server processes (`reuseport_server_testlib`) on one loopback port, one client
channel: the control (no channel arguments) stays on one process; with a 200 ms age the calls reach
both, and every call succeeds across the reconnections.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import grpc

from protos.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from tests.conftest import REPO_ROOT

AGE_MS = 200
# A bound on the calls, not a time: at least 5 ms apart, 4,000 calls span 100 connection ages or more,
# so a client that is moved at all reaches both processes long before (each new connection has an
# even chance to land on either).
MAX_CALLS = 4000


def _server(port: int, channel_arguments: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.gateway.reuseport_server_testlib", "--ray_address=auto",
         "--host=127.0.0.1", f"--port={port}", "--reuse_port", f"--grpc_channel_arguments={channel_arguments}"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"the server did not start (exit status {proc.poll()})"
    return proc, int(line)


@contextlib.contextmanager
def _two_servers(channel_arguments: str) -> Iterator[tuple[int, set[int]]]:
    """Two server processes on one port (the first binds a free one); the port and their pids."""
    procs: list[subprocess.Popen[str]] = []
    try:
        first, port = _server(0, channel_arguments)
        procs.append(first)
        second, second_port = _server(port, channel_arguments)
        procs.append(second)
        assert second_port == port
        yield port, {p.pid for p in procs}
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
    with _two_servers("") as (port, servers):
        # Five connection ages' worth of calls: with the age below, the channel would have reconnected
        # about five times by then.
        pids, failures = _calls(port, lambda pids, seconds: seconds >= 5 * AGE_MS / 1000)
    assert not failures
    assert set(pids) <= servers and len(set(pids)) == 1 and len(pids) > 1


def test_a_connection_age_spreads_one_channel_over_both_processes_with_no_failed_call() -> None:
    arguments = f"grpc.max_connection_age_ms={AGE_MS},grpc.max_connection_age_grace_ms=5000"
    with _two_servers(arguments) as (port, servers):
        pids, failures = _calls(port, lambda pids, seconds: set(pids) == servers and len(pids) >= 20)
    assert not failures, failures
    assert set(pids) == servers, f"{len(pids)} calls, all on one process"
