"""MeshPublisher: what a daemon uses to announce its objects on the mesh."""

from __future__ import annotations

import logging
import secrets
import threading
import time

from zeroconf import ServiceInfo

from ..config import Settings
from ..errors import NamingError
from ..uri import URI
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
        self._published: dict[tuple[str, str], tuple[Entry, ServiceInfo]] = {}
        self._discovery: Discovery | None = None
        self._closed = False
        self._dynamic = net.is_wildcard(bind_host, self.settings.INTERFACES)
        self._fixed_interfaces: list[str] | None = None
        self._fixed_addresses: list[str] | None = None

    # ---------------------------------------------------------------- daemon-facing API

    def publish(self, name: str, uri: str, metadata: set[str] | frozenset[str]) -> None:
        """Announce name -> uri with metadata tags (again: update the tags). NamingError if it cannot
        be announced (bad input, TXT over MESH_TXT_MAX). Returns within about MESH_PUBLISH_TIMEOUT."""
        with self._lock:
            if self._closed:
                raise NamingError("this mesh publisher is closed")
            self._version += 1
            entry = records.make_entry(realm=self.realm, name=name, uri=uri, metadata=metadata,
                                       node=self.node, incarnation=self.incarnation,
                                       version=self._version, last_seen=time.monotonic())
            txt = records.encode_entry(entry, self.settings.MESH_TXT_MAX)   # refuses oversize early
            discovery = self._attach()
            info = self._service_info(entry, txt)
            if entry.key in self._published:
                discovery.update(info, self.settings.MESH_PUBLISH_TIMEOUT)
            else:
                discovery.register(info, self.settings.MESH_PUBLISH_TIMEOUT)
            self._published[entry.key] = (entry, info)
            discovery.start_heartbeat(self.realm, self.node, self.incarnation, self.settings)
        discovery.local_feed(entry)
        log.debug("mesh: published %s -> %s as %s", name, entry.uri, info.name)

    def withdraw(self, name: str, uri: str) -> None:
        """Goodbye for one object (no-op if it was not published)."""
        try:
            key = (name, str(URI(uri)))
        except (ValueError, TypeError):
            return
        with self._lock:
            item = self._published.pop(key, None)
            discovery = self._discovery
            if item is None or discovery is None:
                return
            if not self._published:
                discovery.stop_heartbeat(self.node, goodbye=False)   # nothing left to vouch for
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
        """Interfaces changed: re-announce with the current addresses (wildcard-bound daemons)."""
        if not self._dynamic:
            return
        with self._lock:
            discovery = self._discovery
            if discovery is None or self._closed:
                return
            for key, (entry, info) in list(self._published.items()):
                fresh = self._service_info(entry, info.text)
                self._published[key] = (entry, fresh)
                discovery.update(fresh, None)

    # ---------------------------------------------------------------- internals

    def _attach(self) -> Discovery:
        """Lock held. The current process discovery, with our interfaces included."""
        discovery = get_discovery(self.settings)
        if discovery is not self._discovery:          # first use, or the mesh was reset meanwhile
            self._published.clear()
            self._discovery = discovery
        discovery.zeroconf(self, self._interfaces)
        discovery.add_publisher(self)
        return discovery

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
            records.SERVICE_TYPE, records.service_name(records.instance_label(entry)),
            port=uri.port or 0, properties=txt, server=records.server_name(self.node),
            host_ttl=self.settings.MESH_HOST_TTL, other_ttl=self.settings.MESH_OTHER_TTL,
            parsed_addresses=self._addresses())

    def __repr__(self) -> str:
        return f"<MeshPublisher node={self.node} realm={self.realm!r} objects={len(self._published)}>"


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
