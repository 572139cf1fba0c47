"""Keeps a daemon's named objects in etcd: one key per object, all bound to one lease kept alive.

`register()` builds (and, under a mesh key, signs) the entry at once and never waits for the network;
a background thread writes it, keeps the lease alive every ETCD_KEEPALIVE_INTERVAL seconds (the only
writes while nothing changes) and, when the lease was lost (etcd unreachable longer than its TTL),
takes a new one and writes every key again. `close()` revokes the lease: all the daemon's keys go at
once. After a crash (kill -9) the lease expires within ETCD_LEASE_TTL seconds and etcd deletes them.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
import time

from ..config import Settings
from ..errors import NamingError
from ..mesh import records
from ..mesh.records import Entry
from ..uri import URI
from ..limits import ETCD_TXN_OPS
from ..wire.constants import MESH_MAX_OTHER_HOSTS
from . import entries
from .gateway import Gateway

log = logging.getLogger("meshrpc.etcd")


class EtcdRegistrar:
    def __init__(self, settings: Settings, bind_host: str = "", gateway: Gateway | None = None) -> None:
        self.settings = settings.copy()
        self.realm = self.settings.REALM
        records.check_realm(self.realm)
        self.prefix = entries.realm_prefix(self.settings)
        self.node = self.settings.MESH_NODE_ID or secrets.token_hex(6)
        records.check_node(self.node)
        self.incarnation = time.time_ns() // 1_000_000
        self.bind_host = bind_host
        self.gateway = gateway or Gateway(self.settings)
        self._version = 0
        self._lock = threading.Lock()
        self._wanted: dict[tuple[str, str], tuple[bytes, bytes]] = {}   # (name, uri) -> (key, value)
        self._written: dict[bytes, bytes] = {}                            # what etcd holds under our lease
        self._stale_keys: set[bytes] = set()                              # withdrawn, still to delete
        self._lease = 0
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._warned = False
        self.writes = 0                                                   # etcd write requests made
        self._thread = threading.Thread(target=self._run, name="meshrpc-etcd-registrar", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- daemon-facing API

    def register(self, name: str, uri: str, metadata: frozenset[str] | set[str]) -> None:
        """Write name -> uri (again: update it) in the background; NamingError for what cannot be written."""
        advertised, others = self._advertised(uri)
        with self._lock:
            self._version += 1
            entry = records.make_entry(realm=self.realm, name=name, uri=advertised, metadata=metadata,
                                       node=self.node, incarnation=self.incarnation, version=self._version,
                                       other_hosts=others)
            entry = self._sign(entry)
            key = entries.key_for(self.prefix, entry)
            old = self._wanted.get((name, str(URI(uri))))
            if old is not None and old[0] != key:
                self._stale_keys.add(old[0])
            self._wanted[(name, str(URI(uri)))] = (key, entries.encode_value(entry))
            self._stale_keys.discard(key)
        self._kick.set()

    def withdraw(self, name: str, uri: str) -> None:
        try:
            canonical = str(URI(uri))
        except (ValueError, TypeError):
            return
        with self._lock:
            item = self._wanted.pop((name, canonical), None)
            if item is not None:
                self._stale_keys.add(item[0])
        self._kick.set()

    def close(self) -> None:
        """Revoke the lease (every key of this daemon goes at once) and stop; bounded."""
        self._stop.set()
        self._kick.set()
        self._thread.join(self.settings.ETCD_TIMEOUT * len(self.gateway.target.members) + 1)
        self.gateway.close()

    def written(self) -> int:
        with self._lock:
            return len(self._written)

    # ---------------------------------------------------------------- the background thread

    def _run(self) -> None:
        next_keepalive = 0.0
        while True:
            timeout = max(0.0, next_keepalive - time.monotonic()) if self._lease else self.settings.ETCD_RETRY_INTERVAL
            self._kick.wait(timeout)
            self._kick.clear()
            if self._stop.is_set():
                self._revoke()
                return
            try:
                if self._lease and time.monotonic() >= next_keepalive:
                    if self.gateway.keepalive(self._lease) <= 0:
                        log.warning("etcd: lease of node %s expired; writing its %d names again", self.node,
                                    len(self._wanted))
                        self._lease_lost()
                    next_keepalive = time.monotonic() + self.settings.ETCD_KEEPALIVE_INTERVAL
                    self.writes += 1
                with self._lock:
                    pending = bool(self._stale_keys) or any(self._written.get(k) != v for k, v in self._wanted.values())
                if pending:
                    if not self._lease:
                        self._lease = self.gateway.grant(self.settings.ETCD_LEASE_TTL)
                        self.writes += 1
                        next_keepalive = time.monotonic() + self.settings.ETCD_KEEPALIVE_INTERVAL
                    self._sync()
                if self._warned:
                    log.info("etcd: names of node %s registered again", self.node)
                    self._warned = False
            except NamingError as exc:
                if not self._warned:
                    log.warning("etcd: cannot register names (will retry every %g s): %s",
                                self.settings.ETCD_RETRY_INTERVAL, exc)
                    self._warned = True
                next_keepalive = time.monotonic() + self.settings.ETCD_RETRY_INTERVAL
                self._kick.clear()
            except Exception:  # noqa: BLE001 - the registrar must keep going
                log.exception("etcd: registration failed")
                next_keepalive = time.monotonic() + self.settings.ETCD_RETRY_INTERVAL

    def _sync(self) -> None:
        with self._lock:
            stale = list(self._stale_keys)
            wanted = [(k, v) for k, v in self._wanted.values() if self._written.get(k) != v]
        for key in stale:
            self.gateway.delete(key)
            self.writes += 1
            with self._lock:
                self._stale_keys.discard(key)
                self._written.pop(key, None)
        if wanted:
            self.gateway.put_many(wanted, self._lease)
            self.writes += -(-len(wanted) // ETCD_TXN_OPS)
            with self._lock:
                self._written.update(wanted)

    def _lease_lost(self) -> None:
        self._lease = 0
        with self._lock:
            self._written.clear()         # etcd deleted them with the lease

    def _revoke(self) -> None:
        if not self._lease:
            return
        try:
            self.gateway.revoke(self._lease)
        except NamingError as exc:
            log.warning("etcd: could not revoke the lease of node %s (its names expire within %d s): %s",
                        self.node, self.settings.ETCD_LEASE_TTL, exc)
        self._lease = 0

    # ---------------------------------------------------------------- internals

    def _sign(self, entry: Entry) -> Entry:
        if not self.settings.KEY:
            return entry
        from ..mesh import auth
        return auth.sign(self.settings.KEY, entry)  # type: ignore[return-value]

    def _advertised(self, uri: str) -> tuple[str, list[str]]:
        """A daemon bound to every interface: a URI peers can use and its other addresses (as the mesh)."""
        try:
            parsed = URI(uri)
        except (ValueError, TypeError) as exc:
            raise NamingError(f"cannot register {uri!r}: {exc}") from None
        from ..mesh import net
        if parsed.sockname or not self.bind_host or not net.is_wildcard(self.bind_host, self.settings.INTERFACES):
            return str(parsed), []
        addresses = [a for a in net.interfaces_for(self.bind_host, self.settings.INTERFACES)
                     if not ipaddress.IPv4Address(a).is_loopback]
        host = parsed.host
        if addresses and (host in ("0.0.0.0", "") or _is_loopback(host)):
            parsed = URI.from_parts(parsed.object, addresses[0], parsed.port)
            host = addresses[0]
        return str(parsed), [a for a in addresses if a != host][:MESH_MAX_OTHER_HOSTS]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return host == "localhost"
