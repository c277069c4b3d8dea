"""Moving data-plane frames over asyncio streams without holding the event loop.

A frame of a few KiB is written with one `writelines` and read with one `readexactly`: the fast
path every small Predict takes. A big frame (over `BIG` bytes, e.g. a 100 MB tensor) would hold
the loop for hundreds of milliseconds that way: `writelines` joins every piece into one new
bytes and the transport copies what the socket did not take; `readexactly` gathers the whole
body in the stream's buffer and then copies it out. So big frames move in `CHUNK`-sized steps
instead: written slice by slice with a `drain` between (the transport never holds more than a
chunk beyond its high-water mark), read into one preallocated buffer as the bytes arrive; every
loop step then costs one chunk's copy at most, and other requests are served in between.

A connection's frames must not interleave, so a `FrameWriter` lets one big frame out at a time;
small frames pass without waiting unless a big one is on its way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

BIG = 1 << 20  # bytes; frames above this move in chunks and are encoded/decoded off the loop
CHUNK = 1 << 20  # bytes copied per loop step at most

Frame = Sequence[bytes | memoryview]


def payload_bytes(tensor_sets: Iterable[Mapping[str, np.ndarray] | BaseException]) -> int:
    """About how many bytes encoding these tensors will write (object arrays count their item
    pointers, which is what their encoding's cost grows with); exceptions count nothing."""
    return sum(a.nbytes for ts in tensor_sets if not isinstance(ts, BaseException) for a in ts.values())


class FrameWriter:
    """Writes whole frames to one connection; a big frame goes out in chunks, alone."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._big = asyncio.Lock()  # held while a big frame is partly written

    async def send(self, frame: Frame) -> None:
        total = sum(len(piece) for piece in frame)
        if total <= BIG and not self._big.locked():
            self.writer.writelines(frame)  # the fast path: one call, nothing else can interleave
            await self.writer.drain()
            return
        async with self._big:
            if total <= BIG:
                self.writer.writelines(frame)
                await self.writer.drain()
                return
            try:
                for piece in frame:
                    view = memoryview(piece).cast("B")
                    for start in range(0, len(view), CHUNK):
                        self.writer.write(view[start : start + CHUNK])
                        await self.writer.drain()
            except BaseException:
                self.writer.close()  # half a frame went out: the stream cannot be read past it
                raise

    def post(self, frame: Frame) -> asyncio.Task[None] | None:
        """Sends a small frame without waiting: at once if no big frame is on its way, else from a
        task (returned, for the caller to keep) once it is."""
        if not self._big.locked():
            self.writer.writelines(frame)
            return None
        return asyncio.get_running_loop().create_task(self.send(frame))


async def read_body(reader: asyncio.StreamReader, length: int, heard: Callable[[], None] | None = None) -> memoryview:
    """The next `length` bytes of the stream; a big body is gathered chunk by chunk into one
    buffer, and `heard` is called after each chunk (the peer is alive while a big frame flows).
    Raises IncompleteReadError if the stream ends first."""
    if length <= BIG:
        return memoryview(await reader.readexactly(length))
    # np.empty, not bytearray(length): that one zeroes (and so faults in) every page at once, a
    # 100 MB memset on the loop; these pages are touched chunk by chunk as the bytes arrive.
    view = np.empty(length, np.uint8).data
    pos = 0
    while pos < length:
        chunk = await reader.read(min(CHUNK, length - pos))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", length)  # what came is dropped: nothing uses it
        view[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
        if heard is not None:
            heard()
    return view
