"""meshrpc.aio over real sockets: aio Proxy <-> aio Daemon, and each against the threaded side.

Each test runs its own event loop (asyncio.run), bounded by a generous timeout."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
import warnings
from typing import Any

import pytest

import meshrpc
import meshrpc.aio
from meshrpc import errors
from meshrpc.config import Settings

pytestmark = pytest.mark.timeout(60)


def run(coro: Any, timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


@meshrpc.expose
class Thing:
    def __init__(self) -> None:
        self._level = 5
        self.fired: list[Any] = []
        self.fired_event = threading.Event()
        self.runs = 0
        self.waiting = asyncio.Event()
        self.waiting_task: Any = None

    def add(self, a: int, b: int) -> int:
        return a + b

    async def nap(self, seconds: float, value: Any = None) -> Any:
        await asyncio.sleep(seconds)
        return value if value is not None else seconds

    def block(self, seconds: float, value: Any = None) -> Any:
        time.sleep(seconds)
        return value if value is not None else seconds

    def count(self, n: int) -> Any:
        yield from range(n)

    async def ticks(self, n: int) -> Any:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    def fail(self) -> None:
        raise ValueError("deliberate failure")

    async def afail(self) -> None:
        raise KeyError("async failure")

    async def seq_around_wait(self, wait: bool) -> tuple[Any, Any, bool]:
        """The call's seq before and after an await that suspends (or not), and whether a task was current."""
        before = meshrpc.current_context.seq
        if wait:
            await asyncio.sleep(0.01)
        return before, meshrpc.current_context.seq, asyncio.current_task() is not None

    async def bounded(self, wait: bool) -> str:
        try:
            async with asyncio.timeout(0.05):
                if wait:
                    await asyncio.Event().wait()
                return "in time"
        except TimeoutError:
            return "timed out"

    async def wait_until_cancelled(self) -> None:
        self.waiting_task = asyncio.current_task()
        self.waiting.set()
        await asyncio.Event().wait()

    async def cancel_the_waiting_call(self) -> None:
        await self.waiting.wait()
        self.waiting_task.cancel()

    async def annotation(self, key: str) -> Any:
        return meshrpc.current_context.annotations.get(key)

    async def echo_context(self, key: str) -> tuple[str, Any]:
        """The caller's correlation id and annotation `key`; the annotation comes back as ECHO too."""
        value = meshrpc.current_context.annotations.get(key)
        meshrpc.current_context.response_annotations = {"ECHO": value or b"-"}
        return str(meshrpc.current_context.correlation_id), value

    @meshrpc.oneway
    def fire(self, value: Any) -> None:
        self.fired.append(value)
        self.fired_event.set()

    def callback_to(self, listener: Any, value: Any) -> str:
        listener.notify(value)  # a proxy to the caller's own callback object
        return "called back"

    def bump(self) -> int:
        self.runs += 1
        return self.runs

    def where(self) -> tuple[str, str, Any]:
        return threading.current_thread().name, str(meshrpc.current_context.client_sock_addr), \
            meshrpc.current_context.seq

    @meshrpc.aio.nonblocking
    def where_on_loop(self) -> tuple[str, str, Any]:
        return threading.current_thread().name, str(meshrpc.current_context.client_sock_addr), \
            meshrpc.current_context.seq

    @meshrpc.aio.nonblocking
    def fail_on_loop(self) -> None:
        raise ValueError("deliberate failure on the loop")

    @property
    def level(self) -> int:
        return self._level

    @level.setter
    def level(self, value: int) -> None:
        self._level = value


class Listener:
    def __init__(self) -> None:
        self.got: list[Any] = []

    @meshrpc.expose
    @meshrpc.callback
    def notify(self, value: Any) -> None:
        self.got.append(value)


def serve_aio(obj: Any) -> tuple[meshrpc.aio.Daemon, meshrpc.URI]:
    daemon = meshrpc.aio.Daemon(host="127.0.0.1")
    return daemon, daemon.register(obj, "thing")


def test_call_kinds_aio_to_aio() -> None:
    thing = Thing()

    async def main() -> None:
        daemon, uri = serve_aio(thing)
        async with daemon:
            async with meshrpc.aio.Proxy(uri) as proxy:
                assert await proxy.add(2, 3) == 5                       # plain
                assert await proxy.nap(0.01, "async") == "async"        # an async def method
                await proxy.fire("hi")                                   # oneway: returns at once
                assert await asyncio.to_thread(thing.fired_event.wait, 5) and thing.fired == ["hi"]
                batch = meshrpc.aio.BatchProxy(proxy)
                batch.add(1, 1)
                batch.add(2, 2)
                assert list(await batch()) == [2, 4]                    # batch
                assert [item async for item in await proxy.count(4)] == [0, 1, 2, 3]  # stream
                assert [item async for item in await proxy.ticks(3)] == [0, 1, 2]     # an async generator
                with pytest.raises(ValueError, match="deliberate failure") as info:
                    await proxy.fail()                                   # remote exception
                assert "in fail" in "".join(errors.get_remote_traceback(info.value) or "")
                with pytest.raises(KeyError):
                    await proxy.afail()
                assert await proxy.level == 5                            # attribute get
                await proxy.level.set(7)                                 # attribute set
                assert await proxy._pyroGetAttr("level") == 7
                await proxy._pyroSetAttr("level", 8)
                assert thing.level == 8
                with pytest.raises(AttributeError, match="_pyroSetAttr"):
                    proxy.level = 3
                with pytest.raises(AttributeError):
                    proxy.nonexistent
                assert await proxy.add(1, 2) == 3                        # still in step after all that
    run(main())


