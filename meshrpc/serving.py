"""`meshrpc.serve`: Pyro5's one-call server (register objects by name, serve until shut down).

It lives outside server/ because it may use the name server (naming/), which server/ never imports.
"""

from __future__ import annotations

import logging
from typing import Any

from .server.daemon import Daemon

log = logging.getLogger("meshrpc.server")


def serve(objects: dict[Any, str], host: str | None = None, port: int = 0, daemon: Daemon | None = None,
          use_ns: bool = False, verbose: bool = True) -> None:
    """Register `objects` ({object or class: name}) on a daemon, advertise them by name, and serve."""
    daemon = daemon or Daemon(host, port)
    with daemon:
        ns = None
        if use_ns:
            from .naming import locate_ns
            ns = locate_ns(settings=daemon.settings)
        for obj, name in objects.items():
            uri = daemon.register(obj, name, name=name)
            if ns is not None:
                ns.register(name, uri)
            if verbose:
                log.info("serving %s as %s", name, uri)
        if ns is not None:
            ns._pyroRelease()
        daemon.requestLoop()


__all__ = ["serve"]
