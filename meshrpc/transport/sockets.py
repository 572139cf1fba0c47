"""Sockets: server sockets, client connections, and a framed connection over either."""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import socket
import struct
import threading
import time
from typing import Any, Callable

from ..errors import CommunicationError, ConnectionClosedError, TimeoutError
from ..limits import (ACK_DELAY_MAX, DEAD_PEER_PROBES, LOW_WATER, RECV_CHUNK,  # (read sizes and the low-water mark: why, there)
                      RECV_MAX)
from ..wire import frame as wire
from ..wire.session import NEED_DATA, TAKE_EVENT
from .spin import SpinGate, others_waiting, single_core, waiters

log = logging.getLogger("meshrpc.transport")

_TCP_ESTABLISHED = b"\x01"  # tcpi_state, the first byte of Linux's TCP_INFO
# Linux's TCP_INFO up to tcpi_notsent_bytes (Linux 4.6): tcpi_probes (window probes unanswered) at byte 3,
# tcpi_snd_mss at 16, tcpi_unacked (segments sent, not acknowledged) at 24, tcpi_last_ack_recv (ms since
# the peer's last acknowledgement) at 56, tcpi_notsent_bytes at 144; and up to tcpi_snd_wnd (Linux 5.4:
# the window the peer advertises) at 228
_TCP_ACKS = struct.Struct("=3xB12xI4xI28xI84xI")
_TCP_WINDOW = struct.Struct("=228xI")


def is_ipv6(host: str) -> bool:
    return ":" in host


def create_server_socket(host: str, port: int = 0, unixsocket: str | None = None, *,
                         reuse: bool = True, backlog: int = 200) -> socket.socket:
    """A listening socket on host:port (IPv4 or IPv6) or on a Unix socket path."""
    if unixsocket:
        # a name starting with NUL is in Linux's abstract namespace: no file to check or remove
        if not unixsocket.startswith("\0") and os.path.exists(unixsocket) and _is_stale_unix_socket(unixsocket):
            os.unlink(unixsocket)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(unixsocket)
        except OSError as exc:
            sock.close()
            raise CommunicationError(f"cannot bind unix socket {unixsocket}: {exc.strerror}") from None
    else:
        try:
            infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise CommunicationError(f"cannot bind {host}:{port}: unknown host ({exc.strerror})") from None
        # prefer IPv4 for names such as localhost that resolve to both
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            hint = " (is another daemon using that port?)" if exc.errno == errno.EADDRINUSE else ""
            raise CommunicationError(f"cannot bind {host}:{port}: {exc.strerror}{hint}") from None
    sock.listen(backlog)
    return sock


