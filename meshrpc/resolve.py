"""Resolution of PYRONAME and PYROMETA URIs to a PYRO URI: the registries (the mesh, etcd), then the name server."""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from typing import Any

from .config import Settings
from .errors import NamingError, UnknownNameError
from .uri import URI

log = logging.getLogger("meshrpc.resolve")

SOURCES = ("mesh", "etcd", "ns")
REGISTRIES = ("mesh", "etcd")          # consecutive registries in RESOLVE form one provider set
_ALIASES = {"mdns": "mesh"}
_ETCD_SCHEMES = ("etcd://", "etcds://")


def split_sources(text: str) -> list[tuple[str, list[str]]]:
    """RESOLVE parsed: [(source, etcd endpoints)]. Items are comma separated; `etcd://h1:2379,h2:2379`
    (or `etcds://` for TLS) names a cluster: the host:port items after it are more of its members."""
    found: list[tuple[str, list[str]]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        lowered = item.lower()
        if lowered.startswith(_ETCD_SCHEMES):
            scheme, _, first = item.partition("://")
            found.append(("etcd", [f"{scheme.lower()}://{first}"] if first else []))
        elif _ALIASES.get(lowered, lowered) in SOURCES and lowered != "etcd":
            found.append((_ALIASES.get(lowered, lowered), []))
        elif found and found[-1][0] == "etcd" and ":" in item:
            found[-1][1].append(item)
        else:
            found.append((item, []))
    return found


def resolve_sources(settings: Settings) -> list[str]:
    parsed = split_sources(settings.RESOLVE)
    sources = [name for name, _ in parsed]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources or any(name == "etcd" and not members for name, members in parsed):
        raise NamingError(f"RESOLVE={settings.RESOLVE!r}: use mesh (or mdns), ns and etcd://host:port[,host:port...] "
                          f"in the order to ask them, comma separated")
    return sources


def announces_on_mesh(settings: Settings) -> bool:
    """Daemons announce on mDNS unless RESOLVE names etcd and not the mesh (a site without multicast)."""
    names = [name for name, _ in split_sources(settings.RESOLVE)]
    return "mesh" in names or "etcd" not in names


def resolve(uri: URI, settings: Settings) -> URI:
    """The PYRO URI of a provider of `uri` (a PYRO URI is returned as is)."""
    return resolve_with_source(uri, settings)[0]


def resolve_with_source(uri: URI, settings: Settings, *, sources: tuple[str, ...] | None = None,
                        wait: float | None = None) -> tuple[URI, str]:
    """(PYRO URI of a provider, the source that gave it). sources: a subset of RESOLVE to ask;
    wait: seconds the registries wait for an announcement (default LOOKUP_TIMEOUT).

    Source groups (source_groups) are preferred in order, but a later one is asked while an earlier one
    still waits (after RESOLVE_PREFER_WAIT seconds, and its answer is then taken), so an unknown name
    costs the longest source's time, not their sum, and a name only a later one knows costs about
    RESOLVE_PREFER_WAIT. UnknownNameError once every source said no; its message blames only sources that
    were configured."""
    if uri.is_direct:
        return uri, "direct"
    prefer_until = time.monotonic() + settings.RESOLVE_PREFER_WAIT
    groups = source_groups(uri, settings, sources)
    answers: dict[int, tuple[tuple[URI, str] | None, str]] = {}
    answered = threading.Condition()

    def ask(index: int) -> None:
        answer = _ask(groups[index], uri, settings, wait)
        with answered:
            answers[index] = answer
            answered.notify_all()

    def start(index: int) -> None:
        threading.Thread(target=ask, args=(index,), name="meshrpc-resolve", daemon=True).start()

    if len(groups) == 1:
        ask(0)
    else:
        start(0)
        with answered:  # the first source usually answers from memory: ask the others only if it waits
            answered.wait_for(lambda: 0 in answers, timeout=settings.RESOLVE_PREFER_WAIT)
            first = answers.get(0)
        if first is None or first[0] is None:
            for index in range(1, len(groups)):
                start(index)
    with answered:
        while (chosen := _preferred_answer(answers, len(groups), prefer_until)) is None:
            answered.wait(max(0.0, prefer_until - time.monotonic()) or None)
        if chosen >= 0:
            return answers[chosen][0]  # type: ignore[return-value]
        raise not_found(uri, [answers[index][1] for index in range(len(groups))])


def _preferred_answer(answers: dict[int, tuple[tuple[URI, str] | None, str]], count: int,
                      prefer_until: float) -> int | None:
    """Which source's answer to take: the first in RESOLVE order that found the name once every
    earlier one said no; after RESOLVE_PREFER_WAIT, also one behind an earlier source still asking
    (a name only a name server knows costs that, not the mesh's LOOKUP_TIMEOUT). -1: every source
    said no; None: wait for more answers."""
    for index in range(count):
        if index not in answers:
            if time.monotonic() < prefer_until:
                return None
            return next((later for later in range(index + 1, count)
                         if later in answers and answers[later][0] is not None), None)
        if answers[index][0] is not None:
            return index
    return -1


def _ask(group: list[str], uri: URI, settings: Settings, wait: float | None) -> tuple[tuple[URI, str] | None, str]:
    """(found, why not) from one source group; why not is a clause for the error message."""
    try:
        found = resolve_group(uri, settings, group, wait)
    except NamingError as exc:
        return None, _failure_text("+".join(group), uri, settings, exc)
    if found is not None:
        return found, ""
    if group[0] in REGISTRIES:
        waited = settings.LOOKUP_TIMEOUT if wait is None else wait
        where = " or ".join({"mesh": "on the mesh", "etcd": "in etcd"}.get(name, name) for name in group)
        return None, f"not announced {where} (realm {settings.REALM!r}, waited {waited:g} s{_loopback_note(group, settings)})"
    return None, "not registered in the name server"


def _failure_text(source: str, uri: URI, settings: Settings, exc: NamingError) -> str:
    if source == "ns" and not uri.host and not settings.NS_HOST:
        # a name server nobody configured is not blamed with its connection errors
        return "no name server found (none configured: MESHRPC_NS_HOST)"
    return f"{source}: {exc}"


def sources_to_ask(uri: URI, settings: Settings, sources: tuple[str, ...] | None) -> tuple[str, ...]:
    """The sources to ask, in order (shared with meshrpc.aio's resolver)."""
    if sources is None and uri.host:
        return ("ns",)  # PYRONAME:x@host:port names its name server: ask that one only (as Pyro5)
    return tuple(sources or resolve_sources(settings))


def _loopback_note(group: list[str], settings: Settings) -> str:
    """For a mesh that listens on loopback only: that it hears only this machine, and how to hear the LAN."""
    from .mesh import net
    if "mesh" not in group or net.interfaces_for(settings.HOST, settings.INTERFACES) != net.LOOPBACK:
        return ""
    return (f"; this process listens on loopback only (MESHRPC_HOST is {settings.HOST!r}) and hears daemons on this "
            f"machine only: set MESHRPC_HOST=0.0.0.0 to hear those on the LAN")


def not_found(uri: URI, tried: list[str]) -> UnknownNameError:
    """The one error for a name (or tags) that no source asked knows, with what each said."""
    if uri.protocol == "PYRONAME":
        what = f"name {uri.object!r}"
    else:
        what = f"tags {','.join(sorted(uri.tags))!r}"
    answered = any("not announced" in said or "not registered" in said or said.endswith(": not found")
                   for said in tried)
    advice = ("Check the spelling and the realm (`meshrpc browse --all-realms` lists what is announced)" if answered
              else "No source could be asked: start the name server it names (`meshrpc ns`), or check "
                   "MESHRPC_RESOLVE and MESHRPC_NS_HOST")
    return UnknownNameError(f"unknown {what}: {'; '.join(tried)}. {advice}")


def source_groups(uri: URI, settings: Settings, sources: tuple[str, ...] | None) -> list[list[str]]:
    """sources_to_ask() with consecutive registries (mesh, etcd) as one group: one provider set. A
    registry asked for explicitly brings the other registries RESOLVE names along (shared with meshrpc.aio)."""
    order = list(sources_to_ask(uri, settings, sources))
    if sources is not None and any(s in REGISTRIES for s in sources):
        try:
            configured = resolve_sources(settings)
        except NamingError:
            configured = []
        order += [s for s in configured if s in REGISTRIES and s not in order]
        order.sort(key=lambda s: s not in REGISTRIES)       # stable: the registries stay together, first
    groups: list[list[str]] = []
    for source in order:
        if groups and source in REGISTRIES and groups[-1][0] in REGISTRIES:
            groups[-1].append(source)
        else:
            groups.append([source])
    return groups


def resolve_group(uri: URI, settings: Settings, group: list[str], wait: float | None) -> tuple[URI, str] | None:
    """Ask one group of source_groups(): (PYRO URI, source) or None; NamingError says why it could not."""
    if group[0] in REGISTRIES:
        return _resolve_registries(uri, settings, wait, group)
    return _RESOLVERS[group[0]](uri, settings, wait)


def _registry_views(settings: Settings, names: list[str]) -> list[tuple[str, Any]]:
    views: list[tuple[str, Any]] = []
    for name in names:
        if name == "mesh":
            from .mesh import get_registry
            views.append((name, get_registry(settings)))
        else:
            from .etcd import get_mirror   # loaded only when RESOLVE names etcd
            views.append((name, get_mirror(settings)))
    return views


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


def _resolve_registries(uri: URI, settings: Settings, wait: float | None, names: list[str]) -> tuple[URI, str] | None:
    if names == ["mesh"]:
        found = _resolve_mesh(uri, settings, wait)
        return None if found is None else (found, "mesh")
    from . import providers
    from .mesh import net
    views = _registry_views(settings, names)
    if uri.protocol == "PYRONAME":
        def query(view: Any) -> list[Any]:
            return view.lookup(uri.object)
    else:
        def query(view: Any) -> list[Any]:
            return view.yplookup(uri.tags)
    timeout = settings.LOOKUP_TIMEOUT if wait is None else wait
    candidates = providers.wait_merged(views, query, timeout)
    mesh = dict(views).get("mesh")
    if mesh is not None:        # the mesh's replica policy (passing over providers a proxy failed to reach)
        entry = mesh._pick([e for e, _ in candidates])
        chosen = None if entry is None else next(pair for pair in candidates if pair[0] is entry)
    else:
        chosen = providers.pick(candidates, views[0][1].is_local)
    if chosen is None:
        return None
    entry, source = chosen
    # a provider bound to every interface: the address this machine can reach (else entry.uri)
    return URI(net.reachable_uri(entry.uri, entry.other_hosts)), source


def _resolve_ns(uri: URI, settings: Settings, wait: float | None = None) -> tuple[URI, str] | None:
    from .naming import resolve_ns  # loaded only when the name server is used
    found = resolve_ns(uri, settings, wait)  # wait (else LOOKUP_TIMEOUT) bounds the name server's search too
    return None if found is None else (found, "ns")


_RESOLVERS = {"ns": _resolve_ns}


def report_failure(target: URI, settings: Settings, reason: BaseException | None = None) -> None:
    """Tell the mesh registry (if this process runs one) that a provider could not be reached, so
    that choosing passes it over for a short while (never hiding the only provider). reason: the
    failure, which tells its kind (failure_kind): a refused connection or a daemon shutting down
    makes the registry check the endpoint at once."""
    if "meshrpc.etcd" in sys.modules:    # the etcd mirror too (docs/etcd.md), if this process runs one
        try:
            mirror = sys.modules["meshrpc.etcd"].existing_mirror(settings)
            if mirror is not None:
                mirror.report_failure(str(target))
        except Exception:  # reporting is advice; it must never break the caller
            log.debug("could not report the failure of %s to the etcd mirror", target, exc_info=True)
    if "meshrpc.mesh" not in sys.modules:
        return
    from .mesh import get_registry
    try:
        get_registry(settings).report_failure(str(target), failure_kind(reason))
    except Exception:  # reporting is advice; it must never break the caller
        log.debug("could not report the failure of %s", target, exc_info=True)


def watch_announcements(locator: URI, settings: Settings, heard: Any) -> Any:
    """Call heard() (on the registry's thread) whenever the process's mesh registry hears a provider
    of locator (a PYRONAME or PYROMETA URI) announced or re-announced; returns the function that stops
    it. A proxy recovering a call listens so that its pause ends as soon as a provider (re)appears."""
    if "meshrpc.mesh" not in sys.modules:
        return _still
    from .mesh import get_registry
    registry = get_registry(settings)
    if locator.protocol == "PYRONAME":
        def matches(entry: Any) -> bool:
            return entry.name == locator.object
    else:
        wanted = set(locator.tags)

        def matches(entry: Any) -> bool:
            return wanted <= set(entry.metadata)

    def listen(event: str, entry: Any) -> None:
        if event != "removed" and matches(entry):
            heard()
    try:
        return registry.subscribe(listen)
    except Exception:  # listening is advice; it must never break the caller
        log.debug("could not listen for announcements of %s", locator, exc_info=True)
        return _still


def _still() -> None:
    """Nothing to stop."""


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
