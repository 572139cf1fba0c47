"""The registry on etcd, for routed networks and sites (docs/etcd.md).

    enabled(settings)            -> does RESOLVE name an etcd cluster?
    get_mirror(settings)         -> the process's Mirror of settings.REALM (a watcher feeds it)
    EtcdRegistrar(settings, bind_host)   what a daemon uses to write its names

Needs the optional extra `meshrpc[etcd]` (etcd3gw); importing this package does not import it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import NamingError

if TYPE_CHECKING:
    from .mirror import Mirror

__all__ = ["EtcdRegistrar", "enabled", "existing_mirror", "get_mirror", "reset_for_tests"]

_mirrors: dict[tuple[str, str, str], tuple[Any, Any]] = {}     # (target, realm, key) -> (mirror, watcher)
_mirrors_lock = threading.Lock()


def enabled(settings: Settings) -> bool:
    from ..resolve import split_sources
    return any(name == "etcd" for name, _ in split_sources(settings.RESOLVE))


def _require_client() -> None:
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        raise NamingError("RESOLVE names an etcd cluster but its client is not installed: "
                          "pip install 'meshrpc[etcd]'") from None


def _slot(settings: Settings) -> tuple[str, str, str]:
    from .gateway import target_of
    target = target_of(settings)
    if target is None:
        raise NamingError("no etcd cluster configured: name it in MESHRPC_RESOLVE, e.g. mdns,etcd://h1:2379,h2:2379")
    return (str(target), settings.REALM, settings.KEY)


def get_mirror(settings: Settings) -> Mirror:
    """The process-wide mirror of settings.REALM in the etcd cluster RESOLVE names (one per cluster,
    realm and mesh key; the first call's settings are kept). Its watcher starts at the first query."""
    _require_client()
    slot = _slot(settings)
    with _mirrors_lock:
        found = _mirrors.get(slot)
        if found is None:
            from .mirror import Mirror

            def start(mirror: Mirror) -> None:
                from ..mesh import net
                from .watcher import Watcher
                try:
                    mirror.set_local_hosts(net.local_hosts())
                except Exception:  # noqa: BLE001 - the replica policy falls back to loopback names
                    pass
                watcher = mirror.feeder = Watcher(mirror, mirror.settings)
                with _mirrors_lock:
                    if slot in _mirrors:
                        _mirrors[slot] = (mirror, watcher)
                watcher.start()

            found = _mirrors[slot] = (Mirror(settings, start=start), None)
        return found[0]


def existing_mirror(settings: Settings) -> Mirror | None:
    """The mirror if this process made one (never starts anything)."""
    try:
        slot = _slot(settings)
    except NamingError:
        return None
    with _mirrors_lock:
        found = _mirrors.get(slot)
    return found[0] if found else None


def reset_for_tests() -> None:
    """Stop every mirror's watcher; the next use starts afresh."""
    with _mirrors_lock:
        items = list(_mirrors.values())
        _mirrors.clear()
    for _, watcher in items:
        if watcher is not None:
            watcher.close()


def __getattr__(name: str) -> Any:
    if name == "EtcdRegistrar":
        _require_client()
        from .registrar import EtcdRegistrar
        return EtcdRegistrar
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