def _is_stale_unix_socket(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return False
    except OSError:
        return True
    finally:
        probe.close()


def notice_dead_peer(sock: Any, seconds: float) -> None:
    """Have the kernel end `sock`'s TCP connection when its peer has answered nothing for about
    `seconds` (a host powered off, a cable pulled, a partition): keep-alive probes once the connection
    is quiet (a third of `seconds` idle, then six probes over the rest), and TCP_USER_TIMEOUT for data
    sent and never acknowledged. A live peer's kernel answers the probes, however long its calls run.
    Without them a call waiting for the reply of a crashed host waits forever (nothing is in flight
    for TCP to retransmit), and a daemon keeps a vanished client's connection. 0: the system's TCP
    defaults. Not TCP (Unix sockets), or an option the platform lacks: left as it is."""
    if seconds <= 0 or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    idle = max(1, int(seconds / 3))
    interval = max(1, int((seconds - idle) / DEAD_PEER_PROBES))
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPALIVE", idle),  # (macOS names the idle time so)
                        ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", DEAD_PEER_PROBES),
                        ("TCP_USER_TIMEOUT", int(seconds * 1000))):
        option = getattr(socket, name, None)
        if option is not None:
            options.append((socket.IPPROTO_TCP, option, value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass


def lost_if_silent_peer(exc: OSError) -> None:
    """ConnectionClosedError when `exc` is the kernel giving up on a peer that answered nothing
    (ETIMEDOUT: notice_dead_peer's probes or TCP_USER_TIMEOUT, or TCP's retransmissions). Python raises
    it as a TimeoutError, as it raises a socket's own timeout (errno None) and SO_RCVTIMEO's (EAGAIN),
    which the caller goes on to handle: this one is a lost connection."""
    if exc.errno == errno.ETIMEDOUT:
        raise ConnectionClosedError(f"connection lost: the peer stopped answering ({exc.strerror or exc}; "
                                    f"DEAD_PEER_TIMEOUT)") from None


def connect(host: str | None, port: int, sockname: str | None, timeout: float | None,
            nodelay: bool = True, dead_peer: float = 0.0) -> socket.socket:
    """A connected client socket, or CommunicationError that says what failed. `dead_peer`:
    notice_dead_peer's seconds."""
    where = sockname or f"{host}:{port}"
    try:
        if sockname:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(sockname)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            notice_dead_peer(sock, dead_peer)
    except socket.timeout:
        raise TimeoutError(f"connecting to {where} timed out") from None
    except ConnectionRefusedError:
        raise CommunicationError(f"cannot connect to {where}: connection refused (is the daemon running?)") from None
    except socket.gaierror as exc:
        raise CommunicationError(f"cannot connect to {where}: unknown host ({exc.strerror})") from None
    except OSError as exc:
        raise CommunicationError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    return sock


def peer_closed_check(sock: Any) -> Callable[[], bool]:
    """() -> whether the peer closed the connection of `sock`, asked of an idle connection (nothing due
    to be read) before a call is sent on it, by both proxies. Plain TCP: the kernel's TCP state (the
    first byte of Linux's TCP_INFO), which keeps the GIL (poll lets go of it: with many client threads,
    a hand-over to another thread per call); otherwise (Unix sockets; TLS, whose close_notify is data)
    whether the socket is readable. An error while asking counts as closed."""
    if hasattr(socket, "TCP_INFO") and not hasattr(sock, "pending") and sock.family in (socket.AF_INET,
                                                                                         socket.AF_INET6):
        tcp_state = functools.partial(sock.getsockopt, socket.IPPROTO_TCP, socket.TCP_INFO, 1)

        def closed() -> bool:
            try:
                return tcp_state() != _TCP_ESTABLISHED
            except OSError:
                return True
        return closed
    poller = select.poll()
    poller.register(sock, select.POLLIN)

    def readable() -> bool:
        try:
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True
    return readable


def silent_peer_check(sock: Any) -> Callable[[float], bool]:
    """(seconds) -> whether what this side sent on the connection of `sock` has waited longer than
    `seconds` for the peer's acknowledgement, with none coming meanwhile: a silent peer (its host gone,
    the network cut, or this host's own address gone, which leaves the connection sending from an
    address nobody answers). Asked before a oneway call, which no reply would tell; a two-way call
    learns it from its timeout. Plain TCP on Linux (TCP_INFO); elsewhere never silent.

    Asked before every oneway send, so the last check that found everything acknowledged is older than
    all that waits now: the wait is counted from it. An error while asking counts as silent; a kernel
    whose TCP_INFO ends before tcpi_notsent_bytes (before 4.6) never says silent.

    Not silent: a peer that advertises a closed window (a daemon that reads its client no further while
    it runs what came: docs/servers.md) and answers the window probes. Their spacing doubles (0.2, 0.4,
    0.8 s ...), so the quiet between two of them soon outlasts a short timeout; the calls wait for the
    daemon on this connection, in order. Two probes unanswered in a row: silent (kernels before 5.4 do
    not say the window: there the quiet counts). Nor is a quiet shorter than ACK_DELAY_MAX (a oneway
    call's acknowledgement may wait that long at the peer), whatever `seconds` says."""
    if not (hasattr(socket, "TCP_INFO") and not hasattr(sock, "pending")
            and sock.family in (socket.AF_INET, socket.AF_INET6)):
        return lambda seconds: False
    tcp_info = functools.partial(sock.getsockopt, socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_WINDOW.size)
    acked_at = [time.monotonic()]  # when a check last found nothing waiting for an acknowledgement

    def silent(seconds: float) -> bool:
        try:
            info = tcp_info()
        except OSError:
            return True
        if len(info) < _TCP_ACKS.size:  # a kernel before 4.6 says too little: never silent, as elsewhere
            return False
        probes, mss, unacked, last_ack_ms, unsent = _TCP_ACKS.unpack_from(info)
        now = time.monotonic()
        # (data may also wait unsent: from an address that is gone, the kernel cannot send it at all)
        if not unacked and not unsent:
            acked_at[0] = now
            return False
        if seconds < ACK_DELAY_MAX:  # the peer may delay its acknowledgement that long
            seconds = ACK_DELAY_MAX
        if now - acked_at[0] <= seconds or last_ack_ms <= seconds * 1000:
            return False
        if unacked or probes >= 2 or len(info) < _TCP_WINDOW.size:
            return True
        return _TCP_WINDOW.unpack_from(info)[0] >= mss  # (smaller: the peer's window holds the data back)
    return silent


def limit_receive_time(sock: socket.socket, seconds: float) -> bool:
    """A blocking read on `sock` that gets no data for `seconds` fails with EAGAIN (SO_RCVTIMEO), which
    FramedConnection.fill_within reports as "nothing came". True when set."""
    if seconds <= 0 or not hasattr(socket, "SO_RCVTIMEO"):
        return False
    whole = int(seconds)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))
    except (OSError, struct.error):
        return False
    return True


