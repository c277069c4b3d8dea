"""A gateway's gRPC server (and REST server, with --with_rest) alone, as one of several processes on
one port (SO_REUSEPORT), for the connection-age tests:

    python -m tests.cluster.gateway.reuseport_server_testlib --ray_address=auto --port=0 --reuse_port ...
    python -m tests.cluster.gateway.reuseport_server_testlib --with_rest --rest_api_port=0 ...

The flags are `tessera gateway`'s, read by its own parser (but --with_rest, this module's own: REST
on `--rest_api_port`, a free port if 0), the server's gRPC arguments are built by the gateway's own
`grpc_server_options` and the REST server gets the gateway's options; only the cluster behind them
is a fake (no Ray). GetModelStatus (gRPC, and REST's `GET /v1/models/<name>`) answers one AVAILABLE
version numbered with this process's pid, so a client sees which process took each call. Prints
the bound gRPC and REST ports (0: no REST) on one line, then serves until SIGTERM.
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
from cluster.gateway.rest_server import RestServer
from cluster.types import ServableState, VersionStatus
from tests.cluster.gateway.grpc_testlib import FakeAPI


@dataclass
class PidAPI(FakeAPI):
    async def model_status(self, name: str, version: int | None) -> list[VersionStatus]:
        return [VersionStatus(os.getpid(), ServableState.AVAILABLE)]


async def main(argv: list[str]) -> None:
    with_rest = "--with_rest" in argv
    args = parse_gateway_args([a for a in argv if a != "--with_rest"])
    opts, api = args.options, PidAPI(ready=True)
    server = GatewayServer(api, options=grpc_server_options(opts, args.reuse_port))
    port = await server.start(opts.host, opts.grpc_port)
    rest = RestServer(api, opts) if with_rest else None
    rest_port = await rest.start(opts.host, opts.rest_port, reuse_port=args.reuse_port) if rest else 0
    print(port, rest_port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await asyncio.gather(server.stop(5.0), *([rest.stop(5.0)] if rest else []))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
