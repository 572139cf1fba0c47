"""meshrpc.aio.Proxy: a remote object for asyncio code, over the same session core as the threaded Proxy.

One connection per proxy. Between meshrpc peers the handshake agrees on pipelining, so concurrent
awaits on one proxy are all in flight at once and their replies are matched by sequence number;
with a Pyro5 daemon the calls take turns (its protocol answers one request at a time). Recovery
(rebinding, re-sending) follows docs/resilience.md through meshrpc.client.recovery, so a
non-idempotent call never runs twice. A call that is cancelled or times out is abandoned: its late
reply is dropped by the session, never handed to another call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import socket
import time
from typing import Any, AsyncIterator, NoReturn

from .. import errors
from ..client.batch import BatchedCall
from ..client.proxy import _PICKLE_PROTOCOL_ATTRS
from ..client.recovery import NotDelivered, Rebind, Recovery, Step, connect_timeouts, silent_text
from ..config import Settings, config as default_config
from ..context import FRESH_ID, call_state, current_context, current_state, set_response_annotations
from ..errors import CommunicationError, ConnectionClosedError
from ..limits import INFLATE_THREADS, RECONNECT_PAUSE, RECV_CHUNK
from ..resolve import watch_announcements
from ..transport.sockets import notice_dead_peer, peer_closed_check, silent_peer_check  # (the threaded proxy's rules, one home)
from ..uri import URI
from ..wire import constants
from ..wire import frame as wire
from ..wire.serializers import Serializer, by_name
from ..wire.session import NEED_DATA, TAKE_EVENT, ClientSession, Connected, ConnectRefused, NotRun, StreamStarted
from . import resolve as aio_resolve
from .cork import Cork
from .receiving import Receiving, receive_buffer
from .spin import LoopSpin
from .tlsio import client_ssl, raw_socket
from .turn import Turn

log = logging.getLogger("meshrpc.aio")
_FRAME = wire.Frame
_FLAG_ONEWAY = wire.FLAG_ONEWAY
_FLAG_COMPRESSED = wire.FLAG_COMPRESSED
_monotonic = time.monotonic
_read = os.read
_running_loop = asyncio.get_running_loop


class _Connection(Receiving):
    """The socket side of one proxy connection: feeds the session, wakes the waiting calls."""

    def __init__(self, session: ClientSession, target: URI, settings: Settings) -> None:
        self.session = session
        self.target = target
        self.transport: asyncio.Transport | None = None
        loop = self.loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[Any] = loop.create_future()
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.turn = Turn()                   # without pipelining: one call at a time
        self.closed = False
        # reads that brought bytes: a call that timed out keeps this (pipelined) connection only if it
        # heard anything while the call waited
        self.heard = 0
        self.close_reason: BaseException | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self.paused = False  # flow control: the transport's buffer is full (await drained())
        self._corked = Cork(loop, self, settings.AIO_CORK_BYTES, self._read_between_writes)
        self._received = receive_buffer(loop, settings.AIO_RECEIVE_BUFFER)
        self._reader = self.session.reader  # (Receiving.get_buffer: a large frame's rest goes into its own buffer)
        self._settings = settings
        self.spin: LoopSpin | None = None  # waits for a lone call's reply while the loop is idle
        self._fd = -1
        self._peer_closed: Any = _unknown  # () -> whether the daemon closed the connection (connection_made)
        self._silent_for: Any = _never_silent  # (seconds) -> whether the daemon acknowledged nothing for that long
        # a pipelined call's Future: asyncio's own Future class directly, unless the loop makes its own
        # (create_future is a Python call per call otherwise)
        self._new_future: Any = (functools.partial(asyncio.Future, loop=loop)
                                 if type(loop).create_future is asyncio.BaseEventLoop.create_future
                                 else loop.create_future)

    # --- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.spin = LoopSpin.for_transport(self.loop, transport, self._settings)
        sock = transport.get_extra_info("socket")
        if sock is not None and not self._settings.SOCK_NODELAY and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets TCP_NODELAY on every TCP connection it makes; SOCK_NODELAY=False asks for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        if sock is not None:
            notice_dead_peer(sock, self._settings.DEAD_PEER_TIMEOUT)  # a call waiting on a vanished daemon ends
        raw = raw_socket(transport)  # (None under TLS: the fast paths go through the transport)
        self._fd = raw.fileno() if raw is not None and hasattr(os, "readv") else -1
        # on the socket itself: asyncio's TransportSocket wrapper would add a Python call to every check
        self._peer_closed = peer_closed_check(getattr(sock, "_sock", sock)) if sock is not None else _unknown
        self._silent_for = silent_peer_check(getattr(sock, "_sock", sock)) if sock is not None else _never_silent

    def buffer_updated(self, nbytes: int) -> None:
        self.heard += 1
        session = self.session
        if self._large and self._into:  # read into the reader's own buffer (get_buffer)
            self._into = False
            reader = session.reader
            reader.received(nbytes)
            if not reader.wanted():
                self._pump(-1)
            return
        if session.pipelined:  # the usual replies matched without a Frame each (receive_results)
            self._deliver(session.receive_results(bytes(self._received[:nbytes])), -1)
            if session.reader.buffered:
                self._pump(-1)
            return
        session.receive_data(self._received[:nbytes])  # copied out: the buffer is the loop's
        self._pump(-1)

    def _deliver(self, results: list, mine: int) -> Any:
        """Hand receive_results' (seq, payload, codec) to their waiters; the one of `mine` (a seq, -1:
        none) is returned instead (the call that reads it in `send_call` has no waiter)."""
        waiting = self.waiting
        got = None
        for result in results:
            if result[0] == mine:
                got = result
                continue
            waiter = waiting.pop(result[0], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(result)
        return got

    def eof_received(self) -> bool:
        self._fail(ConnectionClosedError(f"the connection to {self.target} was closed by the daemon"))
        return False

    def _read_between_writes(self) -> None:
        """Many calls are being written in one turn of the loop (a burst) and a full batch just went
        out: take in the replies that came meanwhile, so they are matched while the daemon works on
        the next batch instead of all after the last call is written. Their tasks resume on the next
        turn, as always. An EOF or a failure is left to the loop's own read (it sees it too)."""
        if self.closed or self._fd < 0:
            return
        try:
            count = os.readv(self._fd, [self._received])
        except OSError:  # BlockingIOError: nothing came yet
            return
        if count:
            self._into = False  # (read into the loop's buffer, not the one get_buffer gave last)
            self.buffer_updated(count)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(ConnectionClosedError(f"the connection to {self.target} was lost{reason}"))
        self._corked.lost()
        self._release_reader()

    def pause_writing(self) -> None:
        self.paused = True
        self._writable.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self._writable.set()

    # --- driving the session
    def _pump(self, mine: int) -> Any:
        """Hand the session's events to their waiters; the reply to `mine` (a seq, -1: none) is
        returned instead (the call that reads it in `send_call` has no waiter)."""
        session = self.session
        waiting = self.waiting
        got = None
        while True:
            try:
                event = session.next_event()
            except Exception as exc:  # ProtocolError, SecurityError, ConnectionClosedError: unusable now
                log.warning("closing the connection to %s: %s", self.target, exc)
                self._fail(exc)
                return got
            if event is NEED_DATA:
                self._large = session.reader.buffered > 0  # (part of a message: get_buffer asks the reader)
                return got
            if event.__class__ is _FRAME or isinstance(event, (wire.Frame, NotRun)):  # (a reply: the usual event)
                if event.seq == mine:
                    if not waiting:  # nobody else waits: what else came (late replies) can wait for the next read
                        return event
                    got = event
                    continue
                waiter = waiting.pop(event.seq, None)
            elif isinstance(event, (Connected, ConnectRefused)):
                waiter = self.handshake
            else:
                continue  # a Pong: nobody waits for it
            if waiter is not None and not waiter.done():
                waiter.set_result(event)

    def write(self, parts: list) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise NotDelivered(f"the connection to {self.target} is closed", self.target, suspect=False)
        self._corked.write(parts)

    def send_call(self, parts: list, seq: int, timeout: float | None, lean: bool = False) -> Any:
        """Write the request of call `seq`: its reply event, or the Future (in `waiting`) that gets it;
        with `lean` (the caller wants no annotations and no raw frame), on a session that does not
        pipeline, the usual reply may come as its payload (bytes: ClientSession.receive_result).

        A lone call (nothing else in flight here) waits for its reply while the loop has nothing
        else to do (a spin, or a sleep in the loop's own selector: aio/spin.py) and reads it at once:
        then its reply event is returned, and the call needs no Future, read callback, wake-up or
        second turn of the loop. Other calls get their Future before the write (replies may be read
        while a burst is written: _read_between_writes). `timeout`: the proxy's own (None: none),
        which the wait never outlasts. NotDelivered: nothing was sent. The Future of a connection
        that failed meanwhile is never resolved: the caller checks `closed`."""
        waiting = self.waiting
        if waiting:
            waiter = waiting[seq] = self._new_future()
            self.write(parts)
            return waiter
        # check_open(), inline (every lone call's path; a call is sent only once connection_made set
        # the transport). The loop's selector is asked first, without waiting: with nothing in flight,
        # this socket is readable only when the daemon closed it (or a late reply came), and only then
        # is the kernel asked as the threaded proxy asks (a poll of the loop's selector costs less than
        # TCP_INFO). Anything ready at all: the loop has work, and the call does not wait here.
        if self.closed or self.transport.is_closing():
            self._not_open()
        spin = self.spin
        busy = spin is None or spin.poll(0, 4)
        if busy and self._peer_closed():
            self._not_open()
        if self._corked.write_alone(parts, True) and not busy and spin.wait_mine(timeout, True):
            try:  # bytes of its own, as the threaded proxy's recv (no copy out of the loop's buffer)
                data = _read(self._fd, RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                data = b""
            except OSError as exc:
                self._fail(ConnectionClosedError(f"the connection to {self.target} was lost: {exc}"))
                data = b""
            if data:  # (b"": the daemon closed it, which the transport sees too)
                self.heard += 1
                session = self.session
                if session.pipelined:  # the usual reply comes as (seq, payload, codec), no Frame
                    got = self._deliver(session.receive_results(data), seq)
                    if session.reader.buffered:
                        event = self._pump(seq)
                        if event is not None:
                            return event
                    if got is not None:
                        return got
                elif lean:  # the usual reply is taken as its payload (no Frame)
                    payload = session.receive_result(data)
                    if payload is not TAKE_EVENT:
                        return payload
                    event = self._pump(seq)
                    if event is not None:
                        return event
                else:
                    session.receive_data(data)
                    event = self._pump(seq)
                    if event is not None:
                        return event
        # (otherwise part of it waits in the transport, or the reply is still to come)
        waiter = waiting[seq] = self._new_future()
        return waiter

    def check_open(self) -> None:
        """Before a call is written with nothing in flight (a lone call, a oneway call): NotDelivered when
        the connection is closed, or when the daemon closed it and the loop has not seen that yet (a
        tight `await` loop never returns to the loop's read callbacks): the kernel is asked each time,
        as the threaded proxy asks (transport.sockets.peer_closed_check). The call would be lost in it,
        so it is not sent (recovery sends it on a new connection)."""
        if self.closed or self.transport is None or self.transport.is_closing() or self._peer_closed():
            self._not_open()

    def check_heard(self, timeout: float | None) -> None:
        """Before a oneway call with the proxy's `timeout`: NotDelivered when the daemon acknowledged
        nothing sent to it for that long (transport.sockets.silent_peer_check): no reply would tell that
        the call went into a dead connection, so it goes on a new one."""
        if timeout and self._silent_for(timeout):
            raise NotDelivered(silent_text(self.target, timeout), self.target, suspect=False)

    def _not_open(self) -> NoReturn:
        """check_open found the connection closed: NotDelivered, saying by whom (the kernel was asked)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise NotDelivered(f"the connection to {self.target} is closed", self.target, suspect=False)
        self._fail(ConnectionClosedError(f"the connection to {self.target} was closed by the daemon"))
        raise NotDelivered(f"the connection to {self.target} was closed by the daemon", self.target,
                           suspect=False)

    async def drained(self) -> None:
        """Flow control: a big message waits for the socket to drain (callers test `paused` first)."""
        await self._writable.wait()

    def _fail(self, reason: BaseException) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
        self.paused = False
        if self.transport is not None:
            self._corked.close()  # once what waits to be sent is out, as the transport's own close()
        self._writable.set()
        waiters = [self.handshake, *self.waiting.values()]
        self.waiting.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(_closed(reason))

    def close(self) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            # what this turn of the loop gathered goes first (the cork sends it only at the turn's end):
            # `await p.note(1); await p.note(2); await p._pyroRelease()` never yields to the loop, and
            # every oneway call after the first was dropped with the connection
            self._corked.flush()
        self._fail(ConnectionClosedError(f"the connection to {self.target} was released"))

    def close_elsewhere(self, why: str) -> None:
        """Close this connection from any thread or event loop (a proxy used on another loop than this
        connection's, a proxy dropped without _pyroRelease): on its own loop, or here at once when that
        loop is closed (its selector is gone; the socket would stay open until the transport is
        collected). `why` ends the close reason: "the connection to <target> <why>"."""
        self.closed = True
        self.close_reason = ConnectionClosedError(f"the connection to {self.target} {why}")
        loop, transport = self.loop, self.transport
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # (closed meanwhile)
                loop.call_soon_threadsafe(self.close)
                return
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            getattr(sock, "_sock", sock).close()  # (asyncio's TransportSocket wraps the socket)


def _unknown() -> bool:
    """A transport with no socket to ask (peer_closed_check): the loop's own read tells."""
    return False


def _never_silent(seconds: float) -> bool:
    """A transport with no socket to ask (silent_peer_check)."""
    return False


_inflating: concurrent.futures.ThreadPoolExecutor | None = None  # the process's inflating threads (_inflater)


def _inflater() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that inflate every aio proxy's large compressed replies (INFLATE_THREADS, made on first use):
    not the loop's default executor, where the program's own code may wait for such a call's result
    (`run_coroutine_threadsafe(...).result()`) and so hold the thread the reply needs."""
    global _inflating
    if _inflating is None:
        _inflating = concurrent.futures.ThreadPoolExecutor(INFLATE_THREADS, thread_name_prefix="meshrpc-aio-proxy-inflate")
    return _inflating


def _forget_inflater() -> None:
    global _inflating
    _inflating = None  # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inflater)


async def _inflated(conn: _Connection, frame: wire.Frame, max_size: int) -> wire.Frame:
    """A reply whose compressed payload the session left compressed (ClientSession(inflate_later=True)),
    inflated on the inflating threads (_inflater): a large one would hold the caller's whole loop. A
    corrupt or oversized payload breaks the connection, as it does when the session finds it (_pump)."""
    try:
        return await asyncio.get_running_loop().run_in_executor(_inflater(), wire.inflate, frame, max_size)
    except (errors.ProtocolError, errors.MessageTooLargeError) as exc:
        log.warning("closing the connection to %s: %s", conn.target, exc)
        conn._fail(exc)
        raise _closed(exc) from None


def _closed(reason: BaseException) -> BaseException:
    return reason if isinstance(reason, ConnectionClosedError) else ConnectionClosedError(str(reason))


class _RemoteMethod:
    """A remote method of a proxy. As the threaded proxy's, it reads the proxy's state from the proxy's
    `__dict__` (`_attrs`) and calls the attempt bound when the method was looked up: attribute reads on
    a Proxy go through its `__getattr__` hook, which CPython cannot specialise (about 3x a plain read)."""

    __slots__ = ("_proxy", "_name", "_attrs", "_invoke")

    def __init__(self, proxy: "Proxy", name: str) -> None:
        self._proxy = proxy
        self._name = name
        self._attrs = proxy.__dict__
        self._invoke = proxy._invoke_once

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A coroutine: `await proxy.method(...)`; for a known method, the call itself (one coroutine)."""
        name, attrs = self._name, self._attrs
        if name in attrs["_pyroMethods"]:
            return self._invoke(name, args, kwargs, _FLAG_ONEWAY if name in attrs["_pyroOneway"] else 0,
                                None, None, _monotonic())
        return self._proxy._pyroCall(name, args, kwargs)

    def __await__(self) -> Any:
        """`await proxy.name` before the metadata came: an attribute after all is read."""
        return self._proxy._pyroGetAttr(self._name).__await__()

    def __repr__(self) -> str:
        return f"<remote method {self._name} of {self._proxy._pyroUri} (asyncio)>"


class RemoteAttribute:
    """An exposed attribute of the remote object: `await proxy.attr` reads it, `await proxy.attr.set(v)`
    writes it (as do `await proxy._pyroGetAttr(name)` and `await proxy._pyroSetAttr(name, v)`)."""

    __slots__ = ("_proxy", "_name")

    def __init__(self, proxy: "Proxy", name: str) -> None:
        self._proxy = proxy
        self._name = name

    def __await__(self) -> Any:
        return self._proxy._pyroGetAttr(self._name).__await__()

    def get(self) -> Any:
        return self._proxy._pyroGetAttr(self._name)

    def set(self, value: Any) -> Any:
        return self._proxy._pyroSetAttr(self._name, value)

    def __repr__(self) -> str:
        return f"<remote attribute {self._name} of {self._proxy._pyroUri} (await it to read it)>"


# names that live on the proxy itself, never forwarded to the remote object
_LOCAL_ATTRS = frozenset({
    "_pyroUri", "_pyroLocator", "_pyroResolvedBy", "_pyroSettings", "_pyroMethods", "_pyroOneway", "_pyroAttrs",
    "_pyroIdempotent", "_pyroHandshake", "_pyroSerializer", "_pyroMaxRetries", "_pyroTimeout",
    "_pyroMethodCache", "_pyroRawWireResponse", "_conn", "_connecting", "_retarget",
})


class Proxy:
    """A stand-in for a remote object, for asyncio code.

        async with meshrpc.aio.Proxy("PYRONAME:thermostat") as thermostat:
            await thermostat.set_target(21.5)
            print(await thermostat.temperature)          # an exposed attribute

    Connects on the first call (or `await proxy._pyroBind()`, or `async with`, which also fetch the
    metadata so attributes are known). Any number of tasks may await calls on one proxy at once.
    """

    def __init__(self, uri: str | URI, *, settings: Settings | None = None) -> None:
        settings = settings or default_config
        given = URI(uri)
        self._pyroSettings = settings
        self._pyroUri = given
        self._pyroLocator: URI | None = None if given.is_direct else given
        self._pyroResolvedBy: str | None = None
        self._pyroMethods: frozenset[str] = frozenset()
        self._pyroOneway: frozenset[str] = frozenset()
        self._pyroAttrs: frozenset[str] = frozenset()
        self._pyroIdempotent: frozenset[str] = frozenset()
        self._pyroMethodCache: dict[str, Any] = {}
        self._pyroHandshake: Any = "hello"
        self._pyroSerializer: str | None = None
        self._pyroMaxRetries = settings.MAX_RETRIES
        self._pyroTimeout: float | None = settings.COMMTIMEOUT or None
        self._pyroRawWireResponse = False
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._retarget: URI | None = None

    @classmethod
    def from_proxy(cls, proxy: Any) -> "Proxy":
        """An asyncio proxy for the same object as a threaded meshrpc.Proxy (its settings, handshake,
        serializer, timeout, retries and known metadata); its own connection."""
        twin = cls(proxy._pyroLocator or proxy._pyroUri, settings=proxy._pyroSettings)
        twin._pyroProcessMetadata({"methods": proxy._pyroMethods, "oneway": proxy._pyroOneway,
                                   "attrs": proxy._pyroAttrs, "idempotent": proxy._pyroIdempotent})
        twin._pyroHandshake = proxy._pyroHandshake
        twin._pyroSerializer = proxy._pyroSerializer
        twin._pyroMaxRetries = proxy._pyroMaxRetries
        twin._pyroTimeout = proxy._pyroTimeout
        return twin

    # --- attribute access: remote methods and attributes
    def __getattr__(self, name: str) -> Any:
        if name in _LOCAL_ATTRS or name in _PICKLE_PROTOCOL_ATTRS:
            raise AttributeError(name)
        cached = self._pyroMethodCache.get(name)
        if cached is not None:
            return cached
        if name in self._pyroAttrs:
            return RemoteAttribute(self, name)
        known = self._pyroMethods or self._pyroAttrs
        if name in self._pyroMethods or not (known or name.startswith("__")):
            # before the metadata came (no round trip here), any name may be a method: the call checks;
            # but not a `__x` name, which Python and libraries probe (hasattr): those wait for the metadata
            method = self._pyroMethodCache[name] = _RemoteMethod(self, name)
            if name in self._pyroMethods:  # known: plain attribute lookup finds it from now on (no __getattr__)
                self.__dict__[name] = method
            return method
        if not known:
            raise AttributeError(f"{name}: not known before the proxy is bound (`async with proxy` or "
                                 f"`await proxy._pyroBind()` fetches the remote object's names)")
        raise AttributeError(f"remote object '{self._pyroUri}' has no exposed attribute or method '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LOCAL_ATTRS or name.startswith("_") or type(self) is not Proxy:
            return object.__setattr__(self, name, value)
        raise AttributeError(f"setting a remote attribute needs a round trip: use "
                             f"`await proxy._pyroSetAttr({name!r}, value)` (or `await proxy.{name}.set(value)`)")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | self._pyroMethods | self._pyroAttrs)

    def __repr__(self) -> str:
        state = "connected" if self._conn is not None and not self._conn.closed else "not connected"
        return f"<meshrpc.aio.Proxy at 0x{id(self):x}; {state}; for {self._pyroUri}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Proxy) and other._pyroUri == self._pyroUri

    def __hash__(self) -> int:
        return hash(self._pyroUri)

    # --- Pyro5-compatible wire form (passing a proxy to another process gives a threaded proxy there)
    def __wire_dict__(self) -> dict:
        return {"__class__": "Pyro5.client.Proxy",
                "state": (str(self._pyroLocator or self._pyroUri), tuple(self._pyroOneway), tuple(self._pyroMethods),
                          tuple(self._pyroAttrs), self._pyroHandshake, self._pyroSerializer)}

    # --- lifecycle
    async def __aenter__(self) -> "Proxy":
        await self._pyroBind()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._pyroRelease()

    def __copy__(self) -> "Proxy":
        """A twin with a connection of its own (made on its first call), as the threaded proxy's copy:
        a shared one would be closed under the original when the copy is dropped."""
        twin = object.__new__(type(self))  # subclasses keep their hooks
        Proxy.__init__(twin, self._pyroLocator or self._pyroUri, settings=self._pyroSettings)
        twin._pyroProcessMetadata({"methods": self._pyroMethods, "oneway": self._pyroOneway,
                                   "attrs": self._pyroAttrs, "idempotent": self._pyroIdempotent})
        for name in ("_pyroHandshake", "_pyroSerializer", "_pyroMaxRetries", "_pyroTimeout", "_pyroRawWireResponse"):
            object.__setattr__(twin, name, getattr(self, name))
        return twin

    def __del__(self) -> None:
        # dropped without _pyroRelease (the loop's selector would keep the connection open for good):
        # closed on its loop (this may run on any thread), as the threaded proxy closes its own
        conn = self.__dict__.get("_conn")
        if conn is not None and not conn.closed:
            conn.close_elsewhere("was released (its proxy was dropped)")

    def __enter__(self) -> Any:
        raise TypeError("meshrpc.aio.Proxy is used with `async with`, not `with`")

    def __exit__(self, *exc_info: Any) -> None:  # pragma: no cover - __enter__ refuses
        pass

    async def _pyroBind(self) -> bool:
        """Connect now and fetch the object's metadata."""
        await self._recovering(lambda recovery: self._connection(recovery), "")
        return True

    async def _pyroRelease(self) -> None:
        """Close the connection (calls in flight fail with ConnectionClosedError); the next call connects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            log.debug("released connection to %s", self._pyroUri)

    async def _pyroReconnect(self, tries: int = 100000000) -> None:
        await self._pyroRelease()
        for attempt in range(tries):
            try:
                await self._pyroBind()
                return
            except CommunicationError:
                if attempt + 1 >= tries:
                    raise
                await asyncio.sleep(RECONNECT_PAUSE)

    def _pyroProcessMetadata(self, meta: dict) -> None:
        self._pyroMethods = frozenset(meta.get("methods") or ())
        self._pyroOneway = frozenset(meta.get("oneway") or ())
        self._pyroAttrs = frozenset(meta.get("attrs") or ())
        self._pyroIdempotent = frozenset(meta.get("idempotent") or ())
        for name in self._pyroMethodCache:  # the names may mean something else now
            self.__dict__.pop(name, None)
        self._pyroMethodCache = {}

    # hooks, as on the threaded proxy
    def _pyroValidateHandshake(self, response: Any) -> None:
        """Override to check the daemon's handshake answer; raise to refuse the connection."""

    def _pyroAnnotations(self) -> dict[str, bytes]:
        """The annotations sent with every message: by default those of `current_context.annotations`
        (this task's, as the threaded proxy sends its thread's, and Pyro5's); override to add others."""
        return current_context.annotations

    def _pyroResponseAnnotations(self, annotations: dict[str, bytes], msgtype: int) -> None:
        """Override to see the annotations of every reply."""

    def _pyroSerializerObject(self) -> Serializer:
        return by_name(self._pyroSerializer or self._pyroSettings.SERIALIZER)

    # --- calling
    def _pyroCall(self, name: str, args: tuple, kwargs: dict) -> Any:
        """The coroutine of a method call: for a known method, the call itself (one coroutine)."""
        if name in self._pyroMethods:
            return self._invoke_once(name, args, kwargs, wire.FLAG_ONEWAY if name in self._pyroOneway else 0,
                                     None, None, time.monotonic())
        return self._call_unbound(name, args, kwargs)

    async def _call_unbound(self, name: str, args: tuple, kwargs: dict) -> Any:
        """A call before the metadata came: bind first (the name must be a method)."""
        if not (self._pyroMethods or self._pyroAttrs):
            await self._pyroBind()
        if name not in self._pyroMethods:
            raise AttributeError(f"remote object '{self._pyroUri}' has no exposed method '{name}'")
        return await self._invoke_once(name, args, kwargs, wire.FLAG_ONEWAY if name in self._pyroOneway else 0,
                                       None, None, time.monotonic())

    async def _pyroGetAttr(self, name: str) -> Any:
        """The value of the remote object's exposed attribute `name`."""
        await self._check_attr(name)
        return await self._pyroInvoke("__getattr__", (name,), None)

    async def _pyroSetAttr(self, name: str, value: Any) -> None:
        """Set the remote object's exposed attribute `name`."""
        await self._check_attr(name)
        await self._pyroInvoke("__setattr__", (name, value), None)

    async def _check_attr(self, name: str) -> None:
        if not (self._pyroMethods or self._pyroAttrs):
            await self._pyroBind()
        if name not in self._pyroAttrs:
            raise AttributeError(f"remote object '{self._pyroUri}' has no exposed attribute '{name}'")

    async def _pyroInvoke(self, methodname: str, vargs: Any, kwargs: dict | None, flags: int = 0,
                          object_id: str | None = None) -> Any:
        """Send one call and return its result (None for oneway calls), under the recovery rules."""
        value, error = await self._pyroOutcome(methodname, vargs, kwargs, flags, object_id)
        if error is not None:
            raise error  # the remote object's own exception: never taken for a connection failure
        return value

    async def _pyroOutcome(self, methodname: str, vargs: Any, kwargs: dict | None, flags: int = 0,
                           object_id: str | None = None) -> tuple[Any, BaseException | None]:
        """(result, None) or (None, the remote exception): a coroutine must not raise StopIteration."""
        return await self._recovering(
            lambda recovery: self._invoke_once(methodname, vargs, kwargs, flags, object_id, recovery), methodname)

    async def _pyroInvokeBatch(self, calls: list[tuple[str, tuple, dict]], oneway: bool = False) -> Any:
        flags = wire.FLAG_BATCH | (wire.FLAG_ONEWAY if oneway else 0)
        return await self._pyroInvoke(constants.BATCH_METHOD, calls, None, flags)

    async def _recovering(self, attempt: Any, methodname: str, failure: BaseException | None = None,
                          started: float | None = None) -> Any:
        """Run attempt(recovery) under the recovery rules; failure: the first attempt's, made already."""
        conn = self._conn
        if failure is None:
            started = time.monotonic()
            try:
                return await attempt(None)  # the common case: no recovery state to build
            except (ConnectionClosedError, errors.TimeoutError, errors.NamingError) as exc:
                failure = exc
        recovery = Recovery(self._pyroSettings, methodname, locator=self._pyroLocator,
                            idempotent=methodname in self._pyroIdempotent, max_retries=self._pyroMaxRetries,
                            started=started, connect_cap=self._pyroTimeout, known=self._pyroResolvedBy is not None)
        rebind = recovery.rebind
        listening = None
        try:
            while True:
                if listening is None and self._pyroLocator is not None and self._pyroResolvedBy == "mesh":
                    # news of the name (an announcement the registry heard) ends a pause
                    listening = watch_announcements(self._pyroLocator, self._pyroSettings, rebind.heard)
                try:
                    if failure is None:
                        conn = self._conn
                        return await attempt(recovery)
                    exc, failure = failure, None
                    raise exc
                except (ConnectionClosedError, errors.TimeoutError, errors.NamingError) as exc:
                    recovery.known = recovery.known or self._pyroResolvedBy is not None
                    step = recovery.after(exc, self._pyroUri)
                    self._carry_out(step, exc, conn)
                    if not step.retry:
                        if step.error is not None:
                            raise step.error from None
                        raise
                    if step.retarget is not None:
                        self._retarget = step.retarget
                    if step.pause:
                        await _pause(rebind, step.pause)
                    if methodname:
                        log.info("retrying %s after: %s", methodname, exc)
        finally:
            if listening is not None:
                listening()
            self._retarget = None

    def _carry_out(self, step: Step, exc: BaseException, conn: _Connection | None) -> None:
        conn = conn or self._conn  # None: the failed attempt made the connection itself
        if step.drop and conn is not None and self._conn is conn:
            # a timed-out call was abandoned: on a pipelined connection its late reply is dropped, so the
            # connection stays (the other calls in flight on it go on)
            keep = isinstance(exc, errors.TimeoutError) and conn.session.pipelined and not conn.closed
            if not keep:
                # e.g. "not run" from a daemon shutting down: new calls go elsewhere, and the calls in
                # flight on it are left to their answers (a graceful shutdown finishes and answers them)
                self._retire(conn)
        if step.suspect is not None:
            from ..resolve import report_failure
            report_failure(step.suspect, self._pyroSettings, exc)
        log.info("call to %s failed: %s", self._pyroUri, exc)

    async def _invoke_once(self, methodname: str, vargs: Any, kwargs: dict | None, flags: int,
                           object_id: str | None, recovery: Recovery | None, started: float | None = None) -> Any:
        """One attempt of a call: (result, None) or (None, the remote exception).

        `started` (time.monotonic()): a method call's first attempt (_RemoteMethod), which is the whole
        call in this one coroutine: a failure goes on under the recovery rules here, and the method's
        result is returned (its exception raised)."""
        attrs = self.__dict__  # the proxy's state, read without the __getattr__ hook (hot path)
        try:
            conn = attrs["_conn"]
            if conn is None or conn.closed or conn.loop is not _running_loop():
                if conn is not None:
                    self._conn = None
                    if conn.closed:
                        raise NotDelivered(f"the connection to {self._pyroUri} was closed by the daemon",
                                           self._pyroUri, suspect=False)
                    # made on another loop (an earlier asyncio.run): a new one on this loop
                    conn.close_elsewhere("belonged to another event loop")
                conn = await self._connection(recovery)
            session = conn.session
            turn = None if session.pipelined else conn.turn
            if turn is not None:
                if turn.taken:
                    await turn.take(conn.loop)
                else:
                    turn.taken = True  # a free turn is taken at once (Turn.take_now, inline: every call's path)
            try:
                if conn.closed:
                    raise NotDelivered(f"the connection to {self._pyroUri} was closed", self._pyroUri,
                                       suspect=False)
                try:  # the call context, without the property indirection (hot path): current_state()
                    state = call_state()
                except LookupError:  # (the first use in this task's context)
                    state = current_state()
                corr = state.correlation_id
                if corr is FRESH_ID:  # inside a server call that came without one: its fresh id, as in Pyro5
                    corr = current_context.correlation_bytes
                annotations = (state.annotations if type(self)._pyroAnnotations is _DEFAULT_ANNOTATIONS
                               else self._pyroAnnotations())
                parts = session.call_request(object_id or attrs["_pyroUri"].object, methodname, vargs, kwargs, flags,
                                             annotations or None, corr)
                if flags & _FLAG_ONEWAY:
                    if not conn.waiting:  # no reply will tell: a closed (or silent) connection must be seen first
                        conn.check_open()
                        conn.check_heard(attrs["_pyroTimeout"])
                    conn.write(parts)
                    set_response_annotations(state, {})  # no reply, so none (as the threaded proxy and Pyro5)
                    if conn.paused:
                        await conn.drained()
                    event = None
                else:
                    seq = session.last_seq
                    try:
                        # a lone call's reply may come within send_call: no Future, no second turn of the loop
                        event = conn.send_call(parts, seq, attrs["_pyroTimeout"], not attrs["_pyroRawWireResponse"] and (
                            type(self)._pyroResponseAnnotations is _DEFAULT_RESPONSE_ANNOTATIONS))
                    except BaseException:  # not sent: its seq must not stay outstanding
                        self._abandon(conn, seq)
                        raise
                    kind = event.__class__
                    if kind is bytes:  # the usual reply's payload, read in send_call: most calls
                        if state.response_annotations:
                            set_response_annotations(state, {})
                        value = session.result_value(event)  # (no annotations, not an error)
                        return value if started is not None else (value, None)  # (the turn is passed on)
                    if kind is not tuple and isinstance(event, asyncio.Future):
                        # to come (awaited here: no coroutine more per call)
                        waiter = event
                        heard = conn.heard
                        try:
                            if conn.closed:  # it failed while the call was sent (the session saw a broken reply)
                                raise _closed(conn.close_reason or ConnectionClosedError(
                                    f"the connection to {self._pyroUri} failed"))
                            if conn.paused:
                                await conn.drained()
                            if self._pyroTimeout:
                                async with asyncio.timeout(self._pyroTimeout):
                                    event = await waiter
                            else:
                                event = await waiter
                        except TimeoutError:
                            self._abandon(conn, seq)
                            if conn.heard == heard and not conn.closed:
                                self._retire(conn)  # nothing at all came on it while the call waited
                            raise errors.TimeoutError(
                                f"no reply from {self._pyroUri} to {methodname} within {self._pyroTimeout:g} s: "
                                "it was sent, so it may have run or may still run") from None
                        except BaseException:  # cancelled (or the connection failed): its late reply goes nowhere
                            self._abandon(conn, seq)
                            raise
                        finally:
                            if attrs["_conn"] is not conn and not conn.waiting and not conn.closed:
                                conn.close()  # the last call of a retired connection (_retire) is done
            finally:
                if turn is not None:
                    if turn.queue:
                        turn.release()  # the next call's turn
                    else:
                        turn.taken = False
            kind = event.__class__  # (a Future's event: a reply Frame, NotRun, or receive_results' tuple)
            if event is None:
                outcome: tuple[Any, BaseException | None] = (None, None)
            elif kind is tuple:  # pipelined: the usual reply as (seq, payload, codec) (receive_results)
                if attrs["_pyroRawWireResponse"] or type(self)._pyroResponseAnnotations is not _DEFAULT_RESPONSE_ANNOTATIONS:
                    # a raw reply or the hook wants its Frame: the one next_event would have given
                    outcome = self._reply(session, _FRAME(wire.MSG_RESULT, event[2].id, event[0], event[1]), state)
                else:
                    if state.response_annotations:
                        set_response_annotations(state, {})
                    value = session.result_value(event[1], event[2])
                    return value if started is not None else (value, None)
            elif kind is NotRun:
                raise NotDelivered(f"{self._pyroUri} is shutting down; {methodname} was not run", self._pyroUri)
            else:
                if event.flags & _FLAG_COMPRESSED:  # larger than INFLATE_ON_LOOP_MAX: inflated off the loop
                    event = await _inflated(conn, event, session.max_size)
                outcome = self._reply(session, event, state)
        except (ConnectionClosedError, errors.TimeoutError, errors.NamingError) as exc:
            if started is None:
                raise
            outcome = await self._recover_call(methodname, vargs, kwargs, flags, object_id, exc, started)
        if started is None:
            return outcome
        value, error = outcome
        if error is not None:
            raise error  # the remote object's own exception: never taken for a connection failure
        return value

    def _recover_call(self, methodname: str, vargs: Any, kwargs: dict | None, flags: int, object_id: str | None,
                      failure: BaseException, started: float) -> Any:
        """The rest of a method call whose first attempt failed with `failure`, under the recovery rules
        (a coroutine). Apart from _invoke_once: a closure there would make cells of its arguments on
        every call."""
        return self._recovering(
            lambda recovery: self._invoke_once(methodname, vargs, kwargs, flags, object_id, recovery),
            methodname, failure, started)

    def _retire(self, conn: _Connection) -> None:
        """New calls go on a new connection, not on `conn`; the calls already on it are left to finish
        or to time out by themselves, and the last of them closes it (_invoke_once). For a call that
        timed out with nothing at all coming on `conn` while it waited (the path may be dead, or the
        daemon only slow: after a partition TCP resends on its backoff, 0.2 s doubling up to minutes,
        which a new connection does not wait for), and for a failure recovery drops the connection
        over (a daemon shutting down answers "not run", and still answers the calls it runs)."""
        if self._conn is conn:
            self._conn = None
        if not conn.waiting:
            conn.close()

    def _abandon(self, conn: _Connection, seq: int) -> None:
        conn.waiting.pop(seq, None)
        if not conn.closed and not conn.session.abandon(seq):
            # not pipelined (a Pyro5 daemon): its late reply would be taken for the next call's
            if self._conn is conn:
                self._conn = None
            conn.close()

    def _reply(self, session: ClientSession, frame: wire.Frame, state: Any) -> tuple[Any, BaseException | None]:
        """(value, None) or (None, the remote exception); `state`: current_state() of the call."""
        annotations = frame.annotations
        blobs = session.take_blobs(frame) if annotations and not self._pyroRawWireResponse else None
        if annotations or state.response_annotations:  # (set_response_annotations' own test, without its call)
            set_response_annotations(state, annotations)
        if type(self)._pyroResponseAnnotations is not _DEFAULT_RESPONSE_ANNOTATIONS:
            self._pyroResponseAnnotations(annotations, frame.type)
        if self._pyroRawWireResponse:
            return frame, None
        try:
            value = session.reply_value(frame, blobs)
        except Exception as exc:  # the remote exception, its traceback attached
            return None, exc
        if isinstance(value, StreamStarted):
            return AsyncStreamIterator(value.stream_id, self), None
        return value, None

    # --- connecting
    async def _connection(self, recovery: Recovery | None) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # concurrent first calls share one connection
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            target = await self._resolve(recovery)
            conn = await self._connect(target, recovery.rebind if recovery is not None else None)
            self._conn = conn
            if self._pyroUri != target:
                if self._pyroLocator is not None and self._pyroUri != self._pyroLocator:
                    log.info("rebound %s from %s to %s", self._pyroLocator, self._pyroUri, target)
                self._pyroUri = target
            return conn

    async def _resolve(self, recovery: Recovery | None) -> URI:
        if self._pyroLocator is None:
            return self._pyroUri
        if self._retarget is not None:  # its connection broke: it may well be alive, try it first
            target, self._retarget = self._retarget, None
            return target
        rebind = recovery.rebind if recovery is not None else None
        if rebind is not None and not rebind.first and self._pyroResolvedBy == "mesh":
            # replacing a provider the mesh gave: wait there for the rest of the rebind budget
            target, source = await aio_resolve.resolve_with_source(
                self._pyroLocator, self._pyroSettings, sources=("mesh",), wait=max(0.01, rebind.remaining()))
        else:
            target, source = await aio_resolve.resolve_with_source(self._pyroLocator, self._pyroSettings)
        self._pyroResolvedBy = source
        return target

    async def _connect(self, target: URI, rebind: Rebind | None = None) -> _Connection:
        settings = self._pyroSettings
        # by name: short connect attempts that grow, the handshake within the budget (docs/resilience.md)
        timeout, handshake_timeout = connect_timeouts(settings, target, by_name=self._pyroLocator is not None,
                                                      proxy_timeout=self._pyroTimeout, rebind=rebind)
        loop = asyncio.get_running_loop()
        session = ClientSession(self._pyroSerializerObject(), settings, pipelining=True, inflate_later=True)
        # TLS (docs/security.md): asyncio's handshake, within the connect budget and the handshake's;
        # the daemon's certificate must verify and name the URI's host
        context, hostname = client_ssl(settings, target.host)
        tls: dict[str, Any] = {}
        if context is not None:
            # (asyncio bounds the TLS handshake by its own timeout; this one covers both steps)
            tls = {"ssl": context, "server_hostname": hostname, "ssl_handshake_timeout": handshake_timeout or None}
            timeout += handshake_timeout

        def protocol() -> _Connection:
            return _Connection(session, target, settings)
        try:
            async with asyncio.timeout(timeout):
                if target.sockname:
                    _, conn = await loop.create_unix_connection(protocol, target.sockname, **tls)
                else:
                    _, conn = await loop.create_connection(protocol, target.host, target.port, **tls)
        except (OSError, TimeoutError) as exc:
            if context is not None and _in_tls_handshake(exc):
                from ..transport.tls import TLSError, handshake_error
                if isinstance(exc, ConnectionAbortedError):  # asyncio's ssl_handshake_timeout
                    exc = TimeoutError(str(exc))
                failure = handshake_error(exc, target.location or str(target))
                if isinstance(failure, TLSError):
                    raise failure from None  # a refused certificate: no retry or other provider helps
                raise NotDelivered(str(failure), target, timed_out=isinstance(failure, TimeoutError)) from None
            stalled = isinstance(exc, TimeoutError)
            why = "timed out" if stalled else (exc.strerror or str(exc))
            raise NotDelivered(f"cannot connect to {target}: {why}", target, timed_out=stalled) from None
        try:
            try:
                conn.write(session.connect_request(target.object, self._pyroHandshake,
                                                   self._pyroAnnotations() or None,
                                                   current_context.correlation_id, now=time.time()))
                async with asyncio.timeout(handshake_timeout):
                    event = await conn.handshake
            except (ConnectionClosedError, TimeoutError) as exc:
                if context is not None:  # TLS 1.3: a refused client certificate shows at the first read
                    from ..transport.tls import TLSError, peer_refusal
                    refusal = peer_refusal(str(exc))
                    if refusal:  # refused for credentials: no retry or other provider changes that
                        raise TLSError(f"TLS: {target} refused this client: {refusal}") from None
                    if isinstance(exc, ConnectionClosedError):  # asyncio's TLS layer may drop the alert that says why
                        exc = ConnectionClosedError(f"{exc} (with TLS, a daemon closes a client whose certificate "
                                                    "it refuses: check SSL_CLIENTCERT and the daemon's SSL_CACERTS)")
                raise NotDelivered(f"handshake with {target} failed: {str(exc) or 'timed out'}", target,
                                   timed_out=isinstance(exc, TimeoutError), in_handshake=True,
                                   timeout_text=str(exc) or "receiving: timeout") from None
            self._pyroResponseAnnotations(event.annotations, wire.MSG_CONNECTOK if isinstance(event, Connected)
                                          else wire.MSG_CONNECTFAIL)
            if isinstance(event, ConnectRefused):
                if event.kind == "unknown-object" and self._pyroLocator is not None:
                    raise NotDelivered(f"{target} no longer serves that object", target)
                if event.kind == "mesh-key":
                    raise errors.SecurityError(f"connection to {target} rejected: {event.reason}"
                                               + ("" if settings.KEY else " (this proxy has no MESHRPC_KEY)"))
                raise CommunicationError(f"connection to {target} rejected: {event.reason}")
            self._pyroValidateHandshake(event.handshake)
            self._pyroProcessMetadata(event.metadata or {})
        except BaseException:
            conn.close()
            raise
        log.debug("connected to %s (%s)", target, "pipelined" if session.pipelined else "one call at a time")
        return conn

    def _pyroBatch(self) -> "BatchProxy":
        return BatchProxy(self)


def _in_tls_handshake(exc: BaseException) -> bool:
    """A connection attempt's failure that came from its TLS handshake (not from connecting)."""
    import ssl  # (loaded already: the proxy has a TLS context)
    return isinstance(exc, (ssl.SSLError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError))


_DEFAULT_ANNOTATIONS = Proxy._pyroAnnotations
_DEFAULT_RESPONSE_ANNOTATIONS = Proxy._pyroResponseAnnotations


async def _pause(rebind: Rebind, seconds: float) -> None:
    """Pause between attempts, ended early by news of the name (rebind.heard, on the registry's thread)."""
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(woken.set)
        except RuntimeError:  # the loop closed meanwhile
            pass
    rebind.woken = wake
    try:
        if not rebind.news:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), seconds)
    finally:
        rebind.woken = None
        rebind.news = False