def limit_send_time(sock: socket.socket, seconds: float) -> None:
    """Security hook (docs/security.md): a blocking send on `sock` that makes no progress for `seconds`
    fails (EAGAIN, so FramedConnection.send raises ConnectionClosedError) instead of blocking forever;
    a daemon's plain connections use it so that a client that never reads cannot hold a worker."""
    if seconds <= 0 or not hasattr(socket, "SO_SNDTIMEO"):
        return
    whole = int(seconds)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))
    except (OSError, struct.error):
        log.debug("SO_SNDTIMEO not supported here; sends to clients are not time limited")


class FramedConnection:
    """A socket carrying protocol 502 frames: whole frames out, whole frames in.

    Sending is serialized by a lock, so several threads may send on one connection; receiving is
    meant for one reader at a time (the proxy's lock or the daemon's worker guarantees that).
    """

    def __init__(self, sock: socket.socket, max_size: int, compress_min: int = -1,
                 max_annotations: int = 64, spin_wait: float = 0.0, *, protocol: Any = None,
                 spin_gate: SpinGate | None = None) -> None:
        self.sock = sock
        # protocol: the connection's wire.session (ClientSession/ServerSession); bytes read go to its reader
        self.protocol = protocol
        self.reader = protocol.reader if protocol is not None else wire.FrameReader(max_size, max_annotations)
        self.max_size = max_size
        self.compress_min = compress_min
        self.send_lock = threading.Lock()
        self.closed = False
        # adaptive spin: poll without sleeping for up to spin_wait seconds while recent messages came
        # well within that; a sleeping thread costs a scheduler wake-up (tens of microseconds) per reply
        # (spin_gate: a gate built from Settings, SpinGate.from_settings; it replaces spin_wait)
        self.spin_gate = spin_gate if spin_gate is not None else SpinGate(spin_wait)
        if single_core():
            self.spin_gate.spin_wait = 0.0
        self.spin_wait = self.spin_gate.spin_wait
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        # --- security hooks (docs/security.md). An ssl.SSLSocket is read and written through a
        # transport.tls.TLSChannel (non-blocking server handshake, drains decrypted bytes that poll()
        # cannot see, time-limited non-blocking writes); `recv` may then return None: no data yet.
        # `last_active` (monotonic; set by reads and sends) lets a daemon close idle connections
        # (a proxy's next_result does not set it: nothing on the client side reads it).
        self.tls: Any = None
        self._recv: Callable[[int], bytes | None] = sock.recv
        self._sendall: Callable[[Any], None] = sock.sendall
        if hasattr(sock, "pending"):  # an SSLSocket; plain connections never import ssl
            from .tls import TLSChannel
            self.tls = TLSChannel(sock)  # type: ignore[arg-type]
            self._recv, self._sendall = self.tls.recv, self.tls.sendall
        self.last_active = time.monotonic()
        # a plain socket that never spins: a reply is read with one recv, no gate, no waiters' count
        self._plain_reads = self.tls is None and not self.spin_wait
        # () -> whether the peer closed this idle connection: a proxy asks before every call it sends on it
        # (an attribute, not a method: no Python frame more per call)
        self.peer_closed: Callable[[], bool] = peer_closed_check(sock)
        # (seconds) -> whether the peer acknowledged nothing sent for that long: asked before a oneway call
        self.silent_for: Callable[[float], bool] = silent_peer_check(sock)
        # SO_RCVLOWAT now (plain TCP only; 0: not used): above 1 only while the rest of a large frame comes
        plain_tcp = self.tls is None and sock.family in (socket.AF_INET, socket.AF_INET6)
        self._low_water = 1 if plain_tcp and hasattr(socket, "SO_RCVLOWAT") else 0

    def send(self, frame: wire.Frame) -> None:
        self.send_parts(wire.encode_parts(frame, compress_min=self.compress_min, max_size=self.max_size))

    # what the handshake agreed with a meshrpc peer (wire.constants.CAP_*); Pyro5 peers: nothing
    @property
    def oob(self) -> bool:
        """Bytes-like values travel out of band."""
        return self.protocol is not None and self.protocol.oob

    @property
    def binary(self) -> bool:
        """Plain serpent values travel in binary form."""
        return self.protocol is not None and self.protocol.binary

    def send_parts(self, parts: list) -> None:
        """Send buffers made by a session (wire.session), in order, as one message or several."""
        with self.send_lock:
            self.send_unlocked(parts)

    def send_request(self, parts: list) -> None:
        """send_parts for a proxy: its own lock already serializes everything sent on its connection, and
        nothing on the client side reads last_active, so neither the send lock nor the clock is taken.
        The sending itself, for send_unlocked too."""
        try:
            for part in parts:
                self._sendall(part)
        except socket.timeout as exc:
            lost_if_silent_peer(exc)
            raise TimeoutError("sending timed out") from None
        except OSError as exc:
            raise ConnectionClosedError(f"connection lost while sending: {exc.strerror or exc}") from None

    def send_unlocked(self, parts: list) -> None:
        """send_parts without the send lock, for a caller that is the only one writing to this plain
        connection (a daemon's worker answering the request it holds)."""
        self.send_request(parts)
        self.last_active = time.monotonic()  # (only once all of it went)

    def next_event(self) -> Any:
        """The protocol session's next event, reading (and blocking, within the socket's timeout)
        until there is one."""
        protocol = self.protocol
        if not self.reader.buffered:  # nothing read ahead (the usual case): no frame before a read
            self.fill()
        event = protocol.next_event()
        while event is NEED_DATA:
            self.fill()
            event = protocol.next_event()
        return event

    def next_result(self) -> Any:
        """For a client session (wire.session.ClientSession) whose one call waits for its reply: the
        usual reply's payload (ClientSession.receive_result; result_value() decodes it), read with one
        recv on a plain socket that never spins; otherwise TAKE_EVENT, and next_event() gives the reply."""
        if not self._plain_reads or self.reader.buffered:
            return TAKE_EVENT
        try:
            data = self._recv(RECV_CHUNK)
        except socket.timeout as exc:
            lost_if_silent_peer(exc)
            raise TimeoutError("receiving: timeout") from None  # Pyro5's text (programs compare it)
        except OSError as exc:
            raise ConnectionClosedError(f"connection lost: {exc.strerror or exc}") from None
        if not data:
            raise ConnectionClosedError("the peer closed the connection")
        return self.protocol.receive_result(data)

    def recv(self) -> wire.Frame:
        """The next frame; blocks (within the socket's timeout)."""
        reader = self.reader
        frame = reader.next_frame()
        while frame is None:
            self.fill()
            frame = reader.next_frame()
        return frame

    def try_fill(self) -> bool:
        """Poll without sleeping for up to spin_wait (when worthwhile); True when data was read."""
        if not self.spin_gate.should_spin():  # asked first: a closed gate costs no lock
            return False
        with waiters as waiting:
            return self._try_spin(waiting)

    def fill(self, spin: bool = True) -> None:
        """Read what the socket has (at least one byte) into the frame reader. spin=False: the caller
        saw the socket readable (or spun already), so no spin and no waiting is counted."""
        into = self.reader.receive_buffer() if self.tls is None else None
        if into is not None:  # the rest of a large frame: straight into its buffer, no copies
            self._read_into(into)
            return
        if not spin or not self.spin_wait:  # never spins (SPIN_WAIT 0): not counted among the waiters
            data = self._read(self._read_size())
        else:
            with waiters as waiting:
                if self.spin_gate.should_spin() and self._try_spin(waiting):
                    return
                data = self._read(self._read_size())
        if not data:
            if data is None:  # TLS: no application data yet (a partial record, or the handshake goes on)
                return
            raise ConnectionClosedError("the peer closed the connection")
        self.last_active = time.monotonic()
        self.reader.feed(data)

    def fill_within(self) -> bool:
        """One blocking read of a plain socket whose reads are time limited (limit_receive_time), with
        no poll before it (the rest of a large frame straight into its buffer): True when data was
        read, False when none came in time."""
        reader = self.reader
        buffered = reader.buffered  # 0 is the usual case between requests: one read of RECV_CHUNK
        into = reader.receive_buffer() if buffered else None
        if into is None:
            data = self.receive_within(self._read_size() if buffered else RECV_CHUNK)
            if data is None:
                return False
            reader.feed(data)
            return True
        try:
            count = self._recv_frame_rest(into)
        except (BlockingIOError, socket.timeout) as exc:  # SO_RCVTIMEO (or a timeout set on the socket) ran out
            lost_if_silent_peer(exc)
            return False
        except OSError as exc:
            raise ConnectionClosedError(f"connection lost: {exc.strerror or exc}") from None
        if not count:
            raise ConnectionClosedError("the peer closed the connection")
        self.last_active = time.monotonic()
        reader.received(count)
        return True

    def receive_within(self, size: int = RECV_CHUNK) -> bytes | None:
        """fill_within's read of up to `size` bytes, returned instead of fed to the reader (with nothing
        buffered, a daemon's worker offers them to ServerSession.receive_request first); None when
        nothing came in time."""
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, socket.timeout) as exc:  # SO_RCVTIMEO (or a timeout set on the socket) ran out
            lost_if_silent_peer(exc)
            return None
        except OSError as exc:
            raise ConnectionClosedError(f"connection lost: {exc.strerror or exc}") from None
        if not data:
            raise ConnectionClosedError("the peer closed the connection")
        self.last_active = time.monotonic()
        return data

    def _read_into(self, view: memoryview) -> None:
        with waiters:  # counted as waiting (a blocking read), never spinning: the frame is large
            self._recv_into(view)

    def _recv_frame_rest(self, view: memoryview) -> int:
        """recv_into the rest of a large frame (`view`, its own buffer): on plain TCP, while at least
        2 * LOW_WATER bytes are to come, the read returns once LOW_WATER bytes are in. The mark is one
        byte again after every read (however it ends): a poll waits for the mark too (a daemon's worker
        lingering between reads, its selector after a hand-back), and a read may leave less of the
        frame to come than the mark, which such a poll would wait for in vain."""
        # only on a blocking socket (no timeout, or SO_RCVTIMEO, which returns what came): Python's
        # own timeout polls first, and poll waits for the mark, so a slow link whose bytes keep
        # coming, but less than the mark per timeout, would time out where it did not before
        if self._low_water and len(view) >= 2 * LOW_WATER and self.sock.gettimeout() is None:
            self._set_low_water(LOW_WATER)
        try:
            return self.sock.recv_into(view)
        finally:
            if self._low_water > 1:
                self._set_low_water(1)

    def _set_low_water(self, count: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)
            self._low_water = count
        except OSError:  # not settable here: read as before
            self._low_water = 0

    def _recv_into(self, view: memoryview) -> None:
        try:
            count = self._recv_frame_rest(view)
        except socket.timeout as exc:
            lost_if_silent_peer(exc)
            raise TimeoutError("receiving: timeout") from None
        except OSError as exc:
            raise ConnectionClosedError(f"connection lost: {exc.strerror or exc}") from None
        if not count:
            raise ConnectionClosedError("the peer closed the connection")
        self.last_active = time.monotonic()
        self.reader.received(count)

    def _read(self, size: int) -> bytes | None:
        try:
            return self._recv(size)
        except socket.timeout as exc:
            lost_if_silent_peer(exc)
            raise TimeoutError("receiving: timeout") from None  # Pyro5's text (programs compare it)
        except OSError as exc:
            raise ConnectionClosedError(f"connection lost: {exc.strerror or exc}") from None

    def _try_spin(self, waiting: int) -> bool:
        """One spin, the gate having said yes."""
        # in the middle of a large frame, spinning between its chunks burns a core for nothing: its
        # bytes come as fast as the peer writes them, and a sleeping read loses no round trip
        if waiting > 1 or self.reader.wanted() > RECV_CHUNK:
            return False
        data = self._spin_recv(self._read_size())
        if data is None:
            return False
        if not data:
            raise ConnectionClosedError("the peer closed the connection")
        self.last_active = time.monotonic()
        self.reader.feed(data)
        return True

    def _read_size(self) -> int:
        wanted = self.reader.wanted()
        return RECV_CHUNK if wanted <= RECV_CHUNK else min(wanted, RECV_MAX)

    def _spin_recv(self, size: int) -> bytes | None:
        """Data, b"" on close, or None when nothing came within spin_wait (or TLS has no data yet)."""
        # poll(0) never sleeps and works the same whether or not the socket has a timeout
        if not self.spin_gate.spin(self._readable_now, time.perf_counter, others_waiting):
            return None
        try:
            return self._recv(size)
        except OSError as exc:
            raise ConnectionClosedError(f"connection lost: {exc.strerror or exc}") from None

    def _readable_now(self) -> bool:
        return bool(self.poller.poll(0))

    @property
    def timeout(self) -> float | None:
        """The socket's timeout (seconds, None: none), as on Pyro5's connection objects."""
        return self.sock.gettimeout()

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def getpeercert(self) -> dict | None:
        """The peer's certificate (ssl's dict form) on a TLS connection that checked one, else None
        (Pyro5's SocketConnection.getpeercert, e.g. for Daemon.validateHandshake)."""
        return self.tls.getpeercert() if self.tls is not None else None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
