"""meshrpc.aio against the real Pyro5, both directions, over serpent, json, marshal and msgpack:
an aio Proxy calls a Pyro5 Daemon (one call at a time on its connection: Pyro5 agrees to no
pipelining), and a Pyro5 Proxy calls an aio Daemon (plain and `async def` methods)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import Pyro5.api
import Pyro5.errors
import pytest
from support import LoopThread, wait_until

import meshrpc
import meshrpc.aio
import meshrpc.errors

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
SERIALIZERS = ("serpent", "marshal", "json", "msgpack")


def exposed_for(lib: Any, with_async: bool = False) -> Any:
    """A device object exposed by `lib` (Pyro5.api or meshrpc): both libraries see the same methods."""

    class Device:
        def __init__(self) -> None:
            self._level = 3
            self.events: list[Any] = []
            self.got_event = threading.Event()

        def add(self, a: int, b: int) -> int:
            return a + b

        def readings(self, n: int) -> Any:
            yield from range(n)

        def fail(self) -> None:
            raise ValueError("device failure")

        @lib.oneway
        def event(self, value: Any) -> None:
            self.events.append(value)
            self.got_event.set()

        def slow(self, seconds: float) -> float:
            threading.Event().wait(seconds)  # blocks this call only
            return seconds

        def call_back(self, listener: Any, value: Any) -> str:
            listener.notify(value)
            return "done"

        @property
        def level(self) -> int:
            return self._level

        @level.setter
        def level(self, value: int) -> None:
            self._level = value

        if with_async:
            async def nap(self, seconds: float, value: Any) -> Any:
                await asyncio.sleep(seconds)
                return value

    return lib.expose(Device)()


@pytest.fixture(params=SERIALIZERS)
def serializer(request: Any) -> str:
    return request.param


@pytest.fixture
def pyro5_device() -> Iterator[tuple[Any, str]]:
    device = exposed_for(Pyro5.api)
    daemon = Pyro5.api.Daemon(host=HOST)
    uri = daemon.register(device, "device")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    yield device, str(uri)
    daemon.shutdown()
    thread.join(10)


class AioServer:
    """A meshrpc.aio.Daemon serving from a loop in a thread of its own."""

    def __init__(self, objects: dict[str, Any]) -> None:
        self.uris: dict[str, str] = {}
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._daemon: meshrpc.aio.Daemon | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(objects),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the aio daemon did not start"

    async def _serve(self, objects: dict[str, Any]) -> None:
        daemon = self._daemon = meshrpc.aio.Daemon(host=HOST)
        self.uris = {oid: str(daemon.register(obj, oid)) for oid, obj in objects.items()}
        await daemon.start()
        self._ready.set()
        await daemon.serve_forever()

    def stop(self) -> None:
        assert self._daemon is not None
        self._daemon.shutdown()
        self._thread.join(15)
        assert not self._thread.is_alive()


def test_aio_proxy_to_pyro5_daemon(pyro5_device: tuple[Any, str], serializer: str) -> None:
    device, uri = pyro5_device

    async def main() -> None:
        callbacks = meshrpc.aio.Daemon(host=HOST)

        @meshrpc.expose
        class Listener:
            def __init__(self) -> None:
                self.got: list[Any] = []

            @meshrpc.callback
            def notify(self, value: Any) -> None:
                self.got.append(value)
        listener = Listener()
        callbacks.register(listener)
        proxy = meshrpc.aio.Proxy(uri)
        proxy._pyroSerializer = serializer
        async with callbacks, proxy:
            assert await proxy.add(1, 2) == 3
            assert not proxy._conn.session.pipelined  # Pyro5 agrees to nothing: one call at a time
            results = await asyncio.gather(*(proxy.add(i, i) for i in range(40)))
            assert results == [2 * i for i in range(40)]                 # serialized, 0 errors
            assert await proxy.level == 3
            await proxy.level.set(6)
            assert device.level == 6
            await proxy.event("ping")
            assert await asyncio.to_thread(device.got_event.wait, 10) and device.events == ["ping"]
            batch = meshrpc.aio.BatchProxy(proxy)
            batch.add(1, 1)
            batch.add(2, 3)
            assert list(await batch()) == [2, 5]
            assert [x async for x in await proxy.readings(3)] == [0, 1, 2]
            with pytest.raises(ValueError, match="device failure") as info:
                await proxy.fail()
            assert meshrpc.errors.get_remote_traceback(info.value)
            assert await proxy.call_back(listener, 11) == "done"          # Pyro5 calls the aio client back
            assert listener.got == [11]
            # cancellation mid-call: the connection to Pyro5 cannot skip the late reply, so it is
            # replaced; the next call just works
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(proxy.slow(0.5), 0.05)
            assert await proxy.add(20, 22) == 42
    asyncio.run(asyncio.wait_for(main(), 40))


def test_pyro5_proxy_to_aio_daemon(serializer: str) -> None:
    device = exposed_for(meshrpc)
    async_device = exposed_for(meshrpc, with_async=True)
    server = AioServer({"device": device, "async": async_device})
    try:
        with Pyro5.api.Proxy(server.uris["device"]) as proxy:
            proxy._pyroSerializer = serializer
            proxy._pyroTimeout = 10
            assert proxy.add(1, 2) == 3
            if serializer != "marshal":  # Pyro5's marshal dumpsCall fails on attribute access (kwargs None)
                assert proxy.level == 3
                proxy.level = 8
                assert device.level == 8
            proxy.event("pong")
            assert device.got_event.wait(10) and device.events == ["pong"]
            if serializer != "marshal":  # Pyro5 cannot send a batch over marshal (as test_pyro5_interop.py shows)
                batch = Pyro5.api.BatchProxy(proxy)
                batch.add(1, 1)
                batch.add(2, 3)
                assert list(batch()) == [2, 5]
            assert list(proxy.readings(4)) == [0, 1, 2, 3]
            with pytest.raises(ValueError, match="device failure") as info:
                proxy.fail()
            assert Pyro5.errors.get_pyro_traceback(type(info.value), info.value, info.value.__traceback__)
        with Pyro5.api.Proxy(server.uris["async"]) as proxy:
            proxy._pyroSerializer = serializer
            proxy._pyroTimeout = 10
            assert proxy.nap(0.01, "awaited") == "awaited"
    finally:
        server.stop()



@meshrpc.expose
class Holding:
    """hold() runs until the test opens the gate: a call in progress while the daemon shuts down."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    async def hold(self) -> str:
        self.entered.set()
        await asyncio.get_running_loop().run_in_executor(None, self.opened.wait, 10)
        return "held"

    def ping(self) -> str:
        return "pong"


