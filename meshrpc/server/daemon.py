"""The Daemon: serves registered objects to proxies over protocol 502.

Concurrency model (see docs/architecture.md): one selector loop (`requestLoop`, or an external loop
through `sockets`/`events`) watches the listening socket and every *idle* connection. When an idle
connection has data, it is handed to a worker of a bounded pool, which reads and answers requests on
it and keeps watching it for WORKER_LINGER seconds (a chatty client then pays no thread hand-off),
then hands it back. Idle connections hold no thread, so hundreds of connected proxies are fine.
"""

from __future__ import annotations

import collections
import collections.abc
import ipaddress
import logging
import os
import select
import socket
import threading
import time
import types
import uuid
import weakref
from typing import Any, Callable, Iterable

from .. import errors
from ..config import Settings, config as default_config
from ..context import current_context
from ..errors import DaemonError, ProtocolError, SerializeError
from ..transport.sockets import FramedConnection, create_server_socket, limit_send_time
from ..uri import URI
from ..wire import frame as wire
from ..wire.serializers import BY_ID, ExceptionWrapper, Serializer, by_id
from .decorators import Registration, expose, oneway
from .signals import DEFAULT_SIGNALS, stop_on_signals
from .pool import WorkerPool
from .streams import StreamTable

log = logging.getLogger("meshrpc.server")

DAEMON_OBJECT_ID = "Pyro.Daemon"
_PLAIN_RESULTS = frozenset({type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset})
STREAM_ANNOTATION = "STRM"
BLOB_ANNOTATION = "BLBI"
HOUSEKEEPING_INTERVAL = 1.0  # seconds between stream expiry sweeps
SHUTDOWN_GRACE = 5.0  # seconds close() waits for calls in progress (a call may have asked for the shutdown)
NOT_RUN_ANNOTATION = "NRUN"  # on an error reply: shutting down, the call was not run (proxies go elsewhere)
SHUTDOWN_DRAIN_MIN = 0.05  # seconds a stopping request loop answers late requests at least (some are on the way)


class ClientConnection(FramedConnection):
    """A client's connection as the daemon sees it."""

    def __init__(self, sock: socket.socket, addr: Any, settings: Settings) -> None:
        super().__init__(sock, settings.MAX_MESSAGE_SIZE,
                         settings.COMPRESSION_MIN_SIZE if settings.COMPRESSION else -1,
                         settings.PROTOCOL_ANNOTATIONS_MAX, settings.SPIN_WAIT)
        self.addr = addr
        self.handshaken = False
        self.object_id: str | None = None  # the object named in the handshake
        self.serializer: Serializer | None = None
        self.session: dict[str, Any] = {}  # per-connection instances ("session" mode)
        self.idle_poller: Any = None  # the socket and the pool's backlog signal (set by the daemon)
        self.oneways: collections.deque[tuple[wire.Frame, tuple]] = collections.deque()
        self.oneway_lock = threading.Lock()
        self.oneway_draining = False
        self.connected_at = time.time()

    def __repr__(self) -> str:
        return f"<ClientConnection {self.addr}>"


@expose
class DaemonObject:
    """The object every daemon serves as `Pyro.Daemon`."""

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    def registered(self) -> list[str]:
        return list(self.daemon._objects)

    def ping(self) -> None:
        pass

    def info(self) -> str:
        return (f"meshrpc daemon {self.daemon.locationStr}, {len(self.daemon._objects)} objects, "
                f"{len(self.daemon._connections)} connections")

    def get_metadata(self, objectId: str, as_lists: bool = False, detailed: bool = False) -> dict[str, Any]:
        """Pyro5's metadata; detailed=True (a meshrpc extension) adds a "details" key with signatures
        and docstrings (`describe_members`), which Pyro5 proxies never ask for and would ignore."""
        meta = self.daemon._metadata(objectId, as_lists)
        if detailed:
            from .decorators import describe_members
            meta["details"] = describe_members(self.daemon._objects[objectId].target)
        return meta

    def get_next_stream_item(self, streamId: str) -> Any:
        return self.daemon._streams.next_item(streamId, current_context.client)

    @oneway
    def close_stream(self, streamId: str) -> None:
        self.daemon._streams.close(streamId)


