"""The asyncio proxy's wait for a lone call's reply (meshrpc/aio/spin.py), both ways: the spin
(SPIN_WAIT) and the sleep in the loop's own selector (AIO_REPLY_WAIT). Either reads the reply without
a turn of the loop, and neither ever holds up other work of the loop.

The daemon is a meshrpc.aio.Daemon on a loop of its own thread (it never counts as a spinning
waiter). The client's SPIN_WAIT (or AIO_REPLY_WAIT) is made huge (30 s), so a wait that ignored the
loop's other work would hold the loop for the whole call: the remote method waits (at most 5 s) for
something only the client's loop can do, and returns whether it happened. Ordering, not timing,
decides each test.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest

import meshrpc
import meshrpc.aio
from meshrpc.aio import spin as aio_spin
from meshrpc.aio.spin import LoopSpin
from meshrpc.config import Settings, config
from meshrpc.transport.spin import Waiters
from tests.support import LoopThread

pytestmark = pytest.mark.timeout(60)

# SPIN_START_AFTER=0: the spin of the first calls is what these tests look at (a new connection
# skips it by default)
LONG_SPIN = config.copy(SPIN_WAIT=30.0, SPIN_START_AFTER=0)
LONG = 30.0


def reply_wait(settings: Settings, seconds: float) -> Settings:
    return settings.copy(AIO_REPLY_WAIT=seconds)


@pytest.fixture(params=["spin", "sleep in the selector"])
def waiting(request: pytest.FixtureRequest) -> Settings:
    """The client's settings: a long spin and no selector sleep, or the other way round."""
    if request.param == "spin":
        return reply_wait(LONG_SPIN, 0.0)
    return reply_wait(config.copy(SPIN_WAIT=0.0), LONG)


@meshrpc.expose
class Waiter:
    def __init__(self) -> None:
        self.happened = threading.Event()
        self.before_waiting: Callable[[], None] = lambda: None

    def echo(self, value: Any) -> Any:
        return value

    async def wait_for_the_client(self) -> bool:
        """True when the client's loop did its other work while this call was in flight."""
        self.before_waiting()
        return await asyncio.get_running_loop().run_in_executor(None, self.happened.wait, 5.0)


@pytest.fixture(autouse=True)
def alone_in_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads that other tests left waiting on sockets in this process would count as waiters (and
    rightly stop the spin); these tests are about the loop's own work, so they get a count of their own."""
    monkeypatch.setattr(aio_spin, "waiters", Waiters())
    monkeypatch.setattr(aio_spin, "others_waiting", lambda: aio_spin.waiters.count > 1)


@pytest.fixture
def served() -> Iterator[tuple[Waiter, meshrpc.URI]]:
    """A Waiter on a meshrpc.aio.Daemon whose loop runs in a thread of its own."""
    waiter = Waiter()
    loop = LoopThread()
    daemon = meshrpc.aio.Daemon(host="127.0.0.1")
    uri = daemon.register(waiter, "waiter")
    loop.run(daemon.start())
    waiter.daemon = daemon  # type: ignore[attr-defined]
    try:
        yield waiter, uri
    finally:
        loop.run(daemon.aclose())
        loop.close()


class Polls:
    """Counts the spin's polls of the loop's selector on one connection (the spin ran iff some)."""

    def __init__(self, conn: Any) -> None:
        self.count = 0
        self.polled = threading.Event()
        self._select = conn.spin._select
        conn.spin._select = self._counted

    def _counted(self, timeout: float, most: int) -> list:
        self.count += 1
        self.polled.set()
        return self._select(timeout, most)


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 40)
    return asyncio.run(bounded())


def count_reads(monkeypatch: pytest.MonkeyPatch, waits: list[Any]) -> list[bool]:
    """What each LoopSpin.wait_mine of `waits` returned (True: bytes came within the wait), from now on."""
    read: list[bool] = []
    original = LoopSpin.wait_mine

    def counted(self: LoopSpin, timeout: float | None = None, written: bool = False) -> bool:
        came = original(self, timeout, written)
        if any(self is wait for wait in waits):
            read.append(came)
        return came
    monkeypatch.setattr(LoopSpin, "wait_mine", counted)
    return read


