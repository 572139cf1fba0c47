"""The edges of issue 15's fast lanes (the proxy's lean lane, the daemon's lock-free request path, the
large-frame low-water mark), with real daemons, real sockets and a relay that plays a slow or stalling
link. Each test would fail if its lane lost a call, ran one twice, retried one that may have run, or
gave a different answer than the general path.

Outcomes are checked against what the daemon really ran: a call that returned ran exactly once; one
that raised NotDeliveredError never ran; one that raised MaybeDeliveredError ran at most once."""

from __future__ import annotations

import socket
import threading
import uuid
from typing import Any, Callable

import Pyro5.api
import pytest
from support import wait_until

import meshrpc
from meshrpc import errors
from meshrpc.context import current_context
from meshrpc.wire import frame as wire

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"


class Ledger:
    """What the daemon ran, by token."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[Any, int] = {}

    def ran(self, token: Any) -> None:
        with self.lock:
            self.runs[token] = self.runs.get(token, 0) + 1


class Service:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.entered = threading.Event()
        self.release = threading.Event()

    @meshrpc.expose
    def echo(self, value: Any) -> Any:
        return value

    @meshrpc.expose
    def record(self, token: Any) -> Any:
        self.ledger.ran(token)
        return token

    @meshrpc.expose
    def size(self, data: bytes) -> int:
        return len(data)

    @meshrpc.expose
    def fail(self, text: str) -> None:
        raise ValueError(text)

    @meshrpc.expose
    def context(self) -> tuple:
        corr = current_context.correlation_id
        return str(corr) if corr else None, sorted(current_context.annotations)

    @meshrpc.expose
    def answer_with_annotation(self, value: Any) -> Any:
        current_context.response_annotations["XTRA"] = b"extra"
        return value

    @meshrpc.expose
    def count(self, n: int):
        return iter(range(n))

    @meshrpc.expose
    def record_then_hang_up(self, token: Any) -> Any:
        """Runs, then the connection breaks before the reply (a daemon that crashed mid-call)."""
        self.ledger.ran(token)
        socket.socket.shutdown(current_context.client.sock, socket.SHUT_RDWR)
        return token

    @meshrpc.expose
    @meshrpc.idempotent
    def record_idempotent_then_hang_up(self, token: Any) -> Any:
        self.ledger.ran(token)
        if self.ledger.runs[token] == 1:
            socket.socket.shutdown(current_context.client.sock, socket.SHUT_RDWR)
        return token

    @meshrpc.expose
    @meshrpc.oneway
    def record_oneway(self, token: Any) -> None:
        self.ledger.ran(token)

    @meshrpc.expose
    def record_slowly(self, token: Any) -> Any:
        self.ledger.ran(token)
        self.entered.set()
        self.release.wait(20)
        return token


def serve(start_daemon: Callable[..., Any], **settings: Any) -> tuple[Any, Ledger, Service, meshrpc.URI]:
    ledger = Ledger()
    service = Service(ledger)
    running = start_daemon(settings=meshrpc.Settings().copy(**settings)) if settings else start_daemon()
    return running, ledger, service, running.register(service)


# ---------------------------------------------------------------- a link between proxy and daemon

class Link:
    """A TCP relay between a proxy and a daemon. Requests pass as they come; each reply frame is passed
    as `shape(reply number, frame bytes)` says: a list of pieces, sent apart (a slow link cuts a reply
    anywhere); a None piece holds back everything from there on (a link that stalls), an Event piece
    holds the rest until it is set (a reply that comes late)."""

    def __init__(self, target: tuple[str, int], shape: Callable[[int, bytes], list]) -> None:
        self.target = target
        self.shape = shape
        self.gap = 0.005  # seconds between the pieces of a reply
        self.hold_requests = threading.Event()  # set: requests stop passing (a link that stalls upstream)
        self.replies = 0
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def uri(self, uri: meshrpc.URI) -> str:
        return f"PYRO:{uri.object}@{HOST}:{self.port}"

    def close(self) -> None:
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [client, server]
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client), daemon=True).start()

    def _requests(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self.hold_requests.is_set() and (data := source.recv(65536)):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _replies(self, source: socket.socket, sink: socket.socket) -> None:
        buf = b""
        gap = threading.Event()
        try:
            while data := source.recv(65536):
                buf += data
                while len(buf) >= wire.HEADER_SIZE:
                    header = wire.HEADER.unpack_from(buf)
                    end = wire.HEADER_SIZE + header[6] + header[7]
                    if len(buf) < end:
                        break
                    frame, buf = buf[:end], buf[end:]
                    self.replies += 1
                    for i, piece in enumerate(self.shape(self.replies, frame)):
                        if piece is None:
                            return  # stalled: nothing more goes through on this connection
                        if isinstance(piece, threading.Event):
                            piece.wait(20)  # held until the test lets it go
                            continue
                        if i:
                            gap.wait(self.gap)  # the link's own pace, not a synchronisation
                        sink.sendall(piece)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def cut(frame: bytes) -> list:
    """A reply cut where a single recv must not take it for whole: inside the header, right after
    it, and inside the payload."""
    points = sorted({1, 39, 40, 41, len(frame) // 2, len(frame) - 1})
    points = [p for p in points if 0 < p < len(frame)]
    return [frame[a:b] for a, b in zip([0] + points, points + [len(frame)])]


@pytest.fixture
def links():
    made: list[Link] = []

    def make(target: tuple[str, int], shape: Callable[[int, bytes], list]) -> Link:
        made.append(Link(target, shape))
        return made[-1]

    yield make
    for link in made:
        link.close()


def address(uri: meshrpc.URI) -> tuple[str, int]:
    return uri.host, uri.port


# ---------------------------------------------------------------- replies in pieces (a slow link)

@pytest.mark.parametrize("serializer, spin", [("serpent", 0.0), ("marshal", 0.0), ("json", 0.0), ("msgpack", 0.0),
                                               ("serpent", 0.0005)])
def test_replies_cut_anywhere_give_what_whole_replies_give(start_daemon, links, serializer: str, spin: float) -> None:
    """Every kind of reply (the usual one the lean lane takes, annotated, an error, a stream, a batch,
    one larger than a read, one large enough for its own buffer) arriving in pieces: the lane must not
    take a piece for a reply, and the general path must put the pieces together (also with the opt-in
    spin, which the lane leaves to the general path). The same calls over a direct connection are the
    reference."""
    if serializer == "msgpack":
        pytest.importorskip("msgpack")
    _, _, _, uri = serve(start_daemon)
    link = links(address(uri), lambda n, frame: cut(frame))
    settings = meshrpc.Settings().copy(SERIALIZER=serializer, SPIN_WAIT=spin)

    def session(target: Any) -> list:
        out = []
        with meshrpc.Proxy(target, settings=settings) as proxy:
            proxy._pyroTimeout = None if spin else 20  # no timeout: large replies read with the low-water mark
            out.append(proxy.echo(1))
            out.append(proxy.echo("x" * 300))
            out.append(proxy.echo([1, 2.5, "three", None, True]))
            out.append(proxy.echo({"k": [1, 2]}))
            out.append(proxy.answer_with_annotation(7))
            out.append(dict(current_context.response_annotations))
            out.append(proxy.echo(8))
            out.append(dict(current_context.response_annotations))  # cleared by the lean reply
            try:
                proxy.fail("boom")
            except ValueError as exc:
                out.append(("raised", str(exc)))
            out.append(list(proxy.count(5)))
            with meshrpc.BatchProxy(proxy) as batch:
                batch.echo(1)
                batch.echo("two")
                out.append(list(batch()))
            out.append(proxy.echo(b"bytes" * 10))
            out.append(proxy.echo("y" * 100_000))  # more than one read
            out.append(proxy.size(b"z" * 3_000_000))
            out.append(proxy.echo(b"z" * 3_000_000) == b"z" * 3_000_000)  # a large frame of its own
            out.append(proxy.echo(2))
        return out

    assert session(link.uri(uri)) == session(uri)
    assert link.replies >= 10


# ---------------------------------------------------------------- a timeout in the middle of a reply

def test_a_timeout_mid_reply_raises_once_and_the_next_call_gets_its_own_answer(start_daemon, links) -> None:
    """The reply's first bytes come, the rest never does: the proxy must give a MaybeDeliveredError
    (TimeoutError) within its timeout, never retry the call (it ran), and never hand the late bytes to
    the next call, which must get its own answer."""
    _, ledger, _, uri = serve(start_daemon)
    stalled = 3  # reply 1 is the CONNECTOK, 2 the first call's: the second call's reply stalls
    link = links(address(uri), lambda n, frame: [frame[:wire.HEADER_SIZE + 2], None] if n == stalled else [frame])
    proxy = meshrpc.Proxy(link.uri(uri))
    proxy._pyroTimeout = 20  # (a loaded machine: only the stalled call has a short one)
    try:
        assert proxy.record("first") == "first"
        proxy._pyroTimeout = 0.5
        with pytest.raises(errors.MaybeDeliveredError) as caught:
            proxy.record("second")
        proxy._pyroTimeout = 20
        assert isinstance(caught.value, TimeoutError)
        assert ledger.runs.get("second") == 1, "the call that timed out must have run once, not been retried"
        assert proxy.record("third") == "third", "the next call took another call's late reply"
        assert ledger.runs == {"first": 1, "second": 1, "third": 1}
    finally:
        proxy._pyroRelease()


def test_a_request_cut_by_a_send_timeout_never_reaches_the_next_call(start_daemon, links) -> None:
    """The link stops taking the request (a stalled uplink) and the proxy's send times out with part of
    a frame on the wire: the connection must go, so the next call never follows half a frame, and
    the call in question never runs (its frame is incomplete)."""
    _, ledger, _, uri = serve(start_daemon)
    link = links(address(uri), lambda n, frame: [frame])
    proxy = meshrpc.Proxy(link.uri(uri))
    proxy._pyroTimeout = 20  # (a loaded machine: only the stalled call has a short one)
    try:
        assert proxy.record("first") == "first"
        link.hold_requests.set()
        proxy._pyroTimeout = 0.5
        with pytest.raises(errors.TimeoutError):
            proxy.record(("big", b"\0" * (64 * 1024 * 1024)))
        proxy._pyroTimeout = 20
        assert proxy._pyroConnection is None, "a connection with half a frame on it was kept"
        link.hold_requests.clear()
        assert proxy.record("next") == "next"
    finally:
        proxy._pyroRelease()
    assert ledger.runs == {"first": 1, "next": 1}


# ---------------------------------------------------------------- the daemon closes the connection

def test_a_connection_broken_after_the_call_ran_is_never_retried(start_daemon) -> None:
    """The daemon ran the call, then the connection broke before the reply (a crash mid-call): the
    lean lane's one recv sees the end; the proxy must say the call may have run, not run it again."""
    _, ledger, _, uri = serve(start_daemon)
    with meshrpc.Proxy(uri) as proxy:
        assert proxy.echo(1) == 1  # connected: the next call takes the lean lane
        with pytest.raises(errors.MaybeDeliveredError):
            proxy.record_then_hang_up("once")
        assert ledger.runs == {"once": 1}
        assert proxy.record("after") == "after"  # a fresh connection, transparently
        # an idempotent method may be run again: the retry brings its answer
        assert proxy.record_idempotent_then_hang_up("twice") == "twice"
    assert ledger.runs == {"once": 1, "after": 1, "twice": 2}


