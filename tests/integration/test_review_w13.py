"""Session 13's review of the inflating of large compressed messages off the loop (aio daemon and proxy)
and of the oneway/gone-client handling: each test here failed before the fix it names, or settles a
question the review asked (docs: notes/w13-review.md)."""

from __future__ import annotations

import asyncio
import random
import concurrent.futures
import zlib
from typing import Any

import pytest
from support import LoopThread
from test_aio_inflate import compressing_daemon  # noqa: F401 - a fixture: a threaded daemon compressing its replies

import meshrpc
import meshrpc.aio
from meshrpc.limits import INFLATE_ON_LOOP_MAX

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"
TEXT = "".join(random.Random(13).choices("meshrpc", k=40_000))  # compressed ~15 KB: above INFLATE_ON_LOOP_MAX


@meshrpc.expose
class Relay:
    """Served by an aio daemon: a plain method that calls an `async def` one of the same daemon."""

    def __init__(self) -> None:
        self.uri: Any = None
        self.kept: list[int] = []

    async def keep(self, text: str) -> int:
        self.kept.append(len(text))
        return len(text)

    def relay(self, text: str) -> int:  # (on the daemon's worker thread)
        settings = meshrpc.config.copy(COMPRESSION=True)
        with meshrpc.Proxy(self.uri, settings=settings) as proxy:
            proxy._pyroTimeout = 5
            return proxy.keep(text)


@pytest.fixture
def aio_daemon(request: pytest.FixtureRequest) -> Any:
    """An aio daemon on a loop thread of its own serving a Relay as "relay": (uri, relay, daemon); more
    settings as the fixture's parameter (indirect parametrization)."""
    loop = LoopThread()
    settings = meshrpc.config.copy(**getattr(request, "param", {}))
    relay = Relay()
    daemon = loop.call(lambda: meshrpc.aio.Daemon(host=HOST, settings=settings))
    relay.uri = loop.call(lambda: daemon.register(relay, "relay"))
    serving = asyncio.run_coroutine_threadsafe(daemon.serve_forever(), loop.loop)
    try:
        yield relay.uri, relay, daemon
    finally:
        daemon.shutdown()
        serving.result(20)
        loop.close()


@pytest.mark.parametrize("aio_daemon", [{"AIO_EXECUTOR_SIZE": 1}], indirect=True)
def test_a_large_compressed_request_for_an_async_method_needs_no_worker_thread(aio_daemon: Any) -> None:
    """An `async def` method runs on the loop and needs no worker thread; its large compressed request
    was inflated on the plain methods' workers (417e446), so a plain method that called it on its own
    daemon while every worker was busy (here the one: itself) waited for its own thread: a deadlock
    until the inner call's timeout."""
    uri, relay, _ = aio_daemon
    assert len(zlib.compress(TEXT.encode())) > INFLATE_ON_LOOP_MAX
    with meshrpc.Proxy(uri) as proxy:
        assert proxy.relay(TEXT) == len(TEXT)
    assert relay.kept == [len(TEXT)]


def test_a_large_compressed_reply_does_not_need_the_loops_default_executor(compressing_daemon: Any) -> None:
    """The aio proxy inflated a large compressed reply on the loop's default executor (6f2e7c5): plain code
    run there that waits for such a call (`run_coroutine_threadsafe(...).result()`, the usual bridge from
    an executor job back to the loop) held the thread its own reply needed: with every thread of that
    executor doing so (here its one), a deadlock."""

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        settings = meshrpc.config.copy(SERIALIZER="marshal")  # (bytes in the payload, not out of band)
        async with meshrpc.aio.Proxy(compressing_daemon, settings=settings) as proxy:
            await proxy._pyroBind()

            def bridge() -> bytes:  # plain code on the default executor, calling through the loop
                return asyncio.run_coroutine_threadsafe(proxy.zeros(2_000_000), loop).result(5)

            return await loop.run_in_executor(None, bridge)

    assert asyncio.run(main()) == bytes(2_000_000)