def test_callback_hosted_by_an_aio_client() -> None:
    """An asyncio program hosts a callback object in its own aio Daemon; the server calls it back."""
    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        listener = Listener()
        callbacks = meshrpc.aio.Daemon(host="127.0.0.1")
        callbacks.register(listener)
        async with daemon, callbacks:
            async with meshrpc.aio.Proxy(uri) as proxy:
                assert await proxy.callback_to(listener, 42) == "called back"
        assert listener.got == [42]
    run(main())


def test_pipelined_calls_run_side_by_side_and_match_their_replies() -> None:
    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            started = time.monotonic()
            # replies come back in the reverse order of the requests: each must reach its own caller
            results = await asyncio.gather(*(proxy.nap(0.3 - i * 0.01, i) for i in range(20)))
            assert results == list(range(20))
            assert time.monotonic() - started < 3.0  # 20 x 0.3 s one after the other would take 6 s
            assert proxy._conn is not None and proxy._conn.session.pipelined
            # plain methods run in the executor, also side by side
            started = time.monotonic()
            assert await asyncio.gather(*(proxy.block(0.3, i) for i in range(8))) == list(range(8))
            assert time.monotonic() - started < 2.0
    run(main())


def test_a_plain_method_marked_nonblocking_runs_on_the_loop_and_others_in_the_executor() -> None:
    """meshrpc.aio.nonblocking: no thread hand-off (the method runs on the daemon's loop thread), with
    its call context and its exceptions as for any method; an unmarked plain method never runs there."""
    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        loop_thread = threading.current_thread().name
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            thread, addr, seq = await proxy.where_on_loop()
            assert thread == loop_thread
            assert addr != "None" and seq > 0
            thread, _, _ = await proxy.where()
            assert thread != loop_thread and thread.startswith("meshrpc-aio-worker")
            with pytest.raises(ValueError, match="deliberate failure on the loop") as info:
                await proxy.fail_on_loop()
            assert "in fail_on_loop" in "".join(errors.get_remote_traceback(info.value) or "")
            batch = meshrpc.aio.BatchProxy(proxy)  # a batch runs in the executor as a whole
            batch.where_on_loop()
            batch.add(1, 2)
            results = list(await batch())
            assert results[0][0] != loop_thread and results[1] == 3
            # side by side with pipelined calls on one connection, each gets its own reply
            assert await asyncio.gather(*(proxy.add(i, 0) for i in range(50))) == list(range(50))
    run(main())


def test_async_def_calls_start_eagerly_and_keep_their_context_task_and_cancellation() -> None:
    """The daemon takes an `async def` call's first step at once (aio/eager.py): its context, current
    task, asyncio.timeout and cancellation must be as in a Task, whether the call waits or not."""
    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            for wait in (False, True, False, True):
                before, after, in_task = await proxy.seq_around_wait(wait)
                assert before == after and in_task
            # side by side: each call keeps its own seq across its wait
            results = await asyncio.gather(*(proxy.seq_around_wait(i % 2 == 0) for i in range(20)))
            assert all(before == after for before, after, _ in results)
            assert len({before for before, _, _ in results}) == 20
            assert await proxy.bounded(False) == "in time"
            assert await proxy.bounded(True) == "timed out"
            # a waiting call cancelled through the task it saw is answered, and the connection goes on
            waiting = asyncio.ensure_future(proxy.wait_until_cancelled())
            await proxy.cancel_the_waiting_call()
            with pytest.raises(errors.DaemonError, match="cancelled by the daemon"):
                await waiting
            assert await proxy.add(1, 2) == 3
            with pytest.raises(KeyError, match="async failure"):
                await proxy.afail()
    run(main())


def test_slow_async_method_does_not_delay_other_clients() -> None:
    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        async with daemon, meshrpc.aio.Proxy(uri) as slow_client, meshrpc.aio.Proxy(uri) as quick_client:
            slow = asyncio.ensure_future(slow_client.nap(5.0))
            started = time.monotonic()
            for _ in range(20):
                assert await quick_client.add(1, 1) == 2
            assert time.monotonic() - started < 2.5  # generous: the slow call takes 5 s
            assert not slow.done()
            slow.cancel()
    run(main())