def test_a_connection_the_daemon_closed_while_idle_is_replaced_before_sending(start_daemon) -> None:
    """IDLE_TIMEOUT: the daemon closed the proxy's idle connection. The lean lane asks peer_closed
    before sending, so the call goes over a new connection and runs once, with no error; so does a
    oneway call (the general path)."""
    _, ledger, _, uri = serve(start_daemon, IDLE_TIMEOUT=1.0)  # (long enough for a loaded machine to send after connecting)
    with meshrpc.Proxy(uri) as proxy:
        for round_ in range(2):
            assert proxy.record(("before", round_)) == ("before", round_)
            conn = proxy._pyroConnection
            wait_until(conn.peer_closed, timeout=20, message="the daemon closing the idle connection")
            assert proxy.record(("after", round_)) == ("after", round_)
            assert proxy._pyroConnection is not conn
        conn = proxy._pyroConnection
        wait_until(conn.peer_closed, timeout=20, message="the daemon closing the idle connection")
        proxy.record_oneway("oneway")  # no reply would tell of a loss: it must go on a new connection
        wait_until(lambda: "oneway" in ledger.runs, timeout=10, message="the oneway call run")
    assert set(ledger.runs.values()) == {1} and len(ledger.runs) == 5


# ---------------------------------------------------------------- a shutdown while calls arrive

