"""Finding a name server (`locate_ns`) and resolving PYRONAME/PYROMETA URIs through one (`resolve_ns`)."""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from typing import Any

from ..client.proxy import Proxy
from ..config import Settings
from ..config import config as default_config
from ..errors import CommunicationError, MeshError, NamingError
from ..uri import URI
from .broadcast import broadcast_locate
from ..wire.constants import NAMESERVER_NAME
from ..limits import NS_RESOLVE_MAX_HOPS

log = logging.getLogger("meshrpc.naming")

# the name server each configuration located last: tried first next time (a connect, no broadcast)
_last_located: dict[tuple, str] = {}
_last_lock = threading.Lock()


def _ns_uri(host: str, port: int) -> URI:
    if host.startswith("./u:"):  # a name server on a Unix socket, as Pyro5's locate_ns accepts
        return URI.from_parts(NAMESERVER_NAME, sockname=host[4:])
    return URI.from_parts(NAMESERVER_NAME, host.strip("[]"), port)


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Budget:
    """What is left of a locate_ns timeout (None: no bound but each step's own)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout if timeout is not None and timeout > 0 else None
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout

    def left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def cap(self, timeout: float | None) -> float | None:
        """timeout, or less when less is left (never 0: a connect needs some time to fail)."""
        left = self.left()
        if left is None:
            return timeout
        left = max(left, 0.01)
        return left if not timeout or left < timeout else timeout


def _bound_proxy(uri: URI, settings: Settings, budget: _Budget | None = None) -> Proxy:
    """A proxy for the name server at uri, connected and handshaken; CommunicationError otherwise.
    The connect waits no longer than the budget has left; the proxy's calls keep COMMTIMEOUT."""
    proxy = Proxy(uri, settings=settings)
    try:
        if budget is not None and budget.deadline is not None:
            proxy._pyroTimeout = budget.cap(settings.COMMTIMEOUT or None)
        proxy._pyroBind()
        proxy._pyroTimeout = settings.COMMTIMEOUT or None
    except BaseException:
        proxy._pyroRelease()
        raise
    return proxy


def _from_mesh(settings: Settings, tried: list[str], budget: _Budget) -> Proxy | None:
    from ..resolve import resolve_sources
    if "mesh" not in resolve_sources(settings):
        return None
    try:
        from ..mesh import get_registry  # the mesh package may not offer it (yet)
        entries = get_registry(settings).lookup(NAMESERVER_NAME)
    except (ImportError, AttributeError) as exc:
        tried.append(f"mesh: unavailable ({exc})")
        return None
    except MeshError as exc:
        tried.append(f"mesh: {exc}")
        return None
    if not entries:
        tried.append("mesh: no name server announced")
        return None
    for entry in entries:
        try:
            return _bound_proxy(URI(entry.uri), settings, budget)
        except (MeshError, ValueError) as exc:
            tried.append(f"mesh: {entry.uri}: {exc}")
    return None


def _direct(uri: URI, settings: Settings, tried: list[str], budget: _Budget,
            label: str = "direct") -> Proxy | None:
    if budget.spent() and tried:  # the first attempt is always made
        tried.append(f"{label} {uri.location}: not tried (the timeout of {budget.timeout:g} s was spent)")
        return None
    try:
        return _bound_proxy(uri, settings, budget)
    except MeshError as exc:
        tried.append(f"{label} {uri.location}: {exc}")
        return None


