"""Asynchronous calls with futures (Pyro4 style) over real sockets: meshrpc.asyncproxy, _pyroAsync,
async batches, meshrpc.Future."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import pytest

import meshrpc
from meshrpc import errors
from support import wait_until
from test_aio import Listener, Thing

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def served(start_daemon: Any) -> tuple[Thing, meshrpc.URI]:
    thing = Thing()
    return thing, start_daemon().register(thing, "thing")


def test_call_kinds_through_futures(served: tuple[Thing, meshrpc.URI], start_daemon: Any) -> None:
    thing, uri = served
    with meshrpc.asyncproxy(meshrpc.Proxy(uri)) as slow:
        result = slow.add(2, 3)                                     # plain
        assert isinstance(result, meshrpc.FutureResult)
        assert result.wait(10) and result.ready and result.value == 5
        assert slow.fire("hi").wait(10)                             # oneway
        assert thing.fired_event.wait(5) and thing.fired == ["hi"]
        assert list(slow.count(3).value) == [0, 1, 2]               # stream, pulled through the loop
        failed = slow.fail()                                        # remote exception
        with pytest.raises(ValueError, match="deliberate") as info:
            failed.value
        assert "in fail" in "".join(errors.get_remote_traceback(info.value) or "")
        assert slow._pyroGetAttr("level").value == 5                # attribute get and set
        slow._pyroSetAttr("level", 9).value
        assert thing.level == 9
        listener = Listener()                                       # callback
        callbacks = start_daemon()
        callbacks.register(listener)
        assert slow.callback_to(listener, 7).value == "called back" and listener.got == [7]


def test_then_chains_and_iferror(served: tuple[Thing, meshrpc.URI]) -> None:
    _, uri = served
    threads: list[str] = []

    def times(value: int, factor: int) -> int:
        threads.append(threading.current_thread().name)
        return value * factor

    slow = meshrpc.Proxy(uri)._pyroAsync()
    chained = slow.block(0.2, 4).then(times, 10).then(times, factor=2).then(str)
    assert not chained.ready
    assert chained.value == "80"
    assert all(name.startswith("meshrpc-futures-worker") for name in threads), threads  # never on the loop
    seen: list[BaseException] = []
    broken = slow.fail().then(times, 2).iferror(seen.append)
    assert broken.wait(10)
    assert len(seen) == 1 and isinstance(seen[0], ValueError) and not threads[2:]  # the chain stopped
    in_chain = slow.add(1, 1).then(lambda v: 1 / 0).iferror(seen.append)
    with pytest.raises(ZeroDivisionError):
        in_chain.value
    assert isinstance(seen[-1], ZeroDivisionError)
    # links added after the result came run at once
    ready = slow.add(1, 2)
    assert ready.value == 3
    assert ready.then(lambda v: v + 1).value == 4


def test_many_calls_in_flight_share_one_connection_and_no_thread_each() -> None:
    import meshrpc.aio

    async def serve(stop: threading.Event, ready: list) -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        ready.append(daemon.register(Thing(), "thing"))
        async with daemon:
            while not stop.is_set():
                await asyncio.sleep(0.02)

    stop, ready = threading.Event(), []
    server = threading.Thread(target=lambda: asyncio.run(serve(stop, ready)), daemon=True)
    server.start()
    try:
        wait_until(lambda: ready, 10, message="the aio daemon")
        slow = meshrpc.asyncproxy(meshrpc.Proxy(ready[0]))
        threads_before = threading.active_count()
        started = time.monotonic()
        futures = [slow.nap(0.5, i) for i in range(100)]
        assert [f.value for f in futures] == list(range(100))
        assert time.monotonic() - started < 5.0  # 100 x 0.5 s in sequence would take 50 s
        assert threading.active_count() <= threads_before + 1
    finally:
        stop.set()
        server.join(15)


def test_timeout_and_cancellation_through_futures(served: tuple[Thing, meshrpc.URI]) -> None:
    _, uri = served
    proxy = meshrpc.Proxy(uri)
    proxy._pyroTimeout = 0.1
    slow = meshrpc.asyncproxy(proxy)
    late = slow.block(1.0, "late")
    with pytest.raises(errors.TimeoutError):
        late.value
    pending = slow.block(0.5, "never seen")
    assert not pending.wait(0.05)
    assert pending.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        pending.value
    assert slow.add(1, 1).value == 2  # the connection is still usable


def test_async_batch(served: tuple[Thing, meshrpc.URI]) -> None:
    _, uri = served
    batch = meshrpc.BatchProxy(meshrpc.Proxy(uri))
    batch.add(1, 2)
    batch.add(3, 4)
    batch.fail()
    future = batch(asynchronous=True)
    assert isinstance(future, meshrpc.FutureResult)
    results = future.value
    assert next(results) == 3 and next(results) == 7
    with pytest.raises(ValueError):
        next(results)


def test_future_of_a_plain_callable() -> None:
    calls: list[Any] = []
    doubled = meshrpc.Future(lambda x: x * 2).then(lambda v, extra: v + extra, 1)
    assert doubled(20).value == 41
    started = time.monotonic()
    later = meshrpc.Future(calls.append)
    assert later.delay(0.2)
    result = later("delayed")
    assert result.wait(10) and calls == ["delayed"] and time.monotonic() - started >= 0.2
    cancelled = meshrpc.Future(calls.append)
    cancelled.delay(5)
    pending = cancelled("never")
    assert cancelled.cancel()
    errors_seen: list[BaseException] = []
    meshrpc.Future(lambda: 1 / 0).iferror(errors_seen.append)().wait(10)
    assert isinstance(errors_seen[0], ZeroDivisionError)
    assert not pending.ready and calls == ["delayed"]

