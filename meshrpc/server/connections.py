"""The connection server of a daemon: drives its sockets with threads (docs/architecture.md).

One selector loop (`requestLoop`, or an external loop through `sockets`/`events`) watches the
listening socket and every *idle* connection. When an idle connection has data, it is handed to a
worker of a bounded pool, which reads and answers requests on it and keeps watching it for
WORKER_LINGER seconds (a chatty client then pays no thread hand-off), then hands it back. Idle
connections hold no thread, so hundreds of connected proxies are fine.

Each connection's protocol is its wire.session.ServerSession; calls run through the daemon's
server.dispatch.Dispatcher. Here: sockets, TLS, threads, parking, reaping, the shutdown drain.
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import select
import socket
import threading
import time
import weakref
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .. import errors
from ..config import Settings
from ..context import call_state, current_context
from ..errors import ProtocolError, SerializeError
from ..limits import HOUSEKEEPING_INTERVAL, SHUTDOWN_DRAIN_MIN, SHUTDOWN_GRACE
from ..transport.sockets import FramedConnection, limit_receive_time, limit_send_time, notice_dead_peer
from ..transport.spin import SpinGate
from ..wire import frame as wire
from ..wire.constants import UNKNOWN_OBJECT_REASON
from ..wire.serializers import BY_ID, Serializer
from .dispatch import awaitable_refused
from ..wire.session import NEED_DATA, TAKE_EVENT, ConnectRequest, ServerSession, refusal_for
from .pool import WorkerPool

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("meshrpc.server")

_SPECIAL_REPLY = wire.FLAG_ITEMSTREAMRESULT | wire.FLAG_EXCEPTION  # reply flags that need another answer
_ONEWAY, _ITEMSTREAMRESULT, _INVOKE = wire.FLAG_ONEWAY, wire.FLAG_ITEMSTREAMRESULT, wire.MSG_INVOKE


# what a TLS daemon (threaded or aio) answers, in the clear, to a client that sent plain protocol 502
PLAIN_CLIENT_REFUSAL = ("this daemon accepts TLS connections only: set SSL=True on the client (and SSL_CACERTS to "
                        "the CA of the daemon's certificate); see docs/security.md")

class ClientConnection(FramedConnection):
    """A client's connection as the daemon sees it."""

    def __init__(self, sock: socket.socket, addr: Any, settings: Settings) -> None:
        # requests are answered one after the other here: no pipelining (a slow call would hold up the
        # calls behind it; a proxy that gives up on one reconnects instead)
        protocol = ServerSession(settings, pipelining=False)
        super().__init__(sock, settings.MAX_MESSAGE_SIZE, protocol=protocol, spin_gate=SpinGate.from_settings(settings))
        self.protocol: ServerSession = protocol
        self.addr = addr
        self.session: dict[str, Any] = {}  # per-connection instances ("session" mode)
        self.pyroInstances = self.session  # Pyro5's name for them
        # current_context.track_resource(r): r.close() runs when this connection closes
        self.tracked_resources: weakref.WeakSet[Any] = weakref.WeakSet()
        self.idle_poller: Any = None  # the socket and the pool's backlog signal (set by the daemon)
        self.oneways: collections.deque[tuple[wire.Frame, tuple]] = collections.deque()
        self.oneway_lock = threading.Lock()
        self.oneway_draining = False
        self.connected_at = time.time()
        self.dropping = False  # the daemon is letting it go (clientDisconnect runs once, before closing)
        # reads time out after WORKER_LINGER (plain sockets): a lingering worker may block in one read
        self.timed_reads = False

    # what the handshake agreed, as Pyro5's connection objects show it (e.g. to validateHandshake)
    @property
    def handshaken(self) -> bool:
        return self.protocol.handshaken

    @property
    def object_id(self) -> str | None:
        """The object named in the accepted handshake."""
        return self.protocol.object_id

    @property
    def serializer(self) -> Serializer | None:
        return self.protocol.serializer

    def send_reply(self, parts: list) -> None:
        """send_parts for the worker serving this connection: only that worker writes to a client's
        connection (one request at a time, answered in turn), so a plain socket needs no send lock
        (a `with` per reply is a tenth of a microsecond and more); TLS goes through send_parts."""
        if self.tls is not None:
            self.send_parts(parts)
        else:
            self.send_unlocked(parts)

    def __repr__(self) -> str:
        return f"<ClientConnection {self.addr}>"