def test_timeout_and_cancellation_leave_the_connection_usable() -> None:
    thing = Thing()

    async def main() -> None:
        daemon, uri = serve_aio(thing)
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            conn = proxy._conn
            # asyncio's own timeout cancels the call mid-way; its late reply must go nowhere
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(proxy.nap(0.4, "late"), 0.05)
            assert await proxy.add(20, 22) == 42
            # the proxy's timeout, while other replies come on the connection: it stays
            proxy._pyroTimeout = 0.3
            slow = asyncio.ensure_future(proxy.nap(1.0, "late again"))
            assert [await proxy.nap(0.02, i) for i in range(30)] == list(range(30))
            with pytest.raises(errors.TimeoutError):
                await slow
            assert proxy._conn is conn, "the connection was replaced although replies came on it"
            proxy._pyroTimeout = None
            assert await proxy.nap(0.8, "fresh") == "fresh"  # the two late replies came meanwhile: discarded
            assert proxy._conn is conn, "the connection was replaced"
            # a timeout while nothing at all came on the connection: the path may be dead (after a
            # partition TCP resends on its backoff), so the next call goes on a new connection
            proxy._pyroTimeout = 0.05
            with pytest.raises(errors.TimeoutError, match=r"to nap within 0.05 s: .*may have run"):
                await proxy.nap(0.4, "silent")
            proxy._pyroTimeout = None
            assert await proxy.add(1, 2) == 3
            assert proxy._conn is not conn and proxy._conn is not None
            conn = proxy._conn
            # ... but a call in flight on it within its own timeout is left to finish there: the daemon may
            # only be slow. New calls go on a new connection; the old one closes after its last call
            proxy._pyroTimeout = 0.3
            silent = asyncio.ensure_future(proxy.nap(1.0, "silent"))
            await asyncio.sleep(0)  # (one turn of the loop: that call starts, with its 0.3 s timeout)
            proxy._pyroTimeout = 5.0
            slow = asyncio.ensure_future(proxy.nap(0.5, "slow but in time"))
            with pytest.raises(errors.TimeoutError):
                await silent
            assert proxy._conn is None and not conn.closed  # retired, not failed
            assert await proxy.add(2, 2) == 4 and proxy._conn is not conn  # a new connection
            assert await slow == "slow but in time"
            assert conn.closed  # its last call is done
            proxy._pyroTimeout = None
            conn = proxy._conn
            # cancelling one pipelined call leaves the others alone
            calls = [asyncio.ensure_future(proxy.nap(0.2, i)) for i in range(5)]
            await asyncio.sleep(0.05)
            calls[2].cancel()
            done = await asyncio.gather(*calls, return_exceptions=True)
            assert isinstance(done[2], asyncio.CancelledError)
            assert [done[i] for i in (0, 1, 3, 4)] == [0, 1, 3, 4]
    run(main())


def test_aio_proxy_to_threaded_daemon_and_threaded_proxy_to_aio_daemon(start_daemon: Any) -> None:
    threaded = start_daemon()
    uri_threaded = threaded.register(Thing(), "thing")

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri_threaded) as proxy:
            assert await asyncio.gather(*(proxy.add(i, 1) for i in range(50))) == [i + 1 for i in range(50)]
            assert [i async for i in await proxy.count(3)] == [0, 1, 2]
        daemon, uri = serve_aio(Thing())
        async with daemon:
            def threaded_client() -> Any:
                with meshrpc.Proxy(uri) as proxy:
                    return proxy.add(1, 2), list(proxy.count(3)), proxy.nap(0.01, "x"), proxy.level
            assert await asyncio.to_thread(threaded_client) == (3, [0, 1, 2], "x", 5)
    run(main())


def test_instance_modes_and_metadata() -> None:
    @meshrpc.expose
    @meshrpc.behavior(instance_mode="session")
    class PerConnection:
        def __init__(self) -> None:
            self.calls = 0

        async def tick(self) -> int:
            self.calls += 1
            return self.calls

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(PerConnection, "counter")
        async with daemon:
            async with meshrpc.aio.Proxy(uri) as one, meshrpc.aio.Proxy(uri) as two:
                assert [await one.tick(), await one.tick(), await two.tick()] == [1, 2, 1]
                assert "tick" in one._pyroMethods
    run(main())


def test_a_known_method_is_found_without_getattr_and_new_metadata_forgets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []
    getattr_ = meshrpc.aio.Proxy.__getattr__

    def counted(self: Any, name: str) -> Any:
        looked_up.append(name)
        return getattr_(self, name)
    monkeypatch.setattr(meshrpc.aio.Proxy, "__getattr__", counted)

    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            assert [await proxy.add(i, 1) for i in range(5)] == [1, 2, 3, 4, 5]
            assert looked_up.count("add") == 1  # once; then plain attribute lookup finds the cached method
            proxy._pyroProcessMetadata({"methods": ["nap"]})  # the remote object changed: add is gone
            with pytest.raises(AttributeError, match="no exposed attribute or method 'add'"):
                proxy.add
            assert looked_up.count("add") == 2
    run(main())


def test_pyroname_resolution_on_the_mesh_never_blocks_the_loop(realm: str) -> None:
    settings = Settings().copy(REALM=realm, INTERFACES="127.0.0.1", HOST="127.0.0.1")

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1", settings=settings)
        async with daemon:
            beats: list[float] = []

            async def ticker() -> None:
                while True:
                    beats.append(time.monotonic())
                    await asyncio.sleep(0.005)
            ticking = asyncio.ensure_future(ticker())
            by_name = meshrpc.aio.Proxy("PYRONAME:aio.thing", settings=settings)
            # the proxy waits on the mesh for a name nobody announced yet; the loop goes on meanwhile
            binding = asyncio.ensure_future(by_name._pyroBind())
            await asyncio.sleep(0.3)
            assert not binding.done()
            daemon.register(Thing(), name="aio.thing", metadata={"kind:thing"})
            await binding
            assert await by_name.add(1, 2) == 3
            assert by_name._pyroUri.protocol == "PYRO"
            await by_name._pyroRelease()
            async with meshrpc.aio.Proxy("PYROMETA:kind:thing", settings=settings) as by_tag:
                assert await by_tag.add(2, 2) == 4
            ticking.cancel()
            gaps = [later - earlier for earlier, later in zip(beats, beats[1:])]
            # a blocked loop would stop for seconds (the count only says the ticker ran throughout: a loaded
            # machine gave 12 beats in the 0.3 s wait and the rest, not 20)
            assert len(beats) > 5 and max(gaps) < 1.0, (len(beats), max(gaps))
            with pytest.raises(errors.NamingError):
                await meshrpc.aio.resolve("PYRONAME:aio.nobody", settings.copy(LOOKUP_TIMEOUT=0.2, RESOLVE="mesh"))
    try:
        run(main())
    finally:
        from meshrpc.mesh import reset_for_tests
        reset_for_tests()


