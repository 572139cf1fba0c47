"""Broadcast discovery of a name server, Pyro5's protocol: the UDP datagram b"GET_NSURI" is answered
with the name server's URI (ISO-8859-1).

Discovery traffic stays where the name server is: the responder binds the name server's own address
and that interface's broadcast address (a name server on localhost listens on loopback only), and
the client asks only the addresses that belong to the configured host.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any, Self

from ..errors import CommunicationError
from ..mesh.net import LOOPBACK_NAMES, ipv4_interface_infos
from ..uri import URI
from ..wire.constants import NS_BROADCAST_MAX_DATAGRAM, NS_BROADCAST_REQUEST
from ..limits import NS_BROADCAST_INTERVAL, NS_BROADCAST_POLL, NS_BROADCAST_TRIES

log = logging.getLogger("meshrpc.naming")

LOOPBACK_BROADCAST = "127.255.255.255"
# Pyro5 clients ask "<broadcast>" by default: a responder for an interface listens there too and
# answers only askers on that interface's networks
LIMITED_BROADCAST = "255.255.255.255"
_WILDCARDS = {"", "0.0.0.0"}


def _ipv4_of(host: str) -> str | None:
    """The IPv4 address host names (None for IPv6, Unix sockets and names that do not resolve)."""
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
        return str(address) if address.version == 4 else None
    except ValueError:
        pass
    if not host or "/" in host:
        return None
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    return str(infos[0][4][0]) if infos else None


def _interface_networks() -> list[tuple[ipaddress.IPv4Interface, str | None]]:
    """(address/netmask, broadcast address or None) of every IPv4 interface address."""
    found = []
    for info in ipv4_interface_infos():
        try:
            iface = ipaddress.IPv4Interface(f"{info['addr']}/{info.get('netmask', '255.255.255.255')}")
        except (KeyError, ValueError):
            continue
        broadcast = info.get("broadcast")
        if broadcast == info["addr"]:
            # an address added without one (`ip addr add A/24 dev eth0`, no `brd +`): netifaces reports
            # the address itself, which would make every broadcast a datagram to ourselves
            broadcast = None
        if iface.ip.is_loopback:
            broadcast = LOOPBACK_BROADCAST
        elif broadcast is None and iface.network.prefixlen < 31 and "peer" not in info:
            broadcast = str(iface.network.broadcast_address)
        found.append((iface, broadcast))
    return found


def _broadcast_for(address: str) -> list[str]:
    """Broadcast addresses of the interfaces whose network holds address."""
    ip = ipaddress.IPv4Address(address)
    if ip.is_loopback:
        return [LOOPBACK_BROADCAST]
    return _dedup(bc for iface, bc in _interface_networks() if bc and ip in iface.network)


def responder_addresses(host: str) -> list[str]:
    """Where a responder for a name server bound to host listens: [""] for all interfaces, else the
    host's IPv4 address, its interface's broadcast address and (not on loopback) the limited broadcast
    address that Pyro5 clients use; [] when there is no IPv4 host."""
    if host.strip() in _WILDCARDS:
        return [""]
    address = _ipv4_of(host)
    if address is None:
        return []
    limited = [] if ipaddress.IPv4Address(address).is_loopback else [LIMITED_BROADCAST]
    return _dedup([address, *_broadcast_for(address), *limited])


def _networks_of(address: str) -> list[ipaddress.IPv4Network]:
    """The networks of the interfaces that hold address."""
    ip = ipaddress.IPv4Address(address)
    return [iface.network for iface, _ in _interface_networks() if ip in iface.network]


def broadcast_targets(host: str) -> list[str]:
    """Where a client configured for host sends GET_NSURI: only addresses that belong to host."""
    if host.strip() in _WILDCARDS:
        return _dedup(bc for _, bc in _interface_networks() if bc)
    address = _ipv4_of(host)
    if address is None:
        return []
    return _dedup([address, *_broadcast_for(address)])


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _local_address_towards(peer: str) -> str | None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((peer, 9))  # no packet is sent: this only picks the outgoing interface
        return str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()


class BroadcastServer:
    """Answers GET_NSURI on `port` at the addresses of `host` (see responder_addresses).

    Not running when created (as in Pyro5): call run_in_thread(), or add `sockets` to your own select
    loop and pass the readable ones to events(). port 0 picks a free port (see `port`)."""

    def __init__(self, ns_uri: URI | str, host: str, port: int) -> None:
        self.ns_uri = URI(ns_uri)
        addresses = responder_addresses(host)
        if not addresses:
            raise CommunicationError(f"no broadcast responder for host {host!r}: broadcast needs IPv4")
        self.wildcard = addresses == [""]
        self.sockets: list[socket.socket] = []
        self._closed = False
        self._poll: Any = None  # fileno()'s epoll over the sockets, made when first asked
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self.sockets.append(self._bind(addresses[0], port))
            port = self.sockets[0].getsockname()[1]  # the broadcast address on the same (maybe picked) port
            bound = [addresses[0]]
            for address in addresses[1:]:
                try:
                    self.sockets.append(self._bind(address, port))
                    bound.append(address)
                except CommunicationError as exc:
                    # some systems cannot bind a broadcast address, or another responder has it:
                    # direct queries are still answered
                    log.warning("%s; answering queries sent to %s:%d only", exc, addresses[0], port)
        except BaseException:
            self.close()
            raise
        self.port = port
        self.addresses = bound
        # a query to the limited broadcast address may come from any interface: answered only from the
        # networks of the address served (see _answers)
        self._limited = next((sock for sock, address in zip(self.sockets, bound) if address == LIMITED_BROADCAST),
                             None)
        self._served_networks = _networks_of(addresses[0]) if self._limited is not None else []
        self.locationStr = f"{addresses[0] or '0.0.0.0'}:{port}"
        log.info("name server broadcast responder on %s", ", ".join(f"{a or '0.0.0.0'}:{port}" for a in addresses))

    @staticmethod
    def _bind(address: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # no SO_REUSEADDR: a second responder on the same port is an error, not a silent share
        try:
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            raise CommunicationError(f"cannot bind the broadcast responder to {address or '0.0.0.0'}:{port}: "
                                     f"{exc.strerror or exc} (another name server? use another bcport or "
                                     "no broadcast)") from None
        sock.setblocking(False)
        return sock

    def reply_for(self, peer: str) -> bytes:
        uri = URI(self.ns_uri)
        if self.wildcard:
            local = _local_address_towards(peer)
            if local:
                uri.host = local  # the address of the interface that faces the asker
        return str(uri).encode("iso-8859-1")

    def events(self, eventsockets: Iterable[socket.socket]) -> None:
        """Answer the queries waiting on these (readable) sockets."""
        for sock in eventsockets:
            if sock is not self._wake_r:
                while self._answer_one(sock):
                    pass

    def _answer_one(self, sock: socket.socket) -> bool:
        """Answer the next query waiting on `sock`; False when none waits."""
        try:
            data, addr = sock.recvfrom(NS_BROADCAST_MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False  # e.g. an ICMP error of an earlier reply, or closed meanwhile
        if data != NS_BROADCAST_REQUEST or not self._answers(sock, addr[0]):
            return True
        try:
            sock.sendto(self.reply_for(addr[0]), addr)
            log.debug("answered GET_NSURI from %s", addr[0])
        except OSError as exc:
            log.debug("cannot answer %s: %s", addr, exc)
        return True

    def _answers(self, sock: socket.socket, peer: str) -> bool:
        if sock is not self._limited:
            return True
        try:
            return any(ipaddress.IPv4Address(peer) in network for network in self._served_networks)
        except ValueError:
            return False

    def run_in_thread(self) -> threading.Thread:
        """Answer queries from a daemon thread until close()."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ns-broadcast", daemon=True)
            self._thread.start()
        return self._thread

    def _loop(self) -> None:
        while not self._closed:
            try:
                readable, _, _ = select.select([*self.sockets, self._wake_r], [], [], NS_BROADCAST_POLL)
            except (OSError, ValueError):
                break  # closed meanwhile
            if self._closed:
                break
            self.events(readable)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(NS_BROADCAST_POLL + 1)
        for sock in self.sockets:
            sock.close()
        if self._poll is not None:
            self._poll.close()
        self._wake_r.close()
        self._wake_w.close()

    # --- Pyro5's names for the same things
    runInThread = run_in_thread

    @property
    def nsUri(self) -> URI:
        return self.ns_uri

    @property
    def sock(self) -> socket.socket:
        """The first (main) responder socket."""
        return self.sockets[0]

    def fileno(self) -> int:
        """For select(): with several responder sockets, an epoll descriptor that is readable while any
        of them is (Linux), so a loop that selects on the server itself (as Pyro5 programs do) and then
        calls processRequest() hears queries on every address; else the main socket."""
        if len(self.sockets) == 1 or not hasattr(select, "epoll"):
            return self.sockets[0].fileno()
        if self._poll is None:
            self._poll = select.epoll()
            for sock in self.sockets:
                self._poll.register(sock.fileno(), select.EPOLLIN)
        return self._poll.fileno()

    def getPort(self) -> int:
        return self.port

    def processRequest(self) -> None:
        """Answer one waiting query, as Pyro5's does (for a select loop that saw the server readable: one
        still waiting keeps it readable, so the loop comes back for it)."""
        any(self._answer_one(sock) for sock in self.sockets)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<meshrpc.naming.BroadcastServer {self.locationStr} -> {self.ns_uri}>"


