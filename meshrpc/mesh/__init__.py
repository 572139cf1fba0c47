"""Zero-config discovery over mDNS/DNS-SD: daemons publish, every process mirrors (docs/mesh.md).

    pub = MeshPublisher(bind_host, settings); pub.publish(name, uri, metadata); pub.close()
    reg = get_registry(); reg.resolve(name, timeout) -> list[Entry]

Importing this package does not import zeroconf; the first publish or query does.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import registry as _registry_module
from .records import Entry, Heartbeat
from .registry import ADDED, REMOVED, UPDATED, Registry

if TYPE_CHECKING:
    from ..config import Settings
    from .publisher import MeshPublisher

__all__ = ["ADDED", "REMOVED", "UPDATED", "Entry", "Heartbeat", "MeshPublisher", "Registry",
           "get_registry", "reset_for_tests", "use_zeroconf"]

_registries: dict[str | tuple[str, str], Registry] = {}
_registries_lock = threading.Lock()


def _process_discovery() -> Any:
    from .discovery import get_discovery
    return get_discovery()


# Registries without an explicit source use the process-wide discovery (registry.py stays zeroconf-free).
_registry_module.default_source = _process_discovery


def get_registry(settings: Settings | None = None) -> Registry:
    """The process-wide registry of settings.REALM (default settings: meshrpc.config.config).

    One per realm (and mesh KEY: keyed and keyless users see different things); the first call's
    settings are kept. It starts browsing on its first query."""
    if settings is None:
        from ..config import config as default_settings  # the current process default
        settings = default_settings
    slot = (settings.REALM, settings.KEY) if settings.KEY else settings.REALM
    with _registries_lock:
        registry = _registries.get(slot)
        if registry is None:
            registry = _registries[slot] = Registry(settings)
        return registry


def use_zeroconf(instance: Any) -> None:
    """Run the process's mesh on the host program's Zeroconf (a `zeroconf.Zeroconf` or an
    `AsyncZeroconf`, e.g. Home Assistant's shared instance) instead of one of its own; None: its own
    again. Before the mesh's first publish or lookup (else ConfigError). The mesh never changes that
    instance's interfaces and never closes it: docs/mesh.md, "Sharing the host program's Zeroconf"."""
    from .discovery import use_zeroconf as adopt
    adopt(instance)


def reset_for_tests() -> None:
    """Close the process-wide registries and Zeroconf (goodbyes are sent); next use starts afresh."""
    with _registries_lock:
        registries = list(_registries.values())
        _registries.clear()
    for registry in registries:
        registry.close()
    import sys
    discovery = sys.modules.get(__name__ + ".discovery")
    if discovery is not None:
        discovery.reset()


def __getattr__(name: str) -> Any:
    if name == "MeshPublisher":            # imports zeroconf: only when asked for
        from .publisher import MeshPublisher
        return MeshPublisher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
