"""TLS in the asyncio driver: the same contexts and error texts as the threaded one (transport/tls.py,
imported only when SSL is on), over asyncio's own SSL transports, and which socket the fast paths
may touch.

The aio proxy and daemon read and write their sockets directly where that saves a turn of the loop
or a copy (aio/spin.py, aio/cork.py, the proxy's reads between writes). Under TLS the socket carries
records only the transport's SSL object can decrypt, so those paths must not touch it:
`raw_socket(transport)` is None then, and everything goes through the transport.

A TLS daemon accepts through `TLSAcceptor`, not asyncio's TLS server, so that it treats clients as the
threaded daemon does: a plain client is told why it is refused, and failed handshakes are logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from typing import Any, Callable

from ..limits import ACCEPT_RETRY_PAUSE, HOUSEKEEPING_INTERVAL, PEEK_RETRY_PAUSE, RECV_CHUNK
from ..wire.frame import TAG  # the first bytes of a plain protocol 502 message

log = logging.getLogger("meshrpc.aio")


def raw_socket(transport: asyncio.BaseTransport) -> Any:
    """The socket whose bytes are the messages themselves (read and written directly by the fast
    paths), or None: a TLS transport (its socket carries TLS records), or none at all."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    return transport.get_extra_info("socket")


def client_ssl(settings: Any, host: str | None) -> tuple[Any, str | None]:
    """(ssl context, server_hostname) for a proxy's connection: (None, None) without SSL. Over a Unix
    socket (no host) only the chain is checked, as by the threaded proxy; asyncio wants a hostname
    argument there, and "" names none."""
    if not settings.SSL:
        return None, None
    from ..transport import tls
    return tls.client_context(settings, check_hostname=bool(host)), host or ""



def close_unanswered(transport: asyncio.BaseTransport) -> None:
    """After the daemon's `transport.close()` of a client's connection: under TLS, end the TCP connection
    under it once the replies and the close_notify have gone to it, without waiting for the client's
    close_notify, as the threaded daemon and Pyro5 close. asyncio's TLS layer waits for that answer up to
    its ssl_shutdown_timeout (30 s; for ever once the loop stops), and a blocking client answers only at
    its next read: the connection, and its slot (MAX_CONNECTIONS), stayed. While a slow client still
    takes what waits, asked again every HOUSEKEEPING_INTERVAL (the TLS layer's own timeout ends it at
    last). Nothing to do without TLS, or on a loop whose TLS transport is not asyncio's own."""
    tcp = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)  # (asyncio's sslproto)
    if tcp is None or tcp.is_closing() or not transport.is_closing():
        return
    if transport.get_write_buffer_size():  # (encrypted bytes the TCP transport has not taken yet)
        asyncio.get_running_loop().call_later(HOUSEKEEPING_INTERVAL, close_unanswered, transport)
        return
    tcp.close()  # (it sends what it holds first)


class TLSAcceptor:
    """A TLS daemon's listening socket on the loop, as the threaded daemon treats one: each accepted
    connection's first bytes are peeked at (not taken); a client speaking plain protocol 502 gets a
    refusal it can read, in the clear (`refuse_plain(sock, data)`); anything else goes through
    asyncio's TLS handshake (`connect_accepted_socket`) to `protocol_factory(accepted_at)`'s connection
    (`time.monotonic()` of the accept, from which the daemon's own HANDSHAKE_TIMEOUT counts). Both steps
    together are bound by `handshake_timeout` (HANDSHAKE_TIMEOUT; 0: none), and a failed handshake is
    logged with its reason (asyncio's own server drops it without a word). Connections waiting for their
    handshake count with those served (`room()`: how many more the daemon takes); beyond, a connection
    is closed at once, as the threaded daemon closes one beyond MAX_CONNECTIONS."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: socket.socket, context: Any,
                 protocol_factory: Callable[[float], asyncio.BaseProtocol], handshake_timeout: float,
                 refuse_plain: Callable[[socket.socket, bytes], None], room: Callable[[], int]) -> None:
        self._loop = loop
        self._listener = listener
        self._context = context
        self._factory = protocol_factory
        self._timeout = handshake_timeout or None
        self._refuse_plain = refuse_plain
        self._room = room  # how many more connections the daemon takes (MAX_CONNECTIONS less those it serves)
        self._accepting: asyncio.Task[None] | None = None
        self._admitting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._listener.setblocking(False)
        self._accepting = self._loop.create_task(self._accept())

    def close(self) -> None:
        """Accept no more, drop the connections still before their handshake, close the listener."""
        for task in (self._accepting, *self._admitting):
            if task is not None:
                task.cancel()
        self._listener.close()

    async def _accept(self) -> None:
        while True:
            try:
                sock, addr = await self._loop.sock_accept(self._listener)
            except OSError as exc:  # out of file descriptors, a connection reset before accept: go on
                if self._listener.fileno() < 0:
                    return
                log.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(ACCEPT_RETRY_PAUSE)
                continue
            if len(self._admitting) >= self._room():  # with the connections already served: MAX_CONNECTIONS
                log.warning("refusing connection from %s: %d TLS handshakes pending (MAX_CONNECTIONS)", addr,
                            len(self._admitting))
                sock.close()
                continue
            task = self._loop.create_task(self._admit(sock, addr))
            self._admitting.add(task)
            task.add_done_callback(self._admitting.discard)

    async def _admit(self, sock: socket.socket, addr: Any) -> None:
        from ..transport.tls import describe
        accepted = time.monotonic()  # (the connection's HANDSHAKE_TIMEOUT for its CONNECT counts from here too)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self._timeout):
                head = await self._peek(sock)
                if head.startswith(TAG):  # plain protocol 502: answered why, in the clear
                    data = sock.recv(RECV_CHUNK)  # taken: closing with unread bytes would reset the connection
                    self._refuse_plain(sock, data)
                    sock.close()
                    return
                await self._loop.connect_accepted_socket(functools.partial(self._factory, accepted), sock,
                                                         ssl=self._context, ssl_handshake_timeout=self._timeout)
        except TimeoutError:
            log.info("closing connection from %s: no TLS handshake within HANDSHAKE_TIMEOUT (%g s)", addr,
                     self._timeout)
            sock.close()
        except asyncio.CancelledError:
            sock.close()
            raise
        except OSError as exc:
            log.info("TLS handshake with %s failed: %s", addr, describe(exc))
            sock.close()

    async def _peek(self, sock: socket.socket) -> bytes:
        """The connection's first bytes, left in the socket: as many as tell plain protocol 502 (TAG)
        from TLS, fewer when the client sent less and stopped, or something else."""
        while True:
            try:
                head = sock.recv(len(TAG), socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                head = None
            if head is not None and (not head or len(head) >= len(TAG) or not TAG.startswith(head)):
                return head  # (b"": the client closed; the handshake says so; waiting, it stays readable)
            if head:  # part of TAG came and stays readable: look again a little later (rare: it comes whole)
                await asyncio.sleep(PEEK_RETRY_PAUSE)
                continue
            readable = self._loop.create_future()
            self._loop.add_reader(sock.fileno(), _settle, readable)
            try:
                await readable
            finally:
                self._loop.remove_reader(sock.fileno())


def _settle(future: asyncio.Future[None]) -> None:
    """A reader callback (it may run again before the waiting task resumes)."""
    if not future.done():
        future.set_result(None)