def broadcast_locate(host: str, port: int, tries: int = NS_BROADCAST_TRIES,
                     interval: float = NS_BROADCAST_INTERVAL, timeout: float | None = None) -> URI | None:
    """Ask for a name server with GET_NSURI on the addresses of host (broadcast_targets), `tries`
    rounds `interval` seconds apart; the first valid answer, or None. timeout: seconds all rounds may
    take together (the rounds come closer, so a lost datagram is still asked again)."""
    if timeout is not None:
        interval = min(interval, max(timeout, 0.0) / max(tries, 1))
    targets = broadcast_targets(host)
    if not targets:
        log.debug("no broadcast targets for host %r", host)
        return None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for _ in range(tries):
            sent = 0
            for target in targets:
                try:
                    sock.sendto(NS_BROADCAST_REQUEST, (target, port))
                    sent += 1
                except OSError as exc:
                    log.debug("cannot send GET_NSURI to %s:%d: %s", target, port, exc)
            if not sent:
                return None
            deadline = time.monotonic() + interval
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    data, addr = sock.recvfrom(NS_BROADCAST_MAX_DATAGRAM * 20)
                except TimeoutError:
                    break
                except OSError:
                    continue  # ICMP port unreachable from a target without responder (Linux reports it)
                try:
                    uri = URI(data.decode("iso-8859-1"))
                except ValueError:
                    continue
                if uri.is_direct:
                    log.debug("name server %s answered the broadcast from %s", uri, addr[0])
                    return uri
        return None
    finally:
        sock.close()


__all__ = ["BroadcastServer", "broadcast_locate", "broadcast_targets", "responder_addresses"]
