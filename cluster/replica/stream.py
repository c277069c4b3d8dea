"""Moving data-plane frames over asyncio streams without holding the event loop or the connection.

A frame of a few KiB is written with one `writelines` and read in the transport's callback
that received it (`FrameParser`, fed by a `FrameStream`: no task woken per frame): the fast path
every small Predict takes. A big frame (over `BIG` bytes, e.g. a 100 MB tensor) would hold the
loop for hundreds of milliseconds if written that way: `writelines` joins every piece into one
new bytes and the transport copies what the socket did not take. So big frames move in
`CHUNK`-sized steps instead: written part by part with a `drain` between (the transport never
holds more than a part beyond its high-water mark), read into one preallocated buffer as the
bytes arrive (a read brings 256 KiB at most); every loop step then costs one chunk's copy at
most, and other requests are served in between.

One connection carries the calls of every model on a replica host, so a big frame must not hold
the connection either: it goes as parts (`wire.PART`), and small frames go out between two parts
at once, never waiting for the big one to pass. A `FrameWriter` lets one big frame's parts out at
a time (a `FrameParser` puts one together at a time); a small frame waits for at most the part
already in the transport's buffer (about `CHUNK` bytes), whatever the size of the big frame.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import SupportsIndex, cast

import numpy as np

from cluster.replica import wire

BIG = 1 << 20  # bytes; frames above this move in parts and are encoded/decoded off the loop
CHUNK = 1 << 20  # bytes copied per loop step at most; a big frame's part
SOCKET_BUFFER = CHUNK // 2  # SO_SNDBUF / SO_RCVBUF of a data-plane connection (the kernel doubles it)

Frame = Sequence[bytes | memoryview]


class FrameTooBig(ValueError):
    """A frame whose length says more than the connection's limit: refused before it is read."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes is over the limit of {limit}")
        self.length = length
        self.limit = limit


def payload_bytes(tensor_sets: Iterable[Mapping[str, np.ndarray] | BaseException]) -> int:
    """About how many bytes encoding these tensors will write (object arrays count their item
    pointers, which is what their encoding's cost grows with); exceptions count nothing."""
    total = 0
    for tensors in tensor_sets:  # a loop, not a generator: this runs for every call at both ends
        if not isinstance(tensors, BaseException):
            for array in tensors.values():
                total += array.nbytes
    return total


def bound_socket_buffers(writer: asyncio.StreamWriter) -> None:
    """Caps the kernel's send and receive buffers of a data-plane connection at about a part.
    Loopback autotunes them to tens of MiB (tcp_rmem's maximum), and a small frame written after
    a big one's parts would queue behind all that is buffered; capped, the bytes ahead of it are a
    few parts, and a big frame still moves at the rate the loop copies it."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def _parts(frame: Frame) -> Iterator[list[memoryview]]:
    """A frame's body (the frame less its length field) in order, as parts of CHUNK bytes at
    most, each a list of slices of the frame's pieces (no copy)."""
    part: list[memoryview] = []
    size, skip = 0, wire.FRAME_LENGTH.size
    for piece in frame:
        view = memoryview(piece).cast("B")
        if skip:
            dropped = min(skip, len(view))
            view, skip = view[dropped:], skip - dropped
        while len(view):
            take = view[: CHUNK - size]
            part.append(take)
            size += len(take)
            view = view[len(take) :]
            if size == CHUNK:
                yield part
                part, size = [], 0
    if part:
        yield part