def test_calls_racing_a_shutdown_run_once_or_certainly_not(start_daemon) -> None:
    """Threads keep calling while the daemon shuts down (the calls-in-progress deque instead of a lock,
    the stop read as a flag): every call that returned ran exactly once, every NotDeliveredError did
    not run, a MaybeDeliveredError ran at most once, and nothing else is raised."""
    running, ledger, _, uri = serve(start_daemon)
    outcomes: list[tuple[Any, str]] = []
    started = threading.Barrier(9)
    stop_calling = threading.Event()

    def caller(index: int) -> None:
        with meshrpc.Proxy(uri, settings=meshrpc.Settings().copy(REBIND_TIMEOUT=0.5)) as proxy:
            proxy._pyroTimeout = 10
            proxy._pyroBind()
            started.wait(10)
            for n in range(100_000):
                token = (index, n)
                try:
                    proxy.record(token)
                    outcomes.append((token, "returned"))
                except errors.NotDeliveredError:
                    outcomes.append((token, "not run"))
                    return
                except errors.MaybeDeliveredError:
                    outcomes.append((token, "maybe"))
                    return
                except Exception as exc:  # noqa: BLE001 - anything else is the finding
                    outcomes.append((token, f"unexpected {type(exc).__name__}: {exc}"))
                    return
                if stop_calling.is_set() and n > 3:
                    return

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    started.wait(10)
    wait_until(lambda: len(ledger.runs) >= 200, timeout=20, message="calls running")
    running.daemon.shutdown()
    stop_calling.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    for token, outcome in outcomes:
        runs = ledger.runs.get(token, 0)
        if outcome == "returned":
            assert runs == 1, (token, runs)
        elif outcome == "not run":
            assert runs == 0, (token, runs)
        else:
            assert outcome == "maybe" and runs <= 1, (token, outcome, runs)
    assert all(count == 1 for count in ledger.runs.values())


# ---------------------------------------------------------------- requests that come together

@pytest.mark.parametrize("client", ["meshrpc", "Pyro5"])
def test_requests_that_arrive_in_one_read_are_all_served(start_daemon, client: str) -> None:
    """Oneway calls need no reply, so a proxy sends the next request at once: many come in one read.
    The worker goes on with what is buffered after each request (it skips the NEED_DATA round only
    when nothing is): every oneway runs once, and the two-way calls between them get their answers."""
    _, ledger, _, uri = serve(start_daemon)
    proxy = meshrpc.Proxy(uri) if client == "meshrpc" else Pyro5.api.Proxy(str(uri))
    with proxy:
        for n in range(300):
            proxy.record_oneway(("oneway", n))
            if n % 50 == 49:
                assert proxy.record(("two-way", n)) == ("two-way", n)
    wait_until(lambda: len(ledger.runs) == 306, timeout=30, message="every oneway call run")
    assert set(ledger.runs.values()) == {1}


def test_a_call_answered_during_the_drain_extends_it_before_it_stops_counting(start_daemon) -> None:
    """The shutdown drain waits while a call is in progress, and for SHUTDOWN_DRAIN_MIN after the last
    answer (its client may call again at once, and must hear "not run" rather than a closed
    connection). The call must leave the count only once its answer's time is recorded: the drain
    reads both without a lock, and in the other order it could see neither and close at once."""
    import collections
    running, ledger, service, uri = serve(start_daemon)
    server = running.daemon._connection_server
    seen: list[bool] = []
    stopped_at: list[float] = []

    class Watched(collections.deque):
        def pop(self) -> Any:
            if server._stopping:  # what the drain would see if it looked right after this pop
                seen.append(bool(stopped_at) and server._answered_while_stopping >= stopped_at[0])
            return super().pop()

    server._active_calls = Watched()
    with meshrpc.Proxy(uri) as proxy:
        proxy._pyroBind()
        caller = threading.Thread(target=lambda: proxy.record_slowly("in progress"), daemon=True)
        caller.start()
        assert service.entered.wait(10)
        import time
        stopped_at.append(time.monotonic())
        running.daemon.shutdown()  # the drain waits for the call in progress
        service.release.set()
        caller.join(10)
        wait_until(lambda: seen, timeout=10, message="the call leaving the count")
    assert seen == [True], "the call left the count before its answer's time was recorded"
    assert ledger.runs == {"in progress": 1}


# ---------------------------------------------------------------- one proxy, many threads

