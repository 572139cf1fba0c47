"""Pyro5's `socketutil` helpers under meshrpc: addresses, sockets made the way daemons make them, and
exact-size sends and receives. Programs use these for addresses (`get_ip_address`, `get_interface`),
free ports, and for sockets they hand to a Daemon or Proxy themselves. meshrpc's own connections use
meshrpc.transport, not this module.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import select
import socket
import ssl
import time
import weakref
from typing import Any, Iterator, Union

from .config import config
from .errors import CommunicationError, ConnectionClosedError, TimeoutError
from .limits import LISTEN_BACKLOG  # (Pyro5's name in socketutil)

Address = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]

# errno values that mean "try again" on a non-blocking socket, and the ones Pyro5 programs compare
ERRNO_RETRIES = [errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS]
ERRNO_BADF = [errno.EBADF]
ERRNO_ENOTSOCK = [errno.ENOTSOCK]
ERRNO_EADDRNOTAVAIL = [errno.EADDRNOTAVAIL]
ERRNO_EADDRINUSE = [errno.EADDRINUSE]
USE_MSG_WAITALL = hasattr(socket, "MSG_WAITALL")
INTERFACE_PROBE_ADDRESS = "4.2.2.2"  # a public address: only used to pick the outgoing interface, no packet sent
ROUTE_PROBE_PORT = 53


def get_ip_address(hostname: str, workaround127: bool = False, version: int | None = None) -> Any:
    """The IP address (an `ipaddress` object) of a host name or address. version: 4, 6, or 0 for
    either (None: PREFER_IP_VERSION). workaround127: when the name resolves to a loopback or
    wildcard address, give the address of the interface that reaches outside instead."""
    if not workaround127:
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(hostname)
    if version is None:
        version = 0 if hostname and ":" in hostname else config.PREFER_IP_VERSION
    families = {0: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}
    if version not in families:
        raise ValueError(f"unknown IP version {version!r}: use 4, 6 or 0")

    def lookup(family: int) -> Any:
        info = socket.getaddrinfo(hostname or socket.gethostname(), 80, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        address = ipaddress.ip_address(info[0][4][0].split("%")[0])
        if workaround127 and (address.is_loopback or address.is_unspecified):
            with contextlib.suppress(OSError):
                return get_interface(INTERFACE_PROBE_ADDRESS).ip
        return address

    try:
        return lookup(families[version])
    except socket.gaierror:
        if version == 6:
            raise OSError(f"no IPv6 address for {hostname!r}") from None
        return lookup(socket.AF_UNSPEC)


def get_interface(ip_address: Address) -> Any:
    """The local interface (an `ipaddress` interface) that traffic to `ip_address` leaves from."""
    if isinstance(ip_address, str):
        ip_address = get_ip_address(ip_address)
    family = socket.AF_INET6 if ip_address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((str(ip_address), ROUTE_PROBE_PORT))  # UDP connect sends nothing: it only routes
        return ipaddress.ip_interface(probe.getsockname()[0].split("%")[0])


def _retry_pauses() -> Iterator[float]:
    """Pauses between attempts on a socket that is not ready: very short first, then growing."""
    yield from (0.0001, 0.001, 0.01)
    pause = 0.1
    while True:
        yield pause
        pause += 0.1


def receive_data(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes from `sock`. ConnectionClosedError when the peer closes first (the bytes
    that did arrive are in the error's `partialData`), TimeoutError when the socket's timeout passes."""
    chunks: list[bytes] = []
    received = 0
    pauses = _retry_pauses()
    try:
        while received < size:
            try:
                chunk = sock.recv(min(size - received, 1 << 20))
            except socket.timeout:
                raise TimeoutError("receiving: timeout") from None
            except BlockingIOError:
                time.sleep(next(pauses))
                continue
            if not chunk:
                raise ConnectionClosedError("receiving: connection lost")
            chunks.append(chunk)
            received += len(chunk)
    except (ConnectionClosedError, TimeoutError) as exc:
        exc.partialData = b"".join(chunks)  # type: ignore[attr-defined]
        raise
    except OSError as exc:
        closed = ConnectionClosedError(f"receiving: connection lost: {exc}")
        closed.partialData = b"".join(chunks)  # type: ignore[attr-defined]
        raise closed from None
    return b"".join(chunks)


def send_data(sock: socket.socket, data: bytes) -> None:
    """Send all of `data` (also on a non-blocking socket). TimeoutError or ConnectionClosedError."""
    view = memoryview(data)
    pauses = _retry_pauses()
    while view:
        try:
            if sock.gettimeout() is None:
                sock.sendall(view)
                return
            view = view[sock.send(view):]
        except socket.timeout:
            raise TimeoutError("sending: timeout") from None
        except BlockingIOError:
            time.sleep(next(pauses))
        except OSError as exc:
            if exc.errno in ERRNO_RETRIES:
                time.sleep(next(pauses))
                continue
            raise ConnectionClosedError(f"sending: connection lost: {exc}") from None