@pytest.mark.timeout(30)
def test_a_pyro5_proxy_calling_an_aio_daemon_that_shuts_down_finds_its_connection_closed() -> None:
    # as a Pyro5 daemon that stops: Pyro5 programs reconnect on ConnectionClosedError, and took the
    # "not run" DaemonError meshrpc proxies understand as the call's own failure (w11-examples found it
    # with Pyro5's distributed-computing example; test_examples_w11.py has the threaded daemon's case)
    holding = Holding()
    loop = LoopThread()
    daemon = loop.call(lambda: meshrpc.aio.Daemon(host="127.0.0.1"))
    uri = str(loop.call(lambda: daemon.register(holding, "holding")))
    loop.run(daemon.start())
    held: list[Any] = []
    try:
        with Pyro5.api.Proxy(uri) as caller, meshrpc.Proxy(uri) as meshrpc_caller:
            caller._pyroTimeout = meshrpc_caller._pyroTimeout = 10
            assert caller.ping() == "pong" and meshrpc_caller.ping() == "pong"  # connected before the shutdown

            def hold() -> None:
                with Pyro5.api.Proxy(uri) as holder:
                    held.append(holder.hold())
            holder = threading.Thread(target=hold, daemon=True)
            holder.start()
            assert holding.entered.wait(10), "the call in progress did not start"
            closing = asyncio.run_coroutine_threadsafe(daemon.aclose(), loop.loop)
            wait_until(lambda: loop.call(lambda: daemon._stopping), timeout=10.0, message="the shutdown began")
            with pytest.raises(Pyro5.errors.ConnectionClosedError):
                caller.ping()  # not run, and Pyro5's own way of saying the daemon went
            with pytest.raises(meshrpc.errors.CommunicationError, match="not run|did not run"):
                meshrpc_caller.ping()  # told "not run" (a PYRO: URI has nowhere else to go)
            holding.opened.set()
            holder.join(10)
            closing.result(15)
    finally:
        holding.opened.set()
        loop.close()
    assert held == ["held"], "the call in progress must still finish"
