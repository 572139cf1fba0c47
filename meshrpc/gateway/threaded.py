"""ThreadedBackend: blocking meshrpc Proxies on a bounded thread pool (the gateway's TLS path).

Connected proxies are kept per service and reused; a request waits for its service's slot on the
event loop (backend.Services), holding no thread while it waits."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import errors
from ..client.proxy import Proxy, StreamResultIterator
from ..config import Settings
from ..context import current_context
from ..wire import frame as wire
from .backend import NO_REPLY, Call, Services, plan, proxy_settings


class ThreadedBackend:
    """Create it inside the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(settings.GATEWAY_WORKERS, thread_name_prefix="meshrpc-gateway")
        self._services = Services(settings, on_forget=self._close_idle)
        self._proxy_settings: dict[str, Settings] = {}
        self._lock = threading.Lock()       # guards each service's idle list (used from worker threads)

    async def run_blocking(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def invoke(self, call: Call) -> Any:
        async with self._services.slot((call.realm, call.locator)) as service:
            if service.state is None:
                service.state = []           # idle connected proxies
            return await self.run_blocking(self._invoke_blocking, service.state, call)

    def _invoke_blocking(self, idle: list[Proxy], call: Call) -> Any:
        with self._lock:
            proxy = idle.pop() if idle else None
        if proxy is None:
            proxy = Proxy(call.locator, settings=proxy_settings(self.settings, self._proxy_settings, call.realm))
        current_context.correlation_id = call.correlation_id
        healthy = True
        try:
            return self._run(proxy, call)
        except errors.CommunicationError:
            healthy = False
            raise
        finally:
            current_context.correlation_id = None
            if healthy and proxy._pyroConnection is not None:
                with self._lock:
                    idle.append(proxy)
            else:
                proxy._pyroRelease()

    def _run(self, proxy: Proxy, call: Call) -> Any:
        if not proxy._pyroMethods and not proxy._pyroAttrs:
            proxy._pyroBind()
        step = plan(call, proxy._pyroMethods, proxy._pyroAttrs, proxy._pyroOneway)
        if isinstance(step, dict):
            return step
        method, args, kwargs, flags = step
        result = proxy._pyroInvoke(method, args, kwargs, flags)
        if flags & wire.FLAG_ONEWAY:
            return NO_REPLY
        if isinstance(result, StreamResultIterator):
            items = []
            try:
                for item in result:
                    items.append(item)
                    if len(items) >= self.settings.GATEWAY_STREAM_MAX_ITEMS:
                        break
            finally:
                result.close()
            return items
        return result

    def _close_idle(self, idle: list[Proxy] | None) -> None:
        with self._lock:
            proxies = list(idle or ())
            if idle:
                idle.clear()
        for proxy in proxies:
            proxy._pyroRelease()

    def close(self) -> None:
        for idle in self._services.states():
            self._close_idle(idle)
        self._services.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