def test_a_lone_call_reads_its_reply_in_the_wait(served: Any, waiting: Settings,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, uri = served

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri, settings=waiting) as proxy:
            conn = proxy._conn
            assert conn.spin is not None
            read = count_reads(monkeypatch, [conn.spin])
            assert [await proxy.echo(i) for i in range(20)] == list(range(20))
            assert len(read) == 20 and all(read), read  # every reply was read by the spin or the sleep
    run(main())


def test_a_lone_call_whose_reply_comes_in_the_wait_needs_no_future(served: Any, waiting: Settings) -> None:
    """The reply read in the wait completes the call in its first step: nothing to wake up later
    (and without the wait, every call awaits a Future: the count tells the two apart)."""
    _, uri = served

    async def futures_per_call(settings: Settings) -> float:
        made = []
        async with meshrpc.aio.Proxy(uri, settings=settings) as proxy:
            await proxy.echo(0)
            conn = proxy._conn
            new_future = conn._new_future  # (a call's Future: asyncio.Future for the loop, or the loop's own)

            def counted() -> asyncio.Future[Any]:
                made.append(1)
                return new_future()
            conn._new_future = counted
            assert [await proxy.echo(i) for i in range(20)] == list(range(20))
        return len(made) / 20
    assert run(futures_per_call(waiting)) == 0
    assert run(futures_per_call(reply_wait(config.copy(SPIN_WAIT=0.0), 0.0))) >= 1


def test_replies_that_came_while_a_burst_is_written_are_matched_before_the_loop_reads(served: Any) -> None:
    """Between two full batches of a burst the proxy takes in the replies that came meanwhile
    (_Connection._read_between_writes, which the cork calls): matched at once, not after the burst."""
    _, uri = served

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri, settings=config.copy(AIO_CORK_BYTES=1)) as proxy:
            conn = proxy._conn
            fd = conn.transport.get_extra_info("socket").fileno()
            first = asyncio.ensure_future(proxy.echo(1))
            second = asyncio.ensure_future(proxy.echo(2))

            async def third() -> Any:
                waiters = dict(conn.waiting)  # the first two calls' (their first steps ran before this one)
                assert len(waiters) == 2
                # the first reply is in the socket; the loop cannot read it while this step runs
                assert select.select([fd], [], [], 10)[0]
                conn._read_between_writes()
                assert waiters[min(waiters)].done()  # matched now, before the loop's own read
                return await proxy.echo(3)
            assert await asyncio.gather(first, second, third()) == [1, 2, 3]

            # and the cork calls it in a burst (every gathered call is a full batch here): all answers right
            between = []
            read = conn._read_between_writes
            conn._corked._between = lambda: (between.append(1), read())
            assert await asyncio.gather(*(proxy.echo(i) for i in range(500))) == list(range(500))
            assert len(between) >= 400
    run(main())


def test_on_a_daemon_that_does_not_pipeline_the_usual_reply_comes_as_its_payload(
        start_daemon: Any, waiting: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A threaded daemon (one call at a time): a lone call's usual reply (no annotations, no error)
    is taken as its payload (ClientSession.receive_result, no Frame); errors, hooks that want the
    reply's annotations and raw wire replies take the event."""
    from meshrpc.wire.session import TAKE_EVENT, ClientSession
    daemon = start_daemon()
    uri = daemon.register(Waiter(), "waiter")
    lean: list[bool] = []
    receive_result = ClientSession.receive_result

    def counted(self: ClientSession, data: bytes) -> Any:
        payload = receive_result(self, data)
        lean.append(payload is not TAKE_EVENT)
        return payload
    monkeypatch.setattr(ClientSession, "receive_result", counted)

    class Hooked(meshrpc.aio.Proxy):
        def _pyroResponseAnnotations(self, annotations: dict, msgtype: int) -> None:
            seen.append(msgtype)
    seen: list[int] = []

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri, settings=waiting) as proxy:
            assert not proxy._conn.session.pipelined
            assert [await proxy.echo(i) for i in range(10)] == list(range(10))
            assert lean == [True] * 10
            with pytest.raises(AttributeError):  # an error reply: the event, with its remote traceback
                await proxy._pyroInvoke("no_such_method", (), None)
            assert [await proxy.echo(i) for i in range(3)] == [0, 1, 2]
        lean.clear()
        async with Hooked(uri, settings=waiting) as hooked:
            assert [await hooked.echo(i) for i in range(3)] == [0, 1, 2]
            assert len(seen) >= 4 and not lean  # the hook saw every reply; none taken as a payload
    run(main())


