"""What a client that leaves in the middle must not cost: findings of tools/cutsweep.py, pinned.

A client may go (its connection cut, or closed after a oneway call) while the daemon still holds its
requests. A oneway call the daemon received whole runs (the threaded daemon's per-connection queue
runs on; the aio daemon's calls waiting for a worker thread were dropped). (A stream made for a
client that left: tests/integration/test_aio_gone_client.py.) A pull that reaches its stream after
the daemon saw the client leave does not make the gone connection the stream's owner for good.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import meshrpc
import meshrpc.aio
from meshrpc import errors
from meshrpc.config import config

pytestmark = pytest.mark.timeout(30)
BOUND = 10.0


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 20)
    return asyncio.run(bounded())


class Watching(meshrpc.aio.Daemon):
    """An aio daemon that says when a client left (clientDisconnect, on its loop)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gone = asyncio.Event()

    def clientDisconnect(self, conn: Any) -> None:
        self.gone.set()


@meshrpc.expose
class Busy:
    def __init__(self) -> None:
        self.holding = threading.Event()
        self.release = threading.Event()
        self.noted = threading.Event()
        self.closed = threading.Event()

    def hold(self) -> str:
        self.holding.set()
        self.release.wait(BOUND)
        return "held"

    @meshrpc.oneway
    def note(self) -> None:
        self.noted.set()

    def numbers(self) -> Any:
        try:
            yield 1
            yield 2
        finally:
            self.closed.set()


def test_an_aio_daemon_runs_a_oneway_call_that_waited_for_a_thread_after_its_client_left() -> None:
    """AIO_EXECUTOR_SIZE=1 and its thread busy: a client sends a oneway call and closes its proxy at
    once (`with Proxy(uri) as p: p.note()`, or a cut). The daemon received the call whole; it runs
    when the thread is free, as on the threaded daemon (Pyro5 runs it too)."""
    busy = Busy()

    async def main() -> None:
        daemon = Watching(host="127.0.0.1", settings=config.copy(AIO_EXECUTOR_SIZE=1))
        uri = daemon.register(busy, "busy")
        await daemon.start()
        loop = asyncio.get_running_loop()
        holder = meshrpc.Proxy(uri)
        holding = loop.run_in_executor(None, lambda: holder.hold())
        try:
            assert await loop.run_in_executor(None, busy.holding.wait, BOUND)

            def notify() -> None:
                with meshrpc.Proxy(uri) as proxy:
                    proxy.note()
            await loop.run_in_executor(None, notify)
            await asyncio.wait_for(daemon.gone.wait(), BOUND)  # the daemon saw the client leave
            busy.release.set()
            assert await holding == "held"
            assert await loop.run_in_executor(None, busy.noted.wait, BOUND), "the oneway call never ran"
        finally:
            busy.release.set()
            holder._pyroRelease()
            await daemon.aclose()

    run(main())


def test_an_aio_daemon_lets_go_of_a_stream_pulled_for_a_client_that_had_left() -> None:
    """A pull the daemon received whole reaches the stream only after the daemon saw its client leave
    (a worker thread takes it a moment later): the stream was then owned by the dead connection for
    good (never orphaned again, kept until the daemon stopped). It lingers and expires as any stream
    whose client left."""
    busy = Busy()

    async def main() -> None:
        daemon = Watching(host="127.0.0.1", settings=config.copy(ITER_STREAM_LINGER=0.2))
        uri = daemon.register(busy, "busy")
        await daemon.start()
        loop = asyncio.get_running_loop()
        left = threading.Event()
        daemon.clientDisconnect = lambda conn: left.set()  # type: ignore[method-assign]
        streams = daemon._streams
        next_item = streams.next_item

        def late_next_item(stream_id: str, caller: Any) -> Any:
            left.wait(BOUND)  # the worker gets to the pull once the loop saw the client leave
            return next_item(stream_id, caller)
        streams.next_item = late_next_item  # type: ignore[method-assign]
        proxy = meshrpc.Proxy(uri)
        proxy._pyroTimeout = 0.3

        def pull() -> Any:
            numbers = proxy.numbers()
            try:
                return next(numbers)
            except errors.TimeoutError as exc:
                return exc
        try:
            assert isinstance(await loop.run_in_executor(None, pull), errors.TimeoutError)
            assert await loop.run_in_executor(None, busy.closed.wait, BOUND), "the stream was kept"
        finally:
            left.set()
            proxy._pyroRelease()
            await daemon.aclose()

    run(main())


class WatchingThreaded(meshrpc.Daemon):
    """A threaded daemon that says when a client left (clientDisconnect, on its worker)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gone = threading.Event()

    def clientDisconnect(self, conn: Any) -> None:
        self.gone.set()


def test_a_threaded_daemon_runs_a_oneway_call_that_waited_for_a_thread_after_its_client_left() -> None:
    """The twin of the aio daemon's test: two pool threads, one busy, the other serving the client
    (its handshake, then its oneway call, which waits in the connection's queue for a thread); the
    client leaves at once, and the call runs."""
    busy = Busy()
    daemon = WatchingThreaded(host="127.0.0.1", settings=config.copy(THREADPOOL_SIZE=2, THREADPOOL_SIZE_MIN=2))
    uri = daemon.register(busy, "busy")
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    loop.start()
    holder = meshrpc.Proxy(uri)
    holding = threading.Thread(target=holder.hold, daemon=True)
    try:
        holder._pyroBind()
        holding.start()
        assert busy.holding.wait(BOUND)
        with meshrpc.Proxy(uri) as proxy:
            proxy.note()
        assert daemon.gone.wait(BOUND)
        busy.release.set()
        assert busy.noted.wait(BOUND), "the oneway call never ran"
    finally:
        busy.release.set()
        holding.join(BOUND)
        holder._pyroRelease()
        daemon.shutdown()
        loop.join(BOUND)
