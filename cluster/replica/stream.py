"""Moving data-plane frames over asyncio streams without holding the event loop or the connection.

A frame of a few KiB is written with one `writelines` and read with one `readexactly`: the fast
path every small Predict takes. A big frame (over `BIG` bytes, e.g. a 100 MB tensor) would hold
the loop for hundreds of milliseconds that way: `writelines` joins every piece into one new
bytes and the transport copies what the socket did not take; `readexactly` gathers the whole
body in the stream's buffer and then copies it out. So big frames move in `CHUNK`-sized steps
instead: written part by part with a `drain` between (the transport never holds more than a part
beyond its high-water mark), read into one preallocated buffer as the bytes arrive; every loop
step then costs one chunk's copy at most, and other requests are served in between.

One connection carries the calls of every model on a replica host, so a big frame must not hold
the connection either: it goes as parts (`wire.PART`), and small frames go out between two parts
at once, never waiting for the big one to pass. A `FrameWriter` lets one big frame's parts out at
a time (a `FrameReader` puts one together at a time); a small frame waits for at most the part
already in the transport's buffer (about `CHUNK` bytes), whatever the size of the big frame.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

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
    return sum(a.nbytes for ts in tensor_sets if not isinstance(ts, BaseException) for a in ts.values())


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
        total = sum(len(piece) for piece in frame)
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


class FrameReader:
    """Reads whole frames' bodies off one connection, putting each big frame together from its
    parts while the small frames that come between them are returned as they arrive."""

    def __init__(
        self, reader: asyncio.StreamReader, max_frame: int, heard: Callable[[], None] | None = None
    ) -> None:
        self._reader = reader
        self._max_frame = max_frame
        self._heard = heard  # called after each chunk read: the peer is alive while a big frame flows
        self._body: memoryview | None = None  # the big frame being put together
        self._filled = 0

    async def next(self) -> memoryview:
        """The next whole frame's body (what follows its length field). Raises FrameTooBig before
        reading a frame (or the first part of one) over the limit, ValueError when parts do not
        add up to their frame, IncompleteReadError if the stream ends first."""
        while True:
            (word,) = wire.FRAME_LENGTH.unpack(await self._reader.readexactly(wire.FRAME_LENGTH.size))
            if not word & wire.PART:
                if word > self._max_frame:
                    raise FrameTooBig(word, self._max_frame)
                return await read_body(self._reader, word, self._heard)
            size = word & ~wire.PART
            (total,) = wire.FRAME_LENGTH.unpack(await self._reader.readexactly(wire.FRAME_LENGTH.size))
            if self._body is None:
                if total > self._max_frame:
                    raise FrameTooBig(total, self._max_frame)
                # np.empty, not bytearray(total): that one zeroes (and so faults in) every page at
                # once, a 100 MB memset on the loop; these pages are touched as the bytes arrive.
                self._body, self._filled = np.empty(total, np.uint8).data, 0
            elif total != len(self._body):
                raise ValueError("a part of another big frame came before the one begun was whole")
            if self._filled + size > total:
                raise ValueError("a big frame's parts say more than its length")
            await _read_into(self._reader, self._body[self._filled : self._filled + size], self._heard)
            self._filled += size
            if self._filled == total:
                body, self._body = self._body, None
                return body


async def _read_into(reader: asyncio.StreamReader, view: memoryview, heard: Callable[[], None] | None) -> None:
    """Fills `view` from the stream as the bytes arrive, a chunk per loop step at most."""
    pos, length = 0, len(view)
    while pos < length:
        chunk = await reader.read(min(CHUNK, length - pos))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", length)  # what came is dropped: nothing uses it
        view[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
        if heard is not None:
            heard()


async def read_body(reader: asyncio.StreamReader, length: int, heard: Callable[[], None] | None = None) -> memoryview:
    """The next `length` bytes of the stream (a whole frame's body); a big body is gathered chunk
    by chunk into one buffer, and `heard` is called after each chunk. Raises IncompleteReadError
    if the stream ends first."""
    if length <= BIG:
        return memoryview(await reader.readexactly(length))
    view = np.empty(length, np.uint8).data  # not bytearray: see FrameReader.next
    await _read_into(reader, view, heard)
    return view