@pytest.mark.parametrize("other_work", ["a timer falls due", "another socket gets data", "another thread queues a callback"])
def test_the_wait_gives_way_to_other_work_of_the_loop(served: Any, other_work: str, waiting: Settings) -> None:
    waiter, uri = served

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with meshrpc.aio.Proxy(uri, settings=waiting) as proxy:
            polls = Polls(proxy._conn)
            assert await proxy.echo(1) == 1  # the gate is open: the next call spins
            theirs = mine = None
            if other_work == "a timer falls due":
                # due well after the call starts waiting: a timer already due when it starts is work
                # ready, and then the call rightly does not wait at all (a loaded machine took 50 ms)
                loop.call_later(0.3, waiter.happened.set)
            elif other_work == "another socket gets data":
                theirs, mine = socket.socketpair()
                mine.setblocking(False)
                loop.add_reader(mine, waiter.happened.set)
                waiter.before_waiting = lambda: theirs.send(b"x")
            else:
                def once_spinning() -> None:  # queued while the client waits, not before it started
                    assert polls.polled.wait(5)
                    loop.call_soon_threadsafe(waiter.happened.set)
                waiter.before_waiting = once_spinning
            before = polls.count
            polls.polled.clear()
            try:
                assert await proxy.wait_for_the_client() is True
            finally:
                if mine is not None:
                    loop.remove_reader(mine)
                    mine.close()
                    theirs.close()
            assert polls.count > before  # the call did wait, and gave way
            assert await proxy.echo(2) == 2
    run(main())


def test_no_wait_while_a_callback_is_ready(served: Any, waiting: Settings) -> None:
    _, uri = served

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with meshrpc.aio.Proxy(uri, settings=waiting) as proxy:
            polls = Polls(proxy._conn)
            assert await proxy.echo(1) == 1
            spun = polls.count
            assert spun > 0
            ran = []
            loop.call_soon(ran.append, "callback")
            assert await proxy.echo(2) == 2
            assert polls.count == spun  # not one poll: the loop had a callback ready
            assert ran == ["callback"]
    run(main())


def test_no_wait_when_both_are_off_or_on_a_loop_whose_idleness_is_unknown(served: Any) -> None:
    _, uri = served

    async def main(settings: Settings) -> Any:
        async with meshrpc.aio.Proxy(uri, settings=settings) as proxy:
            assert await proxy.echo(3) == 3
            return proxy._conn.spin
    sleeping = run(main(config.copy(SPIN_WAIT=0.0)))  # by default a lone call sleeps in the selector
    assert sleeping is not None and sleeping.gate is None and sleeping.wait > 0
    assert run(main(reply_wait(config.copy(SPIN_WAIT=0.0), 0.0))) is None
    # uvloop, the Windows proactor: not a selector event loop, so no spin (and no private attributes read)
    assert LoopSpin.for_transport(SimpleNamespace(), SimpleNamespace(), LONG_SPIN) is None  # type: ignore[arg-type]


def test_the_daemon_reads_a_lone_clients_next_request_in_its_wait_and_gives_way_to_others(
        served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The aio daemon, all calls answered and its loop idle, waits in the selector for the client's
    next request (the same wait, aio/spin.py). With a 30 s bound, another client's requests must still
    be answered at once: the wait ends on any other socket (else each switch would wait for the
    daemon's next timer, its 1 s housekeeping)."""
    waiter, uri = served
    daemon = waiter.daemon
    monkeypatch.setattr(daemon, "settings", reply_wait(daemon.settings, LONG))  # for its connections to come

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri) as first, meshrpc.aio.Proxy(uri) as second:
            conns = list(daemon._aio_connections)
            assert len(conns) == 2 and all(conn._next is not None for conn in conns)
            read = count_reads(monkeypatch, [conn._next for conn in conns])
            assert [await first.echo(i) for i in range(20)] == list(range(20))
            assert sum(1 for count in read if count) >= 15, read  # the next request came in the wait
            started = time.monotonic()
            for i in range(20):  # the two clients take turns: each switch ends the other's wait
                assert await first.echo(i) == i and await second.echo(-i) == -i
            assert time.monotonic() - started < 10.0  # generous: a wait that ignored them takes 20 s+
    run(main())
