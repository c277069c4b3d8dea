"""Request conversions that must not hold the gateway's event loop: a worker thread, or a process.

Every gRPC and REST call of the gateway shares one asyncio loop, so a conversion that takes the
loop's thread for a second stalls every model's requests for that second. Small requests convert
inline (a thread hop would cost more than the work); above `OFFLOAD_BYTES` on the wire:

* gRPC conversions run in a worker thread (`in_thread`). Protobuf parsing and numpy copies are C
  calls bounded by the message's own size, and the long Python-level loops (string lists) are
  chunked, so the loop's thread gets the GIL back between chunks. An `Abort` is checked between
  chunks and tensors: a request whose deadline passed, or whose client went away, stops there.
* REST conversions run in a `ConversionProcess`. `json.loads` of a big body is one C call that holds
  the GIL for seconds (about 1 s per 50 MB of numbers, measured), so a thread would not free the
  loop, and it cannot be interrupted; a process can be killed. When the REST timeout passes, the
  process is killed at once and replaced on next use: nothing keeps running after the 504.
  What crosses to the process and back is pickled with protocol 5, its big buffers (a body's bytes,
  arrays, a JSON answer) out of band: written to the pipe from where they lie and read back in
  chunks. Pickling them in band would copy each whole, holding the GIL (~100 ms per 100 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final, TypeVar

from cluster import errors

log = logging.getLogger(__name__)

T = TypeVar("T")

# Below this many bytes on the wire a conversion runs inline: the hop costs about what it saves.
OFFLOAD_BYTES: Final = 256 * 1024


class Abort:
    """A conversion's stop signal: its deadline (time.monotonic()) passed, or `cancel()` was called.

    Thread-safe by construction: one flag written by the loop, read by the worker.
    """

    __slots__ = ("_cancelled", "_deadline")

    def __init__(self, deadline: float | None = None) -> None:
        self._deadline = deadline
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def check(self) -> None:
        """Raises DeadlineExceeded if the conversion should stop."""
        if self._cancelled:
            raise errors.DeadlineExceeded("The request was cancelled while it was converted")
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise errors.DeadlineExceeded("Deadline exceeded while the request was converted")


async def in_thread(abort: Abort, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a worker thread; if the caller is cancelled, `abort` is cancelled."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except asyncio.CancelledError:
        abort.cancel()
        raise


def send(conn: Connection, value: Any) -> None:
    """`value` pickled (protocol 5) with its big buffers out of band: a count, the pickle, then each
    buffer written from where it lies (a big `bytes` is wrapped so that it travels so too)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(_out_of_band(value), protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(len(buffers).to_bytes(4, "little"))
    conn.send_bytes(data)
    for buffer in buffers:
        conn.send_bytes(buffer.raw())


def receive(conn: Connection) -> Any:
    """What `send` sent: the buffers are read in chunks and the arrays in it are views of them."""
    count = int.from_bytes(conn.recv_bytes(), "little")
    data = conn.recv_bytes()
    buffers = [conn.recv_bytes() for _ in range(count)]
    return pickle.loads(data, buffers=buffers)


def _out_of_band(value: Any) -> Any:
    # bytes pickle in band (copied into the pickle); a PickleBuffer of them goes out of band and
    # unpickles as the bytes read back. Arrays go out of band by themselves under protocol 5.
    if isinstance(value, bytes) and len(value) >= OFFLOAD_BYTES:
        return pickle.PickleBuffer(value)
    if type(value) is tuple:
        return tuple(_out_of_band(item) for item in value)
    return value


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the child process
    """The child's loop: (function, args) in, (ok, result or exception) out, until EOF."""
    while True:
        try:
            fn, args = receive(conn)
        except (EOFError, OSError):
            return
        try:
            reply: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:  # noqa: BLE001 - every failure travels back to the gateway
            reply = (False, exc if isinstance(exc, errors.ServingError) else errors.Internal(str(exc)))
        send(conn, reply)


class ConversionProcess:
    """One child process that runs conversions one at a time; killed when a caller gives up.

    `call` sends a module-level function and its (picklable) arguments, and returns its result or
    raises the `cluster.errors` error it raised. One call runs at a time (a big body's JSON work
    takes one core, and leaves the other to the loop); callers queue in arrival order, and a caller
    whose deadline passes or who is cancelled while queued never starts. A caller cancelled while
    its call runs kills the child, which is started again on next use.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._guard = threading.Lock()  # the child is killed from the loop while a thread waits on it

    async def call(self, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        async with self._lock:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise errors.DeadlineExceeded("Deadline exceeded before the request was converted")
            conn = await asyncio.to_thread(self._start)
            try:
                ok, value = await asyncio.to_thread(self._exchange, conn, fn, args, timeout)
            except BaseException:
                # Cancelled (the REST timeout) or a broken child: stop it now. SIGKILL here, before
                # the caller answers (one syscall: the child stops costing CPU at once), then
                # reaped in a worker thread: a child holding hundreds of MB takes a while to exit,
                # and the loop waited on it (shielded: a second cancel must not leave it half done).
                process = self._process
                if process is not None and process.is_alive():
                    process.kill()
                await asyncio.shield(asyncio.to_thread(self.kill))
                raise
        if ok:
            return value
        raise value

    @staticmethod
    def _exchange(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None) -> Any:
        try:
            send(conn, (fn, args))
            if not conn.poll(timeout):
                raise errors.DeadlineExceeded("Deadline exceeded while the request was converted")
            return receive(conn)
        except (EOFError, OSError) as exc:
            raise errors.Internal("the conversion process stopped") from exc

    def _start(self) -> Connection:
        with self._guard:
            if self._process is not None and self._process.is_alive() and self._conn is not None:
                return self._conn
            # spawn, not fork: the gateway runs gRPC's and Ray's threads, which fork would copy
            # mid-flight into a child.
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(child,), name="tessera-conversion", daemon=True)
            process.start()
            child.close()
            self._process, self._conn = process, parent
            return parent

    def kill(self) -> None:
        """Stops the child now (a call in flight fails); the next call starts a new one."""
        with self._guard:
            process, conn = self._process, self._conn
            self._process = self._conn = None
        if process is not None and process.is_alive():
            process.kill()
            process.join(timeout=5)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    @property
    def pid(self) -> int | None:
        """The child's process id, or None when none is running."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None
