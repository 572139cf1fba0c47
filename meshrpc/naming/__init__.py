"""The fallback name server: Pyro5's name-server API and broadcast discovery (docs/nameserver.md).

    uri, daemon, bcserver = start_ns(host="127.0.0.1", port=0, storage="sql:/var/lib/ns.db")
    ns = locate_ns()                      # a connected proxy for some name server
    resolve_ns(URI("PYRONAME:x"), settings)   # -> URI | None, for meshrpc.resolve
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..config import Settings
from ..config import config as default_config
from ..uri import URI
from .broadcast import BroadcastServer, broadcast_locate
from ..wire.constants import NAMESERVER_NAME
from .locate import forget_located, locate_ns, resolve_ns
from .server import AutoCleaner, NameServer, NameServerDaemon
from .storage import MemoryStorage, SqliteStorage, Storage, open_storage

log = logging.getLogger("meshrpc.naming")


def start_ns(host: str | None = None, port: int | None = None, bcport: int | None = None,
             storage: str | Storage = "memory", settings: Settings | None = None, enable_broadcast: bool = True,
             *, autoclean: float | None = None, autoclean_misses: int | None = None, announce: bool = False,
             bridge: bool = False, nathost: str | None = None, natport: int | None = None
             ) -> tuple[URI, NameServerDaemon, BroadcastServer | None]:
    """Create a name server: (its URI, its daemon, its broadcast responder or None).

    Nothing runs yet: call `daemon.requestLoop()` (or use `daemon.sockets`/`events`) and
    `bcserver.run_in_thread()` (or `bcserver.sockets`/`events`). host defaults to NS_HOST (or HOST),
    port to NS_PORT, bcport to NS_BCPORT; port 0 and bcport 0 pick free ports. storage: "memory",
    "sql:PATH" or a Storage. autoclean: seconds between liveness sweeps (default NS_AUTOCLEAN
    when that setting exists, else 0 = off). announce: also publish the name server on the mesh.
    bridge: mirror the mesh (what the name server hears by mDNS) into the name server.
    There is no broadcast responder for IPv6 name servers."""
    settings = settings or default_config
    daemon = NameServerDaemon(host, port, storage, settings=settings, autoclean=autoclean,
                              autoclean_misses=autoclean_misses, announce=announce, bridge=bridge,
                              nathost=nathost, natport=natport)
    uri = daemon.uriFor(NAMESERVER_NAME)
    bcserver = None
    if enable_broadcast:
        bind_host = settings.NS_BCHOST or (host if host is not None else (settings.NS_HOST or settings.HOST))
        try:
            if ":" in bind_host.strip("[]"):
                log.info("no broadcast responder for the IPv6 name server %s", uri)
            else:
                bcserver = BroadcastServer(daemon.uriFor(NAMESERVER_NAME, nat=False), bind_host,
                                           settings.NS_BCPORT if bcport is None else bcport)
        except BaseException:
            daemon.close()
            raise
    return uri, daemon, bcserver


def start_ns_loop(host: str | None = None, port: int | None = None, bcport: int | None = None,
                  storage: str | Storage = "memory", settings: Settings | None = None,
                  enable_broadcast: bool = True, loop_condition: Callable[[], bool] = lambda: True,
                  **options: object) -> None:
    """Run a name server until `daemon.shutdown()` or loop_condition() turns false; closes it all."""
    uri, daemon, bcserver = start_ns(host, port, bcport, storage, settings, enable_broadcast,
                                     **options)  # type: ignore[arg-type]
    try:
        if bcserver is not None:
            bcserver.run_in_thread()
        log.info("name server running: %s", uri)
        daemon.requestLoop(loop_condition)
    finally:
        daemon.close()
        if bcserver is not None:
            bcserver.close()


__all__ = [
    "AutoCleaner", "BroadcastServer", "MemoryStorage", "NameServer", "NameServerDaemon", "SqliteStorage", "Storage",
    "broadcast_locate", "forget_located", "locate_ns", "open_storage", "resolve_ns", "start_ns", "start_ns_loop",
]
