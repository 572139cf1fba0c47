"""Resolution of PYRONAME and PYROMETA URIs to a PYRO URI: the mesh registry first, then the name server."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

from .config import Settings
from .errors import NamingError
from .uri import URI

log = logging.getLogger("meshrpc.resolve")

SOURCES = ("mesh", "ns")


def resolve_sources(settings: Settings) -> list[str]:
    sources = [s.strip() for s in settings.RESOLVE.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise NamingError(f"RESOLVE={settings.RESOLVE!r}: use mesh, ns or mesh,ns")
    return sources


def resolve(uri: URI, settings: Settings) -> URI:
    """The PYRO URI of a provider of `uri` (a PYRO URI is returned as is)."""
    return resolve_with_source(uri, settings)[0]


def resolve_with_source(uri: URI, settings: Settings, *, sources: tuple[str, ...] | None = None,
                        wait: float | None = None) -> tuple[URI, str]:
    """(PYRO URI of a provider, the source that gave it). sources: a subset of RESOLVE to ask;
    wait: seconds the mesh waits for an announcement (default LOOKUP_TIMEOUT)."""
    if uri.is_direct:
        return uri, "direct"
    tried: list[str] = []
    for source in sources_to_ask(uri, settings, sources):
        try:
            found = _RESOLVERS[source](uri, settings, wait)
        except NamingError as exc:
            tried.append(f"{source}: {exc}")
            continue
        if found is not None:
            return found, source
        tried.append(f"{source}: not found")
    raise not_found(uri, tried)


def sources_to_ask(uri: URI, settings: Settings, sources: tuple[str, ...] | None) -> tuple[str, ...]:
    """The sources to ask, in order (shared with meshrpc.aio's resolver)."""
    if sources is None and uri.host:
        return ("ns",)  # PYRONAME:x@host:port names its name server: ask that one only (as Pyro5)
    return tuple(sources or resolve_sources(settings))


def not_found(uri: URI, tried: list[str]) -> NamingError:
    what = "name" if uri.protocol == "PYRONAME" else "tags"
    return NamingError(f"cannot resolve {uri}: no provider of that {what} found ({'; '.join(tried)})")


def _resolve_mesh(uri: URI, settings: Settings, wait: float | None = None) -> URI | None:
    from .mesh import get_registry, net
    registry = get_registry(settings)
    timeout = settings.LOOKUP_TIMEOUT if wait is None else wait
    if uri.protocol == "PYRONAME":
        entry = registry.choose(uri.object, timeout=timeout)
    else:
        entry = registry.choose_meta(uri.tags, timeout=timeout)
    if entry is None:
        return None
    # a provider bound to every interface: the address this machine can reach (else entry.uri)
    return URI(net.reachable_uri(entry.uri, entry.other_hosts))


def _resolve_ns(uri: URI, settings: Settings, wait: float | None = None) -> URI | None:
    from .naming import resolve_ns  # loaded only when the name server is used
    return resolve_ns(uri, settings)


_RESOLVERS = {"mesh": _resolve_mesh, "ns": _resolve_ns}


def report_failure(target: URI, settings: Settings, reason: BaseException | None = None) -> None:
    """Tell the mesh registry (if this process runs one) that a provider could not be reached, so
    that choosing passes it over for a short while (never hiding the only provider). reason: the
    failure, which tells its kind (failure_kind): a refused connection or a daemon shutting down
    makes the registry check the endpoint at once."""
    import sys
    if "meshrpc.mesh" not in sys.modules:
        return
    from .mesh import get_registry
    try:
        get_registry(settings).report_failure(str(target), failure_kind(reason))
    except Exception:  # reporting is advice; it must never break the caller
        log.debug("could not report the failure of %s", target, exc_info=True)


def failure_kind(reason: BaseException | None) -> str:
    """The registry's kind of a proxy's failure (meshrpc.mesh.registry.FAILURE_KINDS)."""
    seen: set[int] = set()
    error = reason
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).lower()
        if isinstance(error, ConnectionRefusedError) or "connection refused" in text:
            return "refused"
        if "shutting down" in text:
            return "shutdown"
        if "handshake" in text:
            return "handshake"
        error = error.__cause__ or error.__context__
    return "unreachable"


class _CallableModule(types.ModuleType):
    """`meshrpc.resolve` is this module, and calling it is Pyro5's `api.resolve(uri, delay_time=0)`
    (see meshrpc.core.resolve), so `meshrpc.resolve(uri)` works after a Pyro5 import rename."""

    def __call__(self, uri: Any, delay_time: float = 0.0, settings: Settings | None = None) -> URI:
        from .core import resolve as resolve_as_pyro5
        return resolve_as_pyro5(uri, delay_time, settings)


sys.modules[__name__].__class__ = _CallableModule
