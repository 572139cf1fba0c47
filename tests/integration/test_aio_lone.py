"""The asyncio proxy's lone call, edge by edge: a call with nothing else in flight is written straight to
the socket (Cork.write_alone) and its reply read as bytes in the wait (os.read of RECV_CHUNK). A
request the socket does not take at once, and a reply longer than one read, must still arrive whole,
and the connection must stay in step for the next call. Against both daemons: the threaded one (no
pipelining: the lean reply lane) and the asyncio one (pipelined: receive_results)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Iterator

import pytest

import meshrpc
import meshrpc.aio
from meshrpc.aio.cork import Cork
from meshrpc.limits import RECV_CHUNK
from meshrpc.wire.frame import HEADER_SIZE
from tests.support import LoopThread, patterned_bytes

pytestmark = pytest.mark.timeout(60)


@meshrpc.expose
class Echo:
    def echo(self, value: Any) -> Any:
        return value


@pytest.fixture
def aio_uri() -> Iterator[meshrpc.URI]:
    """An Echo on a meshrpc.aio.Daemon on a loop thread of its own."""
    loop = LoopThread()
    daemon = meshrpc.aio.Daemon(host="127.0.0.1")
    uri = daemon.register(Echo(), "echo")
    loop.run(daemon.start())
    try:
        yield uri
    finally:
        loop.run(daemon.aclose())
        loop.close()


@pytest.fixture(params=["threaded daemon", "aio daemon"])
def uri(request: pytest.FixtureRequest, start_daemon: Any) -> meshrpc.URI:
    if request.param == "threaded daemon":
        return start_daemon().register(Echo(), "echo")
    return request.getfixturevalue("aio_uri")


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 45)
    return asyncio.run(bounded())


# around one read's worth of reply (the header included), and far past it
SIZES = [0, 1, RECV_CHUNK - HEADER_SIZE - 200, RECV_CHUNK - 1, RECV_CHUNK, RECV_CHUNK + 1, 3 * RECV_CHUNK + 7]


def test_lone_calls_around_one_reads_worth_get_their_own_bytes_back_and_stay_in_step(uri: meshrpc.URI) -> None:
    async def main() -> None:
        async with meshrpc.aio.Proxy(uri) as proxy:
            for size in SIZES:
                data = patterned_bytes(size)
                assert await proxy.echo(data) == data, size
                assert await proxy.echo(size) == size  # the next reply is this call's, not a stale part
    run(main())


@pytest.mark.parametrize("kind", ["one part", "parts"])
def test_a_lone_request_the_socket_does_not_take_at_once_is_queued_and_arrives_whole(
        uri: meshrpc.URI, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the socket does not take in one write goes to the transport (Cork._queue_rest), and the
    call still gets its own reply. A small call is one part (write_alone's own write: here the
    proxy's send buffer is shrunk to 4 KiB so that it cannot take 50 KB at once); a large one is a
    header and its payload (Cork._send's writev: 8 MiB is more than a loopback socket takes)."""
    queued: list[int] = []
    original = Cork._queue_rest

    def counted(self: Cork, parts: list, sent: int) -> bool:
        queued.append(len(parts))
        return original(self, parts, sent)
    monkeypatch.setattr(Cork, "_queue_rest", counted)
    data = patterned_bytes(25_000).hex() if kind == "one part" else patterned_bytes(8 << 20).decode("latin-1")  # (50 KB: one part)

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri) as proxy:
            if kind == "one part":
                sock = proxy._conn.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            for _ in range(3):
                assert await proxy.echo(data) == data
                assert await proxy.echo("after") == "after"
    run(main())
    assert queued and set(queued) == ({1} if kind == "one part" else {2}), queued


def test_a_proxy_used_on_two_live_loops_in_turn_connects_on_each_and_runs_every_call_once(
        uri: meshrpc.URI) -> None:
    """Two loops that both stay open, the proxy used on one then the other: each switch leaves the
    other loop's connection (closed on that loop when it runs again) and connects on the running one,
    never writing on a connection whose loop is not running."""
    proxy = meshrpc.aio.Proxy(uri)
    loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]
    try:
        conns = []
        for i in range(6):
            loop = loops[i % 2]
            assert loop.run_until_complete(asyncio.wait_for(proxy.echo(i), 20)) == i
            conns.append(proxy._conn)
            assert proxy._conn.loop is loop
        assert len({id(conn) for conn in conns}) == 6  # a new connection at every switch
        for loop in loops:
            loop.run_until_complete(asyncio.sleep(0))  # each loop runs the close it was handed
        assert all(conn.closed for conn in conns[:-1])
        assert all(conn.transport.is_closing() for conn in conns[:-2])
    finally:
        for loop in loops:
            loop.close()


def test_the_small_rest_of_a_burst_waits_in_the_transport_and_large_rests_in_the_cork(
        aio_uri: meshrpc.URI, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the socket does not take of a burst of small calls goes to the transport's buffer, joined:
    kept in the cork as many small pieces it went out 64 to a system call, and pipelined calls made
    half their rate. A large message's rest still waits in the cork, uncopied. (An aio daemon: calls to
    it are pipelined, so a burst is written at once.)"""
    kept: list[int] = []
    original = Cork._queue_rest

    def counted(self: Cork, parts: list, sent: int) -> bool:
        before = self.waiting
        result = original(self, parts, sent)
        kept.append(self.waiting - before)
        return result
    monkeypatch.setattr(Cork, "_queue_rest", counted)

    async def main() -> None:
        async with meshrpc.aio.Proxy(aio_uri) as proxy:
            proxy._conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            text = "x" * 2000
            assert await asyncio.gather(*(proxy.echo(text) for _ in range(300))) == [text] * 300
            small = list(kept)
            kept.clear()
            big = patterned_bytes(4 << 20)
            assert await proxy.echo(big) == big
            assert small and not any(small), small  # the transport took every small rest
            assert any(kept), kept  # the large one waited in the cork
    run(main())
