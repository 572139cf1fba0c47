"""How the gateway calls services: one small interface, implemented with threaded proxies.

`ThreadedBackend` runs blocking meshrpc Proxies on a bounded thread pool. Each service (a PYRONAME
or a chosen provider of a tag query) gets its own slots (GATEWAY_BACKEND_CONCURRENCY): a request
waits for a slot on the event loop, holding no thread, so one slow service occupies at most its
slots' workers and the others keep theirs. Connected proxies are kept per service and reused.

Another backend (an asyncio proxy, once meshrpc has one) only needs the `Backend` methods.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import errors
from ..wire import frame as wire
from ..client.proxy import Proxy, StreamResultIterator
from ..config import Settings
from ..context import current_context
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


class _Service:
    """Slots and idle connected proxies of one locator."""

    def __init__(self, slots: int) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.idle: list[Proxy] = []
        self.running = 0                    # requests holding or waiting for a slot


class ThreadedBackend:
    """Backend on meshrpc's blocking Proxy, in a bounded thread pool. Create it inside the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._proxy_settings: dict[str, Settings] = {}
        self._pool = ThreadPoolExecutor(settings.GATEWAY_WORKERS, thread_name_prefix="meshrpc-gateway")
        self._services: OrderedDict[tuple[str, str], _Service] = OrderedDict()
        self._lock = threading.Lock()       # guards each service's idle list (used from worker threads)
        self._max_services = max(64, settings.MESH_MAX_ENTRIES)

    async def run_blocking(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def invoke(self, call: Call) -> Any:
        service = self._service((call.realm, call.locator))
        service.running += 1
        try:
            try:
                await asyncio.wait_for(service.slots.acquire(), self.settings.GATEWAY_QUEUE_TIMEOUT)
            except asyncio.TimeoutError:
                raise Busy(f"{call.locator} is busy: {self.settings.GATEWAY_BACKEND_CONCURRENCY} calls are "
                           f"running and none finished within {self.settings.GATEWAY_QUEUE_TIMEOUT:g} s; "
                           "try again later") from None
            try:
                return await self.run_blocking(self._invoke_blocking, service, call)
            finally:
                service.slots.release()
        finally:
            service.running -= 1

    def _service(self, locator: tuple[str, str]) -> _Service:
        service = self._services.get(locator)
        if service is None:
            service = self._services[locator] = _Service(self.settings.GATEWAY_BACKEND_CONCURRENCY)
            self._forget_unused()
        else:
            self._services.move_to_end(locator)
        return service

    def _forget_unused(self) -> None:
        """Bound the table: drop the least recently used services that have no call running."""
        while len(self._services) > self._max_services:
            for locator, service in self._services.items():
                if not service.running:
                    del self._services[locator]
                    self._close_idle(service)
                    break
            else:
                return

    def _invoke_blocking(self, service: _Service, call: Call) -> Any:
        with self._lock:
            proxy = service.idle.pop() if service.idle else None
        if proxy is None:
            proxy = Proxy(call.locator, settings=self._settings_for(call.realm))
        current_context.correlation_id = call.correlation_id
        healthy = False
        try:
            result = _invoke_on(proxy, call, self.settings.GATEWAY_STREAM_MAX_ITEMS)
            healthy = True
            return result
        except errors.CommunicationError:
            raise
        except Exception:
            healthy = True   # the service answered (with an error): its connection is fine
            raise
        finally:
            current_context.correlation_id = None
            if healthy and proxy._pyroConnection is not None:
                with self._lock:
                    service.idle.append(proxy)
            else:
                proxy._pyroRelease()

    def _settings_for(self, realm: str) -> Settings:
        settings = self._proxy_settings.get(realm)
        if settings is None:
            settings = self._proxy_settings[realm] = self.settings.copy(
                REALM=realm, COMMTIMEOUT=self.settings.GATEWAY_CALL_TIMEOUT)
        return settings

    def _close_idle(self, service: _Service) -> None:
        with self._lock:
            idle, service.idle = service.idle, []
        for proxy in idle:
            proxy._pyroRelease()

    def close(self) -> None:
        for service in list(self._services.values()):
            self._close_idle(service)
        self._services.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _invoke_on(proxy: Proxy, call: Call, max_items: int) -> Any:
    """Run call on proxy (in a worker thread)."""
    if not proxy._pyroMethods and not proxy._pyroAttrs:
        proxy._pyroBind()
    member = call.member
    if member == META:
        return {"methods": sorted(proxy._pyroMethods), "attributes": sorted(proxy._pyroAttrs),
                "oneway": sorted(proxy._pyroOneway)}
    if member in proxy._pyroAttrs:
        if call.args or call.kwargs:
            raise BadRequest(f"{member} is an attribute: read it without arguments")
        return proxy._pyroInvoke("__getattr__", (member,), None)
    if member not in proxy._pyroMethods:
        raise NoSuchMember(f"{call.locator} has no exposed method or attribute {member!r}; "
                           f"GET .../{META} lists them")
    if call.oneway or member in proxy._pyroOneway:
        proxy._pyroInvoke(member, call.args, call.kwargs, wire.FLAG_ONEWAY)
        return NO_REPLY
    result = proxy._pyroInvoke(member, call.args, call.kwargs)
    if isinstance(result, StreamResultIterator):
        items = []
        try:
            for item in result:
                items.append(item)
                if len(items) >= max_items:
                    break
        finally:
            result.close()
        return items
    return result