class Daemon:
    """Serves objects to proxies. `Daemon(host=None, port=0, unixsocket=None, nathost=None, natport=None)`."""

    def __init__(self, host: str | None = None, port: int = 0, unixsocket: str | None = None,
                 nathost: str | None = None, natport: int | None = None,
                 interface: type = DaemonObject, connected_socket: socket.socket | None = None,
                 *, settings: Settings | None = None) -> None:
        self.settings = settings = (settings or default_config).copy()
        if connected_socket is not None:
            raise DaemonError("connected_socket daemons are not supported; use a Unix socket or TCP port")
        host = settings.HOST if host is None else str(host)
        nathost = nathost if nathost is not None else (settings.NATHOST or None)
        natport = natport if natport is not None else settings.NATPORT
        if natport and not nathost:
            raise ValueError("natport needs nathost too")
        # --- security (docs/security.md): the TLS context first, so a bad certificate binds nothing
        self._tls_context: Any = None
        if settings.SSL:
            from ..transport import tls
            self._tls_context = tls.server_context(settings)
        self._listener = create_server_socket(host, port, unixsocket, reuse=settings.SOCK_REUSE)
        self._listener.setblocking(False)
        self._unixsocket = unixsocket
        self._bind_host = host  # discovery follows the bound host (0.0.0.0: every interface)
        if unixsocket:
            self._host, self._port = None, 0
        else:
            self._host, self._port = host, self._listener.getsockname()[1]
            if self._host in ("", "0.0.0.0", "::"):
                self._host = _primary_address(self._host)
        self._nathost, self._natport = nathost, (natport or self._port if nathost else 0)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._objects: dict[str, Registration] = {}
        self._objects_lock = threading.RLock()
        self._connections: set[ClientConnection] = set()
        self._parked: dict[socket.socket, ClientConnection] = {}
        self._to_park: collections.deque[ClientConnection] = collections.deque()
        self._pool = WorkerPool(settings.THREADPOOL_SIZE)
        self._streams = StreamTable(settings.ITER_STREAM_LIFETIME, settings.ITER_STREAM_LINGER,
                                    settings.MAX_STREAMS_PER_CONNECTION)
        self._stop = threading.Event()
        self._loop_done = threading.Event()
        self._loop_done.set()
        self._closed = False
        self._next_housekeeping = 0.0
        self._calls_lock = threading.Lock()
        self._calls_in_progress = 0
        self._server_spin = settings.SERVER_SPIN
        self._publisher: Any = None  # mesh publisher, created on the first named registration
        self._ns_registrar: Any = None  # name-server registrar, when NS_HOST is configured
        self._register_daemon_object(interface)
        # --- security: the plaintext warning, and the thread that enforces HANDSHAKE_TIMEOUT/IDLE_TIMEOUT
        if not unixsocket and self._tls_context is None and not settings.KEY:
            _warn_if_exposed(self._listener, self.locationStr)
        self._start_reaper()
        log.info("daemon listening on %s%s", self.locationStr, " (TLS)" if self._tls_context is not None else "")

    # ------------------------------------------------------------------ registration
    def _register_daemon_object(self, interface: type) -> None:
        obj = interface(self)
        self._objects[DAEMON_OBJECT_ID] = Registration(DAEMON_OBJECT_ID, obj, None, frozenset())
        obj._pyroId, obj._pyroDaemon = DAEMON_OBJECT_ID, None  # never autoproxied

    def register(self, obj_or_class: Any, objectId: str | None = None, force: bool = False, *,
                 name: str | None = None, metadata: Iterable[str] | None = None) -> URI:
        """Serve an object (or a class, instantiated per its @behavior) and return its URI.

        `name` and `metadata` tags advertise it on the mesh, so that `PYRONAME:<name>` and
        `PYROMETA:<tag>` find it."""
        if objectId is not None and not isinstance(objectId, str):
            raise DaemonError("objectId must be a string")
        if objectId == "":
            raise DaemonError("objectId must not be empty")
        is_class = isinstance(obj_or_class, type)
        tags = frozenset(metadata or ())
        if any(not isinstance(t, str) for t in tags):
            raise DaemonError("metadata tags must be strings")
        with self._objects_lock:
            if not is_class:
                existing = getattr(obj_or_class, "_pyroId", None)
                if existing and not force and getattr(obj_or_class, "_pyroDaemon", None) is self:
                    raise DaemonError(f"object already registered as {existing!r}")
            object_id = objectId or "obj_" + uuid.uuid4().hex
            if object_id in self._objects and not force:
                raise DaemonError(f"object id {object_id!r} is already registered")
            if object_id in self._objects:
                self.unregister(object_id)
            self._objects[object_id] = Registration(object_id, obj_or_class, name, tags)
            if not is_class:
                try:
                    obj_or_class._pyroId, obj_or_class._pyroDaemon = object_id, self
                except AttributeError:
                    pass  # objects with __slots__ are served but not autoproxied
        uri = self.uriFor(object_id)
        if name:
            self._announce(name, uri, tags)
        return uri

    def unregister(self, objectOrId: Any) -> None:
        object_id = objectOrId if isinstance(objectOrId, str) else getattr(objectOrId, "_pyroId", None)
        if object_id is None or object_id == DAEMON_OBJECT_ID:
            return
        with self._objects_lock:
            registration = self._objects.pop(object_id, None)
        if registration is None:
            return
        if getattr(registration.target, "_pyroDaemon", None) is self:
            registration.target._pyroDaemon = None
            registration.target._pyroId = ""
        if registration.name and self._publisher is not None:
            self._publisher.withdraw(registration.name, str(self.uriFor(object_id)))
        if registration.name and self._ns_registrar is not None:
            self._ns_registrar.withdraw(registration.name, str(self.uriFor(object_id)))

    def _announce(self, name: str, uri: URI, tags: frozenset[str]) -> None:
        if self._publisher is None:
            from ..mesh import MeshPublisher  # discovery is loaded only by daemons that use names
            self._publisher = MeshPublisher(self._bind_host if not self._unixsocket else "localhost", self.settings)
        self._publisher.publish(name, str(uri), set(tags))
        if self.settings.NS_HOST and self.settings.NS_AUTOREGISTER:
            if self._ns_registrar is None:
                from ..naming.registrar import NameServerRegistrar
                self._ns_registrar = NameServerRegistrar(self.settings)
            self._ns_registrar.register(name, str(uri), tags)

    @property
    def objectsById(self) -> dict[str, Any]:
        return {oid: reg.target for oid, reg in self._objects.items()}

    def uriFor(self, objectOrId: Any, nat: bool = True) -> URI:
        object_id = objectOrId if isinstance(objectOrId, str) else getattr(objectOrId, "_pyroId", None)
        if not object_id:
            raise DaemonError("object is not registered in this daemon")
        if self._unixsocket:
            return URI.from_parts(object_id, sockname=self._unixsocket)
        if nat and self._nathost:
            return URI.from_parts(object_id, self._nathost, self._natport)
        return URI.from_parts(object_id, self._host, self._port)

    def proxyFor(self, objectOrId: Any, nat: bool = True) -> Any:
        from ..client.proxy import Proxy
        object_id = objectOrId if isinstance(objectOrId, str) else getattr(objectOrId, "_pyroId", None)
        registration = self._objects.get(object_id or "")
        if registration is None:
            raise DaemonError("object is not registered in this daemon")
        proxy = Proxy(self.uriFor(object_id, nat), settings=self.settings)
        proxy._pyroProcessMetadata(registration.members)
        return proxy

    @property
    def locationStr(self) -> str:
        if self._unixsocket:
            return "./u:" + self._unixsocket
        host = f"[{self._host}]" if self._host and ":" in self._host else self._host
        return f"{host}:{self._port}"

    @property
    def sock(self) -> socket.socket:
        return self._listener

    # ------------------------------------------------------------------ the loop
    @property
    def sockets(self) -> list[socket.socket]:
        """Sockets for an external select loop: pass the readable ones to `events()`."""
        self._drain_parking()
        return [self._listener, self._wake_r, *self._parked]

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
        """Serve until `shutdown()` is called or `loopCondition()` returns false. In the main thread,
        SIGTERM (a service manager's stop) calls `shutdown()` too, unless the program has a SIGTERM
        handler of its own (docs/servers.md)."""
        with stop_on_signals(self):
            self._serve_until(loopCondition)

    def stop_on_signals(self, *signals: int) -> Any:
        """A context manager: inside it, these signals (default SIGTERM) call `shutdown()`; for programs
        that run their own loop with `events()`. Main thread only; a program's own handlers stay."""
        return stop_on_signals(self, tuple(signals) or DEFAULT_SIGNALS)

    def _serve_until(self, loopCondition: Callable[[], bool]) -> None:
        import selectors
        self._loop_done.clear()
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
                self.close()

    _selector: Any = None

    def _park(self, conn: ClientConnection) -> None:
        if conn.closed:
            return
        self._parked[conn.sock] = conn
        if self._selector is not None:
            import selectors
            self._selector.register(conn.sock, selectors.EVENT_READ)

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
            if sock.family in (socket.AF_INET, socket.AF_INET6) and self.settings.SOCK_NODELAY:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = self._secure_connection(sock, addr)
            if conn is None:
                continue
            self._connections.add(conn)
            log.debug("connection from %s", addr)
            self._pool.submit(self._serve, conn)  # its CONNECT follows at once: no trip through the selector

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
        ser_id, seq = 1, 0
        if len(data) >= wire.HEADER_SIZE:
            header = wire.HEADER.unpack_from(data)
            ser_id, seq = header[3], header[5]
        try:
            serializer = by_id(ser_id).values
        except SerializeError:
            serializer = by_id(1)
        try:
            peer = channel.sock.getpeername()
        except OSError:
            peer = "?"
        log.info("refused a plain (non-TLS) client from %s: this daemon accepts TLS only", peer)
        reason = ("this daemon accepts TLS connections only: set SSL=True on the client (and SSL_CACERTS to "
                  "the CA of the daemon's certificate); see docs/security.md")
        channel.send_plain(wire.encode(wire.Frame(wire.MSG_CONNECTFAIL, serializer.id, seq,
                                                   serializer.dumps(reason))))

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
            elif conn in parked and now - conn.last_active > idle:
                log.debug("closing connection from %s: idle for IDLE_TIMEOUT (%g s)", conn.addr, idle)
                _abort(conn)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
            expired = self._streams.expire()
            if expired:
                log.debug("expired %d streams", expired)

    # ------------------------------------------------------------------ a connection's worker
    def _serve(self, conn: ClientConnection) -> None:
        """Answer requests on `conn` until it is idle for WORKER_LINGER, closes, or others need the worker.

        A partial frame never pins the worker: it stays in the connection's reader while the
        connection waits in the selector again (a slow client cannot hold a worker)."""
        linger_ms = self.settings.WORKER_LINGER * 1000
        reader = conn.reader
        pool = self._pool
        try:
            while True:
                frame = reader.next_frame()
                if frame is not None:
                    self._handle(conn, frame)
                    continue
                if self._stop.is_set():
                    if conn.poller.poll(0):  # shutting down: answer what came ("not run")
                        conn.fill()
                        continue
                    self._hand_back(conn)  # and let the draining loop watch it for late requests
                    return
                if pool.backlog():  # other connections are waiting for a worker: take turns
                    self._hand_back(conn)
                    return
                if self._server_spin and not self._calls_in_progress and conn.try_fill():
                    continue  # the next request came quickly: no sleep, no wake-up
                # idle: keep watching for WORKER_LINGER, unless other connections wait for a worker
                if not self._linger(conn, linger_ms):
                    self._hand_back(conn)
                    return
                conn.fill()
        except (errors.ConnectionClosedError, errors.TimeoutError):
            self._drop(conn)
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", conn.addr, exc)
            self._drop(conn)
        except Exception:
            log.exception("closing connection from %s after an unexpected error", conn.addr)
            self._drop(conn)

    def _linger(self, conn: ClientConnection, linger_ms: float) -> bool:
        """Wait for the connection's next request: True when it has data, False when the worker should
        hand it back (idle for linger_ms, or tasks are waiting for a worker)."""
        deadline = time.monotonic() + linger_ms / 1000
        sock_fd = conn.sock.fileno()
        while True:
            remaining_ms = (deadline - time.monotonic()) * 1000
            if remaining_ms <= 0 or self._pool.backlog():
                return False
            events = conn.idle_poller.poll(remaining_ms)
            if any(fd == sock_fd for fd, _ in events):
                return True
            # else: the pool's backlog signal, or the time is up: the checks above decide

    def _drop(self, conn: ClientConnection) -> None:
        if conn.closed:
            return
        conn.close()
        self._connections.discard(conn)
        self._streams.orphan(conn)
        try:
            self.clientDisconnect(conn)
        except Exception:
            log.exception("clientDisconnect hook failed")

    def _handle(self, conn: ClientConnection, frame: wire.Frame) -> None:
        if self.settings.LOGWIRE:
            log.debug("received from %s: %r", conn.addr, frame)
        if frame.type == wire.MSG_PING:
            conn.send(wire.Frame(wire.MSG_PING, frame.serializer_id, frame.seq, b"pong"))
        elif not conn.handshaken:
            if frame.type != wire.MSG_CONNECT:
                raise ProtocolError(f"expected CONNECT as the first message, got type {frame.type}")
            self._handshake(conn, frame)
        elif frame.type == wire.MSG_INVOKE:
            with self._calls_lock:
                too_late = self._stop.is_set()
                if not too_late:
                    self._calls_in_progress += 1
            if too_late:
                self._refuse_not_run(conn, frame)
                return
            try:
                self._invoke(conn, frame)
            finally:
                with self._calls_lock:
                    self._calls_in_progress -= 1
        else:
            raise ProtocolError(f"unexpected message type {frame.type} after the handshake")

    def _handshake(self, conn: ClientConnection, frame: wire.Frame) -> None:
        try:
            codec = by_id(frame.serializer_id)
        except SerializeError:
            raise ProtocolError(f"client asked for unknown serializer id {frame.serializer_id}") from None
        serializer = conn.serializer = codec.values

        def fail(reason: str) -> None:
            log.info("handshake from %s refused: %s", conn.addr, reason)
            conn.send(wire.Frame(wire.MSG_CONNECTFAIL, serializer.id, frame.seq, serializer.dumps(reason)))

        try:
            data = codec.loads(frame.payload)
            handshake, object_id = data["handshake"], data["object"]
        except (SerializeError, errors.SecurityError, KeyError, TypeError) as exc:
            return fail(f"invalid handshake data: {exc}")
        key_proof: bytes | None = None
        if self.settings.KEY:
            # --- mesh key (docs/security.md): the proxy proves it holds the key, we prove it back
            from ..mesh import auth
            key_proof, why = auth.check_client_token(
                self.settings.KEY, frame.annotations.get(auth.HANDSHAKE_ANNOTATION), object_id,
                self.settings.KEY_WINDOW)
            if key_proof is None:
                return fail(why)
        registration = self._objects.get(object_id) if isinstance(object_id, str) else None
        if registration is None:
            return fail("unknown object")
        self._set_context(conn, frame)
        try:
            answer = self.validateHandshake(conn, handshake)
        except Exception as exc:
            return fail(f"handshake denied: {exc}" if str(exc) else "handshake denied")
        try:
            payload = serializer.dumps({"handshake": answer, "meta": self._metadata(object_id, False)})
        except SerializeError as exc:
            return fail(f"cannot serialize the handshake answer: {exc}")
        conn.handshaken, conn.object_id = True, object_id
        # a meshrpc proxy offers its capabilities; Pyro5 proxies never do, and get the plain answer
        offered = wire.capabilities(frame.annotations)
        conn.oob = wire.CAP_OOB in offered
        conn.binary = wire.CAP_BINARY in offered and self.settings.SERPENT_BINARY
        agreed = (wire.CAP_OOB if conn.oob else b"") + (wire.CAP_BINARY if conn.binary else b"")
        annotations = {wire.CAPABILITIES: agreed} if agreed else {}
        if key_proof is not None:
            from ..mesh import auth
            annotations[auth.HANDSHAKE_ANNOTATION] = key_proof
        conn.send(wire.Frame(wire.MSG_CONNECTOK, serializer.id, frame.seq, payload, 0, annotations,
                             correlation_id=frame.correlation_id))

    def _refuse_not_run(self, conn: ClientConnection, frame: wire.Frame) -> None:
        """Shutting down: answer a request that came too late without running it. The reply says so
        (NOT_RUN_ANNOTATION): meshrpc proxies treat the call as not delivered and go elsewhere;
        Pyro5 proxies get the DaemonError and know the call did not run."""
        if frame.flags & wire.FLAG_ONEWAY:
            log.info("oneway call from %s not run: the daemon is shutting down", conn.addr)
            return
        try:
            serializer = by_id(frame.serializer_id).values
        except SerializeError:
            raise ProtocolError(f"unknown serializer id {frame.serializer_id}") from None
        error = DaemonError("the daemon is shutting down; the call was not run")
        conn.send(wire.Frame(wire.MSG_RESULT, serializer.id, frame.seq, serializer.dumps(error), wire.FLAG_EXCEPTION,
                             {NOT_RUN_ANNOTATION: b"1"}, frame.correlation_id))

    def validateHandshake(self, conn: ClientConnection, data: Any) -> Any:
        """Override to check the proxy's handshake data; raise to refuse. Returns the data sent back."""
        return "hello"

    def clientDisconnect(self, conn: ClientConnection) -> None:
        """Override to learn that a client connection closed."""

    def _set_context(self, conn: ClientConnection, frame: wire.Frame) -> None:
        ctx = current_context
        ctx.client = conn
        ctx.client_sock_addr = conn.addr
        ctx.seq = frame.seq
        ctx.msg_flags = frame.flags
        codec = BY_ID.get(frame.serializer_id)  # the serializer, not its binary form
        ctx.serializer_id = codec.values.id if codec is not None else frame.serializer_id
        ctx.annotations = frame.annotations
        ctx.response_annotations = {}
        ctx.correlation_id = frame.correlation_id

    def _invoke(self, conn: ClientConnection, frame: wire.Frame) -> None:
        try:
            codec = by_id(frame.serializer_id)  # how this payload is encoded
        except SerializeError:
            raise ProtocolError(f"unknown serializer id {frame.serializer_id}") from None
        serializer = codec.values  # the conversation's serializer: the reply's
        is_oneway = bool(frame.flags & wire.FLAG_ONEWAY)
        oob_mode = conn.oob and serializer.oob
        try:
            if frame.flags & wire.FLAG_KEEPSERIALIZED:
                call = self._blob_call(frame)
            elif oob_mode and codec.oob:
                blobs = frame.annotations.pop(wire.OOB_ANNOTATION, None)
                call = codec.loads_call(frame.payload, wire.unpack_oob(blobs) if blobs is not None else [])
            else:
                call = codec.loads_call(frame.payload)
        except (SerializeError, errors.SecurityError) as exc:
            if not is_oneway:
                self._reply_error(conn, frame, serializer, exc)
            else:
                log.warning("dropped oneway call from %s: %s", conn.addr, exc)
            return
        if is_oneway and self.settings.ONEWAY_THREADED:
            self._queue_oneway(conn, frame, call)
            return
        self._set_context(conn, frame)
        flags, result = self._run(conn, frame, call)
        if is_oneway:
            return
        if flags & wire.FLAG_EXCEPTION and not flags & wire.FLAG_ITEMSTREAMRESULT:
            self._reply_error(conn, frame, serializer, result)
            return
        annotations = current_context.response_annotations
        if flags & wire.FLAG_ITEMSTREAMRESULT:
            annotations = {**annotations, STREAM_ANNOTATION: result.encode("ascii")}
            reply_id, payload = serializer.id, serializer.dumps(ProtocolError("result of call is an iterator"))
        else:
            oob = [] if oob_mode else None
            try:
                reply_id, payload = serializer.encode(result, oob, conn.binary)
            except (SerializeError, errors.SecurityError) as exc:
                self._reply_error(conn, frame, serializer, SerializeError(f"cannot serialize the result: {exc}"))
                return
            if oob:
                annotations = {**annotations, wire.OOB_ANNOTATION: wire.pack_oob(oob)}
        conn.send(wire.Frame(wire.MSG_RESULT, reply_id, frame.seq, payload, flags, annotations,
                             frame.correlation_id))

    def _queue_oneway(self, conn: ClientConnection, frame: wire.Frame, call: tuple) -> None:
        """Oneway calls of a connection run off its reader, in the order they were sent: one pool task
        drains the connection's queue, so a flood of them costs no thread (or task) each."""
        with conn.oneway_lock:
            conn.oneways.append((frame, call))
            if conn.oneway_draining:
                return
            conn.oneway_draining = True
        self._pool.submit(self._drain_oneways, conn)

    def _drain_oneways(self, conn: ClientConnection) -> None:
        while True:
            with conn.oneway_lock:
                if not conn.oneways:
                    conn.oneway_draining = False
                    return
                frame, call = conn.oneways.popleft()
            self._set_context(conn, frame)
            flags, result = self._run(conn, frame, call)
            if flags & wire.FLAG_EXCEPTION:
                log.warning("oneway call %s failed: %r", call[1], result)

    def _blob_call(self, frame: wire.Frame) -> tuple:
        import marshal
        from ..blob import SerializedBlob
        from ..wire import marshal_check
        try:
            annotation = frame.annotations[BLOB_ANNOTATION]
            # security (found by tests/integration/test_fuzz_daemon.py): marshal trusts declared sizes;
            # five bytes announcing a tuple of 2**31 items held the GIL for a minute
            marshal_check.check(annotation)
            info, object_id, method = marshal.loads(annotation)
        except (KeyError, ValueError, EOFError, TypeError, SerializeError):
            raise SerializeError("blob call without a valid BLBI annotation") from None
        return object_id, method, (SerializedBlob(info, frame.payload, True, frame.serializer_id),), {}

    def _run(self, conn: ClientConnection, frame: wire.Frame, call: tuple) -> tuple[int, Any]:
        """Run one call (or a batch): (reply flags, result or exception)."""
        object_id, method, vargs, kwargs = call
        try:
            registration = self._objects.get(object_id) if isinstance(object_id, str) else None
            if registration is None:
                raise DaemonError(f"unknown object {object_id!r}")
            instance = registration.instance(conn.session)
            if frame.flags & wire.FLAG_BATCH and method == "<batch>":
                return wire.FLAG_BATCH, self._run_batch(registration, instance, vargs)
            result = self._call(registration, instance, method, vargs, kwargs)
        except Exception as exc:
            return wire.FLAG_EXCEPTION, self._traced(exc, method)
        if self._is_stream(result):
            if not self.settings.ITER_STREAMING:
                return wire.FLAG_EXCEPTION, errors.MeshError(
                    "the result is an iterator and ITER_STREAMING is off; return a list instead")
            try:
                stream_id = self._streams.add(iter(result), conn)
            except DaemonError as exc:
                return wire.FLAG_EXCEPTION, exc
            return wire.FLAG_EXCEPTION | wire.FLAG_ITEMSTREAMRESULT, stream_id
        return 0, result

    def _run_batch(self, registration: Registration, instance: Any, calls: Any) -> list[Any]:
        results: list[Any] = []
        for item in calls:
            try:
                method, vargs, kwargs = item
                results.append(self._call(registration, instance, method, tuple(vargs), kwargs or {}))
            except Exception as exc:
                results.append(ExceptionWrapper(self._traced(exc, item[0] if isinstance(item, (list, tuple)) else "?")))
                break
        return results

    def _call(self, registration: Registration, instance: Any, method: str, vargs: tuple, kwargs: dict) -> Any:
        members = registration.members
        if method == "__getattr__":
            if len(vargs) != 1 or vargs[0] not in members["attrs"]:
                raise AttributeError(f"remote object {registration.object_id!r} has no exposed attribute "
                                     f"{vargs[0] if vargs else '?'!r}")
            return getattr(instance, vargs[0])
        if method == "__setattr__":
            if len(vargs) != 2 or vargs[0] not in members["attrs"]:
                raise AttributeError(f"remote object {registration.object_id!r} has no exposed attribute "
                                     f"{vargs[0] if vargs else '?'!r}")
            setattr(instance, vargs[0], vargs[1])
            return None
        if method not in members["methods"]:
            raise AttributeError(f"remote object {registration.object_id!r} has no exposed method {method!r}")
        func = getattr(instance, method)
        try:
            return func(*vargs, **kwargs)
        except Exception:
            if getattr(func, "_pyroCallback", False):
                log.warning("exception in callback %s", method, exc_info=True)
            raise

    def _traced(self, exc: BaseException, method: str) -> BaseException:
        if not hasattr(exc, errors.REMOTE_TRACEBACK_ATTR):
            try:
                setattr(exc, errors.REMOTE_TRACEBACK_ATTR,
                        errors.format_traceback(exc, self.settings.DETAILED_TRACEBACK))
            except (AttributeError, TypeError):
                pass
        log.debug("call %s raised %r", method, exc)
        return exc

    def _reply_error(self, conn: ClientConnection, frame: wire.Frame, serializer: Serializer,
                     exc: BaseException) -> None:
        try:
            payload = serializer.dumps(exc)
        except Exception as inner:  # the exception itself does not serialize: send a description
            payload = serializer.dumps(errors.SerializeError(f"{type(exc).__name__}: {exc} "
                                                             f"(the exception could not be serialized: {inner})"))
        conn.send(wire.Frame(wire.MSG_RESULT, serializer.id, frame.seq, payload, wire.FLAG_EXCEPTION,
                             current_context.response_annotations if current_context.client is conn else {},
                             frame.correlation_id))

    @staticmethod
    def _is_stream(result: Any) -> bool:
        if type(result) in _PLAIN_RESULTS:  # the common case, without an ABC check
            return False
        return isinstance(result, (types.GeneratorType, collections.abc.Iterator))

    def _metadata(self, object_id: str, as_lists: bool) -> dict[str, Any]:
        registration = self._objects.get(object_id)
        if registration is None:
            raise DaemonError("unknown object")
        members = registration.members
        convert = list if as_lists else set
        meta = {key: convert(members[key]) for key in ("methods", "oneway", "attrs")}
        if members["idempotent"]:
            meta["idempotent"] = convert(members["idempotent"])
        return meta

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop the request loop and close the daemon; safe from any thread, including a call."""
        self._stop.set()
        self._wake()
        if self._loop_done.is_set():
            self.close()  # no loop running to do it

    def close(self) -> None:
        """Close every connection and the listening socket, and withdraw mesh announcements."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wait_for_calls(SHUTDOWN_GRACE)
        self._withdraw()
        for conn in list(self._connections):
            self._drop(conn)
        self._streams.close_all()
        self._pool.close()
        self._listener.close()
        self._wake_w.close()
        if self._loop_done.is_set():
            self._wake_r.close()
        if self._unixsocket:
            try:
                os.unlink(self._unixsocket)
            except OSError:
                pass
        log.info("daemon %s closed", self.locationStr)

    def _withdraw(self) -> None:
        """Goodbyes for every announcement (mesh, name server). Idempotent."""
        for withdrawing in (self._publisher, self._ns_registrar):
            if withdrawing is not None:
                try:
                    withdrawing.close()
                except Exception:
                    log.exception("withdrawing announcements failed")

    def _drain(self, selector: Any) -> None:
        """The request loop was stopped: shut down without losing a call. New connections are refused;
        calls in progress finish and reply; requests that still come are answered "not run" (see
        _refuse_not_run) while the goodbyes go out. close() then drops the connections left."""
        with self._calls_lock:
            pass  # a barrier: every call that was let in before the stop is counted from here on
        try:
            selector.unregister(self._listener)
        except (KeyError, ValueError):
            pass
        self._listener.close()  # connecting is refused from now on: certainly not delivered
        withdrawing = threading.Thread(target=self._withdraw, name="meshrpc-goodbyes", daemon=True)
        withdrawing.start()
        started = time.monotonic()
        deadline = started + SHUTDOWN_GRACE
        while time.monotonic() < deadline and (withdrawing.is_alive() or self._calls_in_progress
                                                or time.monotonic() - started < SHUTDOWN_DRAIN_MIN):
            ready = selector.select(0.01)
            self.events([key.fileobj for key, _ in ready])  # type: ignore[misc]
        withdrawing.join(max(0.0, deadline - time.monotonic()))

    def _wait_for_calls(self, grace: float) -> None:
        """Let calls in progress send their replies; the caller's own call does not count."""
        own = 1 if threading.current_thread().name.startswith(self._pool.name) else 0
        deadline = time.monotonic() + grace
        while self._calls_in_progress > own and time.monotonic() < deadline:
            time.sleep(0.005)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<meshrpc.Daemon {self.locationStr}>"

    def __wire_dict__(self) -> dict:
        return {"__class__": "Pyro5.server.Daemon", "state": {}}


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