class AsyncStreamIterator:
    """Items of a remote iterator, for `async for`: pulled from the daemon one at a time."""

    def __init__(self, stream_id: str, proxy: Proxy) -> None:
        self.streamId = stream_id
        self.proxy = proxy
        self._done = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        try:
            value, error = await self.proxy._pyroOutcome("get_next_stream_item", (self.streamId,), None,
                                                         object_id=constants.DAEMON_OBJECT_ID)
        except BaseException:
            self._done = True
            raise
        if error is None:
            return value
        self._done = True
        if isinstance(error, (StopIteration, GeneratorExit)):
            raise StopAsyncIteration
        raise error

    def __iter__(self) -> Any:
        raise TypeError("a remote iterator of meshrpc.aio is consumed with `async for`")

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            conn = self.proxy._conn
            if conn is not None and not conn.closed:
                await _close_stream(self.proxy, self.streamId)

    def __del__(self) -> None:
        # left half way without aclose() (`break` out of `async for`): the daemon's stream is closed, as
        # the threaded proxy's iterator closes its own (else they pile up to MAX_STREAMS_PER_CONNECTION)
        if not self._done:
            conn = self.proxy._conn
            if conn is not None and not conn.closed:
                with contextlib.suppress(RuntimeError):  # the loop is closed: so is the connection
                    conn.loop.call_soon_threadsafe(_close_stream_soon, self.proxy, self.streamId)


