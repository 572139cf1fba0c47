"""meshrpc: Python remote objects on a zero-config service mesh, wire-compatible with Pyro5.

The public API, re-exported here (names follow Pyro5's api module)."""

from __future__ import annotations

import os
import sys

from . import plugins as _plugins  # noqa: F401 (plugs the mesh, the name server and Proxy into daemons)
from . import errors
from . import resolve  # a module that is also Pyro5's resolve(uri) function when called
from .blob import SerializedBlob
from .client.batch import BatchProxy
from .client.proxy import Proxy
from .config import ENV_PROBLEMS, Settings, config
from .context import current_context
from .core import type_meta
from .errors import ConfigError
from .serializers import SerializerBase
from .server.daemon import Daemon, DaemonObject, serve
from .server.decorators import behavior, callback, expose, idempotent, oneway
from .uri import URI
from .wire.serializers import (register_class_to_dict, register_dict_to_class, unregister_class_to_dict,
                               unregister_dict_to_class)

__version__ = "0.1.0"


def _apply_loglevel(level: str) -> None:
    """MESHRPC_LOGLEVEL: the `meshrpc` logger's level, with a stderr handler if the application set
    up none (otherwise Python would show warnings only)."""
    import logging
    if not level:
        return
    logger = logging.getLogger("meshrpc")
    try:
        logger.setLevel(level.upper())
    except ValueError:
        logger.warning("ignoring MESHRPC_LOGLEVEL=%r: use DEBUG, INFO, WARNING, ERROR or CRITICAL", level)
        return
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)


def _started_as_cli() -> bool:
    """True while the `meshrpc` command (or `python -m meshrpc...`) imports the package: it reports
    bad MESHRPC_* variables itself, as one line and exit code 2."""
    main = sys.modules.get("__main__")
    path = os.path.basename(str(getattr(main, "__file__", "") or ""))
    return sys.argv[:1] == ["-m"] or path in ("meshrpc", "meshrpc-script.py")


if ENV_PROBLEMS and not _started_as_cli():
    raise ConfigError(ENV_PROBLEMS)
_apply_loglevel(config.LOGLEVEL)


def __getattr__(name: str) -> object:
    # futures load the asyncio machinery: only when asked for (plain `import meshrpc` stays light)
    if name in ("Future", "FutureResult", "AsyncProxy", "asyncproxy"):
        from .client import futures
        return getattr(futures, name)
    # the name server module on first use: `python -m meshrpc.nameserver` then runs it without runpy's
    # warning about a module imported twice
    if name in ("start_ns", "start_ns_loop", "nameserver"):
        import importlib
        nameserver = importlib.import_module(".nameserver", __name__)  # not `from . import`: that asks here again
        return nameserver if name == "nameserver" else getattr(nameserver, name)
    raise AttributeError(f"module 'meshrpc' has no attribute {name!r}")


def locate_ns(host: str | None = None, port: int | None = None, broadcast: bool = True,
              settings: Settings | None = None) -> Proxy:
    """A proxy to a name server: found on the mesh, by broadcast, or at NS_HOST:NS_PORT."""
    from .naming import locate_ns as _locate_ns
    return _locate_ns(host, port, broadcast, settings)


__all__ = [
    "AsyncProxy", "BatchProxy", "Daemon", "DaemonObject", "Future", "FutureResult", "Proxy", "SerializedBlob",
    "SerializerBase", "Settings", "URI", "__version__", "asyncproxy", "behavior", "callback", "config",
    "current_context", "errors", "expose", "idempotent", "locate_ns", "oneway", "register_class_to_dict",
    "register_dict_to_class", "resolve", "serve", "start_ns", "start_ns_loop", "type_meta",
    "unregister_class_to_dict", "unregister_dict_to_class",
]
