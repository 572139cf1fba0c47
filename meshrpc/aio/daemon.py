"""meshrpc.aio.Daemon: serves objects from a running asyncio loop, over the same session core.

Registration, instance modes, metadata, streams, validateHandshake/clientDisconnect hooks and mesh
announcing are the threaded Daemon's (this class extends it); what differs is who drives the
sockets. Every connection is an asyncio protocol feeding a ServerSession; each request runs as it
arrives, so one connection's requests can run side by side and are answered in any order (the
client agreed to pipelining; a Pyro5 client sends one at a time anyway):
- `async def` methods are awaited on the loop (a slow one holds nobody else up): each starts at once
  (aio/eager.py) and sends its own reply; one that has to wait goes on in a Task of its own;
- plain methods run on a bounded pool of threads (AIO_EXECUTOR_SIZE; aio/workers.py), so they never block the loop,
  unless marked `nonblocking`: those are called on the loop, without a thread hand-off.
Calls are run by the threaded Daemon's Dispatcher: `run` for whole calls, `prepare`/`finish` around
the await of an `async def` method. Replies written side by side share system calls (Cork). When
every call of a connection is answered and the loop has nothing else to do, its next request is
waited for in the loop's own selector (aio/spin.py, as the proxy waits for a reply) and handled
without another turn of the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import socket
import time
from typing import Any

from .. import errors
from ..context import _state as _call_state_var  # the call state's ContextVar (read from a Context)
from ..context import call_state, current_context
from ..errors import DaemonError, SerializeError
from ..limits import HOUSEKEEPING_INTERVAL, INFLATE_THREADS, SHUTDOWN_DRAIN_MIN, SHUTDOWN_GRACE
from ..server import daemon as threaded
from ..server.connections import PLAIN_CLIENT_REFUSAL, bytes_waiting
from ..socketutil import set_nodelay
from ..transport.sockets import notice_dead_peer
from ..wire import constants
from ..wire import frame as wire
from ..wire.session import NEED_DATA, TAKE_EVENT, Compressed, ConnectRequest, ServerSession, refusal_for
from .cork import Cork
from .eager import EagerStarter
from .receiving import Receiving, receive_buffer
from .spin import LoopSpin
from .tlsio import TLSAcceptor, close_unanswered
from .workers import Workers

log = logging.getLogger("meshrpc.aio")

NONBLOCKING_MARK = "_meshrpcNonblocking"
_AWAITED, _ON_LOOP, _IN_EXECUTOR = "awaited", "on the loop", "in the executor"  # where a method runs
_FRAME, _INVOKE, _ONEWAY = wire.Frame, wire.MSG_INVOKE, wire.FLAG_ONEWAY
_copy_context = contextvars.copy_context
_monotonic = time.monotonic
_current_task = asyncio.current_task


def nonblocking(method: Any) -> Any:
    """Mark a plain (not `async def`) method as one that never blocks: a meshrpc.aio.Daemon then
    calls it on its loop instead of handing it to its executor, which saves a thread hand-off per
    call (docs/asyncio.md). Only for quick methods that do no I/O and take no lock another thread
    may hold: while it runs, the daemon serves nobody else. The threaded Daemon ignores the mark."""
    setattr(method, NONBLOCKING_MARK, True)
    return method


def _inflate_off_loop(conn: Any, frame: wire.Frame, max_size: int) -> tuple:
    """On an inflating thread: (the frame, inflated, None) or (None, the exception that says why not)."""
    try:
        return wire.inflate(frame, max_size), None
    except Exception as exc:  # ProtocolError, MessageTooLargeError: the connection's, said on the loop
        return None, exc


def _inflate_failed(exc: BaseException, conn: Any, frame: wire.Frame, max_size: int) -> tuple:
    return None, exc


class _ClientConnection(Receiving):
    """A client's connection as the asyncio daemon sees it (`current_context.client` during its calls)."""

    def __init__(self, daemon: "Daemon", accepted_at: float | None = None) -> None:
        self.daemon = daemon
        self.wire = ServerSession(daemon.settings, inflate_later=True)  # large compressed requests: off the loop
        self.session: dict[str, Any] = {}  # per-connection instances ("session" mode), as the threaded daemon's
        self.transport: asyncio.Transport | None = None
        self.addr: Any = None
        self.closed = False
        self.handshaken = False
        self.object_id: str | None = None
        self.connected_at = time.time()
        self.accepted_at = time.monotonic() if accepted_at is None else accepted_at  # (TLS: before its handshake)
        self.last_active = self.accepted_at
        self.calls = 0  # requests of this connection running now
        self.pumping = False  # the daemon is working through the requests of one read
        self.broken = False  # the client broke the protocol: closed once its running calls are answered
        self.write_paused = False  # its replies wait above the high-water mark: none of its requests are read
        self.crowded = False  # MAX_CALLS_PER_CONNECTION of its calls run: none of its requests are read
        self.inflating = False  # a large compressed request is inflated on a thread: none of its requests are read
        self.unsent = 0  # while write_paused: the bytes that waited at the last sign of progress ...
        self.stalled_since = 0.0  # ... and when that was (SEND_TIMEOUT counts from it)
        loop = self._loop = asyncio.get_running_loop()
        self._next: LoopSpin | None = None
        self._tls = daemon._tls_context is not None  # (close: close_unanswered)
        self._corked = Cork(loop, self, daemon.settings.AIO_CORK_BYTES)
        self._received = receive_buffer(loop, daemon.settings.AIO_RECEIVE_BUFFER)
        self._reader = self.wire.reader  # (Receiving.get_buffer: a large frame's rest goes into its own buffer)

    def __repr__(self) -> str:
        return f"<aio ClientConnection {self.addr}>"

    @property
    def sock(self) -> Any:
        """The connection's socket (as `conn.sock` of the threaded daemon's connections, for hooks)."""
        return self.transport.get_extra_info("socket") if self.transport is not None else None

    def getpeercert(self) -> dict | None:
        """The client's verified TLS certificate (two-way TLS), as Pyro5's `conn.getpeercert()` in
        validateHandshake; None without TLS or without a client certificate."""
        return self.transport.get_extra_info("peercert") if self.transport is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.addr = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        settings = self.daemon.settings
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and settings.SOCK_NODELAY:
            # as the threaded daemon: asyncio sets it only on sockets whose proto says TCP, and the
            # listener's (socket(AF_INET, SOCK_STREAM)) says 0; without it, a reply written while an
            # earlier one is unacknowledged waited for the client's delayed ACK (40 ms)
            set_nodelay(sock)
        notice_dead_peer(sock, settings.DEAD_PEER_TIMEOUT)  # a vanished client's connection ends
        self.daemon._connected(self)
        # waits for a lone client's next request while the loop has nothing else to do (aio/spin.py)
        self._next = LoopSpin.for_transport(self._loop, transport, self.daemon.settings,
                                            spin=self.daemon.settings.SERVER_SPIN)

    def buffer_updated(self, nbytes: int) -> None:
        if self._large and self._into:  # a large frame's rest, read into the reader's own buffer (get_buffer)
            self._into = False
            self._reader.received(nbytes)
            self._serve(None)
        else:
            self._serve(bytes(self._received[:nbytes]))  # copied out: the buffer is the loop's

    def _serve(self, data: bytes | None) -> None:
        """Handle one read's bytes (`data`; None: they went into the reader's own buffer). Then, every
        call answered and the loop idle, wait for the client's next request in the loop's own
        selector (aio/spin.py, as a lone call waits for its reply) and handle it here too: a
        sequential caller's requests need no turn of the loop each."""
        daemon = self.daemon
        while True:
            self.last_active = _monotonic()
            self.pumping = True
            try:
                if data is None:
                    daemon._pump(self)
                elif self.handshaken and not daemon._stopping:  # the usual requests first, without a Frame each
                    if daemon._take_requests(self, data):
                        daemon._pump(self)  # what they left (another kind of message, part of one)
                    else:  # (what _pump would find: nothing)
                        self._large = False
                else:
                    self.wire.receive_data(data)
                    daemon._pump(self)
            finally:
                self.pumping = False
                written = self._corked.flush()
            if self.calls or self.closed or self._next is None or self.write_paused or self.inflating:
                return
            data = self._read_next(written)
            if data is not None and not data:
                return

    def _read_next(self, written: bool) -> bytes | None:
        """Every call answered: wait for the client's next request while the loop is idle, and read it:
        its bytes, as bytes of their own (no copy out of the loop's buffer); None when they went into
        the reader's own buffer (the rest of a large frame, counted there); b"" when nothing came in
        time, the loop has other work, or the read failed or found the end (the loop's own read sees
        that). `written`: the replies just went to the socket whole (nothing waits in the transport)."""
        wait = self._next
        assert wait is not None
        try:
            if not self._large:  # (the usual case: a small request)
                return wait.read_alone(written)
            self._into = False
            count = wait.read_reply(self.get_buffer(-1), None, written)
        except OSError:
            self._into = False
            return b""
        if self._into:
            self._into = False
            if count:
                self._reader.received(count)
                return None
            return b""
        return bytes(self._received[:count])

    def replied(self) -> None:
        """A call that ran outside the reading of its request (in the executor, or a Task) was answered
        (the caller checked `pumping`)."""
        if self.broken:
            if not self.calls:
                self.close()
            return
        if self.calls or self.closed or self._next is None or self.write_paused or self.inflating:
            return
        loop = self._loop
        if _current_task(loop) is not None:
            # answered by the call's own Task: its next requests are read outside it, in the daemon's
            # context, on the next turn (inside, each would start from a copy of this call's context,
            # and as a Task of its own: its first step is not taken eagerly inside another task)
            loop.call_soon(self.replied, context=self.daemon._serving_context)
            return
        data = self._read_next(False)
        if data is None or data:
            self._serve(data)

    def pause_writing(self) -> None:
        """The client takes its replies more slowly than they come (the transport's or the cork's queue
        is above its high-water mark): read none of its requests until they are taken, so a client
        that never reads holds at most a read's worth of replies, not one per request it sends (as
        the threaded daemon, whose worker waits in send). SEND_TIMEOUT without progress closes it
        (Daemon._close_idle)."""
        self.write_paused = True
        self.unsent = self.waiting_to_send()
        self.stalled_since = _monotonic()
        self._hold_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._read_again()

    def crowd(self) -> None:
        """MAX_CALLS_PER_CONNECTION of this client's calls run (the caller counted them): read none of its
        requests until one of them ends (uncrowd)."""
        self.crowded = True
        self._hold_reading()

    def uncrowd(self) -> None:
        self.crowded = False
        self._read_again()

    def _hold_reading(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.is_reading():
            transport.pause_reading()

    def _read_again(self) -> None:
        """Read this client's requests again, unless something else still holds them back."""
        transport = self.transport
        if (transport is not None and not transport.is_closing() and not transport.is_reading()
                and not (self.write_paused or self.crowded or self.inflating or self.broken
                         or self._corked.closing)):
            transport.resume_reading()

    def waiting_to_send(self) -> int:
        """Bytes of replies not yet taken by the kernel: the transport's and the cork's."""
        transport = self.transport
        return (transport.get_write_buffer_size() if transport is not None else 0) + self._corked.waiting

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.daemon._dropped(self)
        self._corked.lost()
        self._release_reader()

    def send(self, parts: list) -> None:
        if parts and not self.closed and self.transport is not None:  # (the cork drops it if the transport closes)
            if self.pumping:  # more requests of this read may follow: flushed when the read is done
                self._corked.gather(parts)
                return  # (last_active: set when they were read, just now)
            if self.calls:  # other calls of this connection are running: their replies may join
                self._corked.write(parts)
            else:
                self._corked.write_alone(parts)
            self.last_active = time.monotonic()

    def close(self) -> None:
        """Close once the replies that wait to be sent are out (reading stops at once)."""
        if self.transport is not None:
            self._corked.close()
            if self._tls:
                close_unanswered(self.transport)  # (the TLS layer would wait for the client's close_notify)


class Daemon(threaded.Daemon):
    """Serves objects to proxies from an asyncio loop.

        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        daemon.register(Thermostat, "thermostat", name="home.thermostat")
        async with daemon:               # serving on the running loop
            await stop_event.wait()      # ... or: await daemon.serve_forever()

    `shutdown()` (from any thread) ends `serve_forever()`; leaving `async with` or `await
    daemon.aclose()` shuts down gracefully: calls in progress finish, late requests are answered
    "not run", goodbyes go out on the mesh."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._workers: Workers | None = None  # made by start(): the threads of plain methods
        self._inflaters: Workers | None = None  # made by start(): the threads of large compressed requests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._eager: EagerStarter  # made by start(), for the running loop
        self._serving_context: contextvars.Context  # made by start(): the context its connections are read in
        self._server: asyncio.AbstractServer | None = None
        self._acceptor: TLSAcceptor | None = None  # with TLS, instead of _server
        self._aio_connections: set[_ClientConnection] = set()
        self._calls: set[asyncio.Future[Any]] = set()
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        self._method_kinds: dict[Any, dict[str, str]] = {}  # registration -> {method: where it runs}
        self._calls_cap = max(1, self.settings.MAX_CALLS_PER_CONNECTION)

    # ------------------------------------------------------------------ serving
    async def start(self) -> None:
        """Start serving on the running loop (returns at once)."""
        if self._server is not None or self._acceptor is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._eager = EagerStarter(self._loop)
        self._serving_context = contextvars.copy_context()  # (as the loop's reads of its connections run)
        self._workers = Workers(self._loop, self.settings.AIO_EXECUTOR_SIZE, "meshrpc-aio-worker", self._plain_failed)
        self._inflaters = Workers(self._loop, INFLATE_THREADS, "meshrpc-aio-inflate", _inflate_failed)
        self._stopped = asyncio.Event()
        if self._tls_context is not None:
            # TLS (docs/security.md): asyncio's handshake, before the connection exists for the daemon, bound
            # by HANDSHAKE_TIMEOUT; a plain client is told why it is refused (aio/tlsio.py)
            from ..transport.tls import server_context
            context = server_context(self.settings, optional_client_cert=True)
            self._acceptor = TLSAcceptor(self._loop, self._listener, context,
                                         lambda accepted_at: _ClientConnection(self, accepted_at),
                                         self.settings.HANDSHAKE_TIMEOUT, self._refuse_plain,
                                         lambda: self.settings.MAX_CONNECTIONS - len(self._aio_connections))
            self._acceptor.start()
        elif self._unixsocket:
            self._server = await self._loop.create_unix_server(lambda: _ClientConnection(self), sock=self._listener)
        else:
            self._server = await self._loop.create_server(lambda: _ClientConnection(self), sock=self._listener)
        self._housekeeper = self._loop.create_task(self._housekeeping_loop())
        log.info("asyncio daemon serving on %s", self.locationStr)

    def _refuse_plain(self, sock: socket.socket, data: bytes) -> None:
        """A TLS daemon's answer, in the clear, to a client that sent plain protocol 502 (as the threaded daemon's)."""
        try:
            peer = sock.getpeername() if sock.family != socket.AF_UNIX else self.locationStr
            log.info("refused a plain (non-TLS) client from %s: this daemon accepts TLS only", peer)
            sock.send(refusal_for(data, PLAIN_CLIENT_REFUSAL))
        except OSError:  # gone already: nobody to tell
            pass

    async def serve_forever(self) -> None:
        """Serve until shutdown() is called, then shut down gracefully."""
        await self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        finally:
            await self.aclose()

    async def __aenter__(self) -> "Daemon":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def shutdown(self) -> None:
        """End serve_forever() (safe from any thread, and from a call)."""
        loop, stopped = self._loop, self._stopped
        if loop is None or stopped is None or loop.is_closed():
            self.close()
            return
        loop.call_soon_threadsafe(stopped.set)

    def requestLoop(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("meshrpc.aio.Daemon serves on an asyncio loop: use `await daemon.serve_forever()` "
                        "or `async with daemon:`")

    @property
    def sockets(self) -> list[Any]:  # type: ignore[override]
        raise TypeError("meshrpc.aio.Daemon serves on an asyncio loop; it has no sockets for a select loop")

    # ------------------------------------------------------------------ connections
    def _connected(self, conn: _ClientConnection) -> None:
        if self._stopping:
            conn.close()
            return
        if len(self._aio_connections) >= self.settings.MAX_CONNECTIONS:
            log.warning("refusing connection from %s: MAX_CONNECTIONS (%d) reached", conn.addr,
                        self.settings.MAX_CONNECTIONS)
            conn.close()
            return
        self._aio_connections.add(conn)

    def _dropped(self, conn: _ClientConnection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._aio_connections.discard(conn)
        self._streams.orphan(conn)
        if self._workers is not None:
            # its plain calls still waiting for a thread: nobody to answer; but a oneway call the daemon
            # received whole runs, as on the threaded daemon (a client may close right after sending it)
            self._workers.forget(conn, _oneway_call)
            self._inflaters.forget(conn, _oneway_call)  # (set in start() with the workers)
        # as the threaded daemon (and Pyro5): once, only for a client whose handshake was accepted, while
        # its socket is still open (asyncio closes it after connection_lost; aclose drops it before that)
        if conn.handshaken:
            try:
                self.clientDisconnect(conn)  # type: ignore[arg-type]
            except Exception:
                log.exception("clientDisconnect hook failed")

    def _pump(self, conn: _ClientConnection) -> None:
        session = conn.wire
        while not conn.closed:
            try:
                # the key proof needs the time, and only before the handshake
                event = session.next_event(None if session.handshaken else time.time())
            except Exception as exc:  # ProtocolError, oversized frames: this connection only
                self._broken(conn, exc)
                return
            if event is NEED_DATA:
                conn._large = session.reader.buffered > 0  # (part of a message: get_buffer asks the reader)
                return
            if event.__class__ is _FRAME and event.type == _INVOKE and not self._stopping:  # the usual one first
                self._start_call(conn, event)
            elif event.__class__ is Compressed:
                self._inflate(conn, event.frame)
                return  # (the messages after it wait: taken in order, once it is inflated)
            else:
                self._take(conn, event)

    def _take(self, conn: _ClientConnection, event: Any) -> None:
        """One message of the client's (an event of its session)."""
        if isinstance(event, ConnectRequest):
            self._aio_handshake(conn, event)
        elif event.type == wire.MSG_PING:
            conn.send(conn.wire.pong(event))
        elif self._stopping:
            self._not_run(conn, conn.wire, event)
        else:
            self._start_call(conn, event)

    def _inflate(self, conn: _ClientConnection, frame: wire.Frame) -> None:
        """A large compressed message (INFLATE_ON_LOOP_MAX): inflated on a thread of the daemon's inflating
        pool (INFLATE_THREADS; not the plain methods' workers, whose calls may wait for it), in this
        client's turn; none of its later messages are read or taken meanwhile."""
        assert self._inflaters is not None
        conn.inflating = True
        conn._hold_reading()
        self._inflaters.submit(conn, _inflate_off_loop, self._inflated, conn, frame, conn.wire.max_size)

    def _inflated(self, outcome: tuple, conn: _ClientConnection, frame: wire.Frame, max_size: int) -> None:
        """On the loop: the message _inflate handed over is inflated (or failed to); take it, then the rest."""
        conn.inflating = False
        failure = outcome[1]
        if conn.closed and (failure is not None or not frame.flags & _ONEWAY):
            return  # (a oneway call received whole runs although its client left, as in Daemon._dropped)
        conn.pumping = True
        try:
            if failure is not None:  # corrupt, or larger than MAX_MESSAGE_SIZE: as a bad frame read on the loop
                self._broken(conn, failure)
                return
            try:
                event = conn.wire.inflated(frame, None if conn.wire.handshaken else time.time())
            except Exception as exc:  # ProtocolError: this connection only
                self._broken(conn, exc)
                return
            self._take(conn, event)
            if not conn.inflating:
                self._pump(conn)  # the messages read after it
        finally:
            conn.pumping = False
            conn._corked.flush()
        conn._read_again()
        if not (conn.calls or conn.inflating or self._inflaters.outcomes_waiting()):  # (set in start())
            # answered on the loop: the client's next request may already wait (not while others of the
            # batch wait: replied() may wait for it, as _plain_done says)
            conn.replied()

    @classmethod
    def _not_run(cls, conn: _ClientConnection, session: ServerSession, frame: wire.Frame) -> None:
        """Shutting down: a request that came too late is not run. A meshrpc proxy is told so
        (ServerSession.not_run_reply); a Pyro5 proxy's connection is closed, as a Pyro5 daemon's."""
        if session.takes_not_run or frame.flags & wire.FLAG_ONEWAY:
            conn.send(session.not_run_reply(frame))
        else:
            cls._close_when_answered(conn)

    def _broken(self, conn: _ClientConnection, exc: Exception) -> None:
        """`conn`'s client broke the protocol: the replies to the requests before the bad bytes go out
        first, those of calls still running too (their calls ran; as the threaded daemon), then the
        connection is closed."""
        if conn.broken or conn.transport is None or conn.transport.is_closing():
            return  # (said already: _pump meets the same bytes after _take_requests)
        log.warning("closing connection from %s: %s", conn.addr, exc)
        self._close_when_answered(conn)

    @staticmethod
    def _close_when_answered(conn: _ClientConnection) -> None:
        """Read no more of `conn`; close it once the replies before now, and those of its calls still
        running, are out."""
        if conn.broken or conn.transport is None or conn.transport.is_closing():
            return
        conn.broken = True
        conn._corked.flush()
        if conn.calls:  # running (executor, Tasks): read no more; the last one's reply closes it (replied)
            conn.transport.pause_reading()
        else:
            conn.close()

    def _aio_handshake(self, conn: _ClientConnection, request: ConnectRequest) -> None:
        session = conn.wire
        if request.refusal is not None:
            log.info("handshake from %s refused: %s", conn.addr, request.refusal)
            conn.send(session.refuse_connect(request, request.refusal))
            return
        if self._tls_context is not None and self.settings.SSL_REQUIRECLIENTCERT and not conn.getpeercert():
            # (the TLS handshake let it through without one: see start(); a certificate it did present was verified)
            log.info("handshake from %s refused: no client certificate (SSL_REQUIRECLIENTCERT)", conn.addr)
            conn.send(session.refuse_connect(request, "this daemon requires a client certificate "
                                                      "(SSL_REQUIRECLIENTCERT): set SSL_CLIENTCERT and SSL_CLIENTKEY"))
            return
        object_id = request.object_id
        if not isinstance(object_id, str) or object_id not in self._objects:
            conn.send(session.refuse_connect(request, constants.UNKNOWN_OBJECT_REASON))
            return
        self._context_for(conn, request.seq, 0, session.serializer.id if session.serializer else 0,
                          request.annotations, request.correlation_id)
        try:
            answer = self.validateHandshake(conn, request.handshake)  # type: ignore[arg-type]
        except Exception as exc:
            conn.send(session.refuse_connect(request, str(exc) or "handshake denied"))
            return
        conn.send(session.accept_connect(request, answer, self._metadata(object_id, False)))
        conn.handshaken, conn.object_id = True, object_id

    # ------------------------------------------------------------------ calls
    def _take_requests(self, conn: _ClientConnection, data: bytes) -> bool:
        """The usual requests at the start of one read's bytes (ServerSession.receive_requests: no Frame
        read for each). True: the first other message and what follows it were left to _pump (or the
        client broke the protocol); False: every byte was taken."""
        session = conn.wire
        take: Any = session.receive_requests
        args: tuple = (data,)
        while not conn.closed:
            try:
                call = take(*args)
            except (SerializeError, errors.SecurityError) as exc:
                conn.send(session.error_reply(session.bare_frame(), exc))
                call = None
            except Exception as exc:  # ProtocolError (the next message's prefix): this connection only
                self._broken(conn, exc)
                return True
            if call is TAKE_EVENT:
                return True
            if call is not None:
                if self._stopping:
                    self._not_run(conn, session, session.bare_frame())
                else:
                    self._run_bare(conn, session, call)
            if session.held is None:  # (every byte taken: no next_request needed to say so)
                return False
            take, args = session.next_request, ()
        return False

    def _start_call(self, conn: _ClientConnection, frame: wire.Frame) -> None:
        """A request read as a Frame (while its read is worked through: `conn.pumping`)."""
        session = conn.wire
        try:
            call = session.decode_call(frame)
        except (SerializeError, errors.SecurityError) as exc:
            if not frame.flags & wire.FLAG_ONEWAY:
                conn.send(session.error_reply(frame, exc))
            else:
                log.warning("dropped oneway call from %s: %s", conn.addr, exc)
            return
        self._run_call(conn, frame, call)

    def _run_call(self, conn: _ClientConnection, frame: wire.Frame, call: tuple) -> None:
        """A decoded request (all but the usual ones of _run_bare)."""
        session = conn.wire
        object_id, method, vargs, kwargs = call
        registration = self._dispatch.objects.get(object_id) if isinstance(object_id, str) else None
        if registration is None or not isinstance(method, str):  # the executor's Dispatcher answers it
            where = _IN_EXECUTOR
        else:
            kinds = self._method_kinds.get(registration)
            where = (kinds.get(method) if kinds is not None else None) or self._where_to_run(registration, method)
        if where is not _AWAITED:
            self._start_plain(conn, frame, call, where)
            return
        # an `async def` method: its coroutine's first step runs now, in a context of its own (aio/eager.py);
        # a call that never waits is answered here without a Task or a coroutine of the daemon's, one that
        # waits goes on in a Task (_serve_rest) that answers by itself
        serializer = session.serializer
        context = _copy_context()
        context.run(current_context.begin, conn, conn.addr, frame.seq, frame.flags,
                    serializer.id if serializer else frame.serializer_id, frame.annotations, frame.correlation_id)
        function = None
        try:
            instance = registration.shared  # a registered object: the method is looked up as Dispatcher.run does
            if instance is not None and not frame.flags & wire.FLAG_BATCH:
                function = getattr(instance, method)
            else:  # instance modes (the instance may depend on the call's context): the Dispatcher's rules
                function = context.run(self._dispatch.prepare, conn, frame.flags, call).function
            context.run(self._first_step, context, conn, frame, function, vargs, kwargs, method)
        except BaseException as exc:
            self._failure(conn, frame, context, function, method, exc)

    def _run_bare(self, conn: _ClientConnection, session: ServerSession, call: tuple) -> None:
        """A request the session took without a Frame (_take_requests). The usual one, an `async def`
        method of a registered object, goes as the threaded daemon's lane goes (server/connections.py,
        _take): no Frame unless a reply needs it, one entry into the call's context; any other request
        goes the general way (_run_call)."""
        object_id, method, vargs, kwargs = call
        registration = self._dispatch.objects.get(object_id) if object_id.__class__ is str else None
        kinds = self._method_kinds.get(registration) if registration is not None else None
        where = kinds.get(method) if kinds is not None and method.__class__ is str else None
        if where is not _AWAITED or registration.shared is None:  # (None: not known yet, _run_call learns it)
            if where is _ON_LOOP:
                _copy_context().run(self._on_loop_bare, conn, session, call)
            else:
                self._run_call(conn, session.bare_frame(), call)
            return
        context = _copy_context()
        function = None
        try:
            function = getattr(registration.shared, method)
            context.run(self._first_step, context, conn, None, function, vargs, kwargs, method)
        except BaseException as exc:
            self._failure(conn, None, context, function, method, exc)

    def _first_step(self, context: contextvars.Context, conn: _ClientConnection, frame: wire.Frame | None,
                    function: Any, vargs: tuple, kwargs: dict, method: str) -> None:
        """In the call's own `context`: `function`'s coroutine made and its first step taken
        (EagerStarter.step); answered here when it returned there, else counted (its Task answers).
        `frame`: None for a request taken bare (_run_bare: its state is begun here, as the threaded
        lane begins it; a Frame is made only for a reply that needs one). What the method raised
        propagates (_failure answers it)."""
        session = conn.wire
        if frame is None:
            current_context.begin(conn, conn.addr, session.request_seq, 0, session.request_serializer_id, {}, None)
            task, result = self._eager.step(function(*vargs, **kwargs), context, self._serve_bare_rest, conn,
                                            session, function, method)
        else:
            task, result = self._eager.step(function(*vargs, **kwargs), context, self._serve_rest, conn, frame,
                                            function, method)
        if task is not None:  # it waits: its Task answers
            conn.calls += 1
            if conn.calls >= self._calls_cap:
                conn.crowd()
            self._calls.add(task)
            return
        flags, result = self._dispatch.finish(conn, result)
        self._answer_now(conn, session, frame, flags, result, call_state().response_annotations)

    def _on_loop_bare(self, conn: _ClientConnection, session: ServerSession, call: tuple) -> None:
        """_run_bare's plain method marked nonblocking, in its own context: run by the Dispatcher on the
        loop (as _run_on_loop runs it), and answered at once."""
        current_context.begin(conn, conn.addr, session.request_seq, 0, session.request_serializer_id, {}, None)
        flags, result = self._dispatch.run(conn, 0, call)
        flags, result, annotations = self._outcome(conn, flags, result)
        self._answer_now(conn, session, None, flags, result, annotations)

    def _answer_now(self, conn: _ClientConnection, session: ServerSession, frame: wire.Frame | None, flags: int,
                    result: Any, annotations: dict) -> None:
        """The reply of a call answered while its request is being read (`frame`: None for a request
        taken bare): the usual one without _reply's checks, gathered with the read's other replies."""
        if flags or annotations or self._reply_annotations is not None or (frame is not None and frame.flags & _ONEWAY):
            self._reply(conn, frame or session.bare_frame(), (flags, result, annotations))
            return
        # the usual reply (_reply's, without its checks)
        parts = session.bare_result(result) if frame is None else session.result_reply(frame, result, annotations)
        if not conn.closed:
            conn._corked.gather(parts)  # (pumping: the read's replies go out together)

    def _serve_bare_rest(self, rest: Any, conn: _ClientConnection, session: ServerSession, function: Any,
                         method: str) -> Any:
        """_serve_rest for a call of _run_bare that waits: its Frame now (the session still holds its request)."""
        return self._serve_rest(rest, conn, session.bare_frame(), function, method)

    def _failure(self, conn: _ClientConnection, frame: wire.Frame | None, context: contextvars.Context,
                 function: Any, method: str, failure: BaseException) -> None:
        """An `async def` call raised `failure` in its first step (in `context`): its reply. `frame`:
        None for a request taken bare."""
        if isinstance(failure, asyncio.CancelledError):
            outcome: tuple = (wire.FLAG_EXCEPTION, DaemonError("the call was cancelled by the daemon"), {})
        elif isinstance(failure, (KeyboardInterrupt, SystemExit)):
            raise failure  # (not the call's outcome)
        else:  # the method raised (or was called wrongly, or is unknown; GeneratorExit too: its reply)
            flags, result = self._failed(failure, function, method)  # type: ignore[arg-type]
            outcome = (flags, result, context[_call_state_var].response_annotations)
        self._reply(conn, frame or conn.wire.bare_frame(), outcome)

    def _start_plain(self, conn: _ClientConnection, frame: wire.Frame, call: tuple, where: str) -> None:
        """A plain method: on the loop when marked nonblocking, else in the executor."""
        if where is _ON_LOOP:  # no thread hop, no task
            self._reply(conn, frame, contextvars.copy_context().run(self._run_on_loop, conn, frame, call))
            return
        assert self._workers is not None
        conn.calls += 1
        if conn.calls >= self._calls_cap:
            conn.crowd()
        self._workers.submit(conn, self._run_sync, self._plain_done, conn, frame, call)

    def _where_to_run(self, registration: Any, method: str) -> str:
        """_AWAITED (`async def`), _ON_LOOP (marked nonblocking) or _IN_EXECUTOR (any other method),
        remembered per registration (_start_call reads the memory first)."""
        kinds = self._method_kinds.get(registration)
        known = kinds.get(method) if kinds is not None else None
        if known is None:
            # the class's attribute (instance modes register classes); a registration is never
            # changed in place, so the answer holds for as long as it is registered
            known = _IN_EXECUTOR
            if method in registration.members["methods"]:
                func = getattr(registration.target, method, None)
                if inspect.iscoroutinefunction(func):
                    known = _AWAITED
                elif getattr(func, NONBLOCKING_MARK, False):
                    known = _ON_LOOP
            if kinds is None:
                if len(self._method_kinds) > 1000:
                    self._method_kinds.clear()
                kinds = self._method_kinds[registration] = {}
            elif len(kinds) > 1000:
                kinds.clear()
            kinds[method] = known
        return known

    def _failed(self, exc: Exception, function: Any, method: str) -> tuple[int, Any]:
        if getattr(function, "_pyroCallback", False):
            log.warning("exception in callback %s", method, exc_info=True)
        return self._dispatch.failure(exc, method)

    async def _serve_rest(self, rest: Any, conn: _ClientConnection, frame: wire.Frame, function: Any,
                          method: str) -> None:
        """The rest of an `async def` call that waited (its own Task, in its own context): awaited, answered."""
        try:
            try:
                result = await rest
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # the method's own (GeneratorExit too): its reply, as in _failure
                flags, result = self._failed(exc, function, method)  # type: ignore[arg-type]
            else:
                flags, result = self._dispatch.finish(conn, result)
            outcome: tuple = (flags, result, call_state().response_annotations)
        except asyncio.CancelledError:
            self._reply(conn, frame, (wire.FLAG_EXCEPTION, DaemonError("the call was cancelled by the daemon"), {}))
            raise
        except Exception as exc:  # a fault of the daemon, not of the method (that is a reply)
            log.error("call failed inside the daemon: %r", exc)
            outcome = wire.FLAG_EXCEPTION, DaemonError(f"internal error: {exc!r}"), {}
        finally:
            self._calls.discard(asyncio.current_task())  # type: ignore[arg-type]
            conn.calls -= 1
            if conn.crowded:
                conn.uncrowd()
        self._reply(conn, frame, outcome)
        if not conn.pumping:  # answered outside the reading of its request (it waited)
            conn.replied()

    def _context_for(self, conn: Any, seq: int, flags: int, serializer_id: int, annotations: dict,
                     correlation_id: Any) -> None:
        current_context.begin(conn, conn.addr, seq, flags, serializer_id, annotations, correlation_id)

    def _frame_context(self, conn: _ClientConnection, frame: wire.Frame) -> None:
        serializer = conn.wire.serializer
        current_context.begin(conn, conn.addr, frame.seq, frame.flags,
                              serializer.id if serializer else frame.serializer_id, frame.annotations,
                              frame.correlation_id)

    def _run_sync(self, conn: _ClientConnection, frame: wire.Frame, call: tuple) -> tuple[int, Any, dict]:
        """On an executor thread: the Dispatcher runs the whole call (instance modes, batches, streams)."""
        self._frame_context(conn, frame)
        return self._outcome(conn, *self._dispatch.run(conn, frame.flags, call))

    def _run_on_loop(self, conn: _ClientConnection, frame: wire.Frame, call: tuple) -> tuple[int, Any, dict]:
        """On the loop, in a context of its own: a plain method marked nonblocking."""
        self._frame_context(conn, frame)
        return self._outcome(conn, *self._dispatch.run(conn, frame.flags, call))

    def _outcome(self, conn: _ClientConnection, flags: int, result: Any) -> tuple[int, Any, dict]:
        """(reply flags, result, response annotations): an async generator is a remote iterator too."""
        if not flags and inspect.isasyncgen(result):
            assert self._loop is not None
            flags, result = self._dispatch.finish(conn, _PulledOnLoop(result, self._loop))
        return flags, result, current_context.response_annotations

    def _call(self, registration: Any, instance: Any, method: str, vargs: tuple, kwargs: dict) -> Any:
        result = super()._call(registration, instance, method, vargs, kwargs)
        loop = self._loop
        if inspect.iscoroutine(result) and loop is not None and not _on_loop(loop):
            # an `async def` method reached from an executor thread (a batch): run it on the loop
            return asyncio.run_coroutine_threadsafe(result, loop).result()
        return result

    def _plain_done(self, outcome: tuple, conn: _ClientConnection, frame: wire.Frame, call: tuple) -> None:
        """A plain method's call is done on its worker thread: its reply (on the loop)."""
        conn.calls -= 1
        if conn.crowded:
            conn.uncrowd()
        self._reply(conn, frame, outcome)
        if not conn.pumping and (conn.broken or not self._workers.outcomes_waiting()):
            conn.replied()  # (not while the batch's others wait: it may wait for the client's next request)

    @staticmethod
    def _plain_failed(exc: BaseException, conn: _ClientConnection, frame: wire.Frame, call: tuple) -> tuple:
        """The outcome of a worker's call that failed inside the daemon (the method's own exceptions are replies)."""
        log.error("call failed inside the daemon: %r", exc)
        return wire.FLAG_EXCEPTION, DaemonError(f"internal error: {exc!r}"), {}

    def _reply(self, conn: _ClientConnection, frame: wire.Frame, outcome: tuple) -> None:
        """Send the reply of a finished call (nothing for a oneway call, or when the client is gone)."""
        flags, result, annotations = outcome
        if frame.flags & wire.FLAG_ONEWAY or conn.closed:
            stream = flags & wire.FLAG_ITEMSTREAMRESULT
            if stream:
                # a remote iterator nobody will know the id of (made after its client left, when the
                # disconnect could not orphan it): closed now, or it would stay until ITER_STREAM_LIFETIME
                self._streams.close(result)
            if not frame.flags & wire.FLAG_ONEWAY:
                log.info("the answer to a call from %s is dropped: the client is gone%s", conn.addr,
                         " (the remote iterator made for it is closed)" if stream else "")
            if conn.closed:
                # a pull that reached its stream after the client left made the gone connection its owner
                # (StreamTable.next_item): it lingers and expires as the connection's other streams
                self._streams.orphan(conn)
            if frame.flags & wire.FLAG_ONEWAY and flags & wire.FLAG_EXCEPTION and not stream:
                log.warning("oneway call failed: %r", result)  # (also when its client has left meanwhile)
            return
        session = conn.wire
        if self._reply_annotations is not None:  # a subclass's annotations(), on every reply (as the threaded daemon)
            annotations = {**annotations, **self._reply_annotations()}
        if flags & wire.FLAG_ITEMSTREAMRESULT:
            parts = session.stream_reply(frame, result, annotations)
        elif flags & wire.FLAG_EXCEPTION:
            parts = session.error_reply(frame, result, annotations)
        else:  # (a reply that cannot be sent, e.g. over MAX_MESSAGE_SIZE, comes as the error saying so)
            parts = session.result_reply(frame, result, annotations)
        conn.send(parts)

    # ------------------------------------------------------------------ announcing without blocking the loop
    def _announce(self, name: str, uri: Any, tags: frozenset[str]) -> None:
        loop = self._loop
        if loop is None or not _on_loop(loop):
            super()._announce(name, uri, tags)
            return
        task = loop.run_in_executor(None, super()._announce, name, uri, tags)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            self._streams.expire()
            self._close_idle(time.monotonic())

    def _close_idle(self, now: float) -> None:
        """Close connections past HANDSHAKE_TIMEOUT (no CONNECT completed) or IDLE_TIMEOUT; idle ones
        drop the buffer their reader kept for the next large frame."""
        handshake, idle, send = self.settings.HANDSHAKE_TIMEOUT, self.settings.IDLE_TIMEOUT, self.settings.SEND_TIMEOUT
        for conn in list(self._aio_connections):
            if conn.write_paused and send > 0:
                unsent = conn.waiting_to_send()
                if unsent < conn.unsent:  # it took some: the wait starts again
                    conn.unsent, conn.stalled_since = unsent, now
                elif now - conn.stalled_since > send and conn.transport is not None:
                    log.warning("closing connection from %s: it took none of its replies for SEND_TIMEOUT (%g s)",
                                conn.addr, send)
                    conn.transport.abort()  # (close() would wait for them to be sent)
                    continue
            if not conn.handshaken and handshake > 0 and now - conn.accepted_at > handshake:
                log.info("closing connection from %s: no handshake within HANDSHAKE_TIMEOUT (%g s)",
                         conn.addr, handshake)
                conn.close()
            elif (idle > 0 and conn.handshaken and now - conn.last_active > idle and not (conn.calls or conn.inflating)
                    and not bytes_waiting(conn.transport.get_extra_info("socket"))):
                # a request came after the loop's last select (this turn): the loop reads it next
                conn.close()
            elif not conn.calls and now - conn.last_active >= HOUSEKEEPING_INTERVAL:
                conn.wire.reader.release_spare()  # an idle connection holds no large-frame buffer

    # ------------------------------------------------------------------ shutdown
    async def aclose(self) -> None:
        """Graceful shutdown: no new connections; calls in progress finish and reply; requests that
        still come are answered "not run" while the goodbyes go out; then every connection closes."""
        if self._closed:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        if self._server is not None:
            self._server.close()  # the listening socket: connecting is refused from now on
        if self._acceptor is not None:
            self._acceptor.close()  # (and the connections still before their TLS handshake)
        goodbyes = loop.run_in_executor(None, self._withdraw)
        deadline = loop.time() + SHUTDOWN_GRACE
        pending = set(self._calls) | set(self._background)
        for pool in (self._workers, self._inflaters):
            if pool is not None and pool.running:
                pending.add(pool.all_done())
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        try:
            await asyncio.wait_for(asyncio.shield(goodbyes), max(0.0, deadline - loop.time()))
        except (asyncio.TimeoutError, TimeoutError):
            log.warning("mesh goodbyes still going out after %.1f s", SHUTDOWN_GRACE)
        await asyncio.sleep(SHUTDOWN_DRAIN_MIN)  # requests already on the way get "not run"
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        for conn in list(self._aio_connections):
            conn.close()
            self._dropped(conn)
        for pool in (self._workers, self._inflaters):
            if pool is not None:
                pool.shutdown()
        await loop.run_in_executor(None, super().close)
        if self._stopped is not None:
            self._stopped.set()

    def close(self) -> None:
        """Close at once (from outside the loop); inside the loop use `await daemon.aclose()`."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and _on_loop(loop):
            raise RuntimeError("inside the daemon's loop, use `await daemon.aclose()`")
        if loop is not None and loop.is_running() and not self._closed:
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(SHUTDOWN_GRACE * 2)
            return
        for pool in (self._workers, self._inflaters):
            if pool is not None:
                pool.shutdown()
        super().close()

    def __repr__(self) -> str:
        return f"<meshrpc.aio.Daemon {self.locationStr}>"


class _PulledOnLoop:
    """An async generator as a plain iterator for the stream table: items are pulled (from an
    executor thread, where get_next_stream_item runs) by running its __anext__ on the daemon's loop."""

    def __init__(self, agen: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._agen = agen
        self._loop = loop

    def __iter__(self) -> "_PulledOnLoop":
        return self

    def __next__(self) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(self._agen.__anext__(), self._loop).result()
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        if not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._agen.aclose(), self._loop)


def _oneway_call(args: tuple) -> bool:
    """A plain call waiting for a thread (Workers' args: connection, frame, call), or a request waiting to
    be inflated (connection, frame, ...), that runs although its client left: a oneway call."""
    return bool(args[1].flags & _ONEWAY)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("announcing failed: %s", future.exception())