async def _close_stream(proxy: Proxy, stream_id: str) -> None:
    try:
        await proxy._pyroInvoke("close_stream", (stream_id,), None, wire.FLAG_ONEWAY,
                                object_id=constants.DAEMON_OBJECT_ID)
    except errors.MeshError:
        pass


_closing_streams: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks


def _close_stream_soon(proxy: Proxy, stream_id: str) -> None:
    task = asyncio.get_running_loop().create_task(_close_stream(proxy, stream_id))
    _closing_streams.add(task)
    task.add_done_callback(_closing_streams.discard)


class BatchProxy:
    """`batch = meshrpc.aio.BatchProxy(proxy); batch.a(1); batch.b(2); results = await batch()`.

    Every recorded call goes in one message; the results come back as a list in order, and the first
    exception (where the daemon stopped) is raised when the iteration reaches it, as with the
    threaded BatchProxy. `await batch(oneway=True)` sends them without waiting."""

    def __init__(self, proxy: Proxy) -> None:
        self.__proxy = proxy
        self.__calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> BatchedCall:
        if name.startswith("__"):
            raise AttributeError(name)
        method = self.__dict__[name] = BatchedCall(self.__calls, name)
        return method

    async def __call__(self, oneway: bool = False) -> Any:
        from ..client.proxy import raise_batch_item
        calls = self.__calls[:]
        self.__calls.clear()
        results = await self.__proxy._pyroInvokeBatch(calls, oneway)
        if oneway:
            return None
        return (raise_batch_item(item) for item in results)
