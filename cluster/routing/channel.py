"""The gateway's end of the data plane: one multiplexed connection per replica host.

A host serves many models, so one connection carries the calls of all of them (each call names its
model); `ModelChannel` is one model's view of a host's channel, what the coalescer sends to.

Ray carries the control plane (load, unload, stats); requests go over a plain asyncio stream to
the replica's data-plane port, because a Ray actor call costs 1–2 ms on a small machine while a
frame over loopback costs a fraction of that. Calls are tagged with ids and answered in any
order; a broken connection fails every pending call with Unavailable (the coalescer then retries
on another replica) and the next call reconnects.

A connection opens by answering the replica's challenge with the cluster's secret. While calls
are pending, the channel pings the replica every `ping_interval_s`: a replica that sends nothing
(no answer, no pong) for `liveness_timeout_s` is taken for hung (a stopped process, a lost
node), and its calls fail with Unavailable, so they are re-sent elsewhere instead of waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any

from cluster import errors
from cluster.replica import stream, wire
from cluster.replica.contract import RunResult, Target
from exporter.signature import Tensors


class ReplicaChannel:
    """Sends coalesced calls to one replica's data-plane address and awaits their results."""

    def __init__(
        self,
        address: tuple[str, int],
        secret: bytes,
        *,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        connect_timeout_s: float = 2.0,
        ping_interval_s: float = 0.5,
        liveness_timeout_s: float = 2.0,
    ) -> None:
        self.address = address
        self._secret = secret
        self._max_frame = max_frame
        self._connect_timeout = connect_timeout_s
        self._ping_interval = ping_interval_s
        self._liveness_timeout = liveness_timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[list[RunResult]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._frames: stream.FrameWriter | None = None  # self._writer's
        self._reader_task: asyncio.Task[None] | None = None
        self._decoding: set[asyncio.Task[None]] = set()  # big answers being decoded
        self._watch_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._heard = time.monotonic()  # when the replica last sent anything
        self._closing = False

    def __repr__(self) -> str:
        return f"ReplicaChannel({self.address[0]}:{self.address[1]})"

    async def _connection(self) -> stream.FrameWriter:
        if self._frames is not None:
            return self._frames
        if self._closing:
            raise errors.Unavailable(f"replica at {self._where()} left the routing table")
        async with self._connecting:
            if self._writer is None:
                reader, writer = await self._open()
                self._writer, self._frames = writer, stream.FrameWriter(writer)
                self._heard = time.monotonic()
                self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))
        assert self._frames is not None
        return self._frames

    def _where(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    async def _open(self) -> tuple[stream.FrameStream, asyncio.StreamWriter]:
        """Connects and answers the replica's challenge, all within `connect_timeout_s`."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await stream.open_connection(*self.address)
                stream.bound_socket_buffers(writer)
                challenge = await reader.readexactly(wire.CHALLENGE_BYTES)
                if not challenge.startswith(wire.MAGIC):
                    raise errors.Unavailable(f"{self._where()} is not a Tessera replica's data plane")
                writer.write(wire.proof(self._secret, challenge[len(wire.MAGIC):]))
                if await reader.readexactly(1) != wire.ACCEPTED:
                    raise errors.Unavailable(f"replica at {self._where()} refused the connection")
                return reader, writer
        except errors.Unavailable:
            if writer is not None:
                writer.close()
            raise
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            if writer is not None:
                writer.close()
            what = "refused this gateway (wrong cluster secret?)" if isinstance(exc, asyncio.IncompleteReadError) \
                else f"unreachable: {exc!r}"
            raise errors.Unavailable(f"replica at {self._where()} {what}") from None

    async def run(
        self,
        version: int,
        signature: Target,
        requests: Sequence[Tensors],
        output_filter: Sequence[str] = (),
        timeouts: Sequence[float | None] | None = None,
        *,
        model: str = "",
    ) -> list[RunResult]:
        """The run contract for `model`'s slot on this host."""
        call_id = next(self._ids)
        # Encoded (and checked against the frame limit) before a connection is even opened; a big
        # one in a worker thread (object tensors' items are joined, strided arrays copied).
        args = (call_id, model, version, signature, requests, output_filter, timeouts, self._max_frame)
        if stream.payload_bytes(requests) > stream.BIG:
            frame = await asyncio.to_thread(wire.encode_call, *args)
        else:
            frame = wire.encode_call(*args)
        frames = await self._connection()
        future: asyncio.Future[list[RunResult]] = asyncio.get_running_loop().create_future()
        if not self._pending:
            self._heard = time.monotonic()  # silence is counted from the first call pending
        self._pending[call_id] = future
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.get_running_loop().create_task(self._watch())
        try:
            await frames.send(frame)
            return await future
        finally:
            self._pending.pop(call_id, None)

    async def _watch(self) -> None:
        """While calls are pending: ping, and give the connection up if the replica stays silent."""
        while self._pending:
            # Wake at the next ping or exactly when the silence reaches the timeout, whichever
            # comes first: waking only every ping interval let a hung replica hold a call for up
            # to the timeout plus one interval (2.5 s measured by `make chaos`, for 2 s asked).
            due = self._liveness_timeout - (time.monotonic() - self._heard)
            await asyncio.sleep(max(0.001, min(self._ping_interval, due)))
            frames = self._frames
            if frames is None:
                continue  # the next call reconnects
            silent = time.monotonic() - self._heard
            if silent >= self._liveness_timeout:
                self._fail(frames.writer, errors.Unavailable(
                    f"replica at {self._where()} sent nothing for {silent:.1f}s (hung or lost)"
                ))
            elif silent >= self._ping_interval and not frames.writer.is_closing():
                await frames.send(wire.control_frame(0, wire.PING))

    async def _read(self, reader: stream.FrameStream, writer: asyncio.StreamWriter) -> None:
        failure: BaseException = errors.Unavailable(f"connection to replica {self._where()} closed")
        loop = asyncio.get_running_loop()

        def on_frame(body: memoryview) -> None:
            # Called as the frame arrives (no task woken to read it): the caller's future is set
            # in the same step. Small answers come between the parts of a big one: each is
            # delivered as it arrives.
            self._heard = time.monotonic()
            call_id, header, payload = wire.split_frame(body)
            future = self._pending.get(call_id)
            if future is None or future.done():
                return  # a pong, or the caller gave up (deadline): nothing to deliver
            if "failure" in header:
                future.set_exception(wire.error_of(*header["failure"]))
            elif len(body) > stream.BIG:
                # Decoded in a worker thread (object tensors' items are copied out one by one),
                # by a task of its own: the answers behind it go on being read.
                task = loop.create_task(self._deliver(future, header, payload))
                self._decoding.add(task)
                task.add_done_callback(self._decoding.discard)
            else:
                future.set_result(wire.decode_results(header, payload))

        try:
            raise await reader.frames(on_frame, self._max_frame, self._hear)
        except asyncio.CancelledError:
            failure = errors.Unavailable(f"connection to replica {self._where()} closed by the gateway")
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            failure = errors.Unavailable(f"connection to replica {self._where()} lost: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - a malformed frame: drop the connection
            failure = errors.Internal(f"bad frame from replica {self._where()}: {exc!r}")
        finally:
            self._fail(writer, failure)

    async def _deliver(self, future: asyncio.Future[list[RunResult]], header: dict[str, Any], payload: memoryview) -> None:
        """Sets `future` to a big answer's results, decoded in a worker thread (or to the error
        that decoding it raised: a malformed answer fails its own call)."""
        try:
            results = await asyncio.to_thread(wire.decode_results, header, payload)
        except Exception as exc:  # noqa: BLE001 - a malformed frame from the replica
            if not future.done():
                future.set_exception(errors.Internal(f"bad frame from replica {self._where()}: {exc!r}"))
            return
        if not future.done():
            future.set_result(results)

    def _hear(self) -> None:
        self._heard = time.monotonic()

    def _fail(self, writer: asyncio.StreamWriter, failure: BaseException) -> None:
        """Drops this connection: every call pending on it fails with `failure`."""
        if self._writer is writer:
            self._writer = self._frames = None
            if self._reader_task is not None and self._reader_task is not asyncio.current_task():
                self._reader_task.cancel()
            self._reader_task = None
        writer.close()
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(failure)

    def pending(self) -> int:
        return len(self._pending)

    async def close(self, grace_s: float = 0.0) -> None:
        """Stops taking calls, waits up to `grace_s` for the pending ones to be answered (a replica
        leaving the routing table finishes what it has), then closes; calls still pending fail
        with Unavailable."""
        self._closing = True
        deadline = time.monotonic() + grace_s
        while self._pending and time.monotonic() < deadline and self._writer is not None:
            await asyncio.sleep(0.01)
        tasks = [t for t in (self._reader_task, self._watch_task) if t is not None]
        self._reader_task = self._watch_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ModelChannel:
    """One model's calls over a host's shared channel (the `Runner` contract, model bound)."""

    def __init__(self, channel: ReplicaChannel, model: str) -> None:
        self.channel = channel
        self.model = model

    @property
    def address(self) -> tuple[str, int]:
        return self.channel.address

    def __repr__(self) -> str:
        return f"ModelChannel({self.model} @ {self.address[0]}:{self.address[1]})"

    async def run(
        self,
        version: int,
        signature: Target,
        requests: Sequence[Tensors],
        output_filter: Sequence[str] = (),
        timeouts: Sequence[float | None] | None = None,
    ) -> list[RunResult]:
        return await self.channel.run(version, signature, requests, output_filter, timeouts, model=self.model)
