"""The replica host's end of the data plane: a small asyncio server answering run calls.

Frames (cluster.replica.wire) arrive on long-lived connections from gateways; each call is run
as its own task, so a connection carries many calls at once and answers them as they finish.
Every call names its model: one server (and one connection per gateway) serves every slot of
the host.

Only the cluster's own gateways get that far: a connection first answers a challenge with the
cluster's secret (see `wire`), within `handshake_timeout_s`, or is closed; a frame whose length
says more than `max_frame` bytes closes the connection before its body is read. Pings are
answered from the reading loop itself, so a gateway can tell a busy replica from a hung one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cluster import errors
from cluster.replica import stream, wire
from cluster.replica.contract import RunResult, Target
from exporter.signature import Tensors

log = logging.getLogger("tessera.replica")

RunFn = Callable[
    [str, int, Target, Sequence[Tensors], Sequence[str], Sequence[float | None] | None],
    Awaitable[Sequence[RunResult]],
]  # (model, then `Runner.run`'s arguments: cluster.replica.contract)


@dataclass(frozen=True)
class DataPlaneConfig:
    """How a replica serves the data plane: the cluster's secret (handed to replicas and gateways
    over Ray), the address to bind (None: this node's address; the embedded cluster uses loopback)
    and the largest frame accepted."""

    secret: bytes
    host: str | None = None
    max_frame: int = wire.DEFAULT_MAX_FRAME

    def __repr__(self) -> str:  # never log the secret
        return f"DataPlaneConfig(host={self.host!r}, max_frame={self.max_frame})"


class DataPlaneServer:
    """Serves `run` over TCP to peers that know `secret`; start() binds `host` on a free port."""

    def __init__(
        self,
        run: RunFn,
        secret: bytes,
        *,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        handshake_timeout_s: float = 5.0,
    ) -> None:
        if not secret:
            raise ValueError("the data plane needs the cluster's secret")
        self._run = run
        self._secret = secret
        self._max_frame = max_frame
        self._handshake_timeout = handshake_timeout_s
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # calls being answered
        self.refused = 0  # connections that failed the challenge (or sent an oversized frame)
        self.draining = False  # new calls are refused with Unavailable (the gateway retries elsewhere)

    async def start(self, host: str) -> tuple[str, int]:
        if self._server is None:
            self._server = await stream.start_server(self._serve, host)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonce = os.urandom(wire.NONCE_BYTES)
        writer.write(wire.MAGIC + nonce)
        try:
            answer = await asyncio.wait_for(reader.readexactly(wire.PROOF_BYTES), self._handshake_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            answer = b""
        if not wire.check_proof(self._secret, nonce, answer):
            self.refused += 1
            log.warning("data-plane connection from %s refused: it does not know the cluster secret",
                        writer.get_extra_info("peername"))
            return False
        writer.write(wire.ACCEPTED)
        return True

    async def _serve(self, reader: stream.FrameStream, writer: asyncio.StreamWriter) -> None:
        try:
            if not await self._admit(reader, writer):
                return
            stream.bound_socket_buffers(writer)
            frames = stream.FrameWriter(writer)
            loop = asyncio.get_running_loop()

            def on_frame(body: memoryview) -> None:
                # Called as the frame arrives. A big frame's parts and the small frames between
                # them: a small call is read (and answered) while a big one is still arriving,
                # or its answer still going out.
                call_id, header, payload = wire.split_frame(body)
                if "ping" in header:
                    frames.post(wire.control_frame(call_id, wire.PONG))
                    return
                # Held here until it answers (it takes itself out: a done callback would cost the
                # loop one more step per call).
                self._tasks.add(loop.create_task(self._answer(call_id, header, payload, len(body), frames)))

            raise await reader.frames(on_frame, self._max_frame)
        except stream.FrameTooBig as exc:
            self.refused += 1
            log.warning("data-plane frame of %d bytes refused (limit %d); connection closed", exc.length, exc.limit)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the gateway went away
        except Exception as exc:  # noqa: BLE001 - a peer that does not speak the protocol
            log.warning("data-plane connection dropped: %r", exc)
        finally:
            writer.close()

    async def _answer(
        self, call_id: int, header: dict[str, Any], payload: memoryview, length: int, frames: stream.FrameWriter
    ) -> None:
        # Big calls are decoded and their answers encoded in a worker thread (object tensors'
        # items are copied one by one), so this loop keeps answering pings and other calls.
        try:
            try:
                if self.draining:
                    raise errors.Unavailable("replica is draining")
                if length > stream.BIG:
                    model, version, signature, requests, output_filter, timeouts = await asyncio.to_thread(
                        wire.decode_call, header, payload
                    )
                else:
                    model, version, signature, requests, output_filter, timeouts = wire.decode_call(header, payload)
                results = await self._run(model, version, signature, requests, output_filter, timeouts)
                if stream.payload_bytes(results) > stream.BIG:
                    frame = await asyncio.to_thread(wire.encode_results, call_id, results, self._max_frame)
                else:
                    frame = wire.encode_results(call_id, results, self._max_frame)
            except Exception as exc:  # noqa: BLE001 - the call fails, the connection stays
                frame = wire.encode_failure(call_id, exc)
            if not frames.writer.is_closing():
                await frames.send(frame)
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)

    def busy(self) -> int:
        """Calls received and not yet answered."""
        return len(self._tasks)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
