"""Hooks that other packages plug into, so that server/ imports none of them: announcing named
registrations (the mesh, the name server), making proxies (client/) for Daemon.proxyFor, and
finding the name server (naming/) for serve(use_ns=True).

Announcers.

A daemon that registers an object with a `name` hands it to its announcers (the mesh publisher,
the name-server registrar, ...). server/ imports none of those packages: meshrpc/plugins.py
plugs their factories in here (meshrpc/__init__.py imports it; other announcers plug in the same
way), and a daemon creates its announcers from the factories on its first named registration, so
discovery is loaded only by daemons that use names.

An announcer has `register(name, uri, tags)`, `withdraw(name, uri)` and `close()` (goodbyes for
everything it announced; idempotent). A factory is `factory(bind_host, settings) -> announcer or
None` (None: not configured, e.g. no NS_HOST).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Protocol

log = logging.getLogger("meshrpc.server")


class Announcer(Protocol):
    def register(self, name: str, uri: str, tags: frozenset[str]) -> None: ...

    def withdraw(self, name: str, uri: str) -> None: ...

    def close(self) -> None: ...


AnnouncerFactory = Callable[[str, Any], "Announcer | None"]

# the plug-in table: (key, factory), in the order announcements go out. It holds code, not state:
# every daemon makes announcers of its own.
_factories: list[tuple[str, AnnouncerFactory]] = []
_factories_lock = threading.Lock()


def plug_in(key: str, factory: AnnouncerFactory) -> None:
    """Make every daemon announce through `factory` too (a second plug_in of `key` replaces it)."""
    with _factories_lock:
        _factories[:] = [(k, f) for k, f in _factories if k != key] + [(key, factory)]


def plugged_in() -> list[tuple[str, AnnouncerFactory]]:
    return list(_factories)


# ---------------------------------------------------------------- making proxies
ProxyFactory = Callable[[Any, Any], Any]  # (uri, settings) -> a proxy
_proxy_factory: list[ProxyFactory] = []


def plug_in_proxy_factory(factory: ProxyFactory) -> None:
    """How Daemon.proxyFor makes a proxy (meshrpc/plugins.py plugs client.Proxy in)."""
    _proxy_factory[:] = [factory]


def make_proxy(uri: Any, settings: Any) -> Any:
    if not _proxy_factory:
        raise RuntimeError("no proxy factory plugged in: import meshrpc first")
    return _proxy_factory[0](uri, settings)


class Announcers:
    """A daemon's announcers, created from the plugged-in factories on the first named registration."""

    def __init__(self, bind_host: str, settings: Any) -> None:
        self.bind_host = bind_host
        self.settings = settings
        self.active: dict[str, Announcer] = {}
        self.announced: dict[str, tuple[str, frozenset[str]]] = {}  # name -> (uri, tags), for late announcers
        self._started = False
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            for key, factory in plugged_in():
                announcer = factory(self.bind_host, self.settings)
                if announcer is not None:
                    self.active[key] = announcer
            self._started = True

    def register(self, name: str, uri: str, tags: frozenset[str]) -> None:
        self._start()
        with self._lock:
            self.announced[name] = (uri, tags)
        for announcer in list(self.active.values()):
            announcer.register(name, uri, tags)

    def withdraw(self, name: str, uri: str) -> None:
        with self._lock:
            if self.announced.get(name, ("",))[0] == uri:
                del self.announced[name]
        for announcer in list(self.active.values()):
            announcer.withdraw(name, uri)

    def add_name_server(self, host: str, port: int) -> None:
        """A name server found after the announcers started (serve() looks for one): its announcer
        ("nameserver") keeps every name announced so far, and later ones, registered there."""
        self._start()
        settings = self.settings.copy(NS_HOST=host, NS_PORT=port, NS_AUTOREGISTER=True)
        factory = dict(plugged_in()).get("nameserver")
        announcer = factory(self.bind_host, settings) if factory is not None else None
        if announcer is None:
            return
        with self._lock:
            previous = self.active.pop("nameserver", None)
            self.active["nameserver"] = announcer
            announced = dict(self.announced)
        if previous is not None:
            previous.close()
        for name, (uri, tags) in announced.items():
            announcer.register(name, uri, tags)

    def close(self) -> None:
        """Goodbyes from every announcer. Idempotent; one failing does not stop the others."""
        for announcer in list(self.active.values()):
            try:
                announcer.close()
            except Exception:
                log.exception("withdrawing announcements failed")


# ---------------------------------------------------------------- finding the name server
_name_server_locator: list[Callable[[Any], Any]] = []


def plug_in_name_server_locator(locate: Callable[[Any], Any]) -> None:
    """How serve(use_ns=True) finds the name server: locate(settings) -> a proxy to it."""
    _name_server_locator[:] = [locate]


def locate_name_server(settings: Any) -> Any:
    if not _name_server_locator:
        raise RuntimeError("no name-server locator plugged in: import meshrpc first")
    return _name_server_locator[0](settings)
