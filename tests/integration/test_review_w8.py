"""Review of session 8's fast paths (w8-review), with real daemons and sockets: the aio daemon's request
lane (ServerSession.receive_requests/next_request, bare_result) against its general path, for odd and
broken requests arriving in one read among usual ones; aio proxies' pipelined bursts mixing every kind
of call; large frames through the anonymous-mmap reader (blobs intact, memory released)."""

from __future__ import annotations

import asyncio
import marshal
import socket
from typing import Any

import pytest
from support import wait_until
from test_fastlane_edges import ODD_REQUESTS, _call, _invoke

import meshrpc
import meshrpc.aio
from meshrpc.aio import daemon as aio_daemon
from meshrpc.wire import frame as wire

pytestmark = pytest.mark.timeout(90)

HOST = "127.0.0.1"


class AsyncEcho:
    @meshrpc.expose
    async def echo(self, value: Any) -> Any:
        return value


BEFORE_SEQ, SENTINEL_SEQ = 5, 9


def _replies(uri: meshrpc.URI, request: bytes, want: set[int], incomplete: bool) -> tuple:
    """A marshal handshake, then a usual request, `request` and a usual sentinel in one send: every
    reply (type, flags, seq, value), sorted, and whether the daemon closed the connection. The wait ends
    when the seqs in `want` and the two usual ones were answered, or the connection closed."""
    from meshrpc.wire.serializers import BY_ID, BY_NAME
    from meshrpc.wire.session import ClientSession, Connected
    session = ClientSession(BY_NAME["marshal"], meshrpc.Settings())
    with socket.create_connection((uri.host, uri.port), timeout=20) as sock:
        sock.sendall(b"".join(session.connect_request(uri.object, "hello")))
        while not isinstance(session.next_event(), Connected):
            session.receive_data(sock.recv(65536))
        data = _invoke(2, BEFORE_SEQ, _call(uri.object, "echo", ("before",))) + request
        if not incomplete:
            data += _invoke(2, SENTINEL_SEQ, _call(uri.object, "echo", ("sentinel",)))
        sock.sendall(data)
        if incomplete:
            sock.shutdown(socket.SHUT_WR)  # half a frame, then the end: the daemon closes
        # (incomplete: until the daemon closes)
        needed = {BEFORE_SEQ, SENTINEL_SEQ} | want | ({-1} if incomplete else set())
        reader, replies, closed = wire.FrameReader(), [], False
        try:
            while not needed <= {seq for _, _, seq, _ in replies}:
                data = sock.recv(65536)
                if not data:
                    closed = True
                    break
                reader.feed(data)
                while (frame := reader.next_frame()) is not None:
                    value = BY_ID[frame.serializer_id].loads(frame.payload)
                    replies.append((frame.type, frame.flags, frame.seq, repr(value)[:300]))
        except ConnectionResetError:
            closed = True
    return tuple(sorted(replies)), closed


def _general_path(self: Any, conn: Any, data: bytes) -> bool:
    """Daemon._take_requests with its lane off: every byte to the session's reader (the general path)."""
    conn.wire.receive_data(data)
    return True  # (all of it left to _pump)


@pytest.mark.parametrize("name", sorted(ODD_REQUESTS))
def test_aio_daemon_odd_requests_among_usual_ones_in_one_read_get_what_its_general_path_gives(name: str,
                                                                                             monkeypatch) -> None:
    """The aio daemon takes a read's usual requests without a Frame each (4f0b2d4): an odd or broken
    request between two usual ones, all in one read, gets the same replies, in the same order of seqs,
    and the connection is closed or kept alike, as with the lane off."""
    incomplete = name == "a request and half of the next"
    want = {1, 2} if name == "two requests at once" else {1}

    async def answers() -> tuple:
        daemon = meshrpc.aio.Daemon(host=HOST)
        uri = daemon.register(AsyncEcho(), "svc")
        async with daemon:
            return await asyncio.to_thread(_replies, uri, ODD_REQUESTS[name](uri.object), want, incomplete)

    lane = asyncio.run(answers())
    monkeypatch.setattr(aio_daemon.Daemon, "_take_requests", _general_path)
    general = asyncio.run(answers())
    before = (wire.MSG_RESULT, 0, BEFORE_SEQ, "'before'")
    if name == "wrong protocol version":
        # the general path feeds the whole read, whose bad prefix refuses it at once (nothing ran); the lane
        # ran the usual request before it and answers it before closing (w8-review: its reply was lost,
        # and the exception left buffer_updated: asyncio's "Fatal error" with a traceback)
        assert general == ((), True)
        assert lane == ((before,), True)
    else:
        assert lane == general
        assert before in lane[0]  # (w8-review: lost before a malformed frame, lane or not)


