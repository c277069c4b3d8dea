"""A gateway's gRPC server alone, as one of several processes on one port (SO_REUSEPORT), for the
connection-age tests:

    python -m tests.cluster.gateway.reuseport_server_testlib --ray_address=auto --port=0 --reuse_port ...

The flags are `tessera gateway`'s, read by its own parser, and the server's gRPC arguments are built
by the gateway's own `grpc_server_options`; only the cluster behind it is a fake (no Ray).
GetModelStatus answers one AVAILABLE version numbered with this process's pid, so a client sees
which process took each call. Prints the bound port on a line of its own, then serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass

from cluster.flags.gateway import parse_gateway_args
from cluster.gateway.gateway import grpc_server_options
from cluster.gateway.grpc_server import GatewayServer
from cluster.types import ServableState, VersionStatus
from tests.cluster.gateway.grpc_testlib import FakeAPI


@dataclass
class PidAPI(FakeAPI):
    async def model_status(self, name: str, version: int | None) -> list[VersionStatus]:
        return [VersionStatus(os.getpid(), ServableState.AVAILABLE)]


async def main(argv: list[str]) -> None:
    args = parse_gateway_args(argv)
    server = GatewayServer(PidAPI(ready=True), options=grpc_server_options(args.options, args.reuse_port))
    port = await server.start(args.options.host, args.options.grpc_port)
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(5.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
