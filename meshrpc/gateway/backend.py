"""How the gateway calls services: one small interface (`Backend`), two implementations.

`make_backend` picks `AioBackend` (meshrpc.aio proxies on the gateway's event loop: pipelined calls,
no thread per call) and falls back to `ThreadedBackend` (blocking meshrpc Proxies on a bounded
thread pool) where meshrpc.aio cannot go yet (TLS). Both give every service (a PYRONAME, or the
provider a tag query chose) its own slots (GATEWAY_BACKEND_CONCURRENCY): a request waits for a slot
on the event loop, so one slow service holds at most its slots and the others keep going.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Settings
from ..wire import frame as wire
from .errors import BadRequest, Busy, NoSuchMember

log = logging.getLogger("meshrpc.gateway")

META = "$meta"
NO_REPLY = object()   # what a oneway call returns: there is no reply to show


@dataclass
class Call:
    """One request for a service: `locator` is a PYRONAME/PYRO URI string, resolved in mesh `realm`."""
    locator: str
    realm: str
    member: str                        # a method, an attribute, or "$meta"
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    oneway: bool = False
    correlation_id: bytes | None = None


class Backend(Protocol):
    async def invoke(self, call: Call) -> Any:
        """The member's value (NO_REPLY for oneway calls); raises what the call raised."""
        ...

    async def run_blocking(self, function: Any, *args: Any) -> Any:
        """function(*args) off the event loop (name-server lookups and the like)."""
        ...

    def close(self) -> None: ...


def make_backend(settings: Settings) -> Backend:
    kind = settings.GATEWAY_BACKEND.strip().lower()
    if kind not in ("aio", "threads"):
        raise ValueError(f"GATEWAY_BACKEND={settings.GATEWAY_BACKEND!r}: use aio or threads")
    if kind == "threads":
        from .threaded import ThreadedBackend
        return ThreadedBackend(settings)
    from .aio_backend import AioBackend
    return AioBackend(settings)


def plan(call: Call, methods: frozenset[str], attrs: frozenset[str], oneway: frozenset[str]) -> Any:
    """What to send for call, given the object's metadata: the answer itself (for $meta), or
    (method name, args, kwargs, flags) for the proxy's _pyroInvoke."""
    member = call.member
    if member == META:
        return {"methods": sorted(methods), "attributes": sorted(attrs), "oneway": sorted(oneway)}
    if member in attrs:
        if call.args or call.kwargs:
            raise BadRequest(f"{member} is an attribute: read it without arguments")
        return "__getattr__", (member,), None, 0
    if member not in methods:
        raise NoSuchMember(f"{call.locator} has no exposed method or attribute {member!r}; GET .../{META} lists them")
    return member, call.args, call.kwargs, wire.FLAG_ONEWAY if call.oneway or member in oneway else 0


class Services:
    """Per-service slots, and whatever a backend keeps per service (`state`), in a bounded table."""

    def __init__(self, settings: Settings, on_forget: Any = None) -> None:
        self.settings = settings
        self.on_forget = on_forget                 # on_forget(state) when a service is dropped
        self._table: OrderedDict[tuple[str, str], _Service] = OrderedDict()
        self._max = max(64, settings.MESH_MAX_ENTRIES)

    def get(self, key: tuple[str, str]) -> "_Service":
        service = self._table.get(key)
        if service is None:
            service = self._table[key] = _Service(self.settings.GATEWAY_BACKEND_CONCURRENCY)
            self._forget_unused()
        else:
            self._table.move_to_end(key)
        return service

    @contextlib.asynccontextmanager
    async def slot(self, key: tuple[str, str]) -> AsyncIterator["_Service"]:
        service = self.get(key)
        service.running += 1
        try:
            try:
                await asyncio.wait_for(service.slots.acquire(), self.settings.GATEWAY_QUEUE_TIMEOUT)
            except asyncio.TimeoutError:
                raise Busy(f"{key[1]} is busy: {self.settings.GATEWAY_BACKEND_CONCURRENCY} calls are running and "
                           f"none finished within {self.settings.GATEWAY_QUEUE_TIMEOUT:g} s; try again later") from None
            try:
                yield service
            finally:
                service.slots.release()
        finally:
            service.running -= 1

    def _forget_unused(self) -> None:
        """Bound the table: drop the least recently used services that have no call running."""
        while len(self._table) > self._max:
            for key, service in self._table.items():
                if not service.running:
                    del self._table[key]
                    if self.on_forget is not None:
                        self.on_forget(service.state)
                    break
            else:
                return

    def states(self) -> list[Any]:
        return [service.state for service in self._table.values()]

    def clear(self) -> None:
        self._table.clear()


class _Service:
    def __init__(self, slots: int) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.running = 0                    # requests holding or waiting for a slot
        self.state: Any = None              # the backend's (connected proxies)


def proxy_settings(settings: Settings, cache: dict[str, Settings], realm: str) -> Settings:
    """The settings a backend's proxies use for realm (cached per realm)."""
    found = cache.get(realm)
    if found is None:
        found = cache[realm] = settings.copy(REALM=realm, COMMTIMEOUT=settings.GATEWAY_CALL_TIMEOUT)
    return found