class Methods:
    """echo run each way the aio daemon runs a method."""

    @meshrpc.expose
    async def echo(self, value: Any) -> Any:  # awaited on the loop
        return value

    @meshrpc.expose
    def echo_sync(self, value: Any) -> Any:  # in the executor
        return value

    @meshrpc.expose
    @meshrpc.aio.nonblocking
    def echo_on_loop(self, value: Any) -> Any:
        return value


@pytest.mark.parametrize("method", ["echo", "echo_sync", "echo_on_loop"])
@pytest.mark.parametrize("bad", ["bad magic", "a result instead of a request", "oversized length"])
def test_aio_daemon_answers_the_requests_before_a_malformed_frame_then_closes(method: str, bad: str) -> None:
    """Requests that ran before a malformed frame of the same read are answered before the daemon closes
    the connection (as the threaded daemon does): their calls ran, and a lost reply would make their
    clients report "may have run"."""
    async def answers() -> tuple:
        daemon = meshrpc.aio.Daemon(host=HOST)
        uri = daemon.register(Methods(), "svc")
        async with daemon:
            def exchange() -> tuple:
                requests = b"".join(_invoke(2, seq, _call(uri.object, method, (f"v{seq}",))) for seq in (2, 3))
                return _replies(uri, requests + ODD_REQUESTS[bad](uri.object), {2, 3}, True)
            return await asyncio.to_thread(exchange)

    replies, closed = asyncio.run(answers())
    assert closed
    assert sorted((seq, value) for _, _, seq, value in replies) == [(2, "'v2'"), (3, "'v3'"), (BEFORE_SEQ, "'before'")]


# ---------------------------------------------------------------- aio proxies: pipelined bursts of every kind

class Mixed:
    """Every kind of reply, on an aio daemon (async and executor methods) or a threaded/Pyro5 one."""

    def __init__(self) -> None:
        self.runs: dict[Any, int] = {}

    def _ran(self, token: Any) -> None:
        self.runs[token] = self.runs.get(token, 0) + 1

    @meshrpc.expose
    def record(self, token: Any) -> Any:
        self._ran(token)
        return token

    @meshrpc.expose
    def fail(self, token: Any) -> None:
        self._ran(token)
        raise ValueError(f"fail {token}")

    @meshrpc.expose
    def annotated(self, token: Any) -> Any:
        self._ran(token)
        meshrpc.current_context.response_annotations["TOKN"] = str(token).encode()
        return token

    @meshrpc.expose
    def count(self, token: Any, n: int):
        self._ran(token)
        return iter(range(n))

    @meshrpc.expose
    def corr(self, token: Any) -> Any:
        self._ran(token)
        return str(meshrpc.current_context.correlation_id)

    @meshrpc.expose
    def blob(self, token: Any) -> Any:
        self._ran(token)
        return bytes([len(str(token)) % 256]) * 70_000  # larger than one read

    @meshrpc.expose
    @meshrpc.oneway
    def fire(self, token: Any) -> None:
        self._ran(token)


async def _one_of_each(proxy: Any, i: int) -> Any:
    """Call kind i % 8 with token i: (token, what the proxy gave)."""
    import uuid
    kind = i % 8
    if kind == 0:
        return await proxy.record(i)
    if kind == 1:
        try:
            await proxy.fail(i)
        except ValueError as exc:
            return str(exc)
    if kind == 2:
        value = await proxy.annotated(i)
        return value, meshrpc.current_context.response_annotations.get("TOKN")
    if kind == 3:
        return [x async for x in await proxy.count(i, 3)]
    if kind == 4:
        corr = uuid.UUID(int=i)
        meshrpc.current_context.correlation_id = corr
        return await proxy.corr(i) == str(corr)
    if kind == 5:
        batch = meshrpc.aio.BatchProxy(proxy)
        batch.record(i)
        batch.record(f"{i}b")
        return list(await batch())
    if kind == 6:
        return len(await proxy.blob(i))
    await proxy.fire(i)
    return "fired"


