"""Pyro5's `core` names under meshrpc: `URI`, the well-known object ids, `resolve`, `locate_ns`,
`type_meta`. A Pyro5 program's `Pyro5.core` becomes `meshrpc.core`."""

from __future__ import annotations

import time
from typing import Any

from .config import Settings, config as default_config
from .errors import NamingError
from .limits import NAME_WAIT_PAUSE
from .loopcheck import refuse_in_running_loop
from .wire.constants import DAEMON_OBJECT_ID as DAEMON_NAME, NAMESERVER_NAME  # Pyro5's names in core
from .uri import URI
from .wire.serializers import ExceptionWrapper as _ExceptionWrapper  # noqa: F401 - Pyro5 programs use it in batches


def resolve(uri: str | URI, delay_time: float = 0.0, settings: Settings | None = None) -> URI:
    """The PYRO URI behind a PYRONAME/PYROMETA URI (a PYRO URI is returned as it is), found on the mesh
    or in a name server (RESOLVE). delay_time: seconds to keep trying while the name is not registered
    yet, as in Pyro5."""
    from .resolve import resolve as resolve_uri
    if isinstance(uri, str):
        uri = URI(uri)
    elif not isinstance(uri, URI):
        raise TypeError(f"can only resolve URIs, not {type(uri).__name__}")
    if uri.protocol != "PYRO":  # a lookup waits (the mesh, a name server): never on a loop's thread
        refuse_in_running_loop("meshrpc.resolve (in asyncio code: `await meshrpc.aio.resolve(uri)`)")
    settings = settings or default_config
    deadline = time.monotonic() + max(delay_time, 0.0)
    while True:
        try:
            return resolve_uri(uri, settings)
        except NamingError:
            if time.monotonic() + NAME_WAIT_PAUSE > deadline:
                raise
        time.sleep(NAME_WAIT_PAUSE)


def locate_ns(host: Any = "", port: int | None = None, broadcast: bool = True,
              settings: Settings | None = None) -> Any:
    """A connected proxy for a name server (see `meshrpc.locate_ns`)."""
    from .naming import locate_ns as _locate_ns
    return _locate_ns(str(host) if host else None, port, broadcast, settings)


def type_meta(class_or_object: Any, prefix: str = "class:") -> set[str]:
    """Name-server metadata tags naming an object's classes (its class and every base but builtins):
    `{"class:shop.Cart", ...}`, for `register(..., metadata=type_meta(obj))` and `PYROMETA:` lookups."""
    cls = class_or_object if isinstance(class_or_object, type) else type(class_or_object)
    return {prefix + c.__module__ + "." + c.__name__ for c in cls.__mro__ if c.__module__ != "builtins"}


__all__ = ["DAEMON_NAME", "NAMESERVER_NAME", "URI", "locate_ns", "resolve", "type_meta"]
