"""The serving side: `Daemon`, `serve` and the decorators (Pyro5's `server` module names)."""

from .daemon import Daemon, DaemonObject, serve
from .decorators import behavior, callback, expose, idempotent, is_private_attribute, oneway

__all__ = ["Daemon", "DaemonObject", "behavior", "callback", "expose", "idempotent", "is_private_attribute",
           "oneway", "serve"]
