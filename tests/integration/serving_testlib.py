"""Helpers of the integration tests: a free loopback port, an asyncio loop in a thread for blocking
clients, polling until a condition holds, and a TesseraServer serving a config for one `with` block."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from cluster.config import ModelConfig, ServeOptions, ServerConfig

if TYPE_CHECKING:  # cluster.app imports Ray: only where a server is started
    from cluster.app import TesseraServer

T = TypeVar("T")


def free_port() -> int:
    """A port that was free a moment ago (for servers whose 0 means 'disabled', like REST)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopThread:
    """An asyncio loop in a background thread, so tests can call a server with blocking clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def wait_until(
    predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.1, what: str = "condition"
) -> T:
    """`predicate()`'s first truthy value, polled every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met in {timeout:.0f}s")


@contextmanager
def serving(loop_thread: LoopThread, config: ServerConfig, **options: Any) -> Iterator[TesseraServer]:
    from cluster.app import TesseraServer

    opts = ServeOptions(host="127.0.0.1", grpc_port=0, file_system_poll_wait_seconds=0.5, **options)
    server = TesseraServer(opts, config)
    loop_thread.run(server.start())
    try:
        yield server
    finally:
        loop_thread.run(server.stop(grace=5))


def routed(server: TesseraServer, model: str) -> int:
    route = server.dispatcher.table.models.get(model)
    return len(route.replicas) if route is not None and route.available else 0


def config(root: pathlib.Path, names: list[str], **model: Any) -> ServerConfig:
    return ServerConfig(tuple(ModelConfig(n, str(root / n), **model) for n in names))