def test_graceful_shutdown_answers_late_calls_not_run() -> None:
    thing = Thing()

    async def main() -> None:
        daemon, uri = serve_aio(thing)
        await daemon.start()
        proxy = meshrpc.aio.Proxy(uri)
        proxy._pyroMaxRetries = 0
        slow = asyncio.ensure_future(proxy.nap(0.5, "finished"))
        await asyncio.sleep(0.1)
        closing = asyncio.ensure_future(daemon.aclose())
        assert await slow == "finished"  # a call in progress finishes and replies
        await closing
        with pytest.raises(errors.CommunicationError):
            await proxy.add(1, 1)  # a PYRO URI has nowhere else to go
        await proxy._pyroRelease()
    run(main())


def test_bad_input_closes_one_connection_and_the_daemon_serves_on() -> None:
    settings = Settings().copy(HANDSHAKE_TIMEOUT=0.5, MAX_MESSAGE_SIZE=1 << 16)

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1", settings=settings)
        uri = daemon.register(Thing(), "thing")
        async with daemon:
            async def closed_after(data: bytes) -> bool:
                reader, writer = await asyncio.open_connection(uri.host, uri.port)
                writer.write(data)
                try:
                    return await asyncio.wait_for(reader.read(), 10) is not None  # EOF: the daemon closed it
                finally:
                    writer.close()
            assert await closed_after(b"GET / HTTP/1.0\r\n\r\n" + bytes(40))            # not protocol 502
            assert await closed_after(b"PYRO" + bytes(36))                             # a broken header
            header = bytearray(b"PYRO\x01\xf6\x00\x01\x00\x00\x00\x00" + bytes(28))
            header[12:16] = (1 << 30).to_bytes(4, "big")                             # far over MAX_MESSAGE_SIZE
            assert await closed_after(bytes(header))
            assert await closed_after(b"")                                            # silent: HANDSHAKE_TIMEOUT
            async with meshrpc.aio.Proxy(uri) as proxy:
                assert await proxy.add(1, 2) == 3
    run(main())


def test_sync_and_async_share_the_registry_and_the_one_zeroconf(realm: str, start_daemon: Any) -> None:
    settings = Settings().copy(REALM=realm, INTERFACES="127.0.0.1", HOST="127.0.0.1")
    from meshrpc.mesh import discovery, get_registry, reset_for_tests
    threaded = start_daemon(settings=settings)
    threaded.register(Thing(), name="shared.thing")

    async def main() -> None:
        async with meshrpc.aio.Proxy("PYRONAME:shared.thing", settings=settings) as proxy:
            assert await proxy.add(1, 1) == 2
        zeroconf = discovery.get_discovery()._zc
        assert zeroconf is not None and zeroconf.loop is not asyncio.get_running_loop()  # a thread of its own
        registry = get_registry(settings)

        def threaded_client() -> int:
            with meshrpc.Proxy("PYRONAME:shared.thing", settings=settings) as sync_proxy:
                return sync_proxy.add(2, 2)
        assert await asyncio.to_thread(threaded_client) == 4
        assert get_registry(settings) is registry and discovery.get_discovery()._zc is zeroconf
    try:
        run(main())
    finally:
        reset_for_tests()


def test_the_blocking_api_inside_a_running_loop_is_refused_naming_meshrpc_aio(start_daemon: Any) -> None:
    uri = start_daemon().register(Thing(), "thing")

    async def main() -> None:
        proxy = meshrpc.Proxy(uri)
        with pytest.raises(RuntimeError, match=r"meshrpc\.aio"):
            proxy.add(1, 2)          # would freeze the loop (or deadlock, were the daemon on it)
        with pytest.raises(RuntimeError, match=r"meshrpc\.aio"):
            proxy._pyroBind()
        daemon = meshrpc.Daemon(host="127.0.0.1")
        try:
            with pytest.raises(RuntimeError, match=r"meshrpc\.aio"):
                daemon.requestLoop()
        finally:
            daemon.close()
        assert await asyncio.to_thread(lambda: proxy.add(1, 2)) == 3  # the way out the message names
        proxy._pyroRelease()
    run(main())