def test_a_proxy_shared_by_threads_mixing_lanes_gives_each_its_own_answer(start_daemon) -> None:
    """Threads share one proxy (after _pyroClaimOwnership, as Pyro5 programs do); some calls take the
    lean lane, others the general path (a correlation id, annotations, oneway, a stream), in any
    order: each call gets its own answer and its own context."""
    _, ledger, _, uri = serve(start_daemon)
    proxy = meshrpc.Proxy(uri)
    proxy._pyroTimeout = 20
    failures: list[str] = []

    def worker(index: int) -> None:
        proxy._pyroClaimOwnership()
        for n in range(60):
            try:
                kind = (index + n) % 4
                if kind == 0:
                    assert proxy.echo((index, n)) == (index, n)
                elif kind == 1:
                    corr = uuid.uuid4()
                    current_context.correlation_id = corr
                    try:
                        assert proxy.context() == (str(corr), [])
                    finally:
                        current_context.correlation_id = None
                    assert proxy.context()[0] != str(corr)
                elif kind == 2:
                    assert proxy.answer_with_annotation(n) == n
                    assert current_context.response_annotations == {"XTRA": b"extra"}
                    assert proxy.echo(n) == n
                    assert current_context.response_annotations == {}
                else:
                    assert list(proxy.count(3)) == [0, 1, 2]
                    assert proxy.record((index, n)) == (index, n)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"thread {index} call {n}: {exc!r}")
                return

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    proxy._pyroRelease()
    assert not failures, failures[:5]
    assert all(count == 1 for count in ledger.runs.values())


def test_annotations_and_correlation_ids_set_between_calls_are_sent_then_forgotten(start_daemon) -> None:
    _, _, _, uri = serve(start_daemon)
    with meshrpc.Proxy(uri) as proxy:
        first = proxy.context()
        assert first[0] and first[1] == []  # a fresh id, made by the daemon
        corr = uuid.uuid4()
        current_context.correlation_id = corr
        current_context.annotations = {"ABCD": b"1"}
        try:
            assert proxy.context() == (str(corr), ["ABCD"])
        finally:
            current_context.correlation_id = None
            current_context.annotations = {}
        plain = proxy.context()
        assert plain[1] == [] and plain[0] != str(corr)


# ---------------------------------------------------------------- large frames on a busy daemon

@pytest.mark.parametrize("servertype", ["multiplex", "thread"])
def test_large_calls_reach_a_daemon_whose_workers_poll_between_reads(start_daemon, servertype: str) -> None:
    """SERVERTYPE multiplex (one worker, so it polls its socket between the reads of a frame instead of
    one blocking read): a low-water mark left at 1 MiB after a read that took all but the last half MiB
    kept that poll (and the selector's) from ever seeing the tail, and the call hung."""
    _, _, _, uri = serve(start_daemon, SERVERTYPE=servertype, SERIALIZER="marshal")
    settings = meshrpc.Settings().copy(SERIALIZER="marshal")
    with meshrpc.Proxy(uri, settings=settings) as proxy:
        proxy._pyroTimeout = 10
        for mib in (10, 3, 4.1, 2.2, 6.5, 10):
            size = int(mib * 1024 * 1024)
            assert proxy.size(b"\x01" * size) == size, f"{mib} MiB"
            assert proxy.echo(1) == 1  # a small call right after a large one


@pytest.mark.parametrize("servertype", ["multiplex", "thread"])
def test_a_large_frame_whose_tail_never_comes_holds_up_nobody_else(start_daemon, servertype: str) -> None:
    """A client sends the first 3 MiB of a 10 MiB request and then nothing (a link that died, a peer
    that hangs): the daemon's worker reads what came with the low-water mark and must give the
    connection back, so other clients are served, even by a daemon with one worker (multiplex)."""
    from meshrpc.wire.serializers import BY_NAME
    from meshrpc.wire.session import ClientSession, Connected
    _, _, _, uri = serve(start_daemon, SERVERTYPE=servertype)
    session = ClientSession(BY_NAME["marshal"], meshrpc.Settings())
    with socket.create_connection((uri.host, uri.port), timeout=10) as stuck:
        stuck.sendall(b"".join(session.connect_request(uri.object, "hello")))
        while not isinstance(session.next_event(), Connected):
            session.receive_data(stuck.recv(65536))
        request = _invoke(2, 1, _call(uri.object, "size", (b"\0" * (10 * 1024 * 1024),)))
        stuck.sendall(request[:3 * 1024 * 1024])
        with meshrpc.Proxy(uri) as other:
            other._pyroTimeout = 10
            for n in range(20):
                assert other.echo(n) == n


# ---------------------------------------------------------------- Pyro5 on either side