class ConnectionServer:
    """Serves a daemon's listening socket with a selector loop and a bounded pool of workers.

    `daemon` provides the hooks (validateHandshake, clientDisconnect), the goodbyes (_withdraw) and
    close(); `dispatch` runs the calls; `streams` is the daemon's stream table."""

    def __init__(self, daemon: "Daemon", listener: socket.socket, unixsocket: str | None, tls_context: Any,
                 location: str) -> None:
        self.daemon = daemon
        self.settings = settings = daemon.settings
        self._dispatch = daemon._dispatch
        self._streams = daemon._streams
        self._listener = listener
        self._unixsocket = unixsocket
        self._tls_context = tls_context
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._connections: set[ClientConnection] = set()
        self._drop_lock = threading.Lock()
        self._parked: dict[socket.socket, ClientConnection] = {}
        self._to_park: collections.deque[ClientConnection] = collections.deque()
        # SERVERTYPE multiplex: one call at a time, as Pyro5's multiplexed server runs them
        self._pool = WorkerPool(1 if settings.SERVERTYPE == "multiplex" else settings.THREADPOOL_SIZE)
        self._stop = threading.Event()
        self._stopping = False  # _stop.is_set(), read on every request without a call
        self._loop_done = threading.Event()
        self._loop_done.set()
        self._next_housekeeping = 0.0
        # one entry per call in progress: append and pop are atomic, so no lock per call. A worker adds
        # its call before it looks at the stop flag, and the stop is set before the drain counts: every
        # call let in is counted (the flag and the count are read and written in that order, under the GIL)
        self._active_calls: collections.deque[None] = collections.deque()
        self._answered_while_stopping = 0.0  # monotonic time a call in progress at the stop answered
        self._serving = 0  # workers serving a connection now: spinning pays only for a lone one
        self._serving_lock = threading.Lock()  # += on an attribute is not atomic across threads
        self._server_spin = settings.SERVER_SPIN and settings.SPIN_WAIT > 0  # off: not even the gate is asked
        self._logwire = settings.LOGWIRE
        # --- security: the plaintext warning, and the thread that enforces HANDSHAKE_TIMEOUT/IDLE_TIMEOUT
        if not unixsocket and tls_context is None and not settings.KEY:
            _warn_if_exposed(listener, location)
        self._start_reaper()

    @property
    def _calls_in_progress(self) -> int:
        return len(self._active_calls)

    # ------------------------------------------------------------------ the selector loop

    @property
    def sockets(self) -> list[socket.socket]:
        """Sockets for an external select loop: pass the readable ones to `events()`."""
        self._drain_parking()
        # the wake-up socket brings connections back from workers: not needed while there are none
        return [self._listener, *([self._wake_r] if self._connections else []), *self._parked]

    def events(self, eventsockets: Iterable[socket.socket]) -> None:
        """Handle readable sockets (from `sockets`) found by an external select loop."""
        for sock in eventsockets:
            if sock is self._listener:
                self._accept()
            elif sock is self._wake_r:
                self._drain_wakeups()
            else:
                conn = self._parked.pop(sock, None)
                if conn is not None:
                    self._unpark(conn)
                    self._pool.submit(self._serve, conn)
        self._drain_parking()
        self._housekeeping()

    def requestLoop(self, loopCondition: Callable[[], bool] = lambda: True) -> None:
        """Serve until `shutdown()` is called or `loopCondition()` returns false."""
        import selectors
        self._loop_done.clear()
        if self._stop.is_set():
            # shutdown() came before the loop (a SIGTERM right after start-up): it closed the daemon
            # itself, or the close below does it; there is nothing left to serve.
            self._loop_done.set()
            self.daemon.close()
            return
        selector = selectors.DefaultSelector()
        self._selector = selector
        try:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            for sock in self._parked:
                selector.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set() and loopCondition():
                ready = selector.select(self.settings.POLLTIMEOUT)
                self.events([key.fileobj for key, _ in ready])  # type: ignore[misc]
            if self._stop.is_set():
                self._drain(selector)
        finally:
            self._selector = None
            selector.close()
            self._loop_done.set()
            if self._stop.is_set():
                self.daemon.close()

    _selector: Any = None

    def _park(self, conn: ClientConnection) -> None:
        if conn.closed:
            return
        if self._selector is not None:
            import selectors
            try:
                self._selector.register(conn.sock, selectors.EVENT_READ)
            except (ValueError, OSError):
                return  # closed by another thread since the check (seen at SIGTERM): nothing to watch
        self._parked[conn.sock] = conn

    def _unpark(self, conn: ClientConnection) -> None:
        if self._selector is not None:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass

    def _drain_parking(self) -> None:
        while self._to_park:
            self._park(self._to_park.popleft())

    def _hand_back(self, conn: ClientConnection) -> None:
        """From a worker: the connection is idle, let the selector watch it again."""
        conn.reader.release_spare()  # an idle connection holds no large-frame buffer
        self._to_park.append(conn)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are closing

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            if len(self._connections) >= self.settings.MAX_CONNECTIONS:
                log.warning("refusing connection from %s: MAX_CONNECTIONS (%d) reached", addr,
                            self.settings.MAX_CONNECTIONS)
                sock.close()
                continue
            sock.setblocking(True)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                if self.settings.SOCK_NODELAY:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                notice_dead_peer(sock, self.settings.DEAD_PEER_TIMEOUT)  # a vanished client's connection ends
            conn = self._secure_connection(sock, addr)
            if conn is None:
                continue
            self._connections.add(conn)
            log.debug("connection from %s", addr)
            self._pool.submit(self._serve, conn)  # its CONNECT follows at once: no trip through the selector

    def adopt(self, sock: socket.socket) -> ClientConnection | None:
        """Serve a socket connected already (one end of a socketpair, or inherited after fork): one
        client connection; proxies may take turns on it, each with its own handshake."""
        sock.setblocking(True)
        try:
            addr = sock.getpeername() or "connected socket"
        except OSError:
            addr = "connected socket"
        conn = self._secure_connection(sock, addr)
        if conn is None:
            return None
        conn.protocol.rehandshake = True
        self._connections.add(conn)
        self._pool.submit(self._serve, conn)
        return conn

    # ------------------------------------------------------------------ security (docs/security.md)

    def _secure_connection(self, sock: socket.socket, addr: Any) -> ClientConnection | None:
        """The ClientConnection of an accepted socket, under the daemon's limits: TLS sockets are
        wrapped without a handshake (it advances on the worker, never blocking the selector; a
        plain-protocol client is answered why it is refused), and sends are time limited."""
        send_timeout = self.settings.SEND_TIMEOUT
        if self._tls_context is not None:
            from ..transport import tls
            try:
                sock = tls.wrap_server(sock, self._tls_context)
            except OSError as exc:
                log.info("connection from %s lost before TLS: %s", addr, exc)
                sock.close()
                return None
        else:
            limit_send_time(sock, send_timeout)
        conn = ClientConnection(sock, addr, self.settings)
        if conn.tls is None:
            conn.timed_reads = limit_receive_time(sock, self.settings.WORKER_LINGER)
        conn.accepted_at = time.monotonic()  # type: ignore[attr-defined]
        conn.idle_poller = select.poll()
        conn.idle_poller.register(sock, select.POLLIN)
        conn.idle_poller.register(self._pool.backlog_fd, select.POLLIN)
        if conn.tls is not None:
            conn.tls.send_timeout = send_timeout or None
            conn.tls.on_plaintext = self._refuse_plaintext
        return conn

    def _refuse_plaintext(self, channel: Any, data: bytes) -> None:
        """A TLS daemon's answer, in the clear, to a client that sent plain protocol 502: a CONNECTFAIL
        its proxy (meshrpc or Pyro5) shows as "connection rejected: <reason>"."""
        try:
            peer = channel.sock.getpeername()
        except OSError:
            peer = "?"
        log.info("refused a plain (non-TLS) client from %s: this daemon accepts TLS only", peer)
        channel.send_plain(refusal_for(data, PLAIN_CLIENT_REFUSAL))

    def _start_reaper(self) -> None:
        limits = [t for t in (self.settings.HANDSHAKE_TIMEOUT, self.settings.IDLE_TIMEOUT) if t > 0]
        if not limits:
            return
        interval = min(1.0, max(0.05, min(limits) / 4))
        threading.Thread(target=_reaper_loop, args=(weakref.ref(self), self._stop, interval),
                         name="meshrpc-reaper", daemon=True).start()

    def _reap(self) -> None:
        """Close connections past HANDSHAKE_TIMEOUT (no CONNECT completed) or IDLE_TIMEOUT (parked, with
        no byte received or sent). Shutting a socket down makes it readable: its worker, or the
        selector then a worker, finds it closed and drops it the usual way (clientDisconnect included)."""
        now = time.monotonic()
        handshake, idle = self.settings.HANDSHAKE_TIMEOUT, self.settings.IDLE_TIMEOUT
        parked = set(self._parked.values()) if idle > 0 else ()
        for conn in list(self._connections):
            if conn.closed:
                continue
            if not conn.handshaken:
                if handshake > 0 and now - getattr(conn, "accepted_at", now) > handshake:
                    log.info("closing connection from %s: no handshake within HANDSHAKE_TIMEOUT (%g s)",
                             conn.addr, handshake)
                    _abort(conn)
            elif (conn in parked and now - conn.last_active > idle and not bytes_waiting(conn.sock)
                    and conn.sock in self._parked):
                # readable: a request came before the selector handed it on (a busy machine); closing
                # would lose it and tell its client "may have run". Asked in this order, a request the
                # selector takes meanwhile was readable or is no longer parked.
                log.debug("closing connection from %s: idle for IDLE_TIMEOUT (%g s)", conn.addr, idle)
                _abort(conn)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
            expired = self._streams.expire()
            if expired:
                log.debug("expired %d streams", expired)
            try:
                self.daemon.housekeeping()
            except Exception:
                log.exception("the daemon's housekeeping() failed")

    # ------------------------------------------------------------------ a connection's worker

    def _serve(self, conn: ClientConnection) -> None:
        """Answer requests on `conn` until it is idle for WORKER_LINGER, closes, or others need the worker.

        A partial frame never pins the worker: it stays in the connection's reader while the
        connection waits in the selector again (a slow client cannot hold a worker)."""
        linger_ms = self.settings.WORKER_LINGER * 1000
        protocol = conn.protocol
        pool = self._pool
        with self._serving_lock:
            self._serving += 1
        try:
            self._serve_requests(conn, protocol, pool, linger_ms)
        finally:
            with self._serving_lock:
                self._serving -= 1

    def _serve_requests(self, conn: ClientConnection, protocol: ServerSession, pool: WorkerPool,
                        linger_ms: float) -> None:
        # every request passes here: locals, no calls that are not needed
        next_event, handle, reader = protocol.next_event, self._handle, conn.reader
        timed_reads, fill_within, server_spin = conn.timed_reads, conn.fill_within, self._server_spin
        # the lane: a blocking read's bytes, with nothing buffered, go to the session's receive_request
        # first, and the usual request is answered without a Frame (_take). LOGWIRE: every request goes
        # the general way, which logs it
        lane = timed_reads and conn.tls is None and not self._logwire  # (timed reads are plain TCP's already)
        receive_within, take = conn.receive_within, self._take
        taken = False  # the last read was a request the lane answered: nothing is buffered
        try:
            while True:
                if not taken:
                    # the key proof needs the time, and only before the handshake
                    event = next_event(None if protocol.handshaken else time.time())
                    if event is not NEED_DATA:
                        handle(conn, event)
                        if reader.buffered:  # more came with it (else next_event would say NEED_DATA)
                            continue
                empty, taken = taken, False  # empty: the lane took the last read whole, nothing is buffered
                if self._stopping:
                    if conn.poller.poll(0):  # shutting down: answer what came ("not run")
                        conn.fill(spin=False)
                        continue
                    self._hand_back(conn)  # and let the draining loop watch it for late requests
                    return
                if pool.backlogged:  # other connections are waiting for a worker: take turns
                    self._hand_back(conn)
                    return
                # spin only while this is the one connection being served: with others, a spinning
                # worker takes the GIL and a core from their requests
                if server_spin and self._serving == 1 and not self._active_calls and conn.try_fill():
                    continue  # the next request came quickly: no sleep, no wake-up
                if timed_reads and pool.has_room:
                    # a new task gets a thread of its own: no backlog to watch, so one blocking read (it
                    # times out after WORKER_LINGER) does what poll + read do, a system call less per read
                    if lane and (empty or not reader.buffered):
                        data = receive_within()
                        if data is not None:
                            taken = take(conn, protocol, data)
                            continue
                    elif fill_within():
                        continue
                elif self._await_request(conn, linger_ms):
                    continue
                self._hand_back(conn)  # idle for WORKER_LINGER, or other connections wait for a worker
                return
        except (errors.ConnectionClosedError, errors.TimeoutError):
            self._drop(conn)
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", conn.addr, exc)
            self._drop(conn)
        except Exception:
            log.exception("closing connection from %s after an unexpected error", conn.addr)
            self._drop(conn)

    def _take(self, conn: ClientConnection, protocol: ServerSession, data: bytes) -> bool:
        """The lane: answer `data` when it is the usual request (ServerSession.receive_request), as
        _handle and _invoke would answer it, without a Frame: True. False: it is something else (or
        the daemon is stopping), and the reader holds it for next_event."""
        active = self._active_calls
        active.append(None)  # counted first, then the stop is looked at (see __init__)
        answered = False
        try:
            if self._stopping:  # the general path answers "not run"
                protocol.receive_data(data)
                return False
            try:
                call = protocol.receive_request(data)
            except (SerializeError, errors.SecurityError) as exc:
                answered = True
                conn.send_reply(protocol.error_reply(protocol.bare_frame(), exc))
                return True
            if call is TAKE_EVENT:
                return False
            answered = True
            current_context.begin(conn, conn.addr, protocol.request_seq, 0, protocol.request_serializer_id, {}, None)
            flags, result = self._dispatch.run(conn, 0, call)
            if result.__class__ is CoroutineType:
                flags, result = _awaitable_refused(flags, result, call)
            annotations = call_state().response_annotations
            if self.daemon._reply_annotations is not None:
                annotations = {**annotations, **self.daemon._reply_annotations()}
            if not flags and not annotations:  # the common case: no Frame, a scalar built by the session
                conn.send_unlocked(protocol.bare_result(result))  # send_reply's choice: the lane is plain TCP only
            else:
                self._reply(conn, protocol.bare_frame(), flags, result, annotations)
            return True
        finally:
            if answered and self._stopping:  # the drain answers "not run" for a while after this answer
                self._answered_while_stopping = time.monotonic()
            active.pop()  # only then: the drain, reading both without a lock, sees one or the other

    def _await_request(self, conn: ClientConnection, linger_ms: float) -> bool:
        """Read the connection's next request (some of it) where a blocking read will not do (TLS, or a
        pool that may need this worker): True when data came, False when the worker should hand it
        back (idle for WORKER_LINGER, or tasks are waiting for a worker)."""
        if not self._linger(conn, linger_ms):
            return False
        conn.fill(spin=False)  # readable: the gate was asked once already, by try_fill
        return True

    def _linger(self, conn: ClientConnection, linger_ms: float) -> bool:
        """Wait for the connection's next request: True when it has data, False when the worker should
        hand it back (idle for linger_ms, or tasks are waiting for a worker)."""
        monotonic = time.monotonic
        deadline = monotonic() + linger_ms / 1000
        sock_fd = conn.sock.fileno()
        poll, pool = conn.idle_poller.poll, self._pool
        remaining_ms = linger_ms
        while remaining_ms > 0 and not pool.backlogged:  # (backlogged: kept equal to "tasks wait" by the pool)
            for fd, _ in poll(remaining_ms):
                if fd == sock_fd:
                    return True
            # else: the pool's backlog signal, or the time is up: the loop's checks decide
            remaining_ms = (deadline - monotonic()) * 1000
        return False

    def _drop(self, conn: ClientConnection) -> None:
        with self._drop_lock:  # a worker and close() may both drop it
            if conn.closed or conn.dropping:
                return
            conn.dropping = True
        self._connections.discard(conn)
        self._streams.orphan(conn)
        # as in Pyro5: only for a client whose handshake was accepted, before its socket closes (the hook
        # may still ask it, e.g. conn.sock.getpeername())
        try:
            if conn.handshaken:
                self.daemon.clientDisconnect(conn)
        except Exception:
            log.exception("clientDisconnect hook failed")
        conn.close()
        # the worker that served it keeps a reference until its next task (the call context), up to
        # IDLE_WORKER_EXIT: no large-frame buffer (kept, or half-read) may stay with it
        conn.reader.release()
        resources, conn.tracked_resources = list(conn.tracked_resources), weakref.WeakSet()
        for resource in resources:
            try:
                resource.close()
            except Exception:
                log.exception("closing a resource tracked for %s failed", conn.addr)

    def _handle(self, conn: ClientConnection, event: Any) -> None:
        if self._logwire:
            log.debug("received from %s: %r", conn.addr, event)
        if event.type == _INVOKE:
            active = self._active_calls
            active.append(None)  # counted first, then the stop is looked at (see __init__)
            if self._stopping:
                active.pop()
                self._refuse_not_run(conn, event)
                return
            try:
                self._invoke(conn, event)
            finally:
                if self._stopping:  # the drain answers "not run" for a while after this answer
                    self._answered_while_stopping = time.monotonic()
                active.pop()  # only then: the drain, reading both without a lock, sees one or the other
        elif event.type == wire.MSG_PING:
            conn.send_parts(conn.protocol.pong(event))
        else:
            self._handshake(conn, event)

    def _handshake(self, conn: ClientConnection, request: ConnectRequest) -> None:
        protocol = conn.protocol

        def fail(reason: str) -> None:
            log.info("handshake from %s refused: %s", conn.addr, reason)
            conn.send_parts(protocol.refuse_connect(request, reason))

        if request.refusal is not None:  # bad handshake data, or the mesh key is missing or wrong
            return fail(request.refusal)
        object_id = request.object_id
        if self._dispatch.lookup(object_id) is None:
            return fail(UNKNOWN_OBJECT_REASON)
        self._set_context(conn, request.frame)
        try:
            answer = self.daemon.validateHandshake(conn, request.handshake)
        except Exception as exc:
            return fail(str(exc) or "handshake denied")  # the hook's own words, as Pyro5 sends them
        try:
            reply = protocol.accept_connect(request, answer, self._dispatch.metadata(object_id, False))
        except SerializeError as exc:
            return fail(f"cannot serialize the handshake answer: {exc}")
        conn.send_parts(reply)

    def _refuse_not_run(self, conn: ClientConnection, frame: wire.Frame) -> None:
        """Shutting down: answer a request that came too late without running it (ServerSession.not_run_reply):
        meshrpc proxies treat the call as not delivered and go elsewhere; a Pyro5 proxy's connection is
        closed instead (ConnectionClosedError: _serve drops it)."""
        if frame.flags & wire.FLAG_ONEWAY:
            log.info("oneway call from %s not run: the daemon is shutting down", conn.addr)
            return
        if not conn.protocol.takes_not_run:
            raise errors.ConnectionClosedError("the daemon is shutting down")
        conn.send_parts(conn.protocol.not_run_reply(frame))

    @staticmethod
    def _set_context(conn: ClientConnection, frame: wire.Frame) -> None:
        codec = BY_ID.get(frame.serializer_id)  # the serializer, not its binary form
        current_context.begin(conn, conn.addr, frame.seq, frame.flags,
                              codec.values.id if codec is not None else frame.serializer_id,
                              frame.annotations, frame.correlation_id)

    def _invoke(self, conn: ClientConnection, frame: wire.Frame) -> None:
        protocol = conn.protocol
        is_oneway = frame.flags & _ONEWAY
        try:
            call = protocol.decode_call(frame)
        except (SerializeError, errors.SecurityError) as exc:
            if not is_oneway:
                conn.send_reply(protocol.error_reply(frame, exc))
            else:
                log.warning("dropped oneway call from %s: %s", conn.addr, exc)
            return
        if is_oneway and self.settings.ONEWAY_THREADED:
            self._queue_oneway(conn, frame, call)
            return
        # _set_context inlined (every call's path); decode_call refused an unknown serializer id
        current_context.begin(conn, conn.addr, frame.seq, frame.flags, BY_ID[frame.serializer_id].values.id,
                              frame.annotations, frame.correlation_id)
        flags, result = self._dispatch.run(conn, frame.flags, call)
        if result.__class__ is CoroutineType:
            flags, result = _awaitable_refused(flags, result, call)
        if is_oneway:
            return
        annotations = call_state().response_annotations
        if self.daemon._reply_annotations is not None:
            annotations = {**annotations, **self.daemon._reply_annotations()}
        self._reply(conn, frame, flags, result, annotations)

    @staticmethod
    def _reply(conn: ClientConnection, frame: wire.Frame, flags: int, result: Any, annotations: dict) -> None:
        """Send the answer to a call that ran: its result, its stream, or its exception."""
        protocol = conn.protocol
        if not flags & _SPECIAL_REPLY:  # the common case first
            conn.send_reply(protocol.result_reply(frame, result, annotations, flags))
        elif flags & _ITEMSTREAMRESULT:
            conn.send_reply(protocol.stream_reply(frame, result, annotations))
        else:
            conn.send_reply(protocol.error_reply(frame, result, annotations))

    def _queue_oneway(self, conn: ClientConnection, frame: wire.Frame, call: tuple) -> None:
        """Oneway calls of a connection run off its reader, in the order they were sent: one pool task
        drains the connection's queue, so a flood of them costs no thread (or task) each. A queue of
        MAX_CALLS_PER_CONNECTION is full: the reader runs the oldest call itself until there is room,
        and reads nothing meanwhile, so a client that sends them faster than they run waits (as TCP
        makes it) instead of growing the queue without bound. (Not waiting for the drain: its task
        may wait for a worker that readers like this one hold.)"""
        cap = self.settings.MAX_CALLS_PER_CONNECTION
        while True:
            with conn.oneway_lock:
                if len(conn.oneways) < cap:
                    conn.oneways.append((frame, call))
                    if conn.oneway_draining:
                        return
                    conn.oneway_draining = True
                    break
                oldest = conn.oneways.popleft()
            self._run_oneway(conn, *oldest)
        if self.settings.SERVERTYPE == "multiplex":
            # one call at a time on the pool's one worker; oneway calls run beside them (as in Pyro5)
            threading.Thread(target=self._drain_oneways, args=(conn,), name="meshrpc-oneway", daemon=True).start()
        else:
            self._pool.submit(self._drain_oneways, conn)

    def _drain_oneways(self, conn: ClientConnection) -> None:
        while True:
            with conn.oneway_lock:
                if not conn.oneways:
                    conn.oneway_draining = False
                    return
                frame, call = conn.oneways.popleft()
            self._run_oneway(conn, frame, call)

    def _run_oneway(self, conn: ClientConnection, frame: wire.Frame, call: tuple) -> None:
        self._set_context(conn, frame)
        flags, result = _awaitable_refused(*self._dispatch.run(conn, frame.flags, call), call)
        if flags & wire.FLAG_EXCEPTION:
            log.warning("oneway call %s failed: %r", call[1], result)

    # ------------------------------------------------------------------ shutdown

    def stop(self) -> None:
        """Stop the request loop (from any thread, including a call); the loop then drains and closes
        the daemon. No loop running (`loop_running` false): the caller closes the daemon itself."""
        self._stopping = True
        self._stop.set()
        self._wake()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def loop_running(self) -> bool:
        return not self._loop_done.is_set()

    def close(self) -> None:
        """Drop every connection, stop the workers, close the listening socket (and remove a Unix
        socket's file). Calls in progress had their chance: see wait_for_calls."""
        self._stopping = True
        self._stop.set()
        for conn in list(self._connections):
            self._drop(conn)
        self._pool.close()
        self._listener.close()
        self._wake_w.close()
        if self._loop_done.is_set():
            self._wake_r.close()
        if self._unixsocket and not self._unixsocket.startswith("\0"):  # abstract names have no file
            try:
                os.unlink(self._unixsocket)
            except OSError:
                pass

    def _drain(self, selector: Any) -> None:
        """The request loop was stopped: shut down without losing a call. New connections are refused;
        calls in progress finish and reply; requests that still come are answered "not run" (see
        _refuse_not_run) while the goodbyes go out, and for SHUTDOWN_DRAIN_MIN after the stop and after
        the last answer. close() then drops the connections left."""
        try:
            selector.unregister(self._listener)
        except (KeyError, ValueError):
            pass
        self._listener.close()  # connecting is refused from now on: certainly not delivered
        withdrawing = threading.Thread(target=self.daemon._withdraw, name="meshrpc-goodbyes", daemon=True)
        withdrawing.start()
        started = time.monotonic()
        deadline = started + SHUTDOWN_GRACE
        while time.monotonic() < deadline and (
                withdrawing.is_alive() or self._calls_in_progress
                or time.monotonic() - max(started, self._answered_while_stopping) < SHUTDOWN_DRAIN_MIN):
            ready = selector.select(0.01)
            self.events([key.fileobj for key, _ in ready])  # type: ignore[misc]
        withdrawing.join(max(0.0, deadline - time.monotonic()))

    def wait_for_calls(self, grace: float) -> None:
        """Let calls in progress send their replies; the caller's own call does not count."""
        own = 1 if threading.current_thread().name.startswith(self._pool.name) else 0
        deadline = time.monotonic() + grace
        while self._calls_in_progress > own and time.monotonic() < deadline:
            time.sleep(0.005)