def test_threaded_daemon_refuses_async_def_methods_clearly(start_daemon: Any) -> None:
    uri = start_daemon().register(Thing(), "thing")
    with meshrpc.Proxy(uri) as proxy, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a coroutine never awaited: closed, not left to warn
        with pytest.raises(errors.DaemonError, match=r"async def.*meshrpc\.aio\.Daemon"):
            proxy.nap(0.01)
        batch = meshrpc.BatchProxy(proxy)  # in a batch too: the batch stops at it, as at any failure
        batch.add(1, 2)
        batch.nap(0.01)
        batch.add(3, 4)
        results = batch()
        assert next(results) == 3
        with pytest.raises(errors.DaemonError, match=r"async def.*meshrpc\.aio\.Daemon"):
            next(results)
        assert proxy.add(1, 1) == 2
        gc.collect()  # a coroutine left unclosed would warn when collected


class Thingy:
    """Pyro5's attributes example: a remote dunder method, and private names it does not expose."""

    def __init__(self) -> None:
        self._value = 1
        self.__value = 2

    def __dunder__(self) -> str:
        return "yep"

    def ping(self) -> str:
        return "pong"


def test_dunder_methods_are_remote_and_private_names_get_pyro5s_text_as_on_the_threaded_proxy() -> None:
    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(meshrpc.expose(Thingy), "thingy")
        async with daemon:
            unbound = meshrpc.aio.Proxy(uri)
            assert not hasattr(unbound, "__dunder__")  # probed before the names are known: no guess
            assert not hasattr(unbound, "__getnewargs_ex__")
            async with meshrpc.aio.Proxy(uri) as proxy:
                assert await proxy.__dunder__() == "yep"
                for private in ("__value", "_value"):
                    with pytest.raises(AttributeError) as refused:
                        getattr(proxy, private)
                    assert str(refused.value) == f"remote object '{uri}' has no exposed attribute or method '{private}'"
                assert not hasattr(proxy, "__getnewargs_ex__")  # pickle's question, answered locally
                assert await proxy.ping() == "pong"
    run(main())


class GatekeeperDaemon(meshrpc.aio.Daemon):
    """Pyro5's handshake example: a secret word; clientDisconnect asks the socket who left."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.left: list[Any] = []
        self.gone = asyncio.Event()

    def validateHandshake(self, conn: Any, data: Any) -> Any:
        if data != "pancakes":
            raise ValueError("wrong secret code, connection refused")
        return "welcome"

    def clientDisconnect(self, conn: Any) -> None:
        self.left.append(conn.sock.getpeername())
        self.gone.set()


def test_client_disconnect_runs_once_for_accepted_clients_only_while_the_socket_is_open() -> None:
    """As the threaded daemon: not for a refused handshake; once per accepted client, before its socket
    closes, both when the client leaves and when the daemon shuts down with it still connected."""
    async def main() -> None:
        daemon = GatekeeperDaemon(host="127.0.0.1")
        uri = daemon.register(meshrpc.expose(Thingy), "thingy")
        async with daemon:
            refused = meshrpc.aio.Proxy(uri)
            refused._pyroHandshake = "waffles"
            with pytest.raises(errors.CommunicationError, match="rejected: wrong secret code, connection refused"):
                await refused._pyroBind()
            proxy = meshrpc.aio.Proxy(uri)
            proxy._pyroHandshake = "pancakes"
            assert await proxy.ping() == "pong"
            address = proxy._conn.transport.get_extra_info("sockname")
            await proxy._pyroRelease()
            await asyncio.wait_for(daemon.gone.wait(), 10)
            assert daemon.left == [address]
            daemon.gone.clear()
            staying = meshrpc.aio.Proxy(uri)
            staying._pyroHandshake = "pancakes"
            assert await staying.ping() == "pong"
            address = staying._conn.transport.get_extra_info("sockname")
        assert daemon.left[1:] == [address]  # the daemon closed it at shutdown: once, socket still open
        await staying._pyroRelease()
    run(main())


def test_context_annotations_travel_with_the_calls_as_on_the_threaded_proxy() -> None:
    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            meshrpc.current_context.annotations = {"XTRA": b"one"}
            assert await proxy.annotation("XTRA") == b"one"
            meshrpc.current_context.annotations = {}
            assert await proxy.annotation("XTRA") is None
    run(main())


def test_a_task_that_sets_the_context_changes_neither_its_siblings_nor_its_creator() -> None:
    # tasks made after their creator touched current_context inherit the same state object: a write
    # in one task must not show in another (copy on write), nor its reply's annotations
    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            creator_id = uuid.uuid4()
            meshrpc.current_context.correlation_id = creator_id
            meshrpc.current_context.annotations = {"XTRA": b"creator"}
            both_set = asyncio.Barrier(2)

            async def one(name: bytes) -> tuple[Any, ...]:
                own_id = uuid.uuid4()
                meshrpc.current_context.correlation_id = own_id
                meshrpc.current_context.annotations = {"XTRA": name}
                await both_set.wait()  # the sibling has set its own by now
                seen = await proxy.echo_context("XTRA")
                await both_set.wait()  # the sibling's reply has come by now
                return own_id, seen, meshrpc.current_context.response_annotations.get("ECHO")

            (id_a, seen_a, echo_a), (id_b, seen_b, echo_b) = await asyncio.gather(one(b"a"), one(b"b"))
            assert seen_a == (str(id_a), b"a") and echo_a == b"a"
            assert seen_b == (str(id_b), b"b") and echo_b == b"b"
            assert meshrpc.current_context.correlation_id == creator_id
            assert meshrpc.current_context.annotations == {"XTRA": b"creator"}
            assert meshrpc.current_context.response_annotations == {}
            assert await proxy.echo_context("XTRA") == (str(creator_id), b"creator")
            assert meshrpc.current_context.response_annotations == {"ECHO": b"creator"}
    run(main())


_leak: Any = __import__("contextvars").ContextVar("leak", default="unset")


def test_an_async_def_call_on_a_registered_object_takes_the_lean_lane_and_instance_modes_do_not(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The aio daemon calls a registered object's `async def` method itself (no Dispatcher.prepare, no
    Task or coroutine of its own when the call never waits); classes (instance modes) go through the
    Dispatcher's rules. Either way: the call's own context, its errors as replies, a usable connection."""
    @meshrpc.expose
    class Leaky:
        async def set_and_read(self, value: str) -> tuple[str, str]:
            before = _leak.get()
            _leak.set(value)  # must not be seen by the next call
            meshrpc.current_context.response_annotations = {"SEEN": value.encode()}
            return before, _leak.get()

        async def two(self, a: int, b: int) -> int:
            return a + b

    @meshrpc.expose
    @meshrpc.behavior(instance_mode="percall")
    class Fresh:
        def __init__(self) -> None:
            self.calls = 0

        async def tick(self) -> int:
            self.calls += 1
            return self.calls

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(Leaky(), "leaky")
        fresh_uri = daemon.register(Fresh, "fresh")
        prepared: list[Any] = []
        real_prepare = daemon._dispatch.prepare
        monkeypatch.setattr(daemon._dispatch, "prepare",
                            lambda conn, flags, call: prepared.append(call[1]) or real_prepare(conn, flags, call))
        served: list[Any] = []
        real_rest = daemon._serve_rest
        monkeypatch.setattr(daemon, "_serve_rest", lambda *args: served.append(args[-1]) or real_rest(*args))
        async with daemon, meshrpc.aio.Proxy(uri) as proxy, meshrpc.aio.Proxy(fresh_uri) as fresh:
            tasks_before = len(asyncio.all_tasks())
            for value in ("a", "b"):
                assert tuple(await proxy.set_and_read(value)) == ("unset", value)
                assert meshrpc.current_context.response_annotations == {"SEEN": value.encode()}
            assert len(asyncio.all_tasks()) == tasks_before
            with pytest.raises(TypeError):
                await proxy.two(1)  # called wrongly: the error is the reply
            assert await proxy.two(1, 2) == 3
            assert prepared == [] and served == [], "a registered object's call left the lean lane"
            assert [await fresh.tick(), await fresh.tick()] == [1, 1]  # a new instance per call
            assert prepared == ["tick", "tick"], "an instance mode's call skipped the Dispatcher"
    run(main())


