"""Session 9's review: meshrpc.aio and Pyro4-style futures used as a home-automation program would use
them (real daemons, threaded and asyncio, over loopback), each test a bug that was found."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from typing import Any

import pytest

import meshrpc
import meshrpc.aio
import meshrpc.core
from meshrpc.config import config

pytestmark = pytest.mark.timeout(60)


@meshrpc.expose
class Device:
    def echo(self, value: Any) -> Any:
        return value

    def slow(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def readings(self, count: int) -> Any:
        yield from range(count)

    async def aecho(self, value: Any) -> Any:
        return value

    async def live(self, count: int) -> Any:
        for item in range(count):
            yield item


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- futures


def test_a_futures_value_or_wait_on_a_loop_thread_is_refused_naming_meshrpc_aio_never_a_deadlock() -> None:
    """A coroutine that reads `.value` (or `.wait()`s) of a pending future blocks its loop: with the
    device served by that same loop it waited forever. It is refused, as the threaded proxy's call is;
    a result already there is read as usual."""

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(Device(), "device")
        async with daemon:
            slow = meshrpc.asyncproxy(meshrpc.Proxy(uri))
            pending = slow.echo(5)
            for wait in (lambda: pending.value, lambda: pending.wait(), lambda: pending.wait(30)):
                with pytest.raises(RuntimeError, match="meshrpc.aio"):
                    wait()
            assert pending.wait(0) in (True, False)          # a look, no wait: allowed
            await asyncio.to_thread(pending.wait, 10)         # the way the error names
            assert pending.ready and pending.value == 5 and pending.wait(1)  # there: no wait, allowed
            stream = slow.readings(3).then(iter)
            await asyncio.to_thread(stream.wait, 10)
            items = stream.value
            with pytest.raises(RuntimeError, match="meshrpc.aio"):
                next(items)                                  # a remote iterator's pull waits too
            assert await asyncio.to_thread(list, items) == [0, 1, 2]
            await asyncio.to_thread(slow._pyroRelease)

    asyncio.run(main())


def test_chain_links_that_wait_for_other_chained_futures_never_starve_the_futures_workers(
        start_daemon: Any) -> None:
    """Pyro4 ran each call's chain on the call's own thread; here chains share FUTURE_WORKERS threads.
    Links that each waited for another call's chained result took every worker while the chains they
    waited for stood queued behind them: a deadlock. A waiting worker now runs such a chain itself."""
    uri = start_daemon().register(Device(), "device")
    slow = meshrpc.asyncproxy(meshrpc.Proxy(uri))

    def link(value: float) -> int:
        return slow.echo(1).then(lambda one: one + 1).value  # waits for a chain of its own

    outer = [slow.slow(0.05).then(link) for _ in range(3 * config.FUTURE_WORKERS)]
    assert all(result.wait(20) for result in outer), "chains waiting for chains never finished"
    assert [result.value for result in outer] == [2] * len(outer)

    nested = meshrpc.Future(lambda n: meshrpc.Future(lambda m: m * 2)(n).value)  # a Future waiting for one
    results = [nested(n) for n in range(3 * config.FUTURE_WORKERS)]
    assert all(result.wait(20) for result in results), "Futures waiting for Futures never finished"
    assert [result.value for result in results] == [n * 2 for n in range(len(results))]
    slow._pyroRelease()


# --- meshrpc.aio


def test_an_aio_proxy_or_asyncproxy_dropped_without_release_closes_its_connection(start_daemon: Any) -> None:
    """An integration that drops a device's proxy (the entity was removed) without `_pyroRelease`: the
    loop's selector kept the connection open for good (two descriptors per proxy here, one on the
    daemon); the threaded proxy closes its own when dropped."""

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(Device(), "device")
        async with daemon:
            for value in range(10):
                proxy = meshrpc.aio.Proxy(uri)
                assert await proxy.echo(value) == value
                del proxy
            gc.collect()
            deadline = time.monotonic() + 10
            while daemon._aio_connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not daemon._aio_connections, f"{len(daemon._aio_connections)} connections left open"

    asyncio.run(main())

    uri = start_daemon().register(Device(), "device")
    meshrpc.asyncproxy(meshrpc.Proxy(uri)).echo(0).value  # the background loop and its pool, started
    before = _fds()
    for value in range(10):
        slow = meshrpc.asyncproxy(meshrpc.Proxy(uri))
        assert slow.echo(value).value == value
        del slow
    gc.collect()
    deadline = time.monotonic() + 10
    while _fds() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _fds() <= before, f"{_fds() - before} descriptors left open by dropped asyncproxies"


@pytest.mark.parametrize("side", ["aio", "threaded"])
def test_an_async_for_left_half_way_closes_its_remote_stream(side: str, start_daemon: Any) -> None:
    """`async for reading in await device.readings(n): if ...: break` never closed the daemon's stream
    (the threaded proxy's iterator closes it when dropped): after MAX_STREAMS_PER_CONNECTION of them
    the proxy's calls failed with "too many open streams". (The closes are oneway calls, which a
    threaded daemon runs apart from the calls: only the end is checked, not a limit on the way.)"""
    settings = config.copy(MAX_STREAMS_PER_CONNECTION=100)

    async def main(uri: Any, daemon: Any) -> None:
        async with meshrpc.aio.Proxy(uri) as device:
            for method in ("readings", "live") if side == "aio" else ("readings",):
                for _ in range(12):
                    async for item in await getattr(device, method)(10):
                        if item == 2:
                            break
            deadline = time.monotonic() + 10
            while len(daemon._streams) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not len(daemon._streams), f"{len(daemon._streams)} streams left open"
            assert await device.echo(1) == 1

    if side == "threaded":
        running = start_daemon(settings=settings)
        asyncio.run(main(running.register(Device(), "device"), running.daemon))
        return

    async def served() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1", settings=settings)
        uri = daemon.register(Device(), "device")
        async with daemon:
            await main(uri, daemon)
    asyncio.run(served())


def test_pyro5s_resolve_on_a_loop_thread_is_refused_naming_meshrpc_aio(realm: str) -> None:
    """`meshrpc.resolve("PYRONAME:...")` (Pyro5's api.resolve) inside a coroutine froze the loop for the
    whole mesh wait (3 s for an unknown name, every timer and socket of the program stopped); it is
    refused as the other blocking calls are, naming `await meshrpc.aio.resolve(...)`."""
    settings = config.copy(REALM=realm, INTERFACES="127.0.0.1", HOST="127.0.0.1", RESOLVE="mesh")

    async def main() -> None:
        started = time.monotonic()
        for resolve in (meshrpc.resolve, meshrpc.core.resolve):
            with pytest.raises(RuntimeError, match=r"meshrpc\.aio\.resolve"):
                resolve("PYRONAME:review.nowhere", settings=settings)
        assert time.monotonic() - started < 1.0
        direct = "PYRO:thing@127.0.0.1:9999"
        assert str(meshrpc.resolve(direct)) == direct  # nothing to look up: no wait, allowed

    asyncio.run(main())


def test_an_asyncproxys_timeout_retries_and_serializer_are_its_calls_own(start_daemon: Any) -> None:
    """A Pyro4 program sets `_pyroTimeout` on its asynchronous proxy (in Pyro4 it was a proxy): here
    the wrapper kept the value to itself and its calls waited for ever."""
    uri = start_daemon().register(Device(), "device")
    with meshrpc.asyncproxy(meshrpc.Proxy(uri)) as slow:
        assert slow._pyroTimeout is None and slow._pyroMaxRetries == config.MAX_RETRIES
        slow._pyroTimeout = 0.2
        slow._pyroMaxRetries = 0
        slow._pyroSerializer = "marshal"
        started = time.monotonic()
        with pytest.raises(meshrpc.errors.TimeoutError):
            slow.slow(1.5).value
        assert time.monotonic() - started < 1.2
        assert slow._pyroTimeout == 0.2
        slow._pyroTimeout = None
        assert slow.echo(b"\x00bytes").value == b"\x00bytes"
        assert slow._pyroAio._conn.session.serializer.name == "marshal"


def test_a_pyro5_uri_object_is_taken_by_both_proxies() -> None:
    """A program that still gets its URIs from Pyro5 (its name server proxy's lookup, a Pyro5 daemon's
    register) and calls with meshrpc: `meshrpc.aio.Proxy(uri)` raised "a URI must be a str or URI, not
    URI" (Pyro5's URI class has the same name); Pyro5's Proxy takes its URI objects."""
    import Pyro5.api
    import Pyro5.core
    import Pyro5.server

    daemon = Pyro5.server.Daemon(host="127.0.0.1")
    uri = daemon.register(Pyro5.api.expose(Device), "device")
    assert isinstance(uri, Pyro5.core.URI)
    serving = threading.Thread(target=daemon.requestLoop, daemon=True)
    serving.start()
    try:
        with meshrpc.Proxy(uri) as device:
            assert device.echo(1) == 1

        async def main() -> None:
            async with meshrpc.aio.Proxy(uri) as device:
                assert await device.echo(2) == 2
        asyncio.run(main())
        assert str(meshrpc.URI(uri)) == str(uri)
        with pytest.raises(TypeError, match="builtins.int"):
            meshrpc.URI(5)  # type: ignore[arg-type]
    finally:
        daemon.shutdown()
        serving.join(5)
        daemon.close()


def test_an_aio_proxy_used_again_on_a_new_loop_connects_anew_and_runs_each_call_once(start_daemon: Any) -> None:
    """A script (or a test suite, one loop per test) that calls through one aio proxy in two
    `asyncio.run`s: the second call was written on the first loop's connection, then its wait used
    that closed loop's selector: ValueError ("I/O operation on closed epoll object") after the call
    had been sent, so it ran on the daemon while the caller saw a failure."""
    ran: list[int] = []

    @meshrpc.expose
    class Counter:
        def count(self, value: int) -> int:
            ran.append(value)
            return value

    uri = start_daemon().register(Counter(), "counter")
    proxy = meshrpc.aio.Proxy(uri)

    async def call(value: int) -> int:
        return await proxy.count(value)

    assert asyncio.run(call(1)) == 1
    assert asyncio.run(call(2)) == 2
    assert asyncio.run(call(3)) == 3
    assert ran == [1, 2, 3]


def test_sequential_calls_under_asyncio_debug_raise_no_slow_callback_warnings(
        start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Home Assistant's development mode (and PYTHONASYNCIODEBUG=1) turns on the loop's debug mode,
    which logs every step of a task that runs longer than slow_callback_duration. A task awaiting
    calls in a loop got its replies inside its step (the wait in the loop's selector), so one step
    lasted as long as the loop had nothing else to do: "Executing <Task ...> took 0.6 seconds"
    warnings, read as meshrpc blocking the loop."""
    uri = start_daemon().register(Device(), "device")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.05
        async with meshrpc.aio.Proxy(uri) as device:
            until = time.monotonic() + 0.5
            while time.monotonic() < until:
                assert await device.echo(1) == 1

    with caplog.at_level("WARNING", logger="asyncio"):
        asyncio.run(main(), debug=True)
    slow = [record.getMessage()[:120] for record in caplog.records if "took" in record.getMessage()]
    assert not slow, slow


def test_an_aio_daemon_under_asyncio_debug_raises_no_slow_callback_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """The aio daemon's side of the same: it reads a sequential client's next request in the loop's
    selector inside the read callback, so one callback served the client for as long as it kept
    calling: "Executing <Handle _SelectorSocketTransport._read_ready()> took 0.6 seconds"."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.05
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(Device(), "device")
        async with daemon:
            def client() -> None:
                with meshrpc.Proxy(uri) as device:
                    until = time.monotonic() + 0.5
                    while time.monotonic() < until:
                        assert device.aecho(1) == 1
            await asyncio.to_thread(client)

    with caplog.at_level("WARNING", logger="asyncio"):
        asyncio.run(main(), debug=True)
    slow = [record.getMessage()[:120] for record in caplog.records if "took" in record.getMessage()]
    assert not slow, slow


def test_a_link_or_future_callable_that_raises_a_base_exception_still_settles(start_daemon: Any) -> None:
    """A chain link or meshrpc.Future callable that raised SystemExit (sys.exit in a helper) or asyncio's
    CancelledError (not Exceptions) ended its worker's task without settling the result: `value`
    waited for ever. It is the result's exception now, as any other."""
    import sys

    uri = start_daemon().register(Device(), "device")
    with meshrpc.asyncproxy(meshrpc.Proxy(uri)) as slow:
        def cancelled(value: Any) -> Any:
            raise asyncio.CancelledError("gone")
        failed: list[BaseException] = []
        chained = slow.echo(1).then(cancelled).iferror(failed.append)
        assert chained.wait(10), "the chain never settled"
        with pytest.raises(asyncio.CancelledError):
            chained.value
        assert len(failed) == 1
    exiting = meshrpc.Future(sys.exit)(3)
    assert exiting.wait(10), "the Future never settled"
    with pytest.raises(SystemExit):
        exiting.value


def test_a_copied_aio_proxy_has_its_own_connection_and_dropping_it_spares_the_originals(
        start_daemon: Any) -> None:
    """copy.copy(proxy) (a proxy with a shorter timeout for one task, say) shared the original's
    connection, so dropping the copy (which closes its connection) failed the original's call in
    flight with ReplyLostError. A copy is a twin with its own connection, as the threaded proxy's."""
    import copy

    started = threading.Event()

    @meshrpc.expose
    class Slow(Device):
        def slow(self, seconds: float) -> float:
            started.set()
            return super().slow(seconds)

    uri = start_daemon().register(Slow(), "device")

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri) as device:
            device._pyroTimeout = 30.0
            twin = copy.copy(device)
            assert twin._pyroTimeout == 30.0 and "echo" in twin._pyroMethods
            assert await twin.echo(1) == 1
            assert twin._conn is not device._conn
            running = asyncio.create_task(device.slow(0.3))
            assert await asyncio.to_thread(started.wait, 10)  # the original's call is running
            del twin
            gc.collect()
            assert await running == 0.3

    asyncio.run(main())