def _family_for(address: Any, force_ipv6: bool) -> tuple[int, Any]:
    """(socket family, address) for a bind/connect argument: a str is a Unix socket path, a tuple an
    IP (host, port); IPv6 tuples get flow info and scope."""
    if isinstance(address, str):
        return socket.AF_UNIX, address
    if not isinstance(address, tuple):
        raise ValueError(f"unknown address format {address!r}: a (host, port) tuple or a Unix socket path")
    if not address[0]:
        return (socket.AF_INET6 if force_ipv6 else socket.AF_INET), address
    if get_ip_address(address[0]).version == 6:
        return socket.AF_INET6, (address[0], address[1], 0, 0)
    if force_ipv6:
        raise ValueError(f"{address[0]} is an IPv4 address, but IPv6 was asked for")
    return socket.AF_INET, address


def create_socket(bind: Any = None, connect: Any = None, reuseaddr: bool = False, keepalive: bool = True,
                  timeout: float | None = -1, noinherit: bool = False, ipv6: bool | None = False,
                  nodelay: bool = True, sslContext: ssl.SSLContext | None = None) -> socket.socket:
    """A TCP (or, for a str address, Unix) stream socket: bound and listening (`bind`), or connected
    (`connect`). timeout: seconds; None or 0 block; negative leaves the default. ipv6: True forces
    IPv6, None follows PREFER_IP_VERSION."""
    if bind and connect:
        raise ValueError("give bind or connect, not both")
    force_ipv6 = bool(ipv6) or (ipv6 is None and config.PREFER_IP_VERSION == 6)
    if bind or connect:
        family, address = _family_for(bind or connect, force_ipv6)
    else:
        family, address = (socket.AF_INET6 if force_ipv6 else socket.AF_INET), None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sslContext is not None:
            server_name = connect[0] if isinstance(connect, tuple) else None
            sock = sslContext.wrap_socket(sock, server_side=bool(bind), server_hostname=None if bind else server_name)
        if nodelay:
            set_nodelay(sock)
        if reuseaddr:
            set_reuseaddr(sock)
        if noinherit:
            sock.set_inheritable(False)
        if timeout is not None and timeout > 0:
            sock.settimeout(timeout)
        elif timeout == 0 or timeout is None:
            sock.settimeout(None)
        if bind:
            if isinstance(address, tuple) and address[1] == 0:
                bind_unused_port(sock, address[0])
            else:
                sock.bind(address)
            with contextlib.suppress(OSError):
                sock.listen(LISTEN_BACKLOG)
        if connect:
            _connect(sock, address, timeout)
        if keepalive:
            set_keepalive(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect(sock: socket.socket, address: Any, timeout: float | None) -> None:
    try:
        sock.connect(address)
    except OSError as exc:
        if exc.errno not in ERRNO_RETRIES:
            raise
        wait = None if timeout is None or timeout < 0 else max(timeout, 0.1)
        while True:
            try:
                _, writable, failed = select.select([], [sock], [sock], wait)
            except InterruptedError:
                continue
            if sock in failed or not writable:
                raise OSError(f"connecting to {address} failed") from None
            return


def create_bc_socket(bind: Any = None, reuseaddr: bool = False, timeout: float | None = -1,
                     ipv6: bool | None = False) -> socket.socket:
    """A UDP socket allowed to broadcast (IPv4), optionally bound to (host, port); port 0 picks one."""
    force_ipv6 = bool(ipv6) or (ipv6 is None and config.PREFER_IP_VERSION == 6)
    if bind is not None and not isinstance(bind, tuple):
        raise ValueError(f"unknown bind format {bind!r}: a (host, port) tuple")
    family = socket.AF_INET6 if force_ipv6 else socket.AF_INET
    if bind and bind[0]:
        family, bind = _family_for(bind, force_ipv6)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if reuseaddr:
            set_reuseaddr(sock)
        if timeout is None:
            sock.settimeout(None)
        elif timeout >= 0:
            sock.settimeout(timeout)
        if bind:
            host = bind[0] or ""
            if bind[1] == 0:
                bind_unused_port(sock, host)
            elif len(bind) in (2, 4):
                sock.bind(bind)
            else:
                raise ValueError("bind must be a (host, port) or (host, port, flowinfo, scope) tuple")
    except BaseException:
        sock.close()
        raise
    return sock


def set_reuseaddr(sock: socket.socket) -> None:
    """SO_REUSEADDR, where the platform has it."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


def set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY (no Nagle delay), where it applies."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_keepalive(sock: socket.socket) -> None:
    """SO_KEEPALIVE, where it applies."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def set_noinherit(sock: socket.socket) -> None:
    """Keep the socket out of child processes."""
    sock.set_inheritable(False)


class SocketConnection:
    """A socket with exact-size `send`/`recv`, and what a daemon keeps per client: session instances
    and tracked resources (closed with the connection). keep_open: close() leaves the socket open."""

    def __init__(self, sock: socket.socket, objectId: str | None = None, keep_open: bool = False) -> None:
        self.sock = sock
        self.objectId = objectId
        self.pyroInstances: dict[Any, Any] = {}
        self.tracked_resources: weakref.WeakSet[Any] = weakref.WeakSet()
        self.keep_open = keep_open

    def __enter__(self) -> "SocketConnection":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def send(self, data: bytes) -> None:
        send_data(self.sock, data)

    def recv(self, size: int) -> bytes:
        return receive_data(self.sock, size)

    def close(self) -> None:
        if self.keep_open:
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.pyroInstances = {}
        resources, self.tracked_resources = list(self.tracked_resources), weakref.WeakSet()
        for resource in resources:
            with contextlib.suppress(Exception):
                resource.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def family(self) -> str:
        return family_str(self.sock)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    timeout = property(gettimeout, settimeout)

    def getpeercert(self) -> dict | None:
        getpeercert = getattr(self.sock, "getpeercert", None)
        return getpeercert() if getpeercert is not None else None


def family_str(sock: socket.socket) -> str:
    """"IPv4", "IPv6", "Unix" or "???"."""
    names = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
    if hasattr(socket, "AF_UNIX"):
        names[socket.AF_UNIX] = "Unix"
    return names.get(sock.family, "???")


def find_probably_unused_port(family: int = socket.AF_INET, socktype: int = socket.SOCK_STREAM) -> int:
    """A port that was free a moment ago (another process may take it before you bind it: prefer port 0)."""
    with socket.socket(family, socktype) as sock:
        return bind_unused_port(sock)


def bind_unused_port(sock: socket.socket, host: Address = "localhost") -> int:
    """Bind `sock` to a free port of `host` (localhost: the loopback address of the socket's family)
    and return the port."""
    host = str(host)
    if sock.family == socket.AF_INET:
        sock.bind(("127.0.0.1" if host == "localhost" else host, 0))
    elif sock.family == socket.AF_INET6:
        sock.bind(("::1" if host == "localhost" else host, 0, 0, 0))
    else:
        raise CommunicationError(f"cannot bind a port on a socket of family {sock.family}")
    return sock.getsockname()[1]


def interrupt_socket(address: tuple[str, int]) -> None:
    """Connect to a listening socket and close again, to wake a server blocked in accept()."""
    with contextlib.suppress(OSError):
        sock = create_socket(connect=address, keepalive=False, timeout=-1)
        with contextlib.suppress(OSError):
            sock.sendall(b"!" * 16)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def get_ssl_context(servercert: str = "", serverkey: str = "", clientcert: str = "", clientkey: str = "",
                    cacerts: str = "", keypassword: str = "") -> ssl.SSLContext:
    """A TLS context built from certificate files: a server's (servercert) or a client's (otherwise),
    configured as meshrpc's daemons and proxies configure theirs (docs/security.md). Unlike Pyro5's,
    each call builds a new context."""
    from .transport import tls
    if servercert and clientcert:
        raise ValueError("give a server certificate or a client certificate, not both")
    for path, what in ((servercert, "server certificate"), (serverkey, "server key"),
                       (clientcert, "client certificate"), (clientkey, "client key")):
        if path and not os.path.isfile(path):
            raise OSError(f"{what} file not found: {path}")
    if servercert:
        settings = config.copy(SSL_SERVERCERT=servercert, SSL_SERVERKEY=serverkey, SSL_CACERTS=cacerts,
                               SSL_SERVERKEYPASSWD=keypassword)
        return tls.server_context(settings)
    settings = config.copy(SSL_CLIENTCERT=clientcert, SSL_CLIENTKEY=clientkey, SSL_CACERTS=cacerts,
                           SSL_CLIENTKEYPASSWD=keypassword)
    return tls.client_context(settings)


__all__ = [
    "ERRNO_BADF", "ERRNO_EADDRINUSE", "ERRNO_EADDRNOTAVAIL", "ERRNO_ENOTSOCK", "ERRNO_RETRIES", "USE_MSG_WAITALL",
    "SocketConnection", "bind_unused_port", "create_bc_socket", "create_socket", "family_str",
    "find_probably_unused_port", "get_interface", "get_ip_address", "get_ssl_context", "interrupt_socket",
    "receive_data", "send_data", "set_keepalive", "set_nodelay", "set_noinherit", "set_reuseaddr",
]