class FrameWriter:
    """Writes whole frames to one connection; a big frame goes out in parts, small ones between."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._big = asyncio.Lock()  # held while a big frame is partly written

    async def send(self, frame: Frame) -> None:
        """Writes `frame` (as `wire` builds it: its first piece starts with the length field)."""
        total = sum(map(len, frame))
        if total <= BIG:
            self.writer.writelines(frame)  # the fast path: one call, nothing else can interleave
            await self.writer.drain()
            return
        body = total - wire.FRAME_LENGTH.size
        async with self._big:  # one big frame's parts at a time: the reader puts one together
            try:
                for part in _parts(frame):
                    # No await between a part's head and its bytes: nothing can come between them.
                    self.writer.write(wire.PART_HEAD.pack(wire.PART | sum(len(s) for s in part), body))
                    for piece in part:
                        self.writer.write(piece)
                    await self.writer.drain()
            except BaseException:
                self.writer.close()  # half a frame went out: the stream cannot be read past it
                raise

    def post(self, frame: Frame) -> None:
        """Writes a small frame now, without waiting for the transport to drain (a pong): it goes
        out after the part of a big frame already buffered, if any."""
        self.writer.writelines(frame)


class FrameParser:
    """Cuts a connection's bytes into whole frames' bodies as they arrive, putting each big frame
    together from its parts while the small frames that come between them are handed on at once.

    `feed` is called with every read (in the transport's own callback: no task is woken per
    frame) and calls `on_frame(body)` for each frame it completes, in order. It raises
    FrameTooBig before taking a frame (or the first part of one) over the limit, and ValueError
    when parts do not add up to their frame. The bytes of a frame still arriving are copied
    straight into a buffer of its size (a big one's allocated once, for all its parts), so each
    read costs one copy of what it brought."""

    def __init__(
        self, max_frame: int, on_frame: Callable[[memoryview], None], heard: Callable[[], None] | None = None
    ) -> None:
        self._max_frame = max_frame
        self._on_frame = on_frame
        self._heard = heard  # called after each read: the peer is alive while a big frame flows
        self._head = b""  # the start of a length field (or part head) that a read cut
        self._big: memoryview | None = None  # the big frame being put together from its parts
        self._filled = 0  # bytes of it that came
        self._dest: memoryview | None = None  # where the bytes of the frame or part arriving go
        self._at = 0  # how many of them came
        self._part = False  # `_dest` is a part of `_big`

    def feed(self, data: bytes) -> None:
        """Takes one read's bytes; hands on every frame they complete."""
        if self._heard is not None:
            self._heard()
        view = memoryview(data)
        if self._head:
            view, self._head = memoryview(self._head + data), b""
        pos, end = 0, len(view)
        while pos < end:
            dest = self._dest
            if dest is not None:
                take = min(len(dest) - self._at, end - pos)
                dest[self._at : self._at + take] = view[pos : pos + take]
                self._at += take
                pos += take
                if self._at == len(dest):
                    self._complete(dest)
                continue
            if end - pos < wire.FRAME_LENGTH.size:
                self._head = bytes(view[pos:])
                return
            (word,) = wire.FRAME_LENGTH.unpack_from(view, pos)
            if not word & wire.PART:
                if word > self._max_frame:
                    raise FrameTooBig(word, self._max_frame)
                pos += wire.FRAME_LENGTH.size
                if end - pos >= word:  # the whole frame is here: the small frame's fast path
                    self._on_frame(memoryview(view[pos : pos + word].tobytes()))
                    pos += word
                else:  # not bytearray(word): see below
                    self._dest, self._at, self._part = np.empty(word, np.uint8).data, 0, False
                continue
            if end - pos < wire.PART_HEAD.size:
                self._head = bytes(view[pos:])
                return
            size, total = wire.PART_HEAD.unpack_from(view, pos)
            size &= ~wire.PART
            pos += wire.PART_HEAD.size
            if self._big is None:
                if total > self._max_frame:
                    raise FrameTooBig(total, self._max_frame)
                # np.empty, not bytearray(total): that one zeroes (and so faults in) every page at
                # once, a 100 MB memset on the loop; these pages are touched as the bytes arrive.
                self._big, self._filled = np.empty(total, np.uint8).data, 0
            elif total != len(self._big):
                raise ValueError("a part of another big frame came before the one begun was whole")
            if self._filled + size > total:
                raise ValueError("a big frame's parts say more than its length")
            self._dest, self._at, self._part = self._big[self._filled : self._filled + size], 0, True
            if not size:
                self._complete(self._dest)

    def _complete(self, dest: memoryview) -> None:
        self._dest = None
        if not self._part:
            self._on_frame(dest)
            return
        assert self._big is not None
        self._filled += len(dest)
        if self._filled == len(self._big):
            body, self._big = self._big, None
            self._on_frame(body)


class FrameStream(asyncio.StreamReader):
    """A data-plane connection's reader: a StreamReader while the handshake is read, then, from
    `frames`, a `FrameParser` fed in the transport's own callback, so that no task is woken to
    read each frame and the bytes are not gathered in a stream buffer first."""

    _parser: FrameParser | None = None
    _ended: asyncio.Future[BaseException] | None = None

    def frames(
        self, on_frame: Callable[[memoryview], None], max_frame: int, heard: Callable[[], None] | None = None
    ) -> asyncio.Future[BaseException]:
        """Hands every frame from now on to `on_frame` as it arrives (what the stream buffered
        past the handshake first). The future resolves to why the frames ended: the connection
        closed (IncompleteReadError) or lost, a frame over the limit (FrameTooBig), a malformed
        frame, or whatever `on_frame` raised; no frame is handed on after that."""
        self._ended = asyncio.get_running_loop().create_future()
        self._parser = FrameParser(max_frame, on_frame, heard)
        # What the stream read past the handshake (StreamReader's own buffer, not public API).
        buffered = bytes(self._buffer)  # type: ignore[attr-defined]
        self._buffer.clear()  # type: ignore[attr-defined]
        self._maybe_resume_transport()  # type: ignore[attr-defined]  # a full buffer stopped reading
        if buffered:
            self.feed_data(buffered)
        failed = self.exception()
        if failed is not None:
            self._end(failed)
        elif self.at_eof():
            self._end(asyncio.IncompleteReadError(b"", None))
        return self._ended

    def _end(self, why: BaseException) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(why)

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        if self._parser is None:
            super().feed_data(data)
        elif self._ended is not None and not self._ended.done():
            try:
                self._parser.feed(cast(bytes, data))  # what a transport reads
            except Exception as exc:  # noqa: BLE001 - the connection's end, reported to its owner
                self._end(exc)

    def feed_eof(self) -> None:
        super().feed_eof()
        if self._parser is not None:
            self._end(asyncio.IncompleteReadError(b"", None))

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        if self._parser is not None:
            self._end(exc)


async def open_connection(host: str, port: int) -> tuple[FrameStream, asyncio.StreamWriter]:
    """`asyncio.open_connection` with a `FrameStream` to read."""
    loop = asyncio.get_running_loop()
    reader = FrameStream(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_server(
    serve: Callable[[FrameStream, asyncio.StreamWriter], Awaitable[None]], host: str, port: int = 0
) -> asyncio.Server:
    """`asyncio.start_server` with a `FrameStream` to read each connection."""
    loop = asyncio.get_running_loop()

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
        assert isinstance(reader, FrameStream)
        return serve(reader, writer)

    return await loop.create_server(
        lambda: asyncio.StreamReaderProtocol(FrameStream(loop=loop), connected, loop=loop), host, port
    )
