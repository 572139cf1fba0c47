"""PYRONAME/PYROMETA -> PYRO for asyncio code, never blocking the loop.

The mesh source reads the process's registry (fed by the one Zeroconf instance, which runs on its own
loop thread): a lookup only takes the registry's lock, and waiting for an announcement is an
`asyncio.Event` set from the registry's change notifications. Starting the browser the first time
(creating the Zeroconf sockets) runs in the default executor. The name-server source asks the name
server in the default executor (a name-server lookup happens once per connection, not per call).
Source order, the PYRONAME:x@host rule and the error text are meshrpc.resolve's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from .. import resolve as sync_resolve
from ..config import Settings
from ..errors import NamingError
from ..limits import REGISTRY_RECHECK
from ..uri import URI


async def resolve_with_source(uri: URI, settings: Settings, *, sources: tuple[str, ...] | None = None,
                              wait: float | None = None) -> tuple[URI, str]:
    """(PYRO URI of a provider, the source that gave it): meshrpc.resolve.resolve_with_source, awaitable."""
    if uri.is_direct:
        return uri, "direct"
    tried: list[str] = []
    for group in sync_resolve.source_groups(uri, settings, sources):
        source = "+".join(group)
        try:
            if group == ["mesh"]:
                found = await _resolve_mesh(uri, settings, wait)
            else:           # the name server, or registries merged with etcd's mirror (docs/etcd.md)
                loop = asyncio.get_running_loop()
                answer = await loop.run_in_executor(None, sync_resolve.resolve_group, uri, settings, group, wait)
                found, source = answer if answer is not None else (None, source)
        except NamingError as exc:
            tried.append(f"{source}: {exc}")
            continue
        if found is not None:
            return found, source
        tried.append(f"{source}: not found")
    raise sync_resolve.not_found(uri, tried)


async def resolve(uri: URI | str, settings: Settings | None = None) -> URI:
    """The PYRO URI of a provider of `uri` (a PYRO URI is returned as is)."""
    from ..config import config as default_settings
    return (await resolve_with_source(URI(uri), settings or default_settings))[0]


async def _resolve_mesh(uri: URI, settings: Settings, wait: float | None) -> URI | None:
    from ..mesh import get_registry, net
    registry = get_registry(settings)
    loop = asyncio.get_running_loop()
    if not registry.started:  # the first query creates the Zeroconf instance: not on this loop
        await loop.run_in_executor(None, registry.lookup, "")
    if uri.protocol == "PYRONAME":
        def pick() -> Any:
            return registry.choose(uri.object)
    else:
        def pick() -> Any:
            return registry.choose_meta(uri.tags)
    entry = pick()
    if entry is None:
        entry = await _wait_for(registry, pick, settings.LOOKUP_TIMEOUT if wait is None else wait)
    if entry is None:
        return None
    return URI(net.reachable_uri(entry.uri, entry.other_hosts))


async def _wait_for(registry: Any, pick: Callable[[], Any], timeout: float) -> Any:
    """pick() again whenever the registry changes, until it finds something or timeout passes."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def notify(event: str, entry: Any) -> None:  # on the registry's thread
        try:
            loop.call_soon_threadsafe(changed.set)
        except RuntimeError:  # the loop closed meanwhile
            pass
    unsubscribe = registry.subscribe(notify)
    try:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            entry = pick()
            remaining = deadline - time.monotonic()
            if entry is not None or remaining <= 0:
                return entry
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, REGISTRY_RECHECK))
            except (asyncio.TimeoutError, TimeoutError):
                pass
    finally:
        unsubscribe()