def test_pyro5_proxies_on_many_threads_get_their_own_replies(start_daemon) -> None:
    """Replies of plain connections go out without the send lock: Pyro5 proxies (serpent text, one per
    thread, and one shared proxy) must each get their own, whole answers."""
    _, ledger, _, uri = serve(start_daemon)
    failures: list[str] = []
    shared = Pyro5.api.Proxy(str(uri))
    shared_lock = threading.Lock()

    def worker(index: int) -> None:
        try:
            with Pyro5.api.Proxy(str(uri)) as own:
                for n in range(40):
                    assert own.echo([index, n, "x" * (n * 37)]) == [index, n, "x" * (n * 37)]
                    with shared_lock:  # Pyro5's proxies are owned by one thread at a time
                        shared._pyroClaimOwnership()
                        assert shared.record(f"{index}-{n}") == f"{index}-{n}"
                    try:
                        own.fail("no")
                    except ValueError:
                        pass
        except Exception as exc:  # noqa: BLE001
            failures.append(f"thread {index}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    shared._pyroClaimOwnership()
    shared._pyroRelease()
    assert not failures, failures[:5]
    assert len(ledger.runs) == 240 and set(ledger.runs.values()) == {1}


class Pyro5Service:
    def __init__(self) -> None:
        self.runs: dict[Any, int] = {}

    @Pyro5.api.expose
    def echo(self, value: Any) -> Any:
        return value

    @Pyro5.api.expose
    def record(self, token: Any) -> Any:
        self.runs[token] = self.runs.get(token, 0) + 1
        return token

    @Pyro5.api.expose
    def fail(self, text: str) -> None:
        raise ValueError(text)

    @Pyro5.api.expose
    def count(self, n: int):
        return iter(range(n))


def test_the_lean_lane_against_a_pyro5_daemon() -> None:
    """Against Pyro5's daemon (serpent text replies, its own flags): the lane's answers equal the
    general path's, and a shared meshrpc proxy serves several threads."""
    service = Pyro5Service()
    daemon = Pyro5.api.Daemon(host=HOST)
    uri = daemon.register(service)
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    loop.start()
    try:
        with meshrpc.Proxy(str(uri)) as proxy:
            proxy._pyroTimeout = 20
            assert proxy.echo(1) == 1
            assert proxy.echo("text") == "text"
            value = [1, 2.5, None, {"a": (1, 2)}, "x" * 5000]
            lean = proxy.echo(value)
            current_context.annotations = {"ABCD": b"1"}  # the general path, for reference
            try:
                assert proxy.echo(value) == lean == value
            finally:
                current_context.annotations = {}
            with pytest.raises(ValueError, match="boom"):
                proxy.fail("boom")
            assert list(proxy.count(4)) == [0, 1, 2, 3]
            failures: list[str] = []

            def worker(index: int) -> None:
                try:
                    for n in range(30):
                        assert proxy.record(f"{index}-{n}") == f"{index}-{n}"
                except Exception as exc:  # noqa: BLE001
                    failures.append(repr(exc))

            threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(40)
            assert not failures, failures[:3]
        assert len(service.runs) == 120 and set(service.runs.values()) == {1}
    finally:
        daemon.shutdown()
        loop.join(10)


# ---------------------------------------------------------------- malformed replies, lane and general path alike

def _usual(session: Any, frame: wire.Frame) -> bytes:
    return b"".join(session.result_reply(frame, 1))


MALFORMED = {
    "wrong protocol version": lambda s, f: _usual(s, f)[:4] + b"\x01\xf7" + _usual(s, f)[6:],
    "bad tag": lambda s, f: b"XYRO" + _usual(s, f)[4:],
    "bad magic": lambda s, f: _usual(s, f)[:38] + b"\x00\x00" + _usual(s, f)[40:],
    "unknown message type": lambda s, f: _usual(s, f)[:6] + b"\x63" + _usual(s, f)[7:],
    "wrong type": lambda s, f: wire.encode(wire.Frame(wire.MSG_CONNECTOK, f.serializer_id, f.seq, b"N")),
    "wrong seq": lambda s, f: wire.encode(wire.Frame(wire.MSG_RESULT, f.serializer_id, (f.seq + 5) & 0xFFFF, b"N")),
    "oversized length": lambda s, f: _usual(s, f)[:12] + (1 << 30).to_bytes(4, "big") + _usual(s, f)[16:],
    "unknown serializer": lambda s, f: wire.encode(wire.Frame(wire.MSG_RESULT, 99, f.seq, b"N")),
    "truncated header, then closed": lambda s, f: _usual(s, f)[:20],
    "half a payload, then closed": lambda s, f: _usual(s, f)[:-1],
    "undecodable payload": lambda s, f: wire.encode(wire.Frame(wire.MSG_RESULT, f.serializer_id, f.seq, b"\xff\xfe")),
    "a reply and garbage": lambda s, f: _usual(s, f) + b"XYRO" + bytes(36),
}


class BadDaemon:
    """Completes the handshake with the real server session, then answers the first call with the
    bytes `reply(session, frame)` gives, and closes the connection."""

    def __init__(self, reply: Callable[[Any, wire.Frame], bytes]) -> None:
        self.reply = reply
        self.listener = socket.create_server((HOST, 0))
        self.uri = f"PYRO:obj@{HOST}:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from meshrpc.wire.session import NEED_DATA, ConnectRequest, ServerSession
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with sock:
                session = ServerSession(meshrpc.Settings(), pipelining=False)
                try:
                    while data := sock.recv(65536):
                        session.receive_data(data)
                        while (event := session.next_event(None if session.handshaken else 0.0)) is not NEED_DATA:
                            if isinstance(event, ConnectRequest):
                                sock.sendall(b"".join(session.accept_connect(event, "hello", {"methods": {"echo"}})))
                            else:
                                sock.sendall(self.reply(session, event))
                                raise EOFError
                except (EOFError, OSError):
                    pass

    def close(self) -> None:
        self.listener.close()


def _outcome(uri: str, general: bool) -> tuple:
    with meshrpc.Proxy(uri, settings=meshrpc.Settings().copy(MAX_MESSAGE_SIZE=1 << 20)) as proxy:
        proxy._pyroTimeout = 10
        proxy._pyroBind()
        if general:  # annotations to send: the general path, for reference
            current_context.annotations = {"ABCD": b"1"}
        try:
            return ("value", proxy.echo(1))
        except Exception as exc:  # noqa: BLE001 - the outcome compared
            return ("raised", type(exc), str(exc), proxy._pyroConnection is None)
        finally:
            current_context.annotations = {}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_reply_gives_the_same_clear_error_in_the_lean_lane(name: str) -> None:
    """Every malformed reply: the lane's one recv and bare header check must end as the general path
    ends (the same error kind and words, the connection closed or kept alike)."""
    bad = BadDaemon(MALFORMED[name])
    try:
        lane, general = _outcome(bad.uri, False), _outcome(bad.uri, True)
    finally:
        bad.close()
    assert lane == general
    if name != "undecodable payload":
        assert lane[0] == "raised" and issubclass(lane[1], errors.CommunicationError), lane


# ---------------------------------------------------------------- the asyncio proxy's lone-call lane

def run(coro: Any) -> Any:
    return __import__("asyncio").run(coro)


@pytest.mark.parametrize("serializer", ["serpent", "marshal"])
def test_aio_replies_cut_anywhere_give_what_whole_replies_give(start_daemon, links, serializer: str) -> None:
    """The aio proxy's lone call reads its reply in the selector sleep and takes the usual one as its
    payload: a first piece read there must be kept for the rest, for every kind of reply."""
    import meshrpc.aio
    _, _, _, uri = serve(start_daemon)
    link = links(address(uri), lambda n, frame: cut(frame))
    settings = meshrpc.Settings().copy(SERIALIZER=serializer)

    async def session(target: Any) -> list:
        out = []
        async with meshrpc.aio.Proxy(target, settings=settings) as proxy:
            proxy._pyroTimeout = 20
            out.append(await proxy.echo(1))
            out.append(await proxy.echo(["x" * 200, 2.5, None]))
            out.append(await proxy.answer_with_annotation(3))
            out.append(dict(current_context.response_annotations))
            out.append(await proxy.echo(4))
            out.append(dict(current_context.response_annotations))
            try:
                await proxy.fail("boom")
            except ValueError as exc:
                out.append(("raised", str(exc)))
            out.append([item async for item in await proxy.count(4)])
        return out

    assert run(session(link.uri(uri))) == run(session(uri))


@pytest.mark.parametrize("daemon_kind", ["threaded", "aio"])
def test_aio_a_timeout_mid_reply_raises_once_and_the_next_call_gets_its_own_answer(start_daemon, links,
                                                                                 daemon_kind: str) -> None:
    """The aio proxy's call whose reply stalls after its first bytes (the lone call read them in its
    selector sleep) and comes whole only after the timeout: a TimeoutError within the proxy's timeout, the
    call not run again, and the next call gets its own answer (a daemon that does not pipeline: on a new
    connection; one that does: on the same one, the late reply dropped)."""
    import asyncio

    import meshrpc.aio
    ledger = Ledger()
    stalled = 3  # reply 1 is the CONNECTOK, 2 the first call's

    async def main() -> None:
        if daemon_kind == "aio":
            daemon = meshrpc.aio.Daemon(host=HOST)
            uri = daemon.register(Service(ledger), "svc")
            await daemon.__aenter__()
        else:
            running = start_daemon()
            uri = running.register(Service(ledger), "svc")
        try:
            late = threading.Event()
            link = links(address(uri), lambda n, frame: [frame[:wire.HEADER_SIZE + 2], late, frame[wire.HEADER_SIZE + 2:]]
                         if n == stalled else [frame])
            async with meshrpc.aio.Proxy(link.uri(uri)) as proxy:
                proxy._pyroTimeout = 20  # (a loaded machine: only the stalled call has a short one)
                assert await proxy.record("first") == "first"
                proxy._pyroTimeout = 0.5
                with pytest.raises(errors.TimeoutError):
                    await proxy.record("second")
                proxy._pyroTimeout = 20
                late.set()  # its reply comes after all, late: it must go nowhere
                assert ledger.runs.get("second") == 1
                assert await asyncio.wait_for(proxy.record("third"), 20) == "third"
                assert await proxy.echo(4) == 4
        finally:
            if daemon_kind == "aio":
                await daemon.__aexit__(None, None, None)

    run(main())
    assert ledger.runs == {"first": 1, "second": 1, "third": 1}


def test_aio_cancelled_calls_run_once_or_never_and_leave_the_turn_free(start_daemon) -> None:
    """On a daemon that does not pipeline, calls take turns. A call cancelled while it waits for the
    turn was never sent (it never runs); one cancelled while it waits for its reply ran once and is not
    run again; the turn is free afterwards and the next call gets its own answer."""
    import asyncio

    import meshrpc.aio
    _, ledger, service, uri = serve(start_daemon)

    async def scenario() -> None:
        async with meshrpc.aio.Proxy(uri) as proxy:
            proxy._pyroTimeout = 20
            slow = asyncio.ensure_future(proxy.record_slowly("slow"))
            await asyncio.get_running_loop().run_in_executor(None, service.entered.wait, 10)
            queued = asyncio.ensure_future(proxy.record("queued"))
            await asyncio.sleep(0)  # it asks for the turn and waits
            queued.cancel()
            slow.cancel()  # waiting for its reply: the call ran, its late reply must go nowhere
            for task in (queued, slow):
                with pytest.raises(asyncio.CancelledError):
                    await task
            service.release.set()
            assert await proxy.record("next") == "next"
            assert await proxy.echo(5) == 5

    run(scenario())
    assert ledger.runs == {"slow": 1, "next": 1}


def test_aio_lone_calls_against_a_pyro5_daemon() -> None:
    """The aio lane's bare payload with Pyro5's serpent text replies, errors and streams."""
    import meshrpc.aio
    service = Pyro5Service()
    daemon = Pyro5.api.Daemon(host=HOST)
    uri = str(daemon.register(service))
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    loop.start()

    async def scenario() -> list:
        out = []
        async with meshrpc.aio.Proxy(uri) as proxy:
            for n in range(20):
                out.append(await proxy.record(n))
            out.append(await proxy.echo({"a": (1, 2), "b": "x" * 3000}))
            with pytest.raises(ValueError, match="boom"):
                await proxy.fail("boom")
        return out

    try:
        out = run(scenario())
    finally:
        daemon.shutdown()
        loop.join(10)
    assert out == list(range(20)) + [{"a": (1, 2), "b": "x" * 3000}]
    assert set(service.runs.values()) == {1} and len(service.runs) == 20


class AsyncService:
    @meshrpc.expose
    async def context_after_waiting(self, delay: float, tag: str) -> tuple:
        import asyncio
        current_context.response_annotations["TAG_"] = tag.encode()
        before = current_context.correlation_id
        await asyncio.sleep(delay)
        after = current_context.correlation_id
        return str(before), str(after), sorted(current_context.annotations)

    @meshrpc.expose
    async def quick(self, tag: str) -> tuple:
        current_context.response_annotations["TAG_"] = tag.encode()
        return str(current_context.correlation_id), tag


def test_aio_daemon_calls_interleaving_on_one_connection_keep_their_own_context() -> None:
    """The aio daemon's `async def` call is one coroutine with its context begun directly: pipelined
    calls on one connection that wait (and others that do not) in between must each see their own
    correlation id and annotations, and send back their own response annotations."""
    import asyncio
    import random

    import meshrpc.aio

    async def one(proxy: Any, index: int) -> None:
        corr = uuid.uuid4()
        current_context.correlation_id = corr  # this task's
        current_context.annotations = {"IDX_": str(index).encode()}
        if index % 3:
            got = await proxy.context_after_waiting(random.random() * 0.02, str(index))
            assert got == (str(corr), str(corr), ["IDX_"]), (index, got)
        else:
            assert await proxy.quick(str(index)) == (str(corr), str(index))
        assert current_context.response_annotations.get("TAG_") == str(index).encode()

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host=HOST)
        uri = daemon.register(AsyncService(), "svc")
        async with daemon:
            async with meshrpc.aio.Proxy(uri) as proxy:
                for _ in range(3):
                    await asyncio.gather(*(one(proxy, i) for i in range(60)))

    run(main())


