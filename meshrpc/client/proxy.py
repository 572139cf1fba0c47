"""Proxy: calls a remote object with plain method calls. Safe to share between threads."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, Callable, Iterator

from .. import errors
from ..config import Settings, config as default_config
from ..context import FRESH_ID, call_state, current_context, current_state, set_response_annotations
from ..errors import CommunicationError, ConnectionClosedError, ProtocolError
from ..limits import RECONNECT_PAUSE
from ..loopcheck import refuse_in_running_loop
from ..transport.sockets import FramedConnection, connect
from ..transport.spin import SpinGate
from ..uri import URI
from ..wire import frame as wire
from ..wire.constants import BATCH_METHOD, DAEMON_OBJECT_ID
from ..wire.serializers import BY_NAME, WIRE_CLASSES, ExceptionWrapper, Serializer, by_name
from ..wire.session import TAKE_EVENT, ClientSession, ConnectRefused, NotRun, StreamStarted, as_exception
from .recovery import NotDelivered, Rebind, Recovery, Step, connect_timeouts, silent_text

log = logging.getLogger("meshrpc.client")


# names that live on the proxy itself, never forwarded to the remote object
_LOCAL_ATTRS = frozenset({
    "_pyroUri", "_pyroConnection", "_pyroMethods", "_pyroOneway", "_pyroAttrs", "_pyroIdempotent",
    "_pyroTimeout", "_pyroSeq", "_pyroHandshake", "_pyroSerializer", "_pyroMaxRetries",
    "_pyroLock", "_pyroSettings", "_pyroMethodCache", "_pyroLocator", "_pyroRawWireResponse",
    "_Proxy__pyroTimeout", "_pyroResolvedBy", "_Proxy__rebinding", "_Proxy__retarget", "_Proxy__known", "_Proxy__lost",
    "_pyroReleased", "_pyroConnectedSocket",
})
# asked by pickle and copy on the instance: answered locally, never by the remote object (as in Pyro5);
# any other name, dunder or not, is looked up in the remote object's exposed names
_PICKLE_PROTOCOL_ATTRS = frozenset({"__getnewargs__", "__getnewargs_ex__", "__getinitargs__"})
CONNECTED_SOCKET_LOCATION = "./u:<connected socket>"  # the URI location of a proxy on a given socket
_FLAG_ONEWAY = wire.FLAG_ONEWAY
_monotonic = time.monotonic


class _RemoteMethod:
    """A remote method of a proxy. It reads the proxy's state from the proxy's `__dict__` (`_attrs`) and
    calls the proxy's `_pyroInvoke` as bound when the method was looked up: attribute reads on a Proxy go
    through its `__getattr__` hook, which CPython cannot specialise (about 3x a plain read, per call)."""

    __slots__ = ("_proxy", "_name", "_attrs", "_invoke")

    def __init__(self, proxy: "Proxy", name: str) -> None:
        self._proxy = proxy
        self._name = name
        self._attrs = proxy.__dict__
        self._invoke = proxy._pyroInvoke  # a subclass's (or an instance's) override included

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._name
        return self._invoke(name, args, kwargs, _FLAG_ONEWAY if name in self._attrs["_pyroOneway"] else 0)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of {self._proxy._pyroUri}>"


class Proxy:
    """A stand-in for a remote object: `Proxy("PYRO:obj@host:port")`, `Proxy("PYRONAME:name")`.

    Connects lazily on the first call; `with Proxy(...) as p:` closes the connection at the end.
    One proxy may be used from many threads (calls are serialized on its connection);
    `copy.copy(proxy)` gives an independent proxy with its own connection.
    """

    def __init__(self, uri: str | URI, connected_socket: Any = None, *, settings: Settings | None = None) -> None:
        settings = settings or default_config
        object.__setattr__(self, "_pyroSettings", settings)
        # connected_socket: talk over this socket (a socketpair end, or one inherited after fork) to the
        # daemon on its other end; `uri` may then be just the object id. The socket stays open when the
        # proxy is released, so proxies can take turns on it (as in Pyro5).
        self._pyroConnectedSocket = connected_socket
        if connected_socket is not None and isinstance(uri, str) and ":" not in uri:
            uri = f"PYRO:{uri}@{CONNECTED_SOCKET_LOCATION}"
        given = URI(uri)
        self._pyroUri = given  # the current target: replaced by the resolved PYRO URI once connected
        self._pyroLocator: URI | None = None if given.is_direct else given  # PYRONAME/PYROMETA to re-resolve
        self._pyroResolvedBy: str | None = None  # the source ("mesh", "ns") that resolved the locator last
        self.__rebinding: Rebind | None = None  # while a call recovers: its rebind budget
        self.__retarget: URI | None = None  # a provider to reconnect to once, before re-resolving
        self.__known = False  # the locator was resolved at least once: its name is known
        self.__lost = False  # the daemon closed this proxy's connection, and it has not connected since
        self._pyroConnection: FramedConnection | None = None
        # sets a program may change, as in Pyro5 (e.g. _pyroOneway.add(name) for a method it calls oneway)
        self._pyroMethods: set[str] = set()
        self._pyroOneway: set[str] = set()
        self._pyroAttrs: set[str] = set()
        self._pyroIdempotent: set[str] = set()
        self._pyroMethodCache: dict[str, _RemoteMethod] = {}
        self._pyroSeq = 0  # the sequence number of the last request sent (Pyro5's attribute; informational)
        self._pyroReleased = False  # _pyroRelease() was called: streams wait for _pyroReconnect()/_pyroBind()
        self._pyroHandshake: Any = "hello"
        self._pyroSerializer: str | None = None  # an override of settings.SERIALIZER for this proxy
        by_name(settings.SERIALIZER)  # an unusable one is said now (as Pyro5), not at the first call
        self._pyroMaxRetries = settings.MAX_RETRIES
        self.__pyroTimeout = settings.COMMTIMEOUT or None
        self._pyroLock = threading.RLock()
        self._pyroRawWireResponse = False

    # --- attributes: local ones are plain, exposed remote properties go over the wire
    def __getattr__(self, name: str) -> Any:
        if name in _LOCAL_ATTRS or name in _PICKLE_PROTOCOL_ATTRS:
            raise AttributeError(name)
        cached = self._pyroMethodCache.get(name)
        if cached is not None:
            return cached
        if not self._pyroMethods and not self._pyroAttrs:
            self._pyroGetMetadata()
        if name in self._pyroAttrs:
            return self._pyroInvoke("__getattr__", (name,), None)
        if name in self._pyroMethods:
            method = self._pyroMethodCache[name] = _RemoteMethod(self, name)
            if not hasattr(type(self), name):  # never shadows the proxy's own API (as __getattr__ never does)
                self.__dict__[name] = method  # found by plain lookup from now on: no __getattr__ per call
            return method
        raise AttributeError(f"remote object '{self._pyroUri}' has no exposed attribute or method '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LOCAL_ATTRS or name.startswith("_"):
            if name == "_pyroInvoke":  # the remote methods made so far call the one they were made with
                self.__forget_methods()
            return object.__setattr__(self, name, value)
        if type(self) is not Proxy and name not in self._pyroAttrs:
            return object.__setattr__(self, name, value)  # subclasses may keep state of their own
        if not self._pyroMethods and not self._pyroAttrs:
            self._pyroGetMetadata()
        if name in self._pyroAttrs:
            self._pyroInvoke("__setattr__", (name, value), None)
            return None
        raise AttributeError(f"remote object '{self._pyroUri}' has no exposed attribute '{name}'")  # Pyro5's text

    def __delattr__(self, name: str) -> None:
        if name == "_pyroInvoke":
            self.__forget_methods()
        object.__delattr__(self, name)

    def __forget_methods(self) -> None:
        """The remote methods made so far go (they are made again when next looked up)."""
        attrs = self.__dict__
        for name in attrs.get("_pyroMethodCache", ()):
            if attrs.get(name).__class__ is _RemoteMethod:
                del attrs[name]
        attrs["_pyroMethodCache"] = {}

    def __dir__(self) -> list[str]:
        """The proxy's class API (as Pyro5's dir) and what the remote object exposes; not the proxy's
        per-instance state (connection, locks, caches), which made dir() a wall of private names."""
        return sorted(set(dir(type(self))) | self._pyroMethods | self._pyroAttrs)

    # --- container protocol: forwarded when the remote object exposes the dunder method
    def __remote_dunder(self, name: str, *args: Any) -> Any:
        if not self._pyroMethods and not self._pyroAttrs:
            self._pyroGetMetadata()
        if name not in self._pyroMethods:
            raise TypeError(f"remote object '{self._pyroUri}' does not expose {name}")
        return self._pyroInvoke(name, args, None)

    def __len__(self) -> int:
        return self.__remote_dunder("__len__")

    def __getitem__(self, key: Any) -> Any:
        return self.__remote_dunder("__getitem__", key)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__remote_dunder("__setitem__", key, value)

    def __delitem__(self, key: Any) -> None:
        self.__remote_dunder("__delitem__", key)

    def __contains__(self, item: Any) -> bool:
        return self.__remote_dunder("__contains__", item)

    def __iter__(self) -> Any:
        return self.__remote_dunder("__iter__")

    def __bool__(self) -> bool:
        return True  # a proxy is always true; `if proxy:` must not call a remote __len__

    # --- lifecycle
    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._pyroRelease()

    def __del__(self) -> None:
        conn = self.__dict__.get("_pyroConnection")
        if conn is not None and self.__dict__.get("_pyroConnectedSocket") is None:
            conn.close()

    def __copy__(self) -> "Proxy":
        twin = object.__new__(type(self))  # subclasses keep their hooks
        Proxy.__init__(twin, self._pyroLocator or self._pyroUri, settings=self._pyroSettings)
        twin._pyroProcessMetadata({"methods": self._pyroMethods, "oneway": self._pyroOneway,
                                   "attrs": self._pyroAttrs, "idempotent": self._pyroIdempotent})
        twin._pyroHandshake = self._pyroHandshake
        twin._pyroSerializer = self._pyroSerializer
        twin._pyroMaxRetries = self._pyroMaxRetries
        twin._pyroTimeout = self._pyroTimeout
        twin._pyroRawWireResponse = self._pyroRawWireResponse
        return twin

    def __repr__(self) -> str:
        state = "connected" if self._pyroConnection else "not connected"
        return f"<meshrpc.Proxy at 0x{id(self):x}; {state}; for {self._pyroUri}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Proxy) and other._pyroUri == self._pyroUri

    def __hash__(self) -> int:
        return hash(self._pyroUri)

    # --- Pyro5-compatible wire form: (uri, oneway, methods, attrs, handshake, serializer)
    def __wire_dict__(self) -> dict:
        return {"__class__": "Pyro5.client.Proxy", "state": self.__getstate__()}

    def __getstate__(self) -> tuple:
        return (str(self._pyroLocator or self._pyroUri), tuple(self._pyroOneway), tuple(self._pyroMethods),
                tuple(self._pyroAttrs), self._pyroHandshake, self._pyroSerializer)

    def __setstate__(self, state: tuple) -> None:
        self.__init__(state[0])  # type: ignore[misc]
        self._pyroProcessMetadata({"oneway": state[1], "methods": state[2], "attrs": state[3]})
        self._pyroHandshake = state[4]
        self._pyroSerializer = state[5]

    @property
    def _pyroTimeout(self) -> float | None:
        return self.__pyroTimeout

    @_pyroTimeout.setter
    def _pyroTimeout(self, timeout: float | None) -> None:
        self.__pyroTimeout = timeout or None
        conn = self._pyroConnection
        if conn is not None:
            conn.timeout = self.__pyroTimeout

    def _pyroAsync(self) -> Any:
        """An asynchronous twin of this proxy (Pyro4's async mode, docs/clients.md): its calls return
        meshrpc.FutureResults at once. This proxy stays synchronous."""
        from .futures import AsyncProxy
        return AsyncProxy(self)

    def _pyroClaimOwnership(self) -> None:
        """Pyro5 compatibility: meshrpc proxies are not owned by a thread, so there is nothing to do."""

    def _pyroBind(self) -> bool:
        """Connect now (instead of at the first call) and fetch the object's metadata. False when the
        proxy was connected already (as in Pyro5)."""
        with self.__locked():
            if self._pyroConnection is not None:
                return False
            return self.__recovering(self.__connect, "")

    def _pyroRelease(self) -> None:
        """Close the connection; the next call connects again. A stream result of this proxy raises
        ConnectionClosedError until the proxy is bound again (_pyroReconnect/_pyroBind, or a call)."""
        with self._pyroLock:
            self._pyroReleased = True
            self.__close_connection()

    def __close_connection(self) -> None:
        conn = self._pyroConnection
        if conn is not None:
            self._pyroConnection = None
            if self._pyroConnectedSocket is None:
                conn.close()  # a given socket stays open for the next proxy that takes its turn
            log.debug("released connection to %s", self._pyroUri)

    @contextlib.contextmanager
    def __locked(self) -> Iterator[None]:
        """The proxy's lock, waited for at most the proxy's timeout: a call of another thread that
        hangs on a shared proxy gives this one a NotSentTimeoutError (a TimeoutError) instead of a hang."""
        self.__acquire()
        try:
            yield
        finally:
            self._pyroLock.release()

    def __acquire(self) -> None:
        timeout = self.__pyroTimeout
        if not self._pyroLock.acquire(timeout=timeout if timeout else -1):
            raise errors.NotSentTimeoutError(f"the proxy for {self._pyroUri} was busy with another thread's call "
                                             f"for longer than its timeout ({timeout:g} s); use a proxy per "
                                             "thread (copy.copy(proxy)) for calls that may take long")

    def _pyroReconnect(self, tries: int = 100000000) -> None:
        """Drop the connection and connect again, trying `tries` times (RECONNECT_PAUSE apart)."""
        self._pyroRelease()
        for attempt in range(tries):
            try:
                self._pyroBind()
                return
            except CommunicationError:
                if attempt + 1 >= tries:
                    raise
                time.sleep(RECONNECT_PAUSE)

    def _pyroGetMetadata(self, objectId: str | None = None, known_metadata: dict | None = None) -> None:
        if known_metadata is not None:
            self._pyroProcessMetadata(known_metadata)
            return
        with self._pyroLock:
            if self._pyroConnection is None:
                self.__recovering(self.__connect, "")
            else:
                meta = self._pyroInvoke("get_metadata", (objectId or self._pyroTargetObject(),), None,
                                        object_id=DAEMON_OBJECT_ID)
                self._pyroProcessMetadata(meta)

    def _pyroProcessMetadata(self, meta: dict) -> None:
        self._pyroMethods = set(meta.get("methods") or ())
        self._pyroOneway = set(meta.get("oneway") or ())
        self._pyroAttrs = set(meta.get("attrs") or ())
        self._pyroIdempotent = set(meta.get("idempotent") or ())
        self.__forget_methods()  # the names may mean something else now
        if not self._pyroMethods and not self._pyroAttrs:
            log.warning("remote object %s exposes no methods or attributes (forgot @expose?)", self._pyroUri)

    def _pyroValidateHandshake(self, response: Any) -> None:
        """Override to check the daemon's handshake answer; raise to refuse the connection."""

    def _pyroAnnotations(self) -> dict[str, bytes]:
        """The annotations sent with every message: by default those of `current_context.annotations`
        (set it in the calling thread, as in Pyro5); override to add others."""
        return current_context.annotations

    def _pyroResponseAnnotations(self, annotations: dict[str, bytes], msgtype: int) -> None:
        """Override to see the annotations of every reply."""

    # --- connecting
    def _pyroSerializerObject(self) -> Serializer:
        return by_name(self._pyroSerializer or self._pyroSettings.SERIALIZER)

    def _pyroTargetObject(self) -> str:
        return self._pyroUri.object

    def _pyroResolve(self) -> URI:
        """The PYRO URI to connect to: the given one, or a provider of the logical name or tags."""
        if self._pyroLocator is None:
            return self._pyroUri
        if self.__retarget is not None:  # its connection broke: it may well be alive, try it first
            target, self.__retarget = self.__retarget, None
            return target
        from ..resolve import resolve_with_source
        rebind = self.__rebinding
        if rebind is not None and not rebind.first and self._pyroResolvedBy == "mesh":
            # replacing a provider the mesh gave: wait there for the rest of the rebind budget, woken
            # by the next announcement, instead of LOOKUP_TIMEOUT plus a name server search per attempt
            target, source = resolve_with_source(self._pyroLocator, self._pyroSettings, sources=("mesh",),
                                                 wait=max(0.01, rebind.remaining()))
        else:
            target, source = resolve_with_source(self._pyroLocator, self._pyroSettings)
        self._pyroResolvedBy = source
        self.__known = True  # from now on, a failing resolution means "providers gone", not "unknown"
        return target

    def __connect(self) -> bool:
        if self._pyroConnection is not None:
            return True
        settings = self._pyroSettings
        timeout = self.__pyroTimeout
        if self._pyroConnectedSocket is not None:
            target, sock = self._pyroUri, self._pyroConnectedSocket
            sock.settimeout(timeout or settings.CONNECT_TIMEOUT)
        else:
            target = self._pyroResolve()
            # by name: short connect attempts that grow, the handshake within the budget (docs/resilience.md)
            connect_timeout, handshake_timeout = connect_timeouts(
                settings, target, by_name=self._pyroLocator is not None, proxy_timeout=timeout,
                rebind=self.__rebinding)
            try:
                sock = connect(target.host, target.port, target.sockname, connect_timeout, settings.SOCK_NODELAY,
                               settings.DEAD_PEER_TIMEOUT)
            except CommunicationError as exc:
                raise NotDelivered(str(exc), target, timed_out=isinstance(exc, errors.TimeoutError)) from None
            sock.settimeout(handshake_timeout)
        if settings.SSL and self._pyroConnectedSocket is None:
            # --- TLS (docs/security.md): handshake now; the daemon's certificate must verify and name
            # the URI's host. A refused certificate (TLSError) is raised as it is: no retry helps.
            from ..transport import tls
            try:
                sock = tls.wrap_client(sock, settings, target.host, sock.gettimeout(),
                                       target.location or str(target))
            except tls.TLSError:
                raise
            except CommunicationError as exc:
                raise NotDelivered(str(exc), target, timed_out=isinstance(exc, errors.TimeoutError)) from None
        serializer = self._pyroSerializerObject()
        session = ClientSession(serializer, settings)
        conn = FramedConnection(sock, settings.MAX_MESSAGE_SIZE, protocol=session,
                                spin_gate=SpinGate.from_settings(settings))
        try:
            request = session.connect_request(target.object, self._pyroHandshake,
                                              self._pyroAnnotations(), current_context.correlation_id,
                                              time.time() if settings.KEY else None)
            try:
                conn.send_parts(request)
                event = conn.next_event()
            except (ConnectionClosedError, errors.TimeoutError) as exc:
                refusal = _tls_refusal(settings, str(exc))
                if refusal:  # refused for credentials: no retry or other provider changes that
                    from ..transport.tls import TLSError
                    raise TLSError(f"TLS: {target} refused this client: {refusal}") from None
                raise NotDelivered(f"handshake with {target} failed: {exc}", target, in_handshake=True,
                                    timed_out=isinstance(exc, errors.TimeoutError), timeout_text=str(exc)) from None
            except errors.SecurityError as exc:  # the daemon failed the mesh-key proof (docs/security.md)
                raise errors.SecurityError(f"connection to {target} refused: {exc}") from None
            except ProtocolError as exc:  # the daemon broke the protocol (its kind kept)
                raise type(exc)(f"handshake with {target}: {exc}") from None
            self._pyroResponseAnnotations(event.annotations, event.type)
            if isinstance(event, ConnectRefused):
                reason = event.reason
                if event.kind == "unknown-object" and self._pyroLocator is not None:
                    raise NotDelivered(f"{target} no longer serves that object", target)
                if event.kind == "mesh-key":
                    raise errors.SecurityError(f"connection to {target} rejected: {reason}"
                                               + ("" if settings.KEY else " (this proxy has no MESHRPC_KEY)"))
                raise CommunicationError(f"connection to {target} rejected: {reason}")
            conn.objectId = target.object  # Pyro5's connection attribute (programs print it)
            self._pyroConnection = conn  # the hook may look at it (e.g. _pyroConnection.getpeercert())
            self._pyroValidateHandshake(event.handshake)
            self._pyroProcessMetadata(event.metadata)
        except BaseException:
            self._pyroConnection = None
            if self._pyroConnectedSocket is None:
                conn.close()
            raise
        sock.settimeout(timeout)
        self._pyroConnection = conn
        self._pyroReleased = False
        self.__lost = False
        if self._pyroUri != target:
            if self._pyroLocator is not None and self._pyroUri != self._pyroLocator:
                log.info("rebound %s from %s to %s", self._pyroLocator, self._pyroUri, target)
            self._pyroUri = target
        log.debug("connected to %s", target)
        return True

    # --- calling
    def _pyroInvoke(self, methodname: str, vargs: Any, kwargs: dict | None, flags: int = 0,
                    object_id: str | None = None) -> Any:
        """Send one call and return its result (None for oneway calls).

        Recovery (docs/resilience.md): a call that certainly did not reach a daemon is retried, for
        PYRONAME/PYROMETA proxies on a freshly resolved provider, until REBIND_TIMEOUT; a call that may
        have reached one is re-sent only when the method is idempotent or `_pyroMaxRetries` allows it."""
        # the hot path, spelled out: no context manager, no closure until an attempt fails, a lock nobody
        # holds taken without a timed wait, and the proxy's state read from its __dict__ (no __getattr__ hook)
        attrs = self.__dict__
        lock = attrs["_pyroLock"]
        if not lock.acquire(False):
            self.__acquire()
        try:
            refuse_in_running_loop("meshrpc.Proxy")
            started = _monotonic()
            try:
                return _invoke_once(self, attrs, methodname, vargs, kwargs, flags, object_id)
            except (ConnectionClosedError, errors.TimeoutError, errors.NamingError) as exc:
                failure: BaseException = exc
            return self.__recover_call(attrs, methodname, vargs, kwargs, flags, object_id, started, failure)
        finally:
            lock.release()

    def __recover_call(self, attrs: dict, methodname: str, vargs: Any, kwargs: dict | None, flags: int,
                       object_id: str | None, started: float, failure: BaseException) -> Any:
        """The rest of a call whose first attempt failed with `failure`. Apart from _pyroInvoke: a closure
        there would make cells of its arguments on every call."""
        return self.__recover(lambda: _invoke_once(self, attrs, methodname, vargs, kwargs, flags, object_id),
                              methodname, started, failure)

    def __recovering(self, attempt: Callable[[], Any], methodname: str) -> Any:
        """Run `attempt` (a call, or just connecting) under the recovery rules of docs/resilience.md
        (meshrpc.client.recovery decides; this carries it out)."""
        refuse_in_running_loop("meshrpc.Proxy")
        started = time.monotonic()
        try:
            return attempt()  # the common case: no recovery state to build
        except (ConnectionClosedError, errors.TimeoutError, errors.NamingError) as exc:
            failure: BaseException = exc
        return self.__recover(attempt, methodname, started, failure)

    def __recover(self, attempt: Callable[[], Any], methodname: str, started: float,
                  failure: BaseException) -> Any:
        """After `attempt` failed with `failure`: retry, pause or raise, as recovery.Recovery says."""
        recovery = Recovery(self._pyroSettings, methodname, locator=self._pyroLocator,
                            idempotent=methodname in self._pyroIdempotent, max_retries=self._pyroMaxRetries,
                            started=started, connect_cap=self.__pyroTimeout, known=self.__known,
                            lost=self.__lost)
        outer, self.__rebinding = self.__rebinding, recovery.rebind
        listening = None
        try:
            while True:
                if listening is None and self._pyroLocator is not None and self._pyroResolvedBy == "mesh":
                    from ..resolve import watch_announcements  # news of the name ends a pause
                    listening = watch_announcements(self._pyroLocator, self._pyroSettings, recovery.rebind.heard)
                recovery.known = self.__known  # resolved during this call: its name is known now
                step = recovery.after(failure, self._pyroUri)
                self.__carry_out(step, failure)
                if not step.retry:
                    self.__lost = recovery.lost  # until a connect succeeds: the same error every time
                    if step.error is not None:
                        raise step.error from None
                    raise failure
                self.__retarget = step.retarget
                if step.pause:
                    recovery.rebind.sleep(step.pause)
                try:
                    return attempt()
                except (ConnectionClosedError, errors.TimeoutError, errors.NamingError) as exc:
                    failure = exc
        finally:
            if listening is not None:
                listening()
            self.__rebinding = outer
            self.__retarget = None

    def __carry_out(self, step: Step, exc: BaseException) -> None:
        """Close the connection; report the provider that failed to the mesh (passed over for a while)."""
        if step.drop:
            self.__close_connection()
        if step.suspect is not None:
            from ..resolve import report_failure
            report_failure(step.suspect, self._pyroSettings, exc)
        log.info("call to %s failed: %s%s", self._pyroLocator or self._pyroUri, exc,
                 "; trying again" if step.retry else "")

    def __invoke_once(self, attrs: dict, methodname: str, vargs: Any, kwargs: dict | None, flags: int,
                      object_id: str | None) -> Any:
        """One attempt of a call; `attrs` is the proxy's __dict__."""
        conn = attrs["_pyroConnection"]
        state = call_state(None)  # None: this thread never set a call context (nothing to send or clear)
        cls = type(self)
        override = attrs["_pyroSerializer"]
        if (conn is not None and not flags and object_id is None and (override is None or override in BY_NAME)
                and (state is None or (not state.annotations and state.correlation_id is None))
                and cls._pyroAnnotations is _DEFAULT_ANNOTATIONS
                and attrs["_pyroSettings"].MAX_MESSAGE_SIZE == conn.protocol.max_size):
            # the lean lane (most calls): connected, a plain two-way call with nothing to annotate and
            # no correlation id; what __request does, less the checks that cannot apply. The peer check
            # stays on every call, also right after an answer: a daemon may drop a connection at once
            # (test_idle_check), and only the check turns that into a safe retry
            if conn.peer_closed():
                raise NotDelivered(f"the connection to {self._pyroUri} was closed by the daemon", self._pyroUri,
                                   suspect=False)
            session = conn.protocol
            request = session.call_request(attrs["_pyroUri"].object, methodname, vargs, kwargs)
        else:
            if state is None:
                state = current_state()
            conn, session, request = self.__request(conn, state, methodname, vargs, kwargs, flags, object_id)
        seq = attrs["_pyroSeq"] = session.last_seq  # written without the remote __setattr__ (hot path)
        try:
            conn.send_request(request)
        except ConnectionClosedError as exc:  # not all of it left: the daemon cannot have run it
            raise NotDelivered(str(exc), self._pyroUri, suspect=False) from None
        if flags & _FLAG_ONEWAY:
            if state is not None:
                set_response_annotations(state, {})  # no reply, so none (as Pyro5: not the last call's)
            return None
        # the usual reply (no annotations: no blobs, no stream, nothing for hooks) is taken as a payload
        lean_reply = not attrs["_pyroRawWireResponse"] and cls._pyroResponseAnnotations is _DEFAULT_RESPONSE_ANNOTATIONS
        try:
            payload = conn.next_result() if lean_reply else TAKE_EVENT
            if payload is TAKE_EVENT:
                reply = conn.next_event()
        except errors.TimeoutError as exc:
            session.abandon(seq)
            self.__close_connection()  # a late reply would put the connection out of step
            # the text stays Pyro5's ("receiving: timeout": programs compare it); the note says what it means
            within = f" within {self._pyroTimeout:g} s" if self._pyroTimeout else ""
            exc.add_note(f"no reply from {self._pyroUri} to {methodname}{within}: "
                         "it was sent, so it may have run or may still run")
            raise
        except ProtocolError as exc:  # the daemon broke the protocol (its kind kept): the connection is unusable
            self.__close_connection()
            raise type(exc)(f"{exc} from {self._pyroUri}; connection closed") from None
        if payload is not TAKE_EVENT:
            if state is not None and state.response_annotations:
                set_response_annotations(state, {})
            return session.result_value(payload)  # decoded outside the try: a SerializeError keeps the connection
        return self.__outcome(reply, session, state if state is not None else current_state(), methodname)

    def __request(self, conn: FramedConnection | None, state: Any, methodname: str, vargs: Any,
                  kwargs: dict | None, flags: int, object_id: str | None) -> tuple:
        """(connection, session, request) for any call: connects when needed, sends the context's
        annotations and correlation id, and checks a MAX_MESSAGE_SIZE changed since connecting."""
        override = self._pyroSerializer
        if override is not None and override not in BY_NAME:
            self._pyroSerializerObject()  # an unusable override is refused (by_name says why) before anything else
        if conn is not None and conn.peer_closed():
            # the daemon closed the idle connection (or crashed): replace it before sending, so the
            # call certainly is not lost
            raise NotDelivered(f"the connection to {self._pyroUri} was closed by the daemon", self._pyroUri,
                                suspect=False)
        if conn is not None and flags & _FLAG_ONEWAY and self.__pyroTimeout and conn.silent_for(self.__pyroTimeout):
            # no reply would tell that a oneway call went into a dead connection: replace it first
            raise NotDelivered(silent_text(self._pyroUri, self.__pyroTimeout), self._pyroUri, suspect=False)
        if conn is None:
            self.__connect()
            conn = self._pyroConnection
            assert conn is not None
        session = conn.protocol
        corr = state.correlation_id
        if corr is FRESH_ID:  # inside a server call that came without one: its fresh id, as in Pyro5
            corr = current_context.correlation_bytes
        # the hooks' defaults are taken straight from the call context (a subclass may override them)
        annotations = (state.annotations if type(self)._pyroAnnotations is _DEFAULT_ANNOTATIONS
                       else self._pyroAnnotations())
        request = session.call_request(object_id or self._pyroUri.object, methodname, vargs, kwargs, flags,
                                       annotations, corr)
        limit = self._pyroSettings.MAX_MESSAGE_SIZE  # read now: a program may have changed it since connecting
        # (the session checked the limit it was made with: only a changed one is checked again here)
        if (limit != session.max_size and limit
                and sum(memoryview(part).nbytes for part in request) > limit + wire.HEADER_SIZE):
            session.abandon(session.last_seq)
            self.__close_connection()  # nothing was sent: certainly not delivered
            raise errors.MessageTooLargeError(f"the call of {methodname} is larger than MAX_MESSAGE_SIZE "
                                              f"({limit} bytes); send less or raise the limit")
        return conn, session, request

    def __outcome(self, reply: Any, session: ClientSession, state: Any, methodname: str) -> Any:
        """The result of a reply with annotations (blobs, a stream, hooks), a raw wire reply, or "not run"."""
        if reply.__class__ is NotRun:
            # the daemon is shutting down and refused the call without running it: certainly not delivered
            self.__close_connection()
            raise NotDelivered(f"{self._pyroUri} is shutting down; {methodname} was not run", self._pyroUri)
        raw = self._pyroRawWireResponse
        reply_annotations = reply.annotations
        # the blobs are the payload's, not annotations for hooks (a raw wire response keeps them)
        blobs = session.take_blobs(reply) if reply_annotations and not raw else None
        set_response_annotations(state, reply_annotations)
        if type(self)._pyroResponseAnnotations is not _DEFAULT_RESPONSE_ANNOTATIONS:
            self._pyroResponseAnnotations(reply.annotations, reply.type)
        if raw:
            return reply
        value = session.reply_value(reply, blobs)
        if value.__class__ is StreamStarted:
            return StreamResultIterator(value.stream_id, self)
        return value

    def _pyroInvokeBatch(self, calls: list[tuple[str, tuple, dict]], oneway: bool = False) -> Any:
        flags = wire.FLAG_BATCH | (wire.FLAG_ONEWAY if oneway else 0)
        return self._pyroInvoke(BATCH_METHOD, calls, None, flags)


_DEFAULT_ANNOTATIONS = Proxy._pyroAnnotations
_invoke_once = Proxy._Proxy__invoke_once  # type: ignore[attr-defined]  # a global: no lookup through the proxy
_DEFAULT_RESPONSE_ANNOTATIONS = Proxy._pyroResponseAnnotations


class StreamResultIterator:
    """Items of a remote iterator, pulled from the daemon one at a time."""

    def __init__(self, stream_id: str, proxy: Proxy) -> None:
        self.streamId = stream_id
        self.proxy = proxy
        self._done = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        proxy = self.proxy
        if proxy._pyroReleased and proxy._pyroConnection is None:
            # as in Pyro5: the program closed the proxy; the daemon keeps the stream ITER_STREAM_LINGER seconds
            raise ConnectionClosedError("the proxy of this stream result was released; _pyroReconnect() or "
                                        "_pyroBind() it to go on with the stream")
        try:
            return self.proxy._pyroInvoke("get_next_stream_item", (self.streamId,), None,
                                          object_id=DAEMON_OBJECT_ID)
        except (StopIteration, GeneratorExit):
            self._done = True
            raise StopIteration from None
        except Exception:
            self._done = True
            raise

    def close(self) -> None:
        if not self._done:
            self._done = True
            if self.proxy._pyroConnection is not None:
                try:
                    self.proxy._pyroInvoke("close_stream", (self.streamId,), None, wire.FLAG_ONEWAY,
                                           object_id=DAEMON_OBJECT_ID)
                except errors.MeshError:
                    pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _tls_refusal(settings: Settings, text: str) -> str | None:
    if not settings.SSL:
        return None
    from ..transport.tls import peer_refusal
    return peer_refusal(text)


def _proxy_from_wire(data: dict) -> Proxy:
    proxy = Proxy.__new__(Proxy)
    proxy.__setstate__(tuple(data["state"]))
    return proxy


WIRE_CLASSES["Pyro5.client.Proxy"] = _proxy_from_wire
WIRE_CLASSES["meshrpc.client.proxy.Proxy"] = _proxy_from_wire


def raise_batch_item(item: Any) -> Any:
    if isinstance(item, ExceptionWrapper):
        raise as_exception(item.exception)
    return item
