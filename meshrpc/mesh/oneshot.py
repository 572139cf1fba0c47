"""One-shot mDNS questions (RFC 6762 6.7): asked from an ephemeral port, answered at once by unicast.

Why not a multicast question: a responder multicasts a record at most once a second (RFC 6762 14),
so a registry whose answer was lost could ask again only a second later. Why not a QU question
from port 5353: its unicast answer goes to port 5353 of our host, which the kernel hands to just
one of the host's mDNS sockets (another meshrpc process, avahi). A question from a port of our own
is answered straight to that port, at once, by zeroconf and Avahi alike, however recently the
record was multicast. The answers go into zeroconf's record manager as if zeroconf had received
them, so its listeners feed the registries as for any other record.

Loop only: the sockets are non-blocking and read by reader callbacks on zeroconf's loop.
"""

from __future__ import annotations

import logging
import random
import socket
from collections import deque

from zeroconf import DNSIncoming, DNSOutgoing, DNSQuestion, Zeroconf

from ..limits import MESH_ONE_SHOT_RCVBUF, MESH_RECENT_QUESTION_IDS
from ..wire.constants import DNS_FLAGS_QUERY, MDNS_GROUP

log = logging.getLogger("meshrpc.mesh")


class OneShotAsker:
    """Sockets on ephemeral ports, one per IPv4 interface address; loop only."""

    def __init__(self, zc: Zeroconf) -> None:
        self._zc = zc
        self._sockets: dict[str, socket.socket] = {}
        self._ids: deque[int] = deque(maxlen=MESH_RECENT_QUESTION_IDS)
        self.answers = 0                  # answer packets taken in (for stats and tests)

    def ask(self, interfaces: list[str], chunks: list[list[DNSQuestion]]) -> bool:
        """Send each chunk of questions as one packet on every IPv4 interface of `interfaces`.
        False when no interface could be used (the caller asks by multicast instead)."""
        self._follow(interfaces)
        sent = False
        for chunk in chunks:
            # a fresh id per packet: responders drop a packet equal to one they saw in the last 0.8 s
            query_id = random.randrange(1, 0x10000)
            self._ids.append(query_id)
            out = DNSOutgoing(DNS_FLAGS_QUERY, False, query_id)
            for question in chunk:
                out.add_question(question)
            for address, sock in list(self._sockets.items()):
                try:
                    for packet in out.packets():
                        sock.sendto(packet, MDNS_GROUP)
                    sent = True
                except OSError as exc:        # the address went away: the next ask reopens what exists
                    log.debug("mesh: one-shot question on %s failed: %s", address, exc)
                    self._close(address)
        return sent

    def close(self) -> None:
        for address in list(self._sockets):
            self._close(address)

    def _follow(self, interfaces: list[str]) -> None:
        wanted = {address for address in interfaces if ":" not in address}
        for address in set(self._sockets) - wanted:
            self._close(address)
        for address in wanted - set(self._sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MESH_ONE_SHOT_RCVBUF)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
                sock.bind((address, 0))       # this interface only, an ephemeral port
                assert self._zc.loop is not None
                self._zc.loop.add_reader(sock.fileno(), self._read, sock)
            except OSError as exc:
                log.debug("mesh: no one-shot socket on %s: %s", address, exc)
                sock.close()
                continue
            self._sockets[address] = sock

    def _close(self, address: str) -> None:
        sock = self._sockets.pop(address, None)
        if sock is None:
            return
        try:
            if self._zc.loop is not None and not self._zc.loop.is_closed():
                self._zc.loop.remove_reader(sock.fileno())
        finally:
            sock.close()

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                data, source = sock.recvfrom(9000)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if source[1] != MDNS_GROUP[1]:
                continue                      # RFC 6762 11: mDNS answers come from port 5353
            message = DNSIncoming(data, source)
            if message.valid and message.is_response() and message.id in self._ids:
                self.answers += 1
                self._zc.record_manager.async_updates_from_response(message)