def test_aio_bursts_whose_replies_come_in_pieces_are_matched_right(links) -> None:
    """A pipelined burst (aio proxy, aio daemon) whose replies come cut in two anywhere, some read
    between the burst's corked batches: every call gets its own answer."""
    import asyncio

    import meshrpc.aio

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host=HOST)
        uri = daemon.register(AsyncService(), "svc")
        async with daemon:
            link = links(address(uri), lambda n, frame: [frame[:n % len(frame)], frame[n % len(frame):]])
            link.gap = 0.0002
            async with meshrpc.aio.Proxy(link.uri(uri)) as proxy:
                for _ in range(2):
                    tags = [f"{i}-" + "p" * (i % 97) for i in range(400)]
                    got = await asyncio.gather(*(proxy.quick(tag) for tag in tags))
                    assert [tag for _, tag in got] == tags

    run(main())


def block_loop_until_the_daemon_closed(proxy: Any) -> None:
    """Keep the loop busy (blocked here) while the daemon closes the aio proxy's idle connection: the
    FIN is in, the loop has not seen it."""
    sock = proxy._conn.transport.get_extra_info("socket")
    wait_until(lambda: sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1) != b"\x01", timeout=20,
               message="the daemon closing the idle connection")


def test_aio_a_connection_the_daemon_closed_while_the_loop_was_busy_is_not_delivered(start_daemon) -> None:
    """IDLE_TIMEOUT closed the aio proxy's connection while its loop was busy (the FIN not yet seen by
    the loop). The call that follows cannot have run: like the threaded proxy (peer_closed), the aio
    proxy must replace the connection and run it once, not report that it may have run."""
    import asyncio

    import meshrpc.aio
    _, ledger, _, uri = serve(start_daemon, IDLE_TIMEOUT=1.0)  # (long enough for a loaded machine to send after connecting)

    async def main() -> Any:
        async with meshrpc.aio.Proxy(uri) as proxy:
            assert await proxy.record("before") == "before"
            block_loop_until_the_daemon_closed(proxy)
            return await proxy.record("after")

    assert run(main()) == "after"
    assert ledger.runs == {"before": 1, "after": 1}


