"""Large messages through meshrpc.aio (session 9): a large frame's rest is read straight into the reader's
own page-aligned buffer (no copy through the loop's buffer), what does not fit into the socket waits
uncopied, buffers go with their connection, echoes are whole at every size boundary, the aio proxy
follows SOCK_NODELAY, and a connection that broke the protocol stops being read at once and closes once
its running call is answered. Real sockets throughout; each test bounded by pytest-timeout."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import mmap
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

import meshrpc
import meshrpc.aio
from meshrpc.config import Settings
from meshrpc.limits import LARGE_FRAME, LOW_WATER
from meshrpc.wire import frame as wire
from meshrpc.wire.serializers import BY_NAME
from meshrpc.wire.session import ClientSession, Connected
from tests.support import LoopThread, handshaken_sessions, patterned_bytes, rss_mb, wait_until

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
DEFAULTS = Settings()
# every size where the aio driver's handling changes: the cork's flush size, encode_parts' split of a
# payload into a buffer of its own, the loop's receive buffer, the large-frame threshold, the
# low-water mark of the threaded reader, and sizes far above them
BOUNDARIES = (DEFAULTS.AIO_CORK_BYTES, 65536, DEFAULTS.AIO_RECEIVE_BUFFER, LARGE_FRAME, LOW_WATER, 2 * LOW_WATER,
              4 * MIB)
SIZES = sorted({0, 1} | {size + delta for size in BOUNDARIES for delta in (-1, 0, 1)})


@meshrpc.expose
class Echo:
    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None  # made on the daemon's loop (hold)
        self.entered = threading.Event()
        self.release = threading.Event()

    def echo(self, value: Any) -> Any:
        return value

    async def aecho(self, value: Any) -> Any:
        return value

    async def hold(self) -> str:
        """Waits on the loop until the test sets `gate`."""
        self.gate = asyncio.Event()
        self.entered.set()
        await self.gate.wait()
        return "held"

    def block(self) -> str:
        """Waits in the executor until the test sets `release`."""
        self.entered.set()
        self.release.wait(30)
        return "blocked"


class AioServing:
    def __init__(self, daemon: meshrpc.aio.Daemon, uri: meshrpc.URI, echo: Echo, loop: LoopThread) -> None:
        self.daemon, self.uri, self.echo, self.loop = daemon, uri, echo, loop

    def connections(self) -> list:
        return self.loop.call(lambda: list(self.daemon._aio_connections))


@pytest.fixture
def aio_serving() -> Iterator[AioServing]:
    """An aio Daemon serving an Echo on a loop thread."""
    loop = LoopThread()
    echo = Echo()

    async def start() -> tuple:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(echo, "echo")
        await daemon.start()
        return daemon, uri
    daemon, uri = loop.run(start())
    try:
        yield AioServing(daemon, uri, echo, loop)
    finally:
        loop.run(daemon.aclose())
        loop.close()


def run(coro: Any, timeout: float = 60.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def _large_mappings(minimum: int) -> int:
    """Live large-frame buffers of at least `minimum` bytes (mmap objects: tracemalloc cannot see them)."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is mmap.mmap and not obj.closed and len(obj) >= minimum)