_warned_plaintext = False


def _warn_if_exposed(listener: socket.socket, location: str) -> None:
    """Once per process: a daemon without TLS or a mesh key listens beyond this machine."""
    global _warned_plaintext
    if _warned_plaintext:
        return
    try:
        address = ipaddress.ip_address(listener.getsockname()[0].split("%")[0])
    except (ValueError, OSError, IndexError):
        return
    if address.is_loopback:
        return
    _warned_plaintext = True
    logging.getLogger("meshrpc.security").warning(
        "daemon %s listens on a non-loopback address without TLS or a mesh key: anyone who can reach it can "
        "call its objects and read or change its traffic; set MESHRPC_KEY (callers must hold the key) and/or "
        "SSL with a certificate (encryption), see docs/security.md, or bind localhost", location)


def _awaitable_refused(flags: int, result: Any, call: tuple) -> tuple[int, Any]:
    """An `async def` method gave its coroutine: this daemon has no loop to await it on."""
    if result.__class__ is CoroutineType:
        return wire.FLAG_EXCEPTION, awaitable_refused(result, call[1])
    return flags, result


def _abort(conn: ClientConnection) -> None:
    try:
        socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)  # the socket itself, not the SSL layer
    except OSError:
        pass


def bytes_waiting(sock: Any) -> bool:
    """Whether bytes (or the peer's close) wait in `sock` (anything with fileno()), for the idle checks of
    both daemons. A poll object of its own: a worker may be polling the connection's, and two poll()
    calls on one object at once raise RuntimeError."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, TypeError):  # closed meanwhile (TypeError: no socket left)
        return False


def _reaper_loop(server_ref: "weakref.ref[ConnectionServer]", stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        server = server_ref()
        if server is None:
            return
        try:
            server._reap()
        except Exception:  # the reaper must not die of one odd connection
            log.exception("connection reaper failed")
        del server