def test_aio_a_oneway_call_on_a_connection_the_daemon_closed_is_not_lost(start_daemon) -> None:
    """The same for a oneway call, which has no reply to tell anything: written into a connection the
    daemon closed while the loop was busy, it was lost without a word. The threaded proxy asks
    peer_closed before a oneway call too and sends it on a new connection; so must the aio proxy."""
    import meshrpc.aio
    _, ledger, _, uri = serve(start_daemon, IDLE_TIMEOUT=1.0)  # (long enough for a loaded machine to send after connecting)

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri) as proxy:
            assert await proxy.record("before") == "before"
            block_loop_until_the_daemon_closed(proxy)
            await proxy.record_oneway("oneway")

    run(main())
    wait_until(lambda: "oneway" in ledger.runs, timeout=10, message="the oneway call run")
    assert ledger.runs == {"before": 1, "oneway": 1}


def test_futures_from_many_threads_take_turns_on_the_background_loop(start_daemon) -> None:
    """meshrpc.asyncproxy: calls from many threads land on the one background loop (its selector sleep
    for a lone call's reply is cut short by each other thread's call) and take turns on a daemon that
    does not pipeline: each gets its own answer, each runs once."""
    _, ledger, _, uri = serve(start_daemon)
    failures: list[str] = []
    with meshrpc.asyncproxy(meshrpc.Proxy(uri)) as calls:
        def worker(index: int) -> None:
            try:
                for n in range(40):
                    futures = [calls.record((index, n, k)) for k in range(3)]
                    assert [f.value for f in futures] == [(index, n, k) for k in range(3)]
            except Exception as exc:  # noqa: BLE001
                failures.append(f"thread {index}: {exc!r}")

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(50)
    assert not failures, failures[:3]
    assert len(ledger.runs) == 720 and set(ledger.runs.values()) == {1}