def _wanted(i: int) -> Any:
    kind = i % 8
    return [i, f"fail {i}", (i, str(i).encode()), [0, 1, 2], True, [i, f"{i}b"], 70_000, "fired"][kind]


@pytest.mark.parametrize("serializer", ["serpent", "marshal", "json", "msgpack"])
def test_aio_pipelined_bursts_of_every_kind_with_cancellations_get_their_own_answers(serializer: str) -> None:
    """An aio proxy's burst to an aio daemon mixing the usual replies (taken by receive_results) with
    errors, response annotations, streams, correlation ids, batches, large replies and oneway calls,
    some calls cancelled in flight: every other call gets its own answer, each ran once, the
    connection stays in step."""
    settings = meshrpc.Settings().copy(SERIALIZER=serializer)

    async def main() -> None:
        service = Mixed()
        daemon = meshrpc.aio.Daemon(host=HOST)
        uri = daemon.register(service, "svc")
        async with daemon:
            async with meshrpc.aio.Proxy(uri, settings=settings) as proxy:
                proxy._pyroTimeout = 30
                for round_ in range(3):
                    base = round_ * 1000
                    tasks = [asyncio.ensure_future(_one_of_each(proxy, base + i)) for i in range(160)]
                    await asyncio.sleep(0)  # (one turn: the burst is written)
                    cancelled = {base + i for i in range(3, 160, 17)}
                    for i in cancelled:
                        tasks[i - base].cancel()
                    done = await asyncio.gather(*tasks, return_exceptions=True)
                    for i, got in enumerate(done, base):
                        if isinstance(got, asyncio.CancelledError):
                            assert i in cancelled
                            continue
                        assert got == _wanted(i), (i, got)
                    # a call cancelled after it was written ran at most once; one not cancelled, once
                    await asyncio.wait_for(_until(lambda: all(service.runs.get(base + i) == 1 for i in range(160)
                                                             if base + i not in cancelled)), 20)
                    assert all(service.runs.get(base + i, 0) <= 1 for i in cancelled)
                    assert await proxy.record("in step") == "in step"

    asyncio.run(main())


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)  # (polling a condition, bounded by the caller's wait_for)


class AsyncLedger:
    def __init__(self) -> None:
        self.runs: dict[Any, int] = {}

    @meshrpc.expose
    async def record(self, token: Any) -> Any:  # answered at once: the request lane's bare_result
        self.runs[token] = self.runs.get(token, 0) + 1
        return token

    @meshrpc.expose
    async def record_later(self, token: Any) -> Any:  # waits: answered by its Task
        self.runs[token] = self.runs.get(token, 0) + 1
        await asyncio.sleep(0.001)
        return token


def test_aio_pipelined_bursts_racing_the_aio_daemons_shutdown_run_once_or_certainly_not() -> None:
    """aio proxies keep bursts of pipelined calls in flight while the aio daemon shuts down: a call that
    returned ran exactly once, NotDeliveredError did not run, MaybeDeliveredError ran at most once,
    nothing else is raised."""
    import threading

    from meshrpc import errors
    service = AsyncLedger()
    daemon = meshrpc.aio.Daemon(host=HOST)
    uri = daemon.register(service, "svc")
    serving = threading.Event()

    def serve() -> None:
        async def run() -> None:
            async with daemon:
                serving.set()
                await daemon.serve_forever()
        asyncio.run(run())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert serving.wait(20)
    outcomes: list[tuple[Any, str]] = []
    settings = meshrpc.Settings().copy(REBIND_TIMEOUT=0.5)

    async def caller(index: int) -> None:
        async with meshrpc.aio.Proxy(uri, settings=settings) as proxy:
            proxy._pyroTimeout = 20
            for n in range(100_000):
                tokens = [(index, n, k) for k in range(12)]
                calls = [proxy.record(t) if k % 3 else proxy.record_later(t) for k, t in enumerate(tokens)]
                results = await asyncio.gather(*calls, return_exceptions=True)
                ended = False
                for token, result in zip(tokens, results):
                    if isinstance(result, errors.NotDeliveredError):
                        outcomes.append((token, "not run"))
                    elif isinstance(result, errors.MaybeDeliveredError):
                        outcomes.append((token, "maybe"))
                    elif isinstance(result, BaseException):
                        outcomes.append((token, f"unexpected {type(result).__name__}: {result}"))
                    else:
                        assert result == token
                        outcomes.append((token, "returned"))
                        continue
                    ended = True
                if ended:  # (every caller goes on until the shutdown stops it)
                    return

    async def main() -> None:
        callers = [asyncio.ensure_future(caller(i)) for i in range(4)]
        await asyncio.wait_for(_until(lambda: len(service.runs) >= 600), 30)
        daemon.shutdown()
        await asyncio.wait_for(asyncio.gather(*callers), 60)

    asyncio.run(main())
    server.join(30)
    assert not server.is_alive()
    unexpected = [o for o in outcomes if o[1].startswith("unexpected")]
    assert not unexpected, unexpected[:3]
    for token, outcome in outcomes:
        runs = service.runs.get(token, 0)
        if outcome == "returned":
            assert runs == 1, (token, runs)
        elif outcome == "not run":
            assert runs == 0, (token, runs)
        else:
            assert runs <= 1, (token, outcome, runs)
    assert all(count == 1 for count in service.runs.values())
    assert {outcome for _, outcome in outcomes} & {"not run", "maybe"}  # (the race was run)


