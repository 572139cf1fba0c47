"""Helpers for tests: wait for a condition with a deadline instead of sleeping, an event loop on a
thread of its own, patterned payloads."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any, AsyncIterator, Callable, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 5.0, interval: float = 0.01,
               message: str = "condition") -> T:
    """Poll `condition` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def rss_mb() -> float | None:
    """This process's resident memory in MiB (None where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def handshaken_sessions(serializer: str = "serpent", *, pipelining: bool = False, **settings: object) -> tuple:
    """A wire.session ClientSession and ServerSession that completed their handshake in memory (no
    sockets), with Settings(**settings) on both sides, pipelining agreed when asked: (client, server)."""
    from meshrpc.config import Settings
    from meshrpc.wire.serializers import BY_NAME
    from meshrpc.wire.session import ClientSession, ServerSession
    config = Settings(**settings)
    client = ClientSession(BY_NAME[serializer], config, pipelining=pipelining)
    server = ServerSession(config, pipelining=pipelining)
    server.receive_data(b"".join(client.connect_request("obj", "hello", {}, None)))
    client.receive_data(b"".join(server.accept_connect(server.next_event(), "hello", {"methods": {"echo"}})))
    client.next_event()
    assert client.pipelined == pipelining
    return client, server


class LoopThread:
    """An event loop on a thread of its own (an aio Daemon served beside the test's own loop or threads)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-aio-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, function: Any, timeout: float = 10) -> Any:
        async def on_loop() -> Any:
            return function()
        return self.run(on_loop(), timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def patterned_bytes(size: int) -> bytes:
    """`size` bytes of a repeating 0..255 pattern (a misplaced or lost byte changes them)."""
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


@contextlib.asynccontextmanager
async def aio_served(obj: Any, name: str, settings: Any = None, *, bind: bool = True) -> AsyncIterator[tuple]:
    """On the running loop: a meshrpc.aio.Daemon on 127.0.0.1 serving `obj` as `name` (with `settings`,
    if given), and a meshrpc.aio.Proxy to it, connected at once unless `bind` is False: (daemon, proxy),
    both closed at the end."""
    import meshrpc.aio
    daemon = meshrpc.aio.Daemon(host="127.0.0.1", **({} if settings is None else {"settings": settings}))
    uri = daemon.register(obj, name)
    async with daemon, meshrpc.aio.Proxy(uri) as proxy:
        if bind:
            await proxy._pyroBind()
        yield daemon, proxy