def locate_ns(host: str | None = None, port: int | None = None, broadcast: bool = True,
              settings: Settings | None = None, *, timeout: float | None = None) -> Proxy:
    """A connected proxy for a name server (meshrpc's or Pyro5's).

    With host: the name server at host:port (port defaults to NS_PORT). Without: the one located last,
    the mesh, the configured NS_HOST (or HOST) when it is loopback, broadcast on NS_BCPORT, then the
    configured host; NamingError naming each attempt when none answers. timeout: seconds the whole
    search may take (connects and the broadcast rounds share it); None: each step's own (the
    broadcast's rounds take NS_BROADCAST_TRIES * NS_BROADCAST_INTERVAL when nobody answers)."""
    settings = settings or default_config
    port = int(port) if port else settings.NS_PORT
    budget = _Budget(timeout)
    tried: list[str] = []
    if host:
        proxy = _direct(_ns_uri(str(host), port), settings, tried, budget)
        if proxy is None:
            raise NamingError("failed to locate the name server: " + "; ".join(tried))
        return proxy
    configured = settings.NS_HOST or settings.HOST
    key = (configured, port, settings.NS_BCPORT, settings.RESOLVE)
    with _last_lock:
        last = _last_located.get(key)
    proxy = None
    if last is not None:
        proxy = _direct(URI(last), settings, tried, budget, "last located")
    if proxy is None:
        proxy = _from_mesh(settings, tried, budget)
    direct_uri = _ns_uri(configured, port)
    direct_tried = False
    if proxy is None and _is_loopback(configured):
        direct_tried = True
        proxy = _direct(direct_uri, settings, tried, budget)
    if proxy is None and broadcast:
        proxy = _from_broadcast(configured, settings, tried, budget)
    if proxy is None and not direct_tried:
        proxy = _direct(direct_uri, settings, tried, budget)
    if proxy is None:
        raise NamingError("failed to locate the name server: " + "; ".join(tried))
    with _last_lock:
        _last_located[key] = str(proxy._pyroUri)
    return proxy


def _from_broadcast(configured: str, settings: Settings, tried: list[str], budget: _Budget) -> Proxy | None:
    left = budget.left()
    if left is not None and left <= 0:
        tried.append(f"broadcast on port {settings.NS_BCPORT}: not tried (the timeout of {budget.timeout:g} s "
                     f"was spent)")
        return None
    found = broadcast_locate(configured, settings.NS_BCPORT, timeout=left)
    if found is None:
        waited = "" if left is None else f" within {left:.2g} s"
        tried.append(f"broadcast on port {settings.NS_BCPORT}: no answer{waited}")
        return None
    return _direct(found, settings, tried, budget, "broadcast answer")


def resolve_ns(uri: URI, settings: Settings, timeout: float | None = None) -> URI | None:
    """The PYRO URI of a PYRONAME/PYROMETA uri, asked of a name server: the one at the uri's location
    when it has one, else locate_ns. None when the name (or tags) are unknown; NamingError when no
    name server answers. timeout (default LOOKUP_TIMEOUT) bounds each search for a name server."""
    if timeout is None:
        timeout = settings.LOOKUP_TIMEOUT
    uri = URI(uri)
    for _ in range(NS_RESOLVE_MAX_HOPS + 1):
        if uri.is_direct:
            return uri
        found, ns_uri = _resolve_once(uri, settings, timeout)
        if found is None:
            return None
        if not found.is_direct and found.host is None and not found.sockname:
            # a logical name without a location, found in a name server: ask that same one next
            found = URI.from_parts(found.object, ns_uri.host, ns_uri.port, protocol=found.protocol)
        uri = found
    raise NamingError(f"{uri}: more than {NS_RESOLVE_MAX_HOPS} PYRONAME/PYROMETA hops; is there a loop?")


def _resolve_once(uri: URI, settings: Settings, timeout: float | None) -> tuple[URI | None, URI]:
    ns = locate_ns(uri.host or None, uri.port if uri.host else None, settings=settings, timeout=timeout)
    with ns:
        ns._pyroTimeout = settings.COMMTIMEOUT or settings.LOOKUP_TIMEOUT  # a hung name server must not hang us
        ns_uri = URI(ns._pyroUri)
        try:
            if uri.protocol == "PYRONAME":
                try:
                    result: Any = ns.lookup(uri.object)
                except NamingError as exc:
                    if str(exc).startswith("unknown name"):
                        return None, ns_uri
                    raise
                return URI(result), ns_uri
            candidates = ns.yplookup(meta_all=sorted(uri.tags), return_metadata=False)
        except CommunicationError as exc:  # located, then failed: still a name-server problem
            raise NamingError(f"name server {ns_uri.location} failed: {exc}") from exc
        if not candidates:
            return None, ns_uri
        return URI(random.choice(list(candidates.values()))), ns_uri


def forget_located() -> None:
    """Forget which name servers were located (the next locate_ns searches afresh)."""
    with _last_lock:
        _last_located.clear()


__all__ = ["forget_located", "locate_ns", "resolve_ns"]