# ---------------------------------------------------------------- large frames in an anonymous mmap (1213363)

class Keeper:
    """Keeps every large value it is given, and hands out large values of its own."""

    def __init__(self) -> None:
        self.kept: list = []

    @meshrpc.expose
    def keep(self, data: Any, small: Any) -> int:
        self.kept.append(data)
        return len(data)

    @meshrpc.expose
    def make(self, n: int, size: int) -> Any:
        return bytes([n % 251]) * size + bytes(range(256)) * 3

    @meshrpc.expose
    def echo(self, value: Any) -> Any:
        return value


@pytest.mark.parametrize("serializer", ["serpent", "marshal", "json"])
@pytest.mark.parametrize("servertype", ["thread", "multiplex"])
def test_large_values_stay_intact_after_later_large_frames_reuse_the_buffer(start_daemon, serializer: str,
                                                                           servertype: str) -> None:
    """The daemon's and the proxy's frame readers keep a large frame's buffer for the next one: values
    handed to a call (OOB blobs with serpent/json, the payload with marshal) and values a call returned
    must not be views into it, so they are intact after larger and smaller large frames came in."""
    settings = meshrpc.Settings().copy(SERIALIZER=serializer, SERVERTYPE=servertype)
    keeper = Keeper()
    running = start_daemon(settings=settings)
    uri = running.register(keeper, "keeper")
    sizes = [300_000, 2_000_000, 270_000, 1_000_000, 4097 * 70, 3_000_001]
    with meshrpc.Proxy(uri, settings=settings) as proxy:
        proxy._pyroTimeout = 30
        made = []
        for n, size in enumerate(sizes):
            data = bytes([n + 1]) * size
            assert proxy.keep(data, n) == size
            made.append(proxy.make(n, size))
            assert proxy.echo(n) == n
    assert [bytes(kept) == bytes([n + 1]) * size for n, (kept, size) in enumerate(zip(keeper.kept, sizes))] \
        == [True] * len(sizes)
    assert [bytes(value) == bytes([n % 251]) * size + bytes(range(256)) * 3 for n, (value, size) in
            enumerate(zip(made, sizes))] == [True] * len(sizes)


def _live_large_mappings(minimum: int) -> int:
    """Live mmap objects of at least `minimum` bytes (large-frame buffers; tracemalloc cannot see them, and
    /proc/self/maps merges neighbouring private mappings into one, so the objects are counted)."""
    import gc
    import mmap
    # type(), not obj.__class__: gc also lists weakref proxies, whose __class__ raises once their object is gone
    return sum(1 for obj in gc.get_objects() if type(obj) is mmap.mmap and not obj.closed and len(obj) >= minimum)