def test_every_call_with_nothing_in_flight_asks_whether_the_daemon_closed_the_connection() -> None:
    """Each lone call asks first: the loop's selector, without waiting (with nothing in flight the
    socket is readable only when the daemon closed it), and the kernel too whenever the selector shows
    anything ready; oneway calls ask the kernel (as the threaded proxy). Pipelined calls (others in
    flight: their replies will tell) do not ask."""
    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            conn = proxy._conn
            real_kernel, kernel = conn._peer_closed, []
            conn._peer_closed = lambda: kernel.append(1) or real_kernel()
            real_poll, polled = conn.spin.poll, []

            def poll(timeout: float, most: int) -> list:
                ready = real_poll(timeout, most)
                if timeout == 0:
                    polled.append(bool(ready))
                return ready
            conn.spin.poll = poll
            for i in range(10):
                assert await proxy.add(i, 1) == i + 1
            assert len(polled) == 10 and len(kernel) == polled.count(True), (polled, kernel)
            asked = len(kernel)
            for i in range(5):
                await proxy.fire(i)
            assert len(kernel) == asked + 5
            first = asyncio.ensure_future(proxy.nap(0.2, "first"))
            await asyncio.sleep(0.05)
            assert await asyncio.gather(*(proxy.add(i, 0) for i in range(5))) == list(range(5))  # beside it
            assert await first == "first"
            assert len(polled) == 11  # only the first of them was alone
            assert proxy._conn is conn
    run(main())


def test_a_connection_dropped_right_after_its_answer_is_replaced_before_the_next_call(start_daemon: Any) -> None:
    """The daemon drops the connection right after its answer; the loop is busy (blocked here) so it
    never sees the FIN; the next call, an instant later, must go on a new connection and run once
    (the threaded proxy's test_idle_check twin)."""
    import socket
    running = start_daemon()
    thing = Thing()
    uri = running.register(thing, "thing")

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri) as proxy:
            assert await proxy.bump() == 1
            first = proxy._conn
            for conn in list(running.daemon._connections):
                conn.close()  # the daemon drops it right after its answer
            sock = first.transport.get_extra_info("socket")
            deadline = time.monotonic() + 10
            while sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1) == b"\x01":  # the loop does not run
                assert time.monotonic() < deadline, "the close never reached the proxy"
            assert await proxy.bump() == 2  # checked although it answered a moment ago: replaced, not lost
            assert proxy._conn is not first and thing.runs == 2
    run(main())