class Reads:
    """Counts what the readers took: bytes fed (copied in from a read buffer) and bytes read straight
    into a large frame's own buffer (received), and whether each such buffer began at a page."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fed = self.received = 0
        self.buffers: list[tuple[int, int]] = []  # (address % PAGE of the first view of a frame's buffer, size)
        feed, receive_buffer, received = wire.FrameReader.feed, wire.FrameReader.receive_buffer, wire.FrameReader.received
        lock = threading.Lock()

        def counting_feed(reader: wire.FrameReader, data: Any) -> None:
            with lock:
                self.fed += memoryview(data).nbytes
            feed(reader, data)

        def noting_receive_buffer(reader: wire.FrameReader) -> Any:
            fresh = reader._body is None
            into = receive_buffer(reader)
            if into is not None and fresh:
                with lock:
                    self.buffers.append((ctypes.addressof(ctypes.c_char.from_buffer(into)) % mmap.PAGESIZE, len(into)))
            return into

        def counting_received(reader: wire.FrameReader, count: int) -> None:
            with lock:
                self.received += count
            received(reader, count)
        monkeypatch.setattr(wire.FrameReader, "feed", counting_feed)
        monkeypatch.setattr(wire.FrameReader, "receive_buffer", noting_receive_buffer)
        monkeypatch.setattr(wire.FrameReader, "received", counting_received)

    def reset(self) -> None:
        self.fed = self.received = 0
        self.buffers.clear()


# ---------------------------------------------------------------- no copy through the loop's buffer

def test_a_large_frame_is_read_into_the_readers_page_aligned_buffer_by_both_aio_sides(
        aio_serving: AioServing, monkeypatch: pytest.MonkeyPatch) -> None:
    """aio proxy -> aio daemon, 10 MiB each way: after the first echo (whose first quarter proves the
    frame before a buffer is made), each side copies at most one read of the loop's buffer per frame
    through feed(); the rest goes straight from the socket into the frame's own buffer, which begins
    at a page. (Before: every byte went through the loop's buffer and feed(), 20 MiB per echo.)"""
    reads = Reads(monkeypatch)
    payload = patterned_bytes(10 * MIB)

    async def main() -> None:
        async with meshrpc.aio.Proxy(aio_serving.uri) as proxy:
            assert await proxy.aecho(payload) == payload
            for _ in range(3):
                reads.reset()
                assert await proxy.aecho(payload) == payload
                assert reads.fed <= 2 * DEFAULTS.AIO_RECEIVE_BUFFER + 4096, reads.fed
                assert reads.received >= 2 * (len(payload) - DEFAULTS.AIO_RECEIVE_BUFFER), reads.received
                assert len(reads.buffers) == 2 and all(offset == 0 for offset, _ in reads.buffers), reads.buffers
    run(main())


@pytest.mark.parametrize("client", ["threaded", "aio"])
def test_each_aio_side_reads_a_large_frame_into_its_own_buffer_opposite_a_threaded_peer(
        client: str, aio_serving: AioServing, start_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """threaded proxy -> aio daemon (the daemon's side) and aio proxy -> threaded daemon (the proxy's):
    both directions of a 10 MiB echo go through a reader's own buffer, not through feed()."""
    reads = Reads(monkeypatch)
    payload = patterned_bytes(10 * MIB)
    if client == "threaded":
        with meshrpc.Proxy(aio_serving.uri) as proxy:
            assert proxy.aecho(payload) == payload
            reads.reset()
            assert proxy.aecho(payload) == payload
    else:
        uri = start_daemon().register(Echo(), "echo")

        async def main() -> None:
            async with meshrpc.aio.Proxy(uri) as proxy:
                assert await proxy.echo(payload) == payload
                reads.reset()
                assert await proxy.echo(payload) == payload
        run(main())
    assert reads.fed <= 2 * DEFAULTS.AIO_RECEIVE_BUFFER + 4096, reads.fed
    assert reads.received >= 2 * (len(payload) - DEFAULTS.AIO_RECEIVE_BUFFER), reads.received


# ---------------------------------------------------------------- buffers go with their connection

def test_a_dropped_connection_releases_the_half_read_large_frame(aio_serving: AioServing) -> None:
    """A client that sends three quarters of a 6 MiB call and hangs up: the aio daemon read them into
    the frame's own buffer, and the dropped connection lets go of it."""
    before = _large_mappings(6 * MIB)
    sock, session = _raw_client(aio_serving.uri)
    try:
        frame = b"".join(session.call_request("echo", "echo", (b"x" * (6 * MIB),), {}, 0, None, None))
        sock.sendall(frame[:len(frame) * 3 // 4])
        (conn,) = aio_serving.connections()
        wait_until(lambda: aio_serving.loop.call(lambda: conn.wire.reader._body is not None
                                                 and conn.wire.reader.buffered >= len(frame) // 2),
                   timeout=20, message="the frame's rest read into its own buffer")
        assert _large_mappings(6 * MIB) == before + 1
    finally:
        sock.close()
    wait_until(lambda: aio_serving.loop.call(lambda: conn.closed), timeout=20, message="the connection dropped")
    assert aio_serving.loop.call(lambda: conn.wire.reader.buffered) == 0
    wait_until(lambda: _large_mappings(6 * MIB) == before, timeout=10, message="the frame's buffer released")


def test_large_frame_buffers_go_with_the_proxy_and_the_idle_daemon_connection(aio_serving: AioServing) -> None:
    """After 4 MiB echoes both aio sides keep one buffer for their next large frame; the daemon drops
    it once the connection is idle (its housekeeping), the proxy when it is released."""
    payload = patterned_bytes(4 * MIB)
    before = _large_mappings(4 * MIB)

    async def main() -> None:
        proxy = meshrpc.aio.Proxy(aio_serving.uri)
        for _ in range(3):
            assert await proxy.aecho(payload) == payload
        assert _large_mappings(4 * MIB) == before + 2
        (conn,) = aio_serving.connections()
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_until(
            lambda: aio_serving.loop.call(lambda: conn.wire.reader._spare is None), timeout=10,
            message="the idle daemon connection's spare buffer dropped"))
        assert _large_mappings(4 * MIB) == before + 1
        await proxy._pyroRelease()
    run(main())
    wait_until(lambda: _large_mappings(4 * MIB) == before, timeout=10, message="the proxy's buffer released")


def test_memory_does_not_grow_over_many_large_calls(aio_serving: AioServing) -> None:
    """60 echoes of 4 MiB (aio proxy -> aio daemon, and pipelined three at a time): no buffer piles up
    (at most one per side and connection) and the resident size stays put."""
    payload = patterned_bytes(4 * MIB)

    async def main() -> None:
        async with meshrpc.aio.Proxy(aio_serving.uri) as proxy:
            for _ in range(10):
                assert await proxy.aecho(payload) == payload
            gc.collect()
            settled = rss_mb()
            for _ in range(20):
                assert await proxy.aecho(payload) == payload
            for _ in range(10):
                assert await asyncio.gather(*(proxy.aecho(payload) for _ in range(3))) == [payload] * 3
            assert _large_mappings(4 * MIB) <= 2
            gc.collect()
            grown = rss_mb()
            if settled is not None and grown is not None:
                assert grown - settled < 48, (settled, grown)
    run(main())


# ---------------------------------------------------------------- whole echoes at every size

@pytest.mark.parametrize("serializer", ["serpent", "marshal"])
@pytest.mark.parametrize("pairing", ["aio->aio", "aio->threaded", "threaded->aio"])
def test_echoes_are_whole_around_every_boundary(pairing: str, serializer: str, aio_serving: AioServing,
                                                start_daemon: Any) -> None:
    settings = Settings(SERIALIZER=serializer)
    payloads = [patterned_bytes(size) for size in SIZES]
    if pairing == "threaded->aio":
        with meshrpc.Proxy(aio_serving.uri, settings=settings) as proxy:
            for payload in payloads:
                assert proxy.aecho(payload) == payload, len(payload)
        return
    uri = aio_serving.uri if pairing == "aio->aio" else start_daemon().register(Echo(), "echo")

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri, settings=settings) as proxy:
            for payload in payloads:
                assert await proxy.echo(payload) == payload, len(payload)
            # side by side too (pipelined with the aio daemon): big and small ones share the connection
            assert await asyncio.gather(*(proxy.echo(p) for p in payloads)) == payloads
    run(main())


@pytest.mark.parametrize("serializer", ["serpent", "marshal"])
def test_echoes_are_whole_for_every_frame_size_across_the_large_frame_threshold(serializer: str,
                                                                                aio_serving: AioServing) -> None:
    """Payloads whose frames (call and reply) are every size from below LARGE_FRAME to above it, byte by byte."""
    client, _ = handshaken_sessions(serializer, pipelining=True, SERIALIZER=serializer)
    low, high = LARGE_FRAME - 400, LARGE_FRAME + 4

    def call_size(size: int) -> int:
        return sum(len(part) for part in client.call_request("echo", "aecho", (b"x" * size,), {}, 0, None, None))
    assert call_size(low) < LARGE_FRAME <= call_size(high)  # the window holds the threshold

    async def main() -> None:
        async with meshrpc.aio.Proxy(aio_serving.uri, settings=Settings(SERIALIZER=serializer)) as proxy:
            for size in range(low, high + 1):
                payload = patterned_bytes(size)
                assert await proxy.aecho(payload) == payload, size
    run(main())


def test_big_and_small_calls_side_by_side_keep_their_order(aio_serving: AioServing) -> None:
    """A burst of pipelined calls, 3 MiB ones among small ones: what waits for the socket waits in order
    (the replies of every call are its own)."""
    async def main() -> None:
        async with meshrpc.aio.Proxy(aio_serving.uri) as proxy:
            payloads = [patterned_bytes(3 * MIB + n) if n % 7 == 0 else n.to_bytes(4, "big") * n for n in range(60)]
            for _ in range(3):
                assert await asyncio.gather(*(proxy.aecho(p) for p in payloads)) == payloads
    run(main())


# ---------------------------------------------------------------- SOCK_NODELAY

@pytest.mark.parametrize("nodelay", [True, False])
def test_the_aio_proxys_tcp_connection_follows_sock_nodelay(nodelay: bool, aio_serving: AioServing) -> None:
    """As the threaded proxy and the aio daemon: asyncio sets TCP_NODELAY on every TCP connection it
    makes, so SOCK_NODELAY=False was ignored by the aio proxy."""
    async def main() -> None:
        async with meshrpc.aio.Proxy(aio_serving.uri, settings=Settings(SOCK_NODELAY=nodelay)) as proxy:
            assert await proxy.aecho(b"x") == b"x"
            sock = proxy._conn.transport.get_extra_info("socket")
            assert bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is nodelay
    run(main())


# ---------------------------------------------------------------- a broken connection

def _raw_client(uri: meshrpc.URI) -> tuple[socket.socket, ClientSession]:
    session = ClientSession(BY_NAME["marshal"], Settings(), pipelining=True)
    sock = socket.create_connection((uri.host, uri.port), timeout=20)
    sock.sendall(b"".join(session.connect_request("echo", None, None, None)))
    while True:
        event = session.next_event()
        if isinstance(event, Connected):
            return sock, session
        session.receive_data(sock.recv(65536))


def _bad_header(message_type: int, size: int) -> bytes:
    return wire.HEADER.pack(wire.TAG, wire.PROTOCOL_VERSION, message_type, BY_NAME["marshal"].id, 0, 999, size, 0,
                            wire.ZERO_ID, 0, wire.MAGIC)


BAD = {"not protocol 502": b"NOT PYRO AT ALL" * 10,
       "an unknown message type": _bad_header(99, 0),
       "a frame above MAX_MESSAGE_SIZE": _bad_header(wire.MSG_INVOKE, 2 ** 31)}


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("method", ["hold", "block"])
def test_a_connection_that_breaks_the_protocol_during_a_slow_call_stops_being_read_and_closes_after_it(
        method: str, bad: str, aio_serving: AioServing) -> None:
    """A slow call (`async def` on the loop, or a plain method in the executor) is running when the
    client breaks the protocol: the daemon reads that connection no more at once, serves other
    connections meanwhile, answers the running call, then closes the connection."""
    echo = aio_serving.echo
    sock, session = _raw_client(aio_serving.uri)
    try:
        sock.sendall(b"".join(session.call_request("echo", method, (), {}, 0, None, None)))
        assert echo.entered.wait(10)
        (conn,) = aio_serving.connections()
        sock.sendall(BAD[bad])
        wait_until(lambda: aio_serving.loop.call(lambda: conn.broken and not conn.transport.is_reading()),
                   timeout=10, message="the broken connection no longer read")
        assert not aio_serving.loop.call(lambda: conn.closed)  # its call still runs

        async def another() -> None:  # others are served meanwhile
            async with meshrpc.aio.Proxy(aio_serving.uri) as proxy:
                assert await proxy.aecho(b"other") == b"other"
        run(another(), 20)

        if method == "hold":
            aio_serving.loop.call(lambda: echo.gate.set())  # type: ignore[union-attr]
        else:
            echo.release.set()
        reply = b""
        while True:  # the reply, then the end of the connection
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        session.receive_data(reply)
        event = session.next_event()
        assert session.reply_value(event) == ("held" if method == "hold" else "blocked")
    finally:
        echo.release.set()
        sock.close()
    wait_until(lambda: aio_serving.loop.call(lambda: conn.closed), timeout=10, message="the connection closed")


# ---------------------------------------------------------------- the benchmark's case

def test_aio_bench_large_case_reports_every_pairing() -> None:
    """tools/aio_bench.py --cases large (quick: 1 MiB, 2 echoes): the four pairings, both serializers."""
    bench = Path(__file__).resolve().parents[2] / "tools" / "aio_bench.py"
    proc = subprocess.run([sys.executable, str(bench), "--cases", "large", "--quick", "--json"], capture_output=True,
                          text=True, check=False, timeout=100, cwd=bench.parents[1], stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {label: row for label, row in json.loads(proc.stdout)["large"].items() if isinstance(row, dict)}
    pairings = ("aio proxy -> aio daemon", "aio proxy -> threaded daemon", "threaded proxy -> aio daemon",
                "threaded proxy -> threaded daemon")
    assert sorted(rows) == sorted(f"{p}, {s}" for p in pairings for s in ("serpent", "marshal"))
    assert all(row["mib_per_s"] > 0 and row["cpu_ms_per_echo"] >= 0 for row in rows.values())


def test_a_handshake_that_times_out_says_so() -> None:
    """The aio proxy's NotDelivered for a handshake nobody answers says "timed out" (it said "failed: "
    and nothing after it: a TimeoutError's text is empty), as the threaded proxy's says "receiving: timeout"."""
    from meshrpc.client.recovery import NotDelivered
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts (the kernel's backlog), never answers

    async def main() -> None:
        proxy = meshrpc.aio.Proxy(f"PYRO:silent@127.0.0.1:{listener.getsockname()[1]}")
        proxy._pyroTimeout = 0.3
        with pytest.raises(NotDelivered) as failed:
            await proxy._connect(proxy._pyroUri)
        assert str(failed.value).endswith("failed: timed out"), str(failed.value)
    try:
        run(main(), 20)
    finally:
        listener.close()