def test_large_frame_buffers_do_not_pile_up_over_many_connections(start_daemon) -> None:
    """Each connection's large-frame buffer (an anonymous mapping, invisible to tracemalloc) goes with the
    connection: 40 connections that each sent and received 3 MiB leave no more mappings than 5 did."""
    keeper = Keeper()
    running = start_daemon()
    uri = running.register(keeper, "keeper")
    data = b"d" * (3 * 1024 * 1024)

    def connections(count: int) -> None:
        for _ in range(count):
            with meshrpc.Proxy(uri) as proxy:
                assert proxy.keep(data, 0) == len(data)
                assert len(proxy.make(1, len(data))) == len(data) + 768
            keeper.kept.clear()

    connections(5)
    after_few = _live_large_mappings(3 * 1024 * 1024)
    connections(40)
    # (the daemon drops a closed connection when its worker or selector sees the end: waited for)
    wait_until(lambda: _live_large_mappings(3 * 1024 * 1024) <= after_few + 2, timeout=30,
               message="large-frame buffers of closed connections released")


def _send_all_then_read(uri: meshrpc.URI, requests: list[bytes], count: int) -> list:
    """A marshal handshake, then every request in one send: the first `count` replies (seq, value)."""
    from meshrpc.wire.serializers import BY_ID, BY_NAME
    from meshrpc.wire.session import ClientSession, Connected
    session = ClientSession(BY_NAME["marshal"], meshrpc.Settings())
    with socket.create_connection((uri.host, uri.port), timeout=30) as sock:
        sock.sendall(b"".join(session.connect_request(uri.object, "hello")))
        while not isinstance(session.next_event(), Connected):
            session.receive_data(sock.recv(65536))
        sock.sendall(b"".join(requests))
        reader, replies = wire.FrameReader(), []
        while len(replies) < count:
            data = sock.recv(1 << 20)
            assert data, f"closed after {replies}"
            reader.feed(data)
            while (frame := reader.next_frame()) is not None:
                replies.append((frame.seq, BY_ID[frame.serializer_id].loads(frame.payload)))
    return replies


LARGE_AND_SMALL = [300_000, None, 2_000_000, None, None, 270_000, 600_000, None, 262_144]


@pytest.mark.parametrize("kind", ["thread", "multiplex", "aio"])
def test_large_requests_and_small_ones_back_to_back_in_one_send_are_all_served_intact(start_daemon,
                                                                                      kind: str) -> None:
    """Large requests (read into their own buffer) and small ones after them in the same reads, the
    buffer kept and reused by larger and smaller frames: every request answered, in order, each large
    value intact."""
    keeper = Keeper()
    requests = []
    for seq, size in enumerate(LARGE_AND_SMALL, 1):
        args = (bytes([seq]) * size, seq) if size else (seq,)
        requests.append(_invoke(2, seq, _call("keeper", "keep" if size else "echo", args)))

    def exchange(uri: meshrpc.URI) -> list:
        return _send_all_then_read(uri, requests, len(requests))

    if kind == "aio":
        async def main() -> list:
            daemon = meshrpc.aio.Daemon(host=HOST)
            uri = daemon.register(keeper, "keeper")
            async with daemon:
                return await asyncio.to_thread(exchange, uri)
        replies = asyncio.run(main())
    else:
        running = start_daemon(settings=meshrpc.Settings().copy(SERVERTYPE=kind))
        replies = exchange(running.register(keeper, "keeper"))
    assert sorted(replies) == [(seq, size or seq) for seq, size in enumerate(LARGE_AND_SMALL, 1)]
    assert [bytes(kept) for kept in keeper.kept] == [bytes([seq]) * size for seq, size in
                                                    enumerate(LARGE_AND_SMALL, 1) if size]



def test_closed_connections_leave_no_large_frame_buffer_with_the_daemons_idle_workers(start_daemon) -> None:
    """Clients that each made a large call at the same time, then closed: the daemon's workers keep a
    reference to the last connection they served (its call context) until their next task, up to
    IDLE_WORKER_EXIT (60 s); the connection's large-frame buffer (kept for its next large frame) must go
    when the connection is dropped, not stay with them (w8-review: 12 clients x 10 MiB left 110 MiB)."""
    import threading
    keeper = Keeper()
    running = start_daemon()
    uri = running.register(keeper, "keeper")
    size = 3 * 1024 * 1024
    data = b"c" * size
    before = _live_large_mappings(size)
    entered = threading.Barrier(6)

    def client() -> None:
        with meshrpc.Proxy(uri) as proxy:
            proxy._pyroBind()
            entered.wait(20)  # all connected: each has a worker of its own while it sends
            assert proxy.keep(data, 0) == size

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    keeper.kept.clear()
    wait_until(lambda: _live_large_mappings(size) <= before, timeout=20,
               message="the closed connections' large-frame buffers released")
