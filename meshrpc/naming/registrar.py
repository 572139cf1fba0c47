"""Keeps a daemon's named objects registered in a configured name server.

When NS_HOST is set (the name server is the way clients beyond the multicast reach find services),
daemons register every object they give a `name`, withdraw it on unregister and shutdown, and
register again every NS_REGISTER_REFRESH seconds, so a name server that restarted without storage
learns them back. All name-server traffic runs on a background thread: `register()` never waits
for the network.
"""

from __future__ import annotations

import logging
import threading

from ..config import Settings
from ..errors import MeshError
from ..limits import NS_REGISTRAR_CLOSE_TIMEOUT
from ..wire.constants import NAMESERVER_NAME

log = logging.getLogger("meshrpc.naming")


class NameServerRegistrar:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._wanted: dict[str, tuple[str, frozenset[str]]] = {}
        self._registered: dict[str, str] = {}  # name -> uri, as acknowledged by the name server
        self._withdrawn: dict[str, str] = {}
        self._lock = threading.Lock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="meshrpc-ns-registrar", daemon=True)
        self._thread.start()

    def register(self, name: str, uri: str, metadata: frozenset[str]) -> None:
        if name == NAMESERVER_NAME:
            return
        with self._lock:
            self._wanted[name] = (uri, frozenset(metadata))
            self._withdrawn.pop(name, None)
        self._kick.set()

    def withdraw(self, name: str, uri: str) -> None:
        with self._lock:
            if self._wanted.get(name, ("",))[0] == uri:
                del self._wanted[name]
            if self._registered.get(name) == uri:
                self._withdrawn[name] = uri
        self._kick.set()

    def registered(self) -> dict[str, str]:
        with self._lock:
            return dict(self._registered)

    def close(self) -> None:
        """Withdraw everything (bounded by NS_REGISTRAR_CLOSE_TIMEOUT) and stop."""
        with self._lock:
            self._withdrawn.update(self._registered)
            self._wanted.clear()
        self._stop.set()
        self._kick.set()
        self._thread.join(NS_REGISTRAR_CLOSE_TIMEOUT + 1)

    def _run(self) -> None:
        refresh = self.settings.NS_REGISTER_REFRESH
        while True:
            self._kick.wait(refresh)
            self._kick.clear()
            stopping = self._stop.is_set()
            try:
                self._sync(full=not stopping)
            except MeshError as exc:
                if not self._warned:
                    log.warning("cannot register names in the name server at %s:%d (will retry every %g s): %s",
                                self.settings.NS_HOST, self.settings.NS_PORT, refresh, exc)
                    self._warned = True
            except Exception:
                log.exception("name server registration failed")
            if stopping:
                return

    def _sync(self, full: bool) -> None:
        from .locate import locate_ns
        with self._lock:
            wanted = dict(self._wanted) if full else {}
            withdrawn = dict(self._withdrawn)
        if not wanted and not withdrawn:
            return
        settings = self.settings.copy(COMMTIMEOUT=self.settings.COMMTIMEOUT or NS_REGISTRAR_CLOSE_TIMEOUT)
        with locate_ns(self.settings.NS_HOST, self.settings.NS_PORT, broadcast=False, settings=settings) as ns:
            for name, uri in withdrawn.items():
                try:
                    current = ns.lookup(name)
                except MeshError:
                    current = None
                if current is not None and str(current) == uri:  # never remove what another daemon put there
                    ns.remove(name)
                with self._lock:
                    self._withdrawn.pop(name, None)
                    self._registered.pop(name, None)
            for name, (uri, tags) in wanted.items():
                ns.register(name, uri, metadata=set(tags))
                with self._lock:
                    if self._wanted.get(name, ("",))[0] == uri:
                        self._registered[name] = uri
        if self._warned:
            log.info("registered %d names in the name server again", len(wanted))
            self._warned = False
