"""The daemon's limits (docs/security.md) over loopback: HANDSHAKE_TIMEOUT, IDLE_TIMEOUT, SEND_TIMEOUT,
MAX_CONNECTIONS, MAX_MESSAGE_SIZE, MAX_STREAMS_PER_CONNECTION; slow-loris clients that cannot pin a
daemon; and a load/soak run of 200 concurrent clients.

The soak lasts MESHRPC_TEST_SOAK_SECONDS (default 10) seconds; run it longer by hand, e.g.
`MESHRPC_TEST_SOAK_SECONDS=300 python3 -m pytest tests/integration/test_limits.py -k soak -s`.
Memory figures are the process's RSS (daemon and clients share the process), read from /proc.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import statistics
import threading
import time
from typing import Any

import pytest
from support import LoopThread, rss_mb, wait_until

import meshrpc
import meshrpc.aio
from meshrpc import errors
from meshrpc.wire import frame as wire
from meshrpc.wire.serializers import by_name

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
SERPENT = by_name("serpent")


@meshrpc.expose
class Service:
    def echo(self, value: Any) -> Any:
        return value

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def big(self, size: int) -> str:
        return "x" * size

    def numbers(self, n: int) -> Any:
        return iter(range(n))


def settings(**changes: Any) -> meshrpc.Settings:
    base: dict[str, Any] = {"HOST": HOST, "COMMTIMEOUT": 10.0}
    base.update(changes)
    return meshrpc.Settings().copy(**base)


def serve(start_daemon: Any, **changes: Any) -> tuple[Any, meshrpc.URI]:
    running = start_daemon(settings=settings(**changes))
    return running, running.register(Service(), "service")


def live(running: Any) -> int:
    return len(running.daemon._connections)




def connect_frame(object_id: str = "service", seq: int = 1) -> bytes:
    payload = SERPENT.dumps({"handshake": "hello", "object": object_id})
    return wire.encode(wire.Frame(wire.MSG_CONNECT, SERPENT.id, seq, payload))


def invoke_frame(method: str, *args: Any, seq: int = 2) -> bytes:
    return wire.encode(wire.Frame(wire.MSG_INVOKE, SERPENT.id, seq, SERPENT.dumps_call("service", method, args, {})))


def handshaken_socket(port: int) -> socket.socket:
    """A raw connection that completed CONNECT (its CONNECTOK read)."""
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(connect_frame())
    reader = wire.FrameReader()
    while (frame := reader.next_frame()) is None:
        reader.feed(sock.recv(65536))
    assert frame.type == wire.MSG_CONNECTOK
    return sock


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the daemon closed `sock` (EOF or reset), or None if it stayed open `timeout` s."""
    started = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - started < timeout:
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - started
    return None


# ----------------------------------------------------------------------------------- timeouts
def test_handshake_timeout_closes_silent_partial_and_trickling_connections(start_daemon: Any) -> None:
    running, uri = serve(start_daemon, HANDSHAKE_TIMEOUT=1.0)
    proxy = meshrpc.Proxy(uri, settings=settings())
    assert proxy.echo(1) == 1  # a handshaken connection is not concerned
    silent = socket.create_connection((HOST, uri.port))
    partial = socket.create_connection((HOST, uri.port))
    partial.sendall(connect_frame()[:25])
    trickling = socket.create_connection((HOST, uri.port))
    frame = connect_frame()
    stop = threading.Event()

    def trickle() -> None:  # one byte every 100 ms: busy, but never a whole CONNECT within the limit
        for i in range(len(frame) - 1):
            if stop.wait(0.1):
                return
            try:
                trickling.send(frame[i:i + 1])
            except OSError:
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        for sock in (silent, partial, trickling):
            elapsed = closed_within(sock, 5.0)
            assert elapsed is not None and elapsed < 4.0, "a connection outlived HANDSHAKE_TIMEOUT"
        time.sleep(0.5)
        conn = proxy._pyroConnection
        assert proxy.echo(2) == 2 and proxy._pyroConnection is conn  # the same connection, idle > 1 s
        wait_until(lambda: live(running) == 1, message="only the proxy's connection left")
    finally:
        stop.set()
        for sock in (silent, partial, trickling):
            sock.close()
        proxy._pyroRelease()


