"""The replica's end of the data plane: a small asyncio server answering run calls.

Frames (cluster.replica.wire) arrive on long-lived connections from gateways; each call is run
as its own task, so a connection carries many calls at once and answers them as they finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import numpy as np

from cluster.replica import wire
from cluster.replica.contract import RunResult

log = logging.getLogger("tessera.replica")

RunFn = Callable[
    [int, str, Sequence[Mapping[str, np.ndarray]], Sequence[str], Sequence[float | None] | None],
    Awaitable[Sequence[RunResult]],
]  # `Runner.run` (cluster.replica.contract)


class DataPlaneServer:
    """Serves `run` over TCP; start() binds `host` on a free port and returns the address."""

    def __init__(self, run: RunFn) -> None:
        self._run = run
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str) -> tuple[str, int]:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, host, 0)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = wire.FRAME_LENGTH.unpack(await reader.readexactly(wire.FRAME_LENGTH.size))
                if length > wire.MAX_FRAME:
                    raise ValueError(f"frame of {length} bytes is over the limit")
                body = memoryview(await reader.readexactly(length))
                task = asyncio.get_running_loop().create_task(self._answer(body, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the gateway went away
        except Exception as exc:  # noqa: BLE001 - a peer that does not speak the protocol
            log.warning("data-plane connection dropped: %r", exc)
        finally:
            writer.close()

    async def _answer(self, body: memoryview, writer: asyncio.StreamWriter) -> None:
        call_id = 0
        try:
            call_id, header, payload = wire.split_frame(body)
            version, signature, requests, output_filter, timeouts = wire.decode_call(header, payload)
            frame = wire.encode_results(call_id, await self._run(version, signature, requests, output_filter, timeouts))
        except Exception as exc:  # noqa: BLE001 - the call fails, the connection stays
            frame = wire.encode_failure(call_id, exc)
        if not writer.is_closing():
            writer.writelines(frame)
            await writer.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
