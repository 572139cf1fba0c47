"""The Daemon: serves registered objects to proxies over protocol 502 (Pyro5's public API).

A Daemon puts three parts together (docs/architecture.md):
- its registry and dispatch (server/dispatch.py): which objects it serves, and running calls on them;
- its connection server (server/connections.py): the listening socket, the selector loop and the
  worker threads, each connection's protocol session (wire/session.py);
- its announcers (server/hooks.py): the mesh and the name server plug in there, as client.Proxy
  does for proxyFor, so server/ imports none of them (meshrpc/plugins.py plugs them in).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import uuid
import weakref
from typing import Any, Callable, Iterable

from ..config import Settings, config as default_config
from ..context import current_context
from ..errors import DaemonError, MeshError
from ..loopcheck import refuse_in_running_loop
from ..transport.sockets import create_server_socket
from ..uri import URI
from ..wire.constants import DAEMON_OBJECT_ID
from ..wire.serializers import WIRE_CLASSES
from .hooks import Announcers, locate_name_server, make_proxy
from .signals import DEFAULT_SIGNALS, stop_on_signals
from ..limits import SHUTDOWN_GRACE
from .connections import ClientConnection, ConnectionServer
from .decorators import Registration, expose, oneway
from .dispatch import Dispatcher
from .streams import StreamTable

log = logging.getLogger("meshrpc.server")

SERVER_TYPES = ("thread", "multiplex")  # SERVERTYPE: calls on the worker pool, or one at a time
CONNECTED_SOCKET_NAME = "<connected socket>"  # the location of a daemon on a connected socket


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
        # the settings are read when needed (as in Pyro5): meshrpc.config, or the Settings given
        self.settings = settings = settings or default_config
        if settings.SERVERTYPE not in SERVER_TYPES:
            raise DaemonError(f"SERVERTYPE {settings.SERVERTYPE!r} is unknown: use one of {', '.join(SERVER_TYPES)}")
        host = settings.HOST if host is None else str(host)
        nathost = nathost if nathost is not None else (settings.NATHOST or None)
        natport = natport if natport is not None else settings.NATPORT
        if natport and not nathost:
            raise ValueError("natport needs nathost too")
        if nathost and unixsocket:
            raise ValueError("a daemon on a Unix socket has no NAT address (nathost)")
        # --- security (docs/security.md): the TLS context first, so a bad certificate binds nothing
        self._tls_context: Any = None
        if settings.SSL:
            from ..transport import tls
            self._tls_context = tls.server_context(settings)
        self._idle_pair: tuple[socket.socket, socket.socket] | None = None
        if connected_socket is not None:
            # one connection, no listening socket: a socketpair end nobody writes to stands in for it
            self._idle_pair = socket.socketpair()
            self._listener = self._idle_pair[0]
            unixsocket = CONNECTED_SOCKET_NAME
        else:
            self._listener = create_server_socket(host, port, unixsocket, reuse=settings.SOCK_REUSE)
        self._listener.setblocking(False)
        self._unixsocket = unixsocket
        if unixsocket:
            self._host, self._port = None, 0
        else:
            self._host, self._port = host, self._listener.getsockname()[1]
            if self._host in ("", "0.0.0.0", "::"):
                self._host = _primary_address(self._host)
        self._nathost, self._natport = nathost, (natport or self._port if nathost else 0)
        self._closed = False
        self._weak_self = weakref.proxy(self)
        self._streams = StreamTable(settings.ITER_STREAM_LIFETIME, settings.ITER_STREAM_LINGER,
                                    settings.MAX_STREAMS_PER_CONNECTION, settings=settings)
        # a subclass may change how a method is called by overriding _call (one call less when not)
        overridden = type(self)._call is not Daemon._call
        self._dispatch = Dispatcher(settings, self._streams, invoke=self._call if overridden else None)
        # discovery follows the bound host (0.0.0.0: every interface)
        self._announcers = Announcers(host if not unixsocket else "localhost", settings)
        self._register_daemon_object(interface)
        # a subclass's annotations() are added to every reply (no call per reply when not overridden)
        self._reply_annotations = self.annotations if type(self).annotations is not Daemon.annotations else None
        self._connection_server = ConnectionServer(self, self._listener, None if connected_socket else unixsocket,
                                                   self._tls_context, self.locationStr)
        self._combined: list[Any] = []
        if connected_socket is not None:
            self._connection_server.adopt(connected_socket)
            log.info("daemon serving a connected socket")
        else:
            log.info("daemon listening on %s%s", self.locationStr, " (TLS)" if self._tls_context is not None else "")

    # ------------------------------------------------------------------ registration
    def _register_daemon_object(self, interface: type) -> None:
        obj = interface(self)
        self._dispatch.add(Registration(DAEMON_OBJECT_ID, obj, None, frozenset()))
        obj._pyroId, obj._pyroDaemon = DAEMON_OBJECT_ID, None  # never autoproxied

    def register(self, obj_or_class: Any, objectId: str | None = None, force: bool = False, weak: bool = False,
                 *, name: str | None = None, metadata: Iterable[str] | None = None) -> URI:
        """Serve an object (or a class, instantiated per its @behavior) and return its URI.

        The object (or class) gets `_pyroId` and `_pyroDaemon`, as in Pyro5, and so do the instances
        the daemon creates of a registered class. weak: the registration does not keep the object
        alive (it ends when the object is collected). `name` and `metadata` tags advertise it on the
        mesh, so that `PYRONAME:<name>` and `PYROMETA:<tag>` find it."""
        if objectId and not isinstance(objectId, str):
            raise TypeError(f"objectId must be a string, not {type(objectId).__name__}")
        if obj_or_class is None or type(obj_or_class).__module__ == "builtins" and not isinstance(obj_or_class, type):
            raise AttributeError(f"cannot serve {obj_or_class!r}: register an object of your own class (or the class)")
        is_class = isinstance(obj_or_class, type)
        tags = frozenset(metadata or ())
        if any(not isinstance(t, str) for t in tags):
            raise DaemonError("metadata tags must be strings")
        if is_class and not hasattr(obj_or_class, "_pyroInstancing"):
            try:
                obj_or_class._pyroInstancing = ("session", None)  # Pyro5 records the default on the class
            except (AttributeError, TypeError):
                pass
        if is_class and weak:
            raise TypeError("classes cannot be registered weakly (weak=True is for objects)")
        with self._dispatch.lock:
            existing = getattr(obj_or_class, "_pyroId", None)
            registered = self._dispatch.lookup(existing) if existing and not force else None
            if registered is not None and registered.target is obj_or_class:
                raise DaemonError("object or class already has a Pyro id")  # Pyro5's text (programs compare it)
            object_id = objectId or "obj_" + uuid.uuid4().hex
            if self._dispatch.lookup(object_id) is not None:
                if not force:
                    # Pyro5's text (programs compare it)
                    raise DaemonError("an object or class is already registered with that id")
                self.unregister(object_id)
            # objects refer to their daemon weakly (as in Pyro5): they never keep a closed daemon alive
            self._dispatch.add(Registration(object_id, obj_or_class, name, tags, owner=self._weak_self, weak=weak))
            try:
                obj_or_class._pyroId, obj_or_class._pyroDaemon = object_id, self._weak_self
            except (AttributeError, TypeError):
                pass  # objects with __slots__ are served but not autoproxied
            if weak:
                weakref.finalize(obj_or_class, _unregister_gone, weakref.ref(self), object_id)
        uri = self.uriFor(object_id)
        if name:
            self._announce(name, uri, tags)
        return uri

    def unregister(self, objectOrId: Any) -> None:
        """Stop serving an object (or class), given itself or its id; unknown ids are ignored."""
        if objectOrId is None:
            raise ValueError("unregister needs an object or an object id, not None")
        object_id = objectOrId if isinstance(objectOrId, str) else getattr(objectOrId, "_pyroId", None)
        if object_id is None:
            raise DaemonError(f"{objectOrId!r} is not registered (it has no _pyroId)")
        if object_id == DAEMON_OBJECT_ID:
            return
        registration = self._dispatch.remove(object_id)
        if registration is None:
            return
        target = registration.target
        # unregistered as an object (not by id), it loses its _pyro attributes, as in Pyro5
        if not isinstance(objectOrId, str) and target is not None and _is_daemon(getattr(target, "_pyroDaemon", None), self):
            for attribute in ("_pyroDaemon", "_pyroId"):  # no trace left, as in Pyro5
                try:
                    delattr(target, attribute)
                except (AttributeError, TypeError):
                    pass
        if registration.name:
            self._announcers.withdraw(registration.name, str(self.uriFor(object_id)))

    def _announce(self, name: str, uri: URI, tags: frozenset[str]) -> None:
        """Hand a named registration to the announcers (server/hooks.py)."""
        self._announcers.register(name, str(uri), tags)

    def _withdraw(self) -> None:
        """Goodbyes for every announcement (mesh, name server). Idempotent."""
        self._announcers.close()

    @property
    def _objects(self) -> dict[str, Registration]:
        return self._dispatch.objects

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
        object_id = objectOrId if isinstance(objectOrId, str) else getattr(objectOrId, "_pyroId", None)
        registration = self._dispatch.lookup(object_id or "")
        if registration is None:
            raise DaemonError("object is not registered in this daemon")
        proxy = make_proxy(self.uriFor(object_id, nat), self.settings)
        proxy._pyroProcessMetadata(registration.members)
        return proxy

    @property
    def natLocationStr(self) -> str | None:
        """host:port published instead of the bound location (NATHOST/NATPORT), or None."""
        if not self._nathost:
            return None
        host = f"[{self._nathost}]" if ":" in self._nathost else self._nathost
        return f"{host}:{self._natport}"

    def resetMetadataCache(self, objectOrId: Any) -> None:
        """Compute an object's exposed members again (its class got methods since it was registered)."""
        object_id = objectOrId if isinstance(objectOrId, str) else getattr(objectOrId, "_pyroId", None)
        registration = self._dispatch.lookup(object_id or "")
        if registration is not None:
            registration.refresh_members()

    def housekeeping(self) -> None:
        """Override to do periodic work: the request loop calls it about every second (and streams
        expire at the same time)."""

    def combine(self, other: Any) -> None:
        """Serve `other` (another Daemon, or a name server's BroadcastServer) from this daemon's request
        loop too, as Pyro5's multiplexed server does: one thread runs both loops' events."""
        if not hasattr(other, "sockets") or not hasattr(other, "events"):
            raise TypeError(f"can only combine daemons and broadcast servers, not {type(other).__name__}")
        self._combined.append(other)

    @staticmethod
    def serveSimple(objects: dict[Any, str], host: str | None = None, port: int = 0, daemon: "Daemon | None" = None,
                    ns: bool | None = None, verbose: bool = True) -> None:
        """Pyro4's name of `serve` (ns: its use_ns)."""
        serve(objects, host, port, daemon, use_ns=ns, verbose=verbose)

    @property
    def locationStr(self) -> str:
        if self._unixsocket:
            return "./u:" + self._unixsocket
        host = f"[{self._host}]" if self._host and ":" in self._host else self._host
        return f"{host}:{self._port}"

    @property
    def sock(self) -> socket.socket:
        return self._listener

    @property
    def transportServer(self) -> "Daemon":
        """Pyro5's socket-server object: here the daemon plays that part itself (`sock`, `sockets`,
        `locationStr`, `events`), e.g. `daemon.transportServer.sock.getsockname()`."""
        return self

    # ------------------------------------------------------------------ dispatch (server/dispatch.py)
    def _run(self, conn: Any, frame: Any, call: tuple) -> tuple[int, Any]:
        """Run one call (or a batch): (reply flags, result or exception)."""
        return self._dispatch.run(conn, frame.flags, call)

    def _call(self, registration: Registration, instance: Any, method: str, vargs: tuple, kwargs: dict) -> Any:
        """How one method is called (override to change it, e.g. to run coroutines on a loop)."""
        return self._dispatch.call(registration, instance, method, vargs, kwargs)

    def _traced(self, exc: BaseException, method: str) -> BaseException:
        return self._dispatch.traced(exc, method)

    _is_stream = staticmethod(Dispatcher.is_stream)

    def _metadata(self, object_id: str, as_lists: bool) -> dict[str, Any]:
        return self._dispatch.metadata(object_id, as_lists)

    # ------------------------------------------------------------------ serving (server/connections.py)
    @property
    def sockets(self) -> list[socket.socket]:
        """Sockets for an external select loop: pass the readable ones to `events()`."""
        return self._connection_server.sockets

    def events(self, eventsockets: Iterable[socket.socket]) -> None:
        """Handle readable sockets (from `sockets`) found by an external select loop."""
        self._connection_server.events(eventsockets)

    def requestLoop(self, loopCondition: Callable[[], bool] = lambda: True) -> None:
        """Serve until `shutdown()` is called, `loopCondition()` returns false or Ctrl-C. In the main
        thread, SIGTERM (a service manager's stop) calls `shutdown()` too, unless the program has a
        SIGTERM handler of its own (docs/servers.md)."""
        refuse_in_running_loop("meshrpc.Daemon.requestLoop")
        with stop_on_signals(self):
            try:
                if self._combined:
                    self._combined_loop(loopCondition)
                else:
                    self._connection_server.requestLoop(loopCondition)
            except KeyboardInterrupt:
                # as Pyro5's loop: Ctrl-C returns, so the program's code after the loop (its cleanup,
                # the goodbye of leaving `with`) runs instead of a traceback
                log.debug("request loop stopped by Ctrl-C")

    def _combined_loop(self, loopCondition: Callable[[], bool]) -> None:
        """The request loop of a daemon combined with others: one select over everybody's `sockets`."""
        parts = [self, *self._combined]
        try:
            while not self._closed and not self._connection_server.stop_requested and loopCondition():
                owners = {sock: part for part in parts for sock in part.sockets if sock.fileno() >= 0}
                try:
                    readable, _, _ = select.select(list(owners), [], [], self.settings.POLLTIMEOUT)
                except (OSError, ValueError):
                    if all(sock.fileno() >= 0 for sock in owners):
                        raise
                    continue  # a worker let a connection go meanwhile: look again at what is open now
                for part in parts:
                    part.events([sock for sock in readable if owners[sock] is part])
        finally:
            if self._connection_server.stop_requested:
                self.close()

    def stop_on_signals(self, *signals: int) -> Any:
        """A context manager: inside it, these signals (default SIGTERM) call `shutdown()`; for programs
        that run their own loop with `events()`. Main thread only; a program's own handlers stay."""
        return stop_on_signals(self, tuple(signals) or DEFAULT_SIGNALS)

    @property
    def _connections(self) -> set[ClientConnection]:
        return self._connection_server._connections

    @property
    def _pool(self) -> Any:
        return self._connection_server._pool

    def validateHandshake(self, conn: ClientConnection, data: Any) -> Any:
        """Override to check the proxy's handshake data; raise to refuse. Returns the data sent back."""
        return "hello"

    def clientDisconnect(self, conn: ClientConnection) -> None:
        """Override to learn that a client connection closed."""

    def annotations(self) -> dict[str, bytes]:
        """Override to send these annotations with every reply, besides (and over) the call's
        `current_context.response_annotations`, as in Pyro5."""
        return {}

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop the request loop and close the daemon; safe from any thread, including a call."""
        self._connection_server.stop()
        if not self._connection_server.loop_running:
            self.close()  # no loop running to do it

    def close(self) -> None:
        """Close every connection and the listening socket, and withdraw mesh announcements."""
        if self._closed:
            return
        self._closed = True
        if self._idle_pair is not None:
            self._idle_pair[1].close()
        server = self._connection_server
        server.stop()
        server.wait_for_calls(SHUTDOWN_GRACE)
        self._withdraw()
        server.close()
        self._streams.close_all()
        log.info("daemon %s closed", self.locationStr)

    def __enter__(self) -> "Daemon":
        if self._closed:
            raise MeshError("this daemon is closed; create a new one")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if "_connection_server" not in vars(self):
            return "<meshrpc.Daemon (unusable: made from its serialized form)>"
        return f"<meshrpc.Daemon {self.locationStr}>"

    def __wire_dict__(self) -> dict:
        return {"__class__": "Pyro5.server.Daemon", "state": {}}


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
        from ..transport.interfaces import ipv4_addresses
        addresses = ipv4_addresses(include_loopback=False)
        if addresses:
            return addresses[0]
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def serve(objects: dict[Any, str], host: str | None = None, port: int = 0, daemon: Daemon | None = None,
          use_ns: bool | None = None, verbose: bool = True) -> None:
    """Register `objects` ({object or class: name}) on a daemon, announce each name, and serve until the
    daemon is shut down (Pyro5's `serve`).

    Every name is announced on the mesh, and in a name server (docs/servers.md):
    - use_ns=None (the default): in a name server when one is found; it is looked for in the background,
      so a program serves at once with or without one (a Pyro5 client then finds the names there);
    - use_ns=True: a name server is required (NamingError otherwise, as in Pyro5) and has the names
      before serving starts;
    - use_ns=False: the mesh only.
    Name-server registrations are kept (registered again after a name-server restart) and withdrawn
    when the daemon closes. verbose prints each name with its URI."""
    daemon = daemon or Daemon(host, port)
    with daemon:
        registered = []
        for obj, name in objects.items():
            uri = daemon.register(obj, name, name=name)
            registered.append((name, uri))
            if verbose:
                print(f"serving {name} as {uri}", flush=True)
        if use_ns:
            _register_in_name_server(daemon, registered, required=True)
        elif use_ns is None and registered:
            threading.Thread(target=_register_in_name_server, args=(daemon, registered, False),
                             name="meshrpc-serve-ns", daemon=True).start()
        if verbose:
            print(f"meshrpc daemon running at {daemon.locationStr}", flush=True)
        daemon.requestLoop()


def _register_in_name_server(daemon: Daemon, registered: list[tuple[str, URI]], required: bool) -> None:
    """serve(): register the names in the name server found now, and have the daemon keep them there."""
    try:
        ns = locate_name_server(daemon.settings)
    except MeshError as exc:
        if required:
            raise
        log.info("no name server found (%s): the names are announced on the mesh only", exc)
        return
    with ns:
        for name, uri in registered:
            ns.register(name, str(uri))
        location = ns._pyroUri
    if location.host and not daemon._closed:
        daemon._announcers.add_name_server(location.host, location.port or daemon.settings.NS_PORT)
    log.info("names registered in the name server at %s: %s", location.location,
             ", ".join(name for name, _ in registered))


def _is_daemon(reference: Any, daemon: Daemon) -> bool:
    """Is `reference` (an object's _pyroDaemon: the daemon or a weak proxy of it) this daemon?"""
    try:
        return reference is not None and reference == daemon
    except ReferenceError:
        return False


def _unregister_gone(daemon_ref: "weakref.ref[Daemon]", object_id: str) -> None:
    """A weakly registered object was collected: its registration ends."""
    daemon = daemon_ref()
    if daemon is not None and not daemon._closed:
        daemon.unregister(object_id)


def _daemon_from_wire(data: dict) -> Daemon:
    """A Daemon arriving in data (Pyro5 lets objects holding their daemon travel): an unusable stand-in,
    as in Pyro5; a daemon cannot travel."""
    return Daemon.__new__(Daemon)


WIRE_CLASSES["Pyro5.server.Daemon"] = _daemon_from_wire


__all__ = ["Daemon", "DaemonObject", "ClientConnection", "serve"]