def test_idle_timeout_closes_parked_connections_and_proxies_reconnect(start_daemon: Any) -> None:
    running, uri = serve(start_daemon, IDLE_TIMEOUT=0.6)
    with meshrpc.Proxy(uri, settings=settings()) as proxy:
        assert proxy.echo(1) == 1
        wait_until(lambda: live(running) == 0, timeout=4.0, message="the idle connection closed")
        assert proxy.echo(2) == 2  # reconnected transparently (the closed idle connection is detected)
        assert proxy.sleep(1.5) == 1.5  # a call longer than IDLE_TIMEOUT is not cut: its connection is busy
        assert live(running) == 1


def test_idle_timeout_is_off_by_default(start_daemon: Any) -> None:
    running, uri = serve(start_daemon)
    assert running.daemon.settings.IDLE_TIMEOUT == 0
    with meshrpc.Proxy(uri, settings=settings()) as proxy:
        proxy.echo(1)
        conn = proxy._pyroConnection
        time.sleep(1.0)
        assert proxy.echo(2) == 2 and proxy._pyroConnection is conn


def test_send_timeout_drops_a_client_that_never_reads(start_daemon: Any) -> None:
    running, uri = serve(start_daemon, SEND_TIMEOUT=1.0, THREADPOOL_SIZE=4)
    stuck = []
    for _ in range(4):  # as many as the daemon has workers: each blocks one in a send
        sock = handshaken_socket(uri.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for seq in range(2, 12):
            sock.sendall(invoke_frame("big", 4 * 1024 * 1024, seq=seq))
        stuck.append(sock)
    try:
        wait_until(lambda: live(running) == 0, timeout=15.0, message="non-reading clients dropped")
        with meshrpc.Proxy(uri, settings=settings()) as proxy:
            assert proxy.echo("free again") == "free again"
    finally:
        for sock in stuck:
            sock.close()


class AioServed:
    """Service on a meshrpc.aio.Daemon served from a loop of its own (a LoopThread)."""

    def __init__(self, **changes: Any) -> None:
        self.loop = LoopThread()
        self.daemon = self.loop.call(lambda: meshrpc.aio.Daemon(host=HOST, settings=settings(**changes)))
        self.uri = self.loop.call(lambda: self.daemon.register(Service(), "service"))
        self.loop.run(self.daemon.start())

    def live(self) -> int:
        return len(self.daemon._aio_connections)

    def close(self) -> None:
        self.loop.run(self.daemon.aclose())
        self.loop.close()


def test_aio_daemon_reads_no_more_from_a_client_that_never_reads_and_drops_it_after_send_timeout() -> None:
    # without flow control it read on and kept every reply: 60 KB per request sent, 800 MB in 8 s
    served = AioServed(SEND_TIMEOUT=1.0)
    try:
        before = rss_mb()
        sock = handshaken_socket(served.uri.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = invoke_frame("echo", "x" * 60_000)
        sock.settimeout(5.0)
        sent = 0
        with pytest.raises(OSError):  # the daemon stops reading (a send times out), or it has closed it
            while sent < 20_000:  # 1.2 GB of replies, were they all kept
                sock.sendall(request)
                sent += 1
        assert sent < 2_000, f"the daemon read {sent} requests of a client that reads no reply"
        after = rss_mb()
        if before is not None and after is not None:
            assert after - before < 100, f"RSS grew from {before:.0f} to {after:.0f} MB"
        wait_until(lambda: served.live() == 0, timeout=15.0, message="the non-reading client dropped")
        with meshrpc.Proxy(served.uri, settings=settings()) as proxy:
            assert proxy.echo("served on") == "served on"
        sock.close()
    finally:
        served.close()


@meshrpc.expose
class Gated:
    """`async def` calls that wait until the test opens the gate (made on the daemon's loop)."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None

    async def wait_open(self, i: int, padding: str) -> int:
        assert self.gate is not None
        await self.gate.wait()
        return i


def test_aio_daemon_runs_at_most_max_calls_per_connection_and_loses_none() -> None:
    # without the bound it read every request a client sent and ran each as a Task: 100,000 pipelined
    # calls of a method that waits held 250 MB, and the loop took 1.5 s to answer another client
    cap = 100
    served = AioServed(MAX_CALLS_PER_CONNECTION=cap)
    gated = Gated()
    served.loop.call(lambda: setattr(gated, "gate", asyncio.Event()))
    served.loop.call(lambda: served.daemon.register(gated, "gated"))
    running = lambda: served.loop.call(lambda: max((c.calls for c in served.daemon._aio_connections), default=0))
    try:
        sock = handshaken_socket(served.uri.port)
        frame = lambda seq: wire.encode(wire.Frame(wire.MSG_INVOKE, SERPENT.id, seq, SERPENT.dumps_call(
            "gated", "wait_open", (seq, "p" * 4000), {})))
        sock.settimeout(2.0)
        sent = 0
        with pytest.raises(socket.timeout):  # the daemon stopped reading: the kernel's buffers filled up
            while sent < 20_000:  # 80 MB of requests
                sock.sendall(frame(2 + sent))
                sent += 1
        per_read = meshrpc.Settings().AIO_RECEIVE_BUFFER // len(frame(2)) + 1
        assert cap <= running() <= cap + per_read, "calls running once the daemon stopped reading"
        sock.settimeout(30.0)
        with meshrpc.Proxy(served.uri, settings=settings()) as other:  # everyone else is served meanwhile
            assert other.echo("not held up") == "not held up"
        served.loop.call(gated.gate.set)
        reader = wire.FrameReader()
        answered = set()
        while len(answered) < sent:  # the ones sent when it blocked, partly, may follow: count those sent whole
            while (reply := reader.next_frame()) is None:
                chunk = sock.recv(1 << 16)
                assert chunk, f"the daemon closed the connection after {len(answered)} of {sent} replies"
                reader.feed(chunk)
            assert not reply.flags & wire.FLAG_EXCEPTION, SERPENT.loads(reply.payload)
            answered.add(SERPENT.loads(reply.payload))
        assert answered >= set(range(2, 2 + sent)) and running() == 0
        sock.close()
    finally:
        served.close()


@pytest.mark.parametrize("kind", ["threaded", "aio"])
def test_a_client_that_reads_a_large_reply_slowly_gets_all_of_it(start_daemon: Any, kind: str) -> None:
    # SEND_TIMEOUT counts time without progress, not the whole transfer: 6 MB taken at ~2 MB/s
    # (3 s, three times SEND_TIMEOUT) arrive whole
    if kind == "threaded":
        uri, served = serve(start_daemon, SEND_TIMEOUT=1.0)[1], None
    else:
        served = AioServed(SEND_TIMEOUT=1.0)
        uri = served.uri
    try:
        sock = handshaken_socket(uri.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        size = 6 * 1024 * 1024
        sock.sendall(invoke_frame("big", size))
        reader = wire.FrameReader()
        started = time.monotonic()
        while (reply := reader.next_frame()) is None:
            chunk = sock.recv(65536)
            assert chunk, "the daemon closed the connection of a client that was reading"
            reader.feed(chunk)
            time.sleep(0.03)  # a slow client (about 2 MB/s), not a synchronisation
        assert time.monotonic() - started > 2.0  # the transfer outlasted SEND_TIMEOUT
        assert reply.type == wire.MSG_RESULT and not reply.flags & wire.FLAG_EXCEPTION
        assert SERPENT.loads(reply.payload) == "x" * size
        sock.close()
    finally:
        if served is not None:
            served.close()


class GatedRuns:
    """Methods that wait until the test opens the gate and note, in order, what ran."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.ran: list[Any] = []
        self.lock = threading.Lock()

    def _ran(self, what: Any) -> Any:
        self.gate.wait(60)
        with self.lock:
            self.ran.append(what)
        return what


@meshrpc.expose
class OnewayGated(GatedRuns):
    @meshrpc.oneway
    def wait_open(self, i: int, padding: str) -> None:
        self._ran(i)


def test_threaded_daemon_queues_at_most_max_calls_per_connection_oneway_calls_and_runs_them_all(
        start_daemon: Any) -> None:
    # the queue of a connection's oneway calls grew without bound: 200,000 of 1 KB held 630 MB
    cap = 50
    running, service = serve(start_daemon, MAX_CALLS_PER_CONNECTION=cap, THREADPOOL_SIZE=4)
    gated = OnewayGated()
    uri = running.register(gated, "gated")
    sock = handshaken_socket(uri.port)
    request = lambda seq: wire.encode(wire.Frame(wire.MSG_INVOKE, SERPENT.id, seq, SERPENT.dumps_call(
        "gated", "wait_open", (seq, "p" * 4000), {}), wire.FLAG_ONEWAY))
    sock.settimeout(2.0)
    sent = 0
    try:
        with pytest.raises(socket.timeout):  # the daemon stopped reading: the kernel's buffers filled up
            while sent < 20_000:
                sock.sendall(request(2 + sent))
                sent += 1
        [conn] = running.daemon._connections
        assert len(conn.oneways) <= cap
        with meshrpc.Proxy(service, settings=settings()) as other:  # everyone else is served meanwhile
            assert other.echo("not held up") == "not held up"
        gated.gate.set()
        wait_until(lambda: len(gated.ran) >= sent, timeout=30.0, message="every oneway call sent whole ran")
        assert sorted(gated.ran)[:sent] == list(range(2, 2 + sent))  # each once (the last may follow, partly sent)
    finally:
        gated.gate.set()
        sock.close()


@meshrpc.expose
class Ordered(GatedRuns):
    def work(self, who: str) -> str:
        return self._ran(who)


def test_aio_daemon_hands_its_threads_to_clients_in_turn() -> None:
    # a client that sent 200 plain calls at once had them all queued ahead of another client's call,
    # which waited for every one of them (its threads are shared: AIO_EXECUTOR_SIZE)
    served = AioServed(AIO_EXECUTOR_SIZE=2)
    ordered = Ordered()
    uri = served.loop.call(lambda: served.daemon.register(ordered, "ordered"))
    client_loop = LoopThread()
    try:
        async def burst() -> list:
            async with meshrpc.aio.Proxy(uri) as proxy:
                return await asyncio.gather(*(proxy.work(f"a{n}") for n in range(200)))
        first = asyncio.run_coroutine_threadsafe(burst(), client_loop.loop)  # client A, a loop of its own
        wait_until(lambda: served.loop.call(lambda: sum(c.calls for c in served.daemon._aio_connections)) == 200,
                   timeout=15.0, message="client A's 200 calls read")
        with meshrpc.Proxy(uri, settings=settings()) as other:
            other._pyroBind()
            answer = threading.Thread(target=lambda: ordered.ran.append("b:" + other.work("b")), daemon=True)
            answer.start()
            wait_until(lambda: served.loop.call(lambda: sum(c.calls for c in served.daemon._aio_connections)) == 201,
                       timeout=15.0, message="client B's call read")
            ordered.gate.set()
            answer.join(15)
        assert "b" in ordered.ran and ordered.ran.index("b") <= 4, ordered.ran[:10]  # not after A's 200
        assert len(first.result(30)) == 200
    finally:
        ordered.gate.set()
        served.close()
        client_loop.close()


@meshrpc.expose
class SocketOptions:
    def of_my_connection(self) -> tuple:
        return keepalive_options(meshrpc.current_context.client.sock)


def keepalive_options(sock: Any) -> tuple:
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            *(sock.getsockopt(socket.IPPROTO_TCP, option) for option in
              (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT, socket.TCP_USER_TIMEOUT)))


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux's TCP options")
def test_every_side_of_a_connection_notices_a_dead_peer_within_dead_peer_timeout(start_daemon: Any) -> None:
    # keep-alive probes after a third of it idle, six of them over the rest, and unacknowledged data
    # given up after all of it (the lab test shows what they do: tests/netlab/test_dead_peer_lab.py)
    nine = (1, 3, 1, 6, 9000)
    running = start_daemon(settings=settings(DEAD_PEER_TIMEOUT=9.0))
    uri = running.register(SocketOptions(), "options")
    with meshrpc.Proxy(uri, settings=settings(DEAD_PEER_TIMEOUT=9.0)) as proxy:
        assert proxy.of_my_connection() == nine  # the threaded daemon's end
        assert keepalive_options(proxy._pyroConnection.sock) == nine
    with meshrpc.Proxy(uri, settings=settings(DEAD_PEER_TIMEOUT=0.0)) as proxy:  # 0: the system's defaults
        proxy._pyroBind()
        assert keepalive_options(proxy._pyroConnection.sock)[0] == 0
    with meshrpc.Proxy(uri, settings=settings()) as proxy:  # the default: a minute
        proxy._pyroBind()
        assert keepalive_options(proxy._pyroConnection.sock) == (1, 20, 6, 6, 60000)

    async def on_aio() -> tuple:
        daemon = meshrpc.aio.Daemon(host=HOST, settings=settings(DEAD_PEER_TIMEOUT=9.0))
        aio_uri = daemon.register(SocketOptions(), "options")
        async with daemon, meshrpc.aio.Proxy(aio_uri, settings=settings(DEAD_PEER_TIMEOUT=9.0)) as aio_proxy:
            daemon_end = await aio_proxy.of_my_connection()
            return daemon_end, keepalive_options(aio_proxy._conn.transport.get_extra_info("socket"))
    assert asyncio.run(on_aio()) == (nine, nine)


# ----------------------------------------------------------------------------------- sizes and counts
def test_max_connections_refuses_extra_clients_and_keeps_the_others(start_daemon: Any) -> None:
    running, uri = serve(start_daemon, MAX_CONNECTIONS=5)
    proxies = [meshrpc.Proxy(uri, settings=settings()) for _ in range(5)]
    try:
        for i, proxy in enumerate(proxies):
            assert proxy.echo(i) == i
        with pytest.raises(errors.CommunicationError):
            with meshrpc.Proxy(uri, settings=settings()) as extra:
                extra.echo("one too many")
        extras = [socket.create_connection((HOST, uri.port)) for _ in range(10)]
        for sock in extras:
            assert closed_within(sock, 5.0) is not None, "a connection over the limit stayed open"
            sock.close()
        for i, proxy in enumerate(proxies):
            assert proxy.echo(i) == i  # the five keep working
        proxies.pop()._pyroRelease()
        wait_until(lambda: live(running) == 4, message="a slot freed")
        with meshrpc.Proxy(uri, settings=settings()) as late:
            assert late.echo("room again") == "room again"
    finally:
        for proxy in proxies:
            proxy._pyroRelease()


def _header(data_len: int, msg_type: int = wire.MSG_CONNECT) -> bytes:
    return wire.HEADER.pack(wire.TAG, wire.PROTOCOL_VERSION, msg_type, SERPENT.id, 0, 1, data_len, 0,
                            bytes(16), 0, wire.MAGIC)


def test_declared_huge_messages_are_refused_before_any_allocation(start_daemon: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    running, uri = serve(start_daemon, HANDSHAKE_TIMEOUT=30.0)  # default MAX_MESSAGE_SIZE: 1 GiB
    before = rss_mb()
    socks = [socket.create_connection((HOST, uri.port)) for _ in range(20)]
    for sock in socks:
        sock.sendall(_header(0xFFFFFFFF) + b"x" * 1000)  # announces 4 GiB
    for sock in socks:
        assert closed_within(sock, 5.0) is not None
        sock.close()
    assert "above MAX_MESSAGE_SIZE" in caplog.text
    # under the limit but huge: only what arrives is buffered (20 x 900 MB announced, 64 KiB sent each)
    socks = [socket.create_connection((HOST, uri.port)) for _ in range(20)]
    for sock in socks:
        sock.sendall(_header(900 * 1024 * 1024) + os.urandom(64 * 1024))
    time.sleep(1.0)
    after = rss_mb()
    assert live(running) == 20
    for sock in socks:
        sock.close()
    if before is not None and after is not None:
        print(f"\nRSS {before:.1f} MB -> {after:.1f} MB with 20 connections announcing 900 MB each")
        assert after - before < 40, "announced sizes were allocated"
    wait_until(lambda: live(running) == 0, message="connections dropped")
    with meshrpc.Proxy(uri, settings=settings()) as proxy:
        assert proxy.echo("ok") == "ok"


def test_small_max_message_size(start_daemon: Any) -> None:
    running, uri = serve(start_daemon, MAX_MESSAGE_SIZE=1024 * 1024)
    with socket.create_connection((HOST, uri.port)) as sock:
        sock.sendall(_header(2 * 1024 * 1024))
        assert closed_within(sock, 5.0) is not None
    with meshrpc.Proxy(uri, settings=settings(MAX_MESSAGE_SIZE=1024 * 1024)) as proxy:
        with pytest.raises(errors.MessageTooLargeError):
            proxy.echo("y" * (2 * 1024 * 1024))  # refused before it is sent
        with pytest.raises(errors.CommunicationError):
            proxy.big(2 * 1024 * 1024)  # the daemon cannot send it either: an error, not a hang
        assert proxy.echo("small") == "small"


@meshrpc.expose
class Unsendable:
    """Answers that the daemon cannot send, and a count of the calls that ran."""

    def __init__(self) -> None:
        self.ran = 0

    def big(self, size: int) -> str:
        self.ran += 1
        return "x" * size

    def big_error(self, size: int) -> None:
        self.ran += 1
        raise ValueError("y" * size)

    def bad_annotation(self) -> str:
        self.ran += 1
        meshrpc.current_context.response_annotations["toolong"] = b"x"  # ids are 4 ASCII characters
        return "ran"

    def peer(self) -> Any:
        return meshrpc.current_context.client_sock_addr


@pytest.mark.parametrize("kind", ["threaded", "aio"])
def test_a_reply_the_daemon_cannot_send_comes_as_its_error_on_the_same_connection(start_daemon: Any,
                                                                                  kind: str) -> None:
    # the call ran: its caller must learn why the answer is missing (not ReplyLostError's "may have run"),
    # and the connection stays (the threaded daemon closed it, the aio daemon answered)
    limit = 100_000
    served = Unsendable()
    loop = None
    if kind == "threaded":
        uri = serve(start_daemon, MAX_MESSAGE_SIZE=limit)[0].register(served, "unsendable")
    else:
        loop = LoopThread()
        daemon = loop.call(lambda: meshrpc.aio.Daemon(host=HOST, settings=settings(MAX_MESSAGE_SIZE=limit)))
        uri = loop.call(lambda: daemon.register(served, "unsendable"))
        loop.run(daemon.__aenter__())
    try:
        with meshrpc.Proxy(uri, settings=settings()) as proxy:
            first = proxy.peer()
            with pytest.raises(errors.MessageTooLargeError, match=r"could not send its reply.*MAX_MESSAGE_SIZE"):
                proxy.big(2 * limit)
            with pytest.raises(errors.MessageTooLargeError, match="could not send its reply"):
                proxy.big_error(2 * limit)
            with pytest.raises(errors.ProtocolError, match="could not send its reply.*annotation id"):
                proxy.bad_annotation()
            assert served.ran == 3
            assert proxy.big(10) == "x" * 10
            assert proxy.peer() == first  # the same connection all along
    finally:
        if loop is not None:
            loop.run(daemon.__aexit__(None, None, None))
            loop.close()


def test_streams_per_connection_are_bounded(start_daemon: Any) -> None:
    running, uri = serve(start_daemon, MAX_STREAMS_PER_CONNECTION=3)
    with meshrpc.Proxy(uri, settings=settings()) as proxy:
        streams = [proxy.numbers(10) for _ in range(3)]
        with pytest.raises(meshrpc.errors.DaemonError, match="too many open streams"):
            proxy.numbers(10)
        assert list(streams[0]) == list(range(10))  # exhausted: its slot is free again
        assert list(proxy.numbers(2)) == [0, 1]
        assert proxy.echo("fine") == "fine"


# ----------------------------------------------------------------------------------- slow loris
def _latencies(uri: meshrpc.URI, seconds: float) -> list[float]:
    latencies = []
    with meshrpc.Proxy(uri, settings=settings()) as proxy:
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            assert proxy.echo(i) == i
            latencies.append(time.perf_counter() - started)
            i += 1
            time.sleep(0.002)
    return latencies


def _summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return (f"{len(latencies)} calls, median {statistics.median(latencies) * 1000:.2f} ms, "
            f"p99 {p99 * 1000:.2f} ms, max {ordered[-1] * 1000:.2f} ms")


@pytest.mark.parametrize("pool", [128, 8])
def test_slow_loris_cannot_pin_the_daemon(start_daemon: Any, pool: int) -> None:
    """50 slow-loris connections: partial headers that stop, CONNECTs trickled a byte at a time, and,
    after a valid CONNECT, partial or trickled INVOKEs. A well-behaved client calls throughout; its
    latency stays low, also when the daemon has far fewer workers (8) than slow clients."""
    running, uri = serve(start_daemon, THREADPOOL_SIZE=pool, HANDSHAKE_TIMEOUT=60.0)
    baseline = _latencies(uri, 1.0)
    slow: list[socket.socket] = []
    trickled: list[tuple[socket.socket, bytes]] = []
    for i in range(50):
        kind = i % 4
        if kind == 0:
            sock = socket.create_connection((HOST, uri.port))
            sock.sendall(connect_frame()[:17])
        elif kind == 1:
            sock = socket.create_connection((HOST, uri.port))
            trickled.append((sock, connect_frame()))
        elif kind == 2:
            sock = handshaken_socket(uri.port)
            sock.sendall(invoke_frame("echo", "never finished")[:30])
        else:
            sock = handshaken_socket(uri.port)
            trickled.append((sock, invoke_frame("echo", "x" * 500)))
        slow.append(sock)
    stop = threading.Event()

    def trickle() -> None:  # every 50 ms, one more byte on each trickling connection
        position = 0
        while not stop.wait(0.05):
            for sock, data in trickled:
                if position < len(data) - 1:
                    try:
                        sock.send(data[position:position + 1])
                    except OSError:
                        pass
            position += 1

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        under_attack = _latencies(uri, 4.0)
        assert live(running) >= 50, "the slow clients were dropped: the test proves nothing"
    finally:
        stop.set()
        thread.join(5)
        for sock in slow:
            sock.close()
    print(f"\npool {pool}: alone: {_summary(baseline)}; with 50 slow-loris: {_summary(under_attack)}")
    ordered = sorted(under_attack)
    assert statistics.median(under_attack) < 0.05
    assert ordered[int(len(ordered) * 0.99) - 1] < 0.5
    assert ordered[-1] < 2.0


# ----------------------------------------------------------------------------------- load and soak
SOAK_SECONDS = float(os.environ.get("MESHRPC_TEST_SOAK_SECONDS", "10"))
SOAK_CLIENTS = 200
SOAK_RSS_BOUND_MB = 30.0  # RSS after the soak may exceed RSS after the warm-up by at most this


def _run_clients(uri: meshrpc.URI, seconds: float, clients: int) -> tuple[int, list[str]]:
    calls = [0] * clients
    failures: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        try:
            with meshrpc.Proxy(uri, settings=settings()) as proxy:
                proxy._pyroBind()
                start.wait(30)
                deadline = time.monotonic() + seconds
                n = 0
                while time.monotonic() < deadline:
                    value = [index, n, "x" * (n % 200)]
                    if proxy.echo(value) != value:
                        failures.append(f"client {index}: wrong answer")
                    n += 1
                calls[index] = n
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            failures.append(f"client {index}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait(60)
    for thread in threads:
        thread.join(seconds + 60)
    return sum(calls), failures


def test_soak_200_concurrent_clients(start_daemon: Any) -> None:
    running, uri = serve(start_daemon)
    # the warm-up is as long as the soak: threads, pools, caches and the allocator's arenas reach their
    # working size in it (glibc keeps freed memory for reuse), so what the soak adds is what leaks
    warm_calls, warm_failures = _run_clients(uri, SOAK_SECONDS, SOAK_CLIENTS)
    assert not warm_failures, warm_failures[:5]
    wait_until(lambda: live(running) == 0, message="warm-up connections closed")
    gc.collect()
    before = rss_mb()
    started = time.monotonic()
    calls, failures = _run_clients(uri, SOAK_SECONDS, SOAK_CLIENTS)
    elapsed = time.monotonic() - started
    assert not failures, failures[:5]
    wait_until(lambda: live(running) == 0, message="soak connections closed")
    gc.collect()
    after = rss_mb()
    print(f"\nsoak: {SOAK_CLIENTS} clients, {calls} calls in {elapsed:.1f} s ({calls / elapsed:.0f}/s), "
          f"0 errors; RSS {before} MB -> {after} MB; daemon workers {running.daemon._pool.size}")
    assert calls > SOAK_CLIENTS
    if before is not None and after is not None:
        assert after - before < SOAK_RSS_BOUND_MB, f"RSS grew from {before:.1f} to {after:.1f} MB"