def test_pipelined_calls_use_the_loops_own_futures_when_it_makes_its_own() -> None:
    """The proxy makes a pipelined call's Future with asyncio.Future directly (no create_future call),
    but only on a loop that does not override create_future (uvloop and the like make their own)."""
    class OwnFutures(asyncio.SelectorEventLoop):
        made = 0

        def create_future(self) -> asyncio.Future[Any]:
            OwnFutures.made += 1
            return super().create_future()

    async def main() -> int:
        daemon, uri = serve_aio(Thing())
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            before = OwnFutures.made  # (the daemon answers `annotation` at once: no Future of its own)
            assert await asyncio.gather(*(proxy.annotation(str(i)) for i in range(10))) == [None] * 10
            return OwnFutures.made - before

    loop = OwnFutures()
    try:
        assert loop.run_until_complete(asyncio.wait_for(main(), 30)) >= 9  # all but maybe the first (lone)
    finally:
        loop.close()


def test_a_daemon_subclass_annotations_go_with_every_reply_as_on_the_threaded_daemon() -> None:
    class Annotating(meshrpc.aio.Daemon):
        def annotations(self) -> dict[str, bytes]:
            return {"SRVR": b"aio"}

    async def main() -> None:
        daemon = Annotating(host="127.0.0.1")
        uri = daemon.register(Thing(), "thing")
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            assert await proxy.annotation("x") is None  # async def, answered at once
            assert meshrpc.current_context.response_annotations == {"SRVR": b"aio"}
            assert tuple(await proxy.echo_context("K"))[1] is None  # its own annotation too
            assert meshrpc.current_context.response_annotations == {"ECHO": b"-", "SRVR": b"aio"}
            assert await proxy.add(1, 2) == 3  # in the executor
            assert meshrpc.current_context.response_annotations == {"SRVR": b"aio"}
            with pytest.raises(KeyError):
                await proxy.afail()
            assert meshrpc.current_context.response_annotations == {"SRVR": b"aio"}
    run(main())


def test_pipelined_usual_replies_are_matched_without_a_frame_and_hooks_still_get_theirs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a pipelined connection (an aio daemon) the usual replies, lone or many in one read, go through
    ClientSession.receive_results (no Frame each); errors, annotated replies and streams take the
    general path; a hook that wants every reply's annotations and a raw wire reply get a Frame."""
    from meshrpc.wire import frame as wire
    from meshrpc.wire.session import ClientSession
    taken: list[int] = []
    receive_results = ClientSession.receive_results

    def counted(self: ClientSession, data: bytes) -> list:
        results = receive_results(self, data)
        taken.append(len(results))
        return results
    monkeypatch.setattr(ClientSession, "receive_results", counted)
    seen: list[int] = []

    class Hooked(meshrpc.aio.Proxy):
        def _pyroResponseAnnotations(self, annotations: dict, msgtype: int) -> None:
            seen.append(msgtype)

    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        async with daemon:
            await calls(uri)
            async with Hooked(uri) as hooked:
                assert await asyncio.gather(*(hooked.add(i, 0) for i in range(20))) == list(range(20))
                assert seen.count(wire.MSG_RESULT) == 20

    async def calls(uri: Any) -> None:
        async with meshrpc.aio.Proxy(uri) as proxy:
            assert proxy._conn.session.pipelined
            assert [await proxy.add(i, 1) for i in range(5)] == [1, 2, 3, 4, 5]  # lone calls
            assert await asyncio.gather(*(proxy.add(i, 0) for i in range(200))) == list(range(200))
            assert sum(taken) == 205 and proxy._conn.session.outstanding == 0
            taken.clear()
            assert tuple(await proxy.echo_context("K"))[1] is None  # annotated: the Frame
            assert meshrpc.current_context.response_annotations == {"ECHO": b"-"}
            assert await proxy.add(1, 1) == 2
            assert meshrpc.current_context.response_annotations == {}  # the usual reply clears them
            with pytest.raises(KeyError, match="async failure"):
                await proxy.afail()
            assert [item async for item in await proxy.count(3)] == [0, 1, 2]
            assert sum(taken) == 1 + 3  # add(1, 1), and the stream's three items (the rest were not usual)
            proxy._pyroRawWireResponse = True
            raw = await asyncio.gather(*(proxy.add(i, 0) for i in range(3)))
            assert all(frame.__class__ is wire.Frame and frame.type == wire.MSG_RESULT for frame in raw)
            assert [proxy._conn.session.reply_value(frame) for frame in raw] == [0, 1, 2]
    run(main())


