"""A TCP relay that cuts a connection after exactly k bytes: fault injection for the at-most-once rule.

    relay = CutRelay(("127.0.0.1", daemon_port))
    relay.arm(Cut("up", 57, "rst"))      # the next connection: cut after 57 bytes client -> daemon
    ... a proxy talks to ("127.0.0.1", relay.port) ...
    relay.close()

Real sockets, a thread per relayed connection. The armed cut applies to the next connection the relay
accepts (or the next one of several relays sharing one `Arming`, so that a proxy's first connection is
cut whichever provider it picked); later connections are relayed unharmed, so recovery has a way
through, unless the cut is armed `persistent` (every connection is cut: recovery has none). "up" counts bytes from the client to the daemon, "down" from the daemon to the client. When
a byte in the cut's direction would be the (k+1)-th, the first k go through and both connections are
cut: "rst" resets both (SO_LINGER 0, once the k bytes left the relay's send queue), "fin" closes both
(FIN after what was sent). k equal to everything the direction carries cuts right after the last byte.

A relay without an armed cut records what each connection carried (`arming.last_bytes`): a clean run of an
exchange tells how many bytes each direction has and where its frames end (`frame_ends`).
"""

from __future__ import annotations

import fcntl
import selectors
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

_LINGER_RESET = struct.pack("ii", 1, 0)
_OUTQ = termios.TIOCOUTQ  # bytes of a socket not yet acknowledged by the peer (SIOCOUTQ)
_DRAIN_BOUND = 1.0  # seconds the relay waits for its k bytes to leave before a reset
_HEADER = struct.Struct("!4sHBBHHII16sHH")  # protocol 502's frame header (meshrpc/wire/frame.py)


@dataclass(frozen=True)
class Cut:
    direction: str  # "up": client -> daemon; "down": daemon -> client
    after: int      # bytes that pass before the cut
    how: str        # "rst" or "fin"

    def __post_init__(self) -> None:
        if self.direction not in ("up", "down") or self.how not in ("rst", "fin") or self.after < 0:
            raise ValueError(f"bad cut {self}")


@dataclass
class Arming:
    """The cut for the next connection accepted by any relay that shares this arming."""
    cut: Cut | None = None
    fired: threading.Event = field(default_factory=threading.Event)
    # what the last clean connection (no cut) of these relays carried each way
    last_bytes: dict[str, bytes] = field(default_factory=lambda: {"up": b"", "down": b""})
    lock: threading.Lock = field(default_factory=threading.Lock)

    persistent: bool = False  # every connection gets the cut, not only the next one

    def arm(self, cut: Cut | None, persistent: bool = False) -> None:
        with self.lock:
            self.cut = cut
            self.persistent = persistent and cut is not None
            self.fired.clear()

    def take(self) -> Cut | None:
        with self.lock:
            cut = self.cut
            if not self.persistent:
                self.cut = None
            return cut


class CutRelay:
    def __init__(self, target: tuple[str, int] | None = None, host: str = "127.0.0.1",
                 arming: Arming | None = None) -> None:
        self.target = target
        self.arming = arming or Arming()
        self.listener = socket.create_server((host, 0))
        self.host, self.port = self.listener.getsockname()[:2]
        self.accepted = 0
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._idle = threading.Condition(self._lock)
        threading.Thread(target=self._accept, name=f"cutrelay-{self.port}", daemon=True).start()

    def arm(self, cut: Cut | None) -> None:
        self.arming.arm(cut)

    def _accepted(self) -> Iterator[socket.socket]:
        """The relay's client connections, until its listener is closed."""
        while True:
            try:
                yield self.listener.accept()[0]
            except OSError:
                return

    def _accept(self) -> None:
        for client in self._accepted():
            cut = self.arming.take()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self.accepted += 1
                self._pairs.add((client, server))
            threading.Thread(target=self._relay, args=(client, server, cut), daemon=True,
                             name=f"cutrelay-{self.port}-pump").start()

    def _relay(self, client: socket.socket, server: socket.socket, cut: Cut | None) -> None:
        counts = {"up": 0, "down": 0}
        record = {"up": bytearray(), "down": bytearray()} if cut is None else None
        ways = {client: (server, "up"), server: (client, "down")}
        open_ways = 2
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(client, selectors.EVENT_READ)
                sel.register(server, selectors.EVENT_READ)
                while open_ways:
                    for key, _ in sel.select():
                        src = key.fileobj
                        dst, way = ways[src]  # type: ignore[index]
                        try:
                            data = src.recv(65536)  # type: ignore[union-attr]
                        except OSError:
                            data = b""
                        if not data:  # an end closed (or reset): passed on as a half close
                            sel.unregister(src)
                            open_ways -= 1
                            try:
                                dst.shutdown(socket.SHUT_WR)
                            except OSError:
                                pass
                            continue
                        if cut is not None and cut.direction == way and counts[way] + len(data) >= cut.after:
                            try:
                                dst.sendall(data[:cut.after - counts[way]])
                            except OSError:
                                pass
                            self._cut(client, server, dst, cut.how)
                            self.arming.fired.set()
                            return
                        try:
                            dst.sendall(data)
                        except OSError:
                            pass
                        counts[way] += len(data)
                        if record is not None:
                            record[way] += data
        finally:
            for sock in (client, server):
                sock.close()
            with self._lock:
                self._pairs.discard((client, server))
                if record is not None:
                    self.arming.last_bytes = {way: bytes(data) for way, data in record.items()}
                self._idle.notify_all()

    @staticmethod
    def _cut(client: socket.socket, server: socket.socket, dst: socket.socket, how: str) -> None:
        if how == "rst":
            # the k bytes must leave before the reset, which would drop what is still queued
            give_up = time.monotonic() + _DRAIN_BOUND
            buf = bytearray(4)
            while time.monotonic() < give_up:
                fcntl.ioctl(dst.fileno(), _OUTQ, buf)
                if not int.from_bytes(buf, "little"):
                    break
                time.sleep(0.001)
            for sock in (client, server):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        for sock in (client, server):
            sock.close()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Every relayed connection has ended (both its ends closed)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pairs, timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pairs = list(self._pairs)
        self.listener.close()
        for client, server in pairs:
            for sock in (client, server):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def frame_ends(data: bytes) -> list[int]:
    """Offsets where protocol 502 frames end in a byte stream (a relay's clean record)."""
    ends, at = [], 0
    while at + _HEADER.size <= len(data):
        fields = _HEADER.unpack_from(data, at)
        if fields[0] != b"PYRO":
            break
        at += _HEADER.size + fields[6] + fields[7]
        ends.append(min(at, len(data)))
    return ends