def _abort(conn: ClientConnection) -> None:
    try:
        socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)  # the socket itself, not the SSL layer
    except OSError:
        pass


def _reaper_loop(daemon_ref: "weakref.ref[Daemon]", stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        daemon = daemon_ref()
        if daemon is None:
            return
        try:
            daemon._reap()
        except Exception:  # the reaper must not die of one odd connection
            log.exception("connection reaper failed")
        del daemon


def _primary_address(wildcard: str) -> str:
    """The address to publish in URIs when bound to all interfaces."""
    family = socket.AF_INET6 if wildcard == "::" else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # no packet is sent: connecting a UDP socket only picks the outgoing interface
        probe.connect(("fd00::1" if family == socket.AF_INET6 else "10.255.255.255", 9))
        return probe.getsockname()[0]
    except OSError:
        pass  # no route out (a host without a default route): take an interface's address
    finally:
        probe.close()
    if family == socket.AF_INET:
        from ..mesh.net import interfaces_for
        addresses = interfaces_for("0.0.0.0")
        if addresses:
            return addresses[0]
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def serve(objects: dict[Any, str], host: str | None = None, port: int = 0, daemon: Daemon | None = None,
          use_ns: bool = False, verbose: bool = True) -> None:
    """Register `objects` ({object or class: name}) on a daemon, advertise them by name, and serve."""
    daemon = daemon or Daemon(host, port)
    with daemon:
        ns = None
        if use_ns:
            from ..naming import locate_ns
            ns = locate_ns(settings=daemon.settings)
        for obj, name in objects.items():
            uri = daemon.register(obj, name, name=name)
            if ns is not None:
                ns.register(name, uri)
            if verbose:
                log.info("serving %s as %s", name, uri)
        if ns is not None:
            ns._pyroRelease()
        daemon.requestLoop()


__all__ = ["Daemon", "DaemonObject", "serve"]