def test_the_daemon_takes_a_reads_usual_requests_without_a_frame_and_answers_each_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests that come together in one read go through ServerSession.receive_requests/next_request
    (no Frame each); one among them that does not decode gets its error reply and the ones after it
    are served; an annotated one goes the general way and is answered too."""
    from meshrpc.wire import frame as wire
    from meshrpc.wire.serializers import BY_NAME
    from meshrpc.wire.session import NEED_DATA, TAKE_EVENT, ClientSession, ServerSession
    taken: list[int] = []  # the seqs of the requests the lane took (receive_requests goes through next_request)
    next_request = ServerSession.next_request

    def counted(self: ServerSession) -> Any:
        try:
            call = next_request(self)
        except errors.SerializeError:
            call = None
            raise
        finally:
            if call is not TAKE_EVENT:
                taken.append(self.request_seq)
        return call
    monkeypatch.setattr(ServerSession, "next_request", counted)

    async def main() -> None:
        daemon, uri = serve_aio(Thing())
        async with daemon:
            reader, writer = await asyncio.open_connection(uri.host, uri.port)
            client = ClientSession(BY_NAME["serpent"], Settings(), pipelining=True)

            async def events(count: int) -> list:
                out: list = []
                while len(out) < count:
                    event = client.next_event()
                    if event is NEED_DATA:
                        data = await reader.read(65536)
                        assert data, "the daemon closed the connection"
                        client.receive_data(data)
                    else:
                        out.append(event)
                return out
            writer.write(b"".join(client.connect_request("thing", "hello")))
            assert client.handshaken or (await events(1)) and client.pipelined
            requests, seqs = [], []
            for n in range(6):
                if n == 2:  # a request whose payload does not decode
                    client._seq += 1
                    seqs.append(client._seq)
                    client._outstanding.add(client._seq)
                    requests.append(wire.encode(wire.Frame(wire.MSG_INVOKE, 77, client._seq, b"\xff\xfe garbage")))
                    continue
                annotations = {"XTRA": b"1"} if n == 4 else None
                requests.append(b"".join(client.call_request("thing", "add", (n, 100), None, 0, annotations)))
                seqs.append(client.last_seq)
            writer.write(b"".join(requests))
            replies = {frame.seq: frame for frame in await events(6)}
            assert sorted(replies) == sorted(seqs)
            for n, seq in enumerate(seqs):
                if n == 2:
                    with pytest.raises(errors.SerializeError):
                        client.reply_value(replies[seq])
                else:
                    assert client.reply_value(replies[seq]) == n + 100
            assert taken[:4] == seqs[:4]  # the first four in one read (seqs[4] is annotated: the general way)
            writer.close()
    run(main())


def test_the_lane_answers_failures_waits_and_pipelined_calls_as_the_general_path_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After its first call, a registered object's `async def` method is run from the bare request
    (Daemon._run_bare: no Frame, one entry into the call's context). What the general path gives, the
    lane gives too: a failure raised in the first step as the remote exception with its traceback,
    a call that waits answered by its Task, concurrent calls each with its own result, and the
    call's context (its client and serializer) as the threaded daemon sets it."""
    @meshrpc.expose
    class Lane:
        async def fail(self, why: str) -> None:
            raise ValueError(why)

        async def later(self, value: int) -> tuple[int, int]:
            await asyncio.sleep(0)  # it waits: its Task answers
            return value, meshrpc.current_context.serializer_id

        async def who(self) -> bool:
            return meshrpc.current_context.client is not None and meshrpc.current_context.seq > 0

        async def odd(self) -> None:
            raise GeneratorExit("odd")  # a BaseException, but the method's own: its reply

        @meshrpc.aio.nonblocking
        def quick(self, value: int) -> tuple[int, bool]:  # on the loop, in a context of its own
            meshrpc.current_context.response_annotations = {"QUIK": str(value).encode()} if value < 0 else {}
            return value, threading.current_thread() is threading.main_thread()

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(Lane(), "lane")
        general: list[str] = []
        real_run_call = daemon._run_call
        monkeypatch.setattr(daemon, "_run_call",
                            lambda conn, frame, call: general.append(call[1]) or real_run_call(conn, frame, call))
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            for _ in range(3):
                with pytest.raises(ValueError, match="on purpose") as raised:
                    await proxy.fail("on purpose")
                assert "raise ValueError(why)" in "".join(raised.value._pyroTraceback)
            first = [await proxy.later(n) for n in range(3)]
            assert [value for value, _ in first] == [0, 1, 2]
            serializer_id = first[0][1]
            assert serializer_id and all(ser == serializer_id for _, ser in first)
            together = await asyncio.gather(*(proxy.later(n) for n in range(50)))
            assert [tuple(pair) for pair in together] == [(n, serializer_id) for n in range(50)]
            assert await proxy.who() and await proxy.who()
            for _ in range(2):  # the general path, then the lane: the reply, and the connection serves on
                with pytest.raises(GeneratorExit):
                    await proxy.odd()
            assert proxy._conn is not None and not proxy._conn.closed
            for value in (1, -2, 3):
                assert tuple(await proxy.quick(value)) == (value, True)
                assert meshrpc.current_context.response_annotations == ({"QUIK": b"-2"} if value < 0 else {})
        # the first call of each method went the general way (it learns where the method runs); the
        # rest took the lane
        assert general == ["fail", "later", "who", "odd", "quick"]
    run(main())


@pytest.mark.parametrize("nodelay", [True, False])
def test_the_daemons_tcp_connections_follow_sock_nodelay_as_the_threaded_daemons(nodelay: bool) -> None:
    """TCP_NODELAY on the aio daemon's accepted connections (SOCK_NODELAY, on by default): asyncio sets it
    only when the socket's proto says TCP, which an accepted socket of the daemon's listener does not;
    without it, a reply written while an earlier one was unacknowledged waited for the client's delayed
    ACK (a burst of 1000 pipelined calls took 57 ms instead of 23)."""
    import socket

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1", settings=Settings(SOCK_NODELAY=nodelay))
        uri = daemon.register(Thing(), "thing")
        async with daemon, meshrpc.aio.Proxy(uri) as proxy:
            assert await proxy.add(1, 2) == 3
            (conn,) = daemon._aio_connections
            sock = conn.transport.get_extra_info("socket")
            assert bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is nodelay
    run(main())
