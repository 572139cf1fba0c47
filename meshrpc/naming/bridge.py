"""The mesh bridge: a name server mirrors what it hears on its mesh.

Clients on another subnet (multicast does not cross routers) that reach only the name server can
then resolve mesh services through it. Mirrored entries follow the mesh: added and updated as
announcements arrive, moved to another replica or removed when a provider leaves. Entries that
clients registered directly are never overwritten or removed by the bridge.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..config import Settings
from ..wire.constants import NAMESERVER_NAME
from .server import NameServer

log = logging.getLogger("meshrpc.naming")


class MeshBridge:
    def __init__(self, nameserver: NameServer, settings: Settings) -> None:
        from ..mesh import get_registry
        self.nameserver = nameserver
        self.registry = get_registry(settings)
        self._mirrored: dict[str, str] = {}  # name -> the URI this bridge put in the name server
        self._lock = threading.Lock()
        self._unsubscribe = self.registry.subscribe(self._on_event)
        for entry in self.registry.list():  # the first query starts the browser
            self._sync(entry.name)
        log.info("name server mirrors the mesh (realm %r)", self.registry.realm)

    def _on_event(self, event: str, entry: Any) -> None:
        try:
            self._sync(entry.name)
        except Exception:  # a storage hiccup must not stop the mirror (nor the registry's callbacks)
            log.exception("mirroring %s failed", entry.name)

    def _sync(self, name: str) -> None:
        if name == NAMESERVER_NAME:
            return
        storage = self.nameserver.storage
        providers = self.registry.lookup(name)
        with self._lock:
            current = storage.get(name)
            mine = self._mirrored.get(name)
            if current is not None and (mine is None or current[0] != mine):
                self._mirrored.pop(name, None)  # registered directly by someone: theirs, not ours
                return
            if providers:
                keep = next((p for p in providers if p.uri == mine), providers[0])
                if keep.uri != mine or current is None or set(current[1]) != set(keep.metadata):
                    storage.put(name, keep.uri, keep.metadata)
                    self._mirrored[name] = keep.uri
                    log.debug("mirrored %s -> %s", name, keep.uri)
            elif mine is not None:
                storage.remove_entries([(name, mine)])
                del self._mirrored[name]
                log.debug("removed mirrored %s", name)

    @property
    def mirrored(self) -> dict[str, str]:
        with self._lock:
            return dict(self._mirrored)

    def close(self) -> None:
        """Stop mirroring and take the mirrored entries out (they would go stale)."""
        self._unsubscribe()
        with self._lock:
            entries, self._mirrored = list(self._mirrored.items()), {}
        if entries:
            self.nameserver.storage.remove_entries(entries)
