"""MeshPublisher: what a daemon uses to announce its objects on the mesh."""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Iterable

from zeroconf import ServiceInfo

from ..config import Settings
from ..errors import NamingError
from ..uri import URI
from ..wire.constants import MESH_MAX_OTHER_HOSTS, MESH_SERVICE_TYPE
from . import net, records
from .discovery import Discovery, get_discovery
from .records import Entry

log = logging.getLogger("meshrpc.mesh")

_claimed_nodes: set[str] = set()
_claimed_lock = threading.Lock()


class MeshPublisher:
    """Announces (name, uri, metadata) for one daemon (one mesh *node*). Thread-safe.

    Creating one is cheap and touches no network; the process's Zeroconf starts at the first
    publish. One node id per publisher, one heartbeat per node, whatever the number of objects.
    """

    def __init__(self, bind_host: str, settings: Settings) -> None:
        self.settings = settings.copy()
        self.bind_host = bind_host
        self.realm = self.settings.REALM
        records.check_realm(self.realm)
        self.node = _claim_node_id(self.settings.MESH_NODE_ID)
        # wall-clock milliseconds: a restarted daemon (same node id) announces a newer incarnation
        self.incarnation = time.time_ns() // 1_000_000
        self._version = 0
        self._lock = threading.RLock()
        # keyed by (name, uri as the daemon gave it); the entry holds the uri as advertised (see _advertised)
        self._published: dict[tuple[str, str], tuple[Entry, ServiceInfo]] = {}
        self._own_hosts: set[str] = set()     # wildcard-bound: daemon URI hosts that were this machine's
        self._discovery: Discovery | None = None
        self._closed = False
        self._dynamic = net.is_wildcard(bind_host, self.settings.INTERFACES)
        self._fixed_interfaces: list[str] | None = None
        self._fixed_addresses: list[str] | None = None

    # ---------------------------------------------------------------- daemon-facing API

    def publish(self, name: str, uri: str, metadata: set[str] | frozenset[str]) -> None:
        """Announce name -> uri with metadata tags (again: update the tags). NamingError if it cannot
        be announced (bad input, TXT over MESH_TXT_MAX). Returns within about MESH_PUBLISH_TIMEOUT.

        A daemon bound to 0.0.0.0 whose URI names a loopback address, or an address this machine no
        longer has (renumbered), is announced under a current interface address (see _advertised)."""
        with self._lock:
            if self._closed:
                raise NamingError("this mesh publisher is closed")
            try:
                given = _canonical(uri)
            except NamingError:
                given = uri                            # make_entry() says what is wrong with it
            key = (name, given)
            previous = self._published.get(key)
            self._remember_own_host(given)
            advertised = self._advertised(given, previous[0].uri if previous else None)
            entry, txt = self._new_entry(name, advertised, metadata, self._other_hosts(advertised))
            discovery = self._attach()
            previous = self._published.get(key)        # _attach() forgets everything after a reset
            info = self._service_info(entry, txt)
            if previous is not None and previous[0].uri == entry.uri:
                discovery.update(info, self.settings.MESH_PUBLISH_TIMEOUT)
            else:
                discovery.register(info, self.settings.MESH_PUBLISH_TIMEOUT)
                if previous is not None:               # advertised under another address before
                    discovery.unregister([previous[1]], None)
            self._published[key] = (entry, info)
            discovery.start_heartbeat(self.realm, self.node, self.incarnation, self.settings)
            self._update_index(discovery)
            discovery.announce_again(info.name, self.settings.MESH_ANNOUNCE_REPEATS)
        if previous is not None and previous[0].uri != entry.uri:
            discovery.local_feed(previous[0], goodbye=True)
        discovery.local_feed(entry)
        log.debug("mesh: published %s -> %s as %s", name, entry.uri, info.name)

    def register(self, name: str, uri: str, tags: frozenset[str]) -> None:
        """publish(), in the shape of a daemon's announcers (server/hooks.py)."""
        self.publish(name, uri, set(tags))

    def withdraw(self, name: str, uri: str) -> None:
        """Goodbye for one object (no-op if it was not published)."""
        try:
            key = (name, _canonical(uri))
        except NamingError:
            return
        with self._lock:
            item = self._published.pop(key, None)
            discovery = self._discovery
            if item is None or discovery is None:
                return
            if not self._published:
                discovery.stop_heartbeat(self.node, goodbye=False)   # nothing left to vouch for
            else:
                self._update_index(discovery)
        discovery.unregister([item[1]], self.settings.MESH_GOODBYE_TIMEOUT)
        discovery.local_feed(item[0], goodbye=True)

    def close(self) -> None:
        """Goodbyes for all objects, heartbeats stop. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            items = list(self._published.values())
            self._published.clear()
            discovery = self._discovery
        try:
            if discovery is not None and not discovery.closed:
                discovery.stop_heartbeat(self.node, goodbye=True)
                discovery.unregister([info for _, info in items], self.settings.MESH_GOODBYE_TIMEOUT)
                for entry, _ in items:
                    discovery.local_feed(entry, goodbye=True)
                discovery.release(self)
        finally:
            _release_node_id(self.node)

    # ---------------------------------------------------------------- used by discovery

    def entries(self) -> list[Entry]:
        with self._lock:
            return [entry for entry, _ in self._published.values()]

    def refresh_addresses(self) -> None:
        """Interfaces changed: re-announce with the current addresses (wildcard-bound daemons).

        An object whose advertised URI host is no longer an address of this machine moves to a current
        one: the new URI is announced (newer version) and the old one gets a goodbye."""
        if not self._dynamic:
            return
        moved: list[tuple[Entry, Entry]] = []
        changed: list[Entry] = []
        with self._lock:
            discovery = self._discovery
            if discovery is None or self._closed or discovery.closed:
                return
            for key, (entry, info) in list(self._published.items()):
                advertised = self._advertised(key[1], entry.uri)
                other_hosts = self._other_hosts(advertised)
                if advertised == entry.uri and tuple(other_hosts) == entry.other_hosts:
                    fresh = self._service_info(entry, info.text)
                    self._published[key] = (entry, fresh)
                    discovery.update(fresh, None)
                    continue
                try:
                    new, txt = self._new_entry(entry.name, advertised, entry.metadata, other_hosts)
                    fresh = self._service_info(new, txt)
                except NamingError as exc:   # a longer address may not fit MESH_TXT_MAX
                    log.warning("mesh: cannot move %s to %s: %s", entry.name, advertised, exc)
                    continue
                self._published[key] = (new, fresh)
                if advertised == entry.uri:            # the same URI, other addresses: a newer version
                    log.info("mesh: %s now also reachable at %s", entry.name, ", ".join(other_hosts) or "-")
                    discovery.update(fresh, None)
                    changed.append(new)
                    continue
                log.info("mesh: %s moved from %s to %s (interface change)", entry.name, entry.uri, advertised)
                discovery.register(fresh, None)        # new address first: no gap for receivers
                discovery.unregister([info], None)
                moved.append((entry, new))
            if moved or changed:
                self._update_index(discovery)
        for old, new in moved:
            discovery.local_feed(old, goodbye=True)
            discovery.local_feed(new)
        for new in changed:
            discovery.local_feed(new)

    # ---------------------------------------------------------------- internals

    def _new_entry(self, name: str, uri: str, metadata: Iterable[str],
                   other_hosts: list[str]) -> tuple[Entry, bytes]:
        """Lock held. The next version of an entry, signed with a mesh key, and its TXT bytes;
        NamingError when it cannot be sent (bad input, TXT over MESH_TXT_MAX)."""
        self._version += 1
        entry = records.make_entry(realm=self.realm, name=name, uri=uri, metadata=metadata,
                                   node=self.node, incarnation=self.incarnation, version=self._version,
                                   last_seen=time.monotonic(), other_hosts=other_hosts)
        entry = self._sign(entry)
        return entry, records.encode_entry(entry, self.settings.MESH_TXT_MAX)

    def _update_index(self, discovery: Discovery) -> None:
        """Lock held. The (instance label, version) of every object, for the heartbeat's digest and
        the node's index (anti-entropy: docs/mesh.md)."""
        items = [(records.label_of(info.name) or "", entry.version) for entry, info in self._published.values()]
        discovery.set_index(self.node, self._version, items)

    def _sign(self, entry: Entry) -> Entry:
        """With a mesh key (KEY): the entry with its authenticator (docs/security.md)."""
        if not self.settings.KEY:
            return entry
        from . import auth
        return auth.sign(self.settings.KEY, entry)  # type: ignore[return-value]

    def _attach(self) -> Discovery:
        """Lock held. The current process discovery, with our interfaces included."""
        discovery = get_discovery(self.settings)
        if discovery is not self._discovery:          # first use, or the mesh was reset meanwhile
            self._published.clear()
            self._discovery = discovery
        discovery.zeroconf(self, self._interfaces)
        discovery.add_publisher(self)
        return discovery

    def _remember_own_host(self, uri: str) -> None:
        """Lock held. A wildcard-bound daemon's URI host that is an address of this machine now."""
        if not self._dynamic:
            return
        host = _ipv4_host(uri)
        if host is not None and host not in self._own_hosts and host in net.ipv4_addresses():
            self._own_hosts.add(host)

    def _advertised(self, uri: str, current: str | None = None) -> str:
        """Lock held. The URI to announce for a daemon URI `uri` (canonical).

        Unchanged unless the daemon is bound to 0.0.0.0 (without INTERFACES) and its URI names an IPv4
        address that peers cannot use: a loopback address while announcing on a LAN interface, or
        one of this machine's addresses that it no longer has. Then the host becomes the current
        advertised one if still valid, else the first interface address; object id and port stay
        (the daemon listens on every address). NAT hosts, host names and IPv6 stay as given."""
        host = _ipv4_host(uri) if self._dynamic else None
        if host is None:
            return uri
        addresses = self._interfaces()
        if host in addresses:
            return uri
        if not (ipaddress.IPv4Address(host).is_loopback or host in self._own_hosts):
            return uri
        if current is not None and current != uri and _ipv4_host(current) in addresses:
            return current
        parsed = URI(uri)
        return str(URI.from_parts(parsed.object, addresses[0], parsed.port))

    def _other_hosts(self, uri: str) -> list[str]:
        """Lock held. A daemon bound to every interface listens on all of them: its other IPv4
        interface addresses, so peers on those networks can reach it (records.Entry.other_hosts)."""
        host = _ipv4_host(uri) if self._dynamic else None
        if host is None:
            return []
        others = [address for address in self._interfaces()
                  if address != host and not ipaddress.IPv4Address(address).is_loopback]
        return others[:MESH_MAX_OTHER_HOSTS]

    def _interfaces(self) -> list[str]:
        if self._dynamic:
            return net.interfaces_for(self.bind_host, self.settings.INTERFACES)
        if self._fixed_interfaces is None:              # may resolve a host name: only once
            self._fixed_interfaces = net.interfaces_for(self.bind_host, self.settings.INTERFACES)
        return self._fixed_interfaces

    def _addresses(self) -> list[str]:
        if self._dynamic:
            return net.addresses_for(self.bind_host, self._interfaces())
        if self._fixed_addresses is None:               # may resolve a host name: only once
            self._fixed_addresses = net.addresses_for(self.bind_host, self._interfaces())
        return self._fixed_addresses

    def _service_info(self, entry: Entry, txt: bytes) -> ServiceInfo:
        uri = URI(entry.uri)
        return ServiceInfo(
            MESH_SERVICE_TYPE, records.service_name(records.instance_label(entry)),
            port=uri.port or 0, properties=txt, server=records.server_name(self.node),
            host_ttl=self.settings.MESH_HOST_TTL, other_ttl=self.settings.MESH_OTHER_TTL,
            parsed_addresses=self._addresses())

    def __repr__(self) -> str:
        return f"<MeshPublisher node={self.node} realm={self.realm!r} objects={len(self._published)}>"


def _canonical(uri: str) -> str:
    try:
        return str(URI(uri))
    except (ValueError, TypeError) as exc:
        raise NamingError(f"cannot publish {uri!r}: {exc}") from None


def _ipv4_host(uri: str) -> str | None:
    """The host of a PYRO TCP uri if it is an IPv4 address, else None."""
    try:
        parsed = URI(uri)
        if parsed.sockname or not parsed.host:
            return None
        return str(ipaddress.IPv4Address(parsed.host))
    except ValueError:
        return None


def _claim_node_id(configured: str) -> str:
    """A node id unique in this process: the configured one (suffixed if taken) or a random one."""
    with _claimed_lock:
        if configured:
            records.check_node(configured)
            candidate, n = configured, 1
            while candidate in _claimed_nodes:
                n += 1
                candidate = f"{configured[:28]}-{n}"
        else:
            candidate = secrets.token_hex(6)
            while candidate in _claimed_nodes:
                candidate = secrets.token_hex(6)
        _claimed_nodes.add(candidate)
        return candidate


def _release_node_id(node: str) -> None:
    with _claimed_lock:
        _claimed_nodes.discard(node)
