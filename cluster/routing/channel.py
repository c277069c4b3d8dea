"""The gateway's end of the data plane: one multiplexed connection per replica.

Ray carries the control plane (load, unload, stats); requests go over a plain asyncio stream to
the replica's data-plane port, because a Ray actor call costs 1–2 ms on a small machine while a
frame over loopback costs a fraction of that. Calls are tagged with ids and answered in any
order; a broken connection fails every pending call with Unavailable (the dispatcher then retries
on another replica) and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from cluster import errors
from cluster.replica import wire
from cluster.replica.contract import RunResult


class ReplicaChannel:
    """Sends coalesced calls to one replica's data-plane address and awaits their results."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[list[RunResult]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None:
            return self._writer
        async with self._connecting:
            if self._writer is None:
                try:
                    reader, writer = await asyncio.open_connection(*self.address)
                except OSError as exc:
                    raise errors.Unavailable(f"replica at {self.address[0]}:{self.address[1]} unreachable: {exc}") from None
                self._writer = writer
                self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))
        assert self._writer is not None
        return self._writer

    async def run(
        self,
        version: int,
        signature: str,
        requests: Sequence[Mapping[str, np.ndarray]],
        output_filter: Sequence[str] = (),
        timeouts: Sequence[float | None] | None = None,
    ) -> list[RunResult]:
        writer = await self._connection()
        call_id = next(self._ids)
        future: asyncio.Future[list[RunResult]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            writer.writelines(wire.encode_call(call_id, version, signature, requests, output_filter, timeouts))
            await writer.drain()
            return await future
        finally:
            self._pending.pop(call_id, None)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        failure: BaseException = errors.Unavailable(f"connection to replica {self.address} closed")
        try:
            while True:
                (length,) = wire.FRAME_LENGTH.unpack(await reader.readexactly(wire.FRAME_LENGTH.size))
                call_id, header, payload = wire.split_frame(memoryview(await reader.readexactly(length)))
                future = self._pending.get(call_id)
                if future is None or future.done():
                    continue  # the caller gave up (deadline): drop the late answer
                if "failure" in header:
                    kind, message = header["failure"]
                    future.set_exception(getattr(errors, kind, errors.Internal)(message))
                else:
                    future.set_result(wire.decode_results(header, payload))
        except asyncio.CancelledError:
            failure = errors.Unavailable(f"connection to replica {self.address} closed by the gateway")
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            failure = errors.Unavailable(f"connection to replica {self.address} lost: {exc}")
        except Exception as exc:  # noqa: BLE001 - a malformed frame: drop the connection
            failure = errors.Internal(f"bad frame from replica {self.address}: {exc!r}")
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(failure)

    async def close(self) -> None:
        """Closes the connection; pending calls fail with Unavailable."""
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
