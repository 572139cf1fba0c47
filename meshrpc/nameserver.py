"""Pyro5's `nameserver` module under meshrpc: `start_ns` and `start_ns_loop` with Pyro5's arguments,
the name-server classes, and `lookup`/`yplookup` that wait for a name to appear.

meshrpc's own entry points, with more options (autoclean, mesh announce, bridge, settings), are in
meshrpc.naming; these call them.
"""

from __future__ import annotations

import time
from typing import Any

from . import naming
from .config import Settings, config as default_config
from .errors import NamingError
from .limits import NAME_WAIT_PAUSE
from .naming import AutoCleaner, BroadcastServer, MemoryStorage, NameServer, NameServerDaemon, SqliteStorage
from .uri import URI

SqlStorage = SqliteStorage  # Pyro5's name (meshrpc's sqlite file has its own format)


def _settings_for(bchost: Any, settings: Settings | None) -> Settings:
    settings = settings or default_config
    if bchost:
        settings = settings.copy(NS_BCHOST=str(bchost))
    return settings


def start_ns(host: str | None = None, port: int | None = None, enableBroadcast: bool = True,
             bchost: str | None = None, bcport: int | None = None, unixsocket: str | None = None,
             nathost: str | None = None, natport: int | None = None, storage: str | None = None,
             *, settings: Settings | None = None) -> tuple[URI, NameServerDaemon, BroadcastServer | None]:
    """A name server, not running yet: (its URI, its daemon, its broadcast responder or None), as
    Pyro5's start_ns. Serve with `daemon.requestLoop()` and `bcserver.run_in_thread()`.
    storage: "memory" (default) or "sql:PATH". A Unix socket name server is not supported."""
    if unixsocket:
        raise NamingError("a name server on a Unix socket is not supported; give it a host and port")
    settings = _settings_for(bchost, settings)
    host = None if host is None else str(host)  # Pyro5 programs pass ipaddress objects too
    return naming.start_ns(host, port, bcport, storage or "memory", settings, enableBroadcast,
                           nathost=nathost, natport=natport)


def start_ns_loop(host: str | None = None, port: int | None = None, enableBroadcast: bool = True,
                  bchost: str | None = None, bcport: int | None = None, unixsocket: str | None = None,
                  nathost: str | None = None, natport: int | None = None, storage: str | None = None,
                  *, settings: Settings | None = None) -> None:
    """Run a name server until its daemon is shut down (Pyro5's arguments; see start_ns)."""
    if unixsocket:
        raise NamingError("a name server on a Unix socket is not supported; give it a host and port")
    settings = _settings_for(bchost, settings)
    host = None if host is None else str(host)
    naming.start_ns_loop(host, port, bcport, storage or "memory", settings, enableBroadcast,
                         nathost=nathost, natport=natport)


def lookup(nameserver: Any, name: str, return_metadata: bool = False, delay_time: float = 0.0) -> Any:
    """nameserver.lookup(name), retried for up to delay_time seconds while the name is unknown."""
    return _retrying(lambda: nameserver.lookup(name, return_metadata), delay_time)


def yplookup(nameserver: Any, meta_all: Any = None, meta_any: Any = None, return_metadata: bool = True,
             delay_time: float = 0.0) -> Any:
    """nameserver.yplookup(...), retried for up to delay_time seconds while nothing matches."""
    def ask() -> Any:
        found = nameserver.yplookup(meta_all, meta_any, return_metadata)
        if not found:
            raise NamingError("no registrations with the requested metadata")
        return found
    try:
        return _retrying(ask, delay_time)
    except NamingError:
        return {}


def _retrying(ask: Any, delay_time: float) -> Any:
    deadline = time.monotonic() + max(delay_time, 0.0)
    while True:
        try:
            return ask()
        except NamingError:
            if time.monotonic() + NAME_WAIT_PAUSE > deadline:
                raise
        time.sleep(NAME_WAIT_PAUSE)


def main(args: list[str] | None = None) -> int:
    """Pyro5's `nameserver.main(args)`: run the name server with command-line options (`-n HOST`,
    `-p PORT`, `-x`, ...; `meshrpc ns --help`) until Ctrl-C; the exit status."""
    from .cli.ns import main as ns_main
    return ns_main(args)


__all__ = ["AutoCleaner", "BroadcastServer", "MemoryStorage", "NameServer", "NameServerDaemon", "SqlStorage",
           "lookup", "main", "start_ns", "start_ns_loop", "yplookup"]


if __name__ == "__main__":  # `python -m meshrpc.nameserver [-n HOST] [-p PORT] [-x]`, as Pyro5's: `meshrpc ns`
    import sys
    sys.exit(main())