# ---------------------------------------------------------------- the daemon's request lane: odd requests

def _invoke(serializer_id: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    return wire.encode(wire.Frame(wire.MSG_INVOKE, serializer_id, seq, payload, flags))


def _call(object_id: str, method: str, vargs: Any, kwargs: Any = None) -> bytes:
    import marshal
    return marshal.dumps((object_id, method, vargs, {} if kwargs is None else kwargs))


ODD_REQUESTS: dict[str, Callable[[str], bytes]] = {
    "usual": lambda oid: _invoke(2, 1, _call(oid, "echo", (1,))),
    "unknown object": lambda oid: _invoke(2, 1, _call("nobody", "echo", (1,))),
    "unknown method": lambda oid: _invoke(2, 1, _call(oid, "nothing", (1,))),
    "wrong arguments": lambda oid: _invoke(2, 1, _call(oid, "echo", (1, 2, 3))),
    "not a 4-tuple": lambda oid: _invoke(2, 1, __import__("marshal").dumps([oid, "echo", (1,)])),
    "vargs not a tuple": lambda oid: _invoke(2, 1, _call(oid, "echo", 5)),
    "kwargs not a dict": lambda oid: _invoke(2, 1, _call(oid, "echo", (1,), [1])),
    "object id not a str": lambda oid: _invoke(2, 1, _call(7, "echo", (1,))),  # type: ignore[arg-type]
    "undecodable payload": lambda oid: _invoke(2, 1, b"\xff\xfe\xfd"),
    "truncated marshal": lambda oid: _invoke(2, 1, _call(oid, "echo", ("x" * 50,))[:-10]),
    "another serializer (serpent)": lambda oid: _invoke(1, 1, b"# serpent utf-8 python3.2\n('%s','echo',(1,),{})" % oid.encode()),
    "unknown serializer": lambda oid: _invoke(99, 1, _call(oid, "echo", (1,))),
    "wrong protocol version": lambda oid: _invoke(2, 1, _call(oid, "echo", (1,)))[:4] + b"\x01\xf7"
                                            + _invoke(2, 1, _call(oid, "echo", (1,)))[6:],
    "bad magic": lambda oid: _invoke(2, 1, _call(oid, "echo", (1,)))[:38] + b"\0\0"
                               + _invoke(2, 1, _call(oid, "echo", (1,)))[40:],
    "oversized length": lambda oid: _invoke(2, 1, b"x")[:12] + (0xFFFFFFF0).to_bytes(4, "big") + _invoke(2, 1, b"x")[16:],
    "a result instead of a request": lambda oid: wire.encode(wire.Frame(wire.MSG_RESULT, 2, 1, _call(oid, "echo", (1,)))),
    "two requests at once": lambda oid: _invoke(2, 1, _call(oid, "echo", (1,))) + _invoke(2, 2, _call(oid, "echo", (2,))),
    "a request and half of the next": lambda oid: _invoke(2, 1, _call(oid, "echo", (1,))) + _invoke(2, 2, b"N")[:20],
}


SENTINEL_SEQ = 9  # a usual request sent after the odd one: its answer ends the wait


def _answers(uri: meshrpc.URI, request: bytes, incomplete: bool) -> tuple:
    """What the daemon sends back to `request` and a usual request after it (after a marshal
    handshake): each reply's type, flags, seq and decoded payload, and whether it closed the connection.
    `incomplete`: the request ends in part of a frame, so nothing can follow it: once the first
    request is answered this side ends its writing, and the daemon's close ends the wait."""
    from meshrpc.wire.serializers import BY_ID, BY_NAME
    from meshrpc.wire.session import ClientSession, Connected
    session = ClientSession(BY_NAME["marshal"], meshrpc.Settings())
    with socket.create_connection((uri.host, uri.port), timeout=10) as sock:
        sock.sendall(b"".join(session.connect_request(uri.object, "hello")))
        while not isinstance(session.next_event(), Connected):
            session.receive_data(sock.recv(65536))
        if not incomplete:
            request += _invoke(2, SENTINEL_SEQ, _call(uri.object, "echo", ("sentinel",)))
        last = 1 if incomplete else SENTINEL_SEQ
        sock.sendall(request)
        reader, replies, closed = wire.FrameReader(), [], False
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    closed = True
                    break
                reader.feed(data)
                while (frame := reader.next_frame()) is not None:
                    value = BY_ID[frame.serializer_id].loads(frame.payload)
                    replies.append((frame.type, frame.flags, frame.seq, repr(value)[:300]))
                if any(seq == last for _, _, seq, _ in replies):
                    if not incomplete:
                        break
                    sock.shutdown(socket.SHUT_WR)  # half a frame, then the end: the daemon closes
                    incomplete = False
                    last = -1
        except ConnectionResetError:
            closed = True
    return tuple(replies), closed


@pytest.mark.parametrize("name", sorted(ODD_REQUESTS))
def test_odd_requests_get_the_same_answer_with_and_without_the_daemons_lane(start_daemon, name: str) -> None:
    """The daemon's frame-less request lane (ServerSession.receive_request, taken by a worker's blocking
    read) against its general path (LOGWIRE turns the lane off): every odd or broken request gets the
    same replies, and the connection is closed or kept alike."""
    answers = []
    for logwire in (False, True):
        running = start_daemon(settings=meshrpc.Settings().copy(LOGWIRE=logwire))
        uri = running.register(Service(Ledger()), "svc")
        answers.append(_answers(uri, ODD_REQUESTS[name](uri.object), name == "a request and half of the next"))
    assert answers[0] == answers[1]
    if name == "usual":
        assert answers[0] == (((wire.MSG_RESULT, 0, 1, "1"), (wire.MSG_RESULT, 0, SENTINEL_SEQ, "'sentinel'")), False)
