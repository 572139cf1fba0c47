"""AioBackend: meshrpc.aio proxies on the gateway's own event loop.

One proxy per service: meshrpc daemons take pipelined calls, so concurrent requests share its
connection (a Pyro5 daemon takes one call at a time on it; the service's slots bound the queue).
No thread per call; name-server lookups (and other blocking work) run on a small pool."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..aio import AsyncStreamIterator, Proxy
from ..config import Settings
from ..context import current_context
from ..limits import GATEWAY_CONNECTIONS_PER_SERVICE
from ..wire import frame as wire
from .backend import NO_REPLY, Call, Services, plan, proxy_settings


class AioBackend:
    """Create it inside the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(max(2, min(8, settings.GATEWAY_WORKERS)), thread_name_prefix="meshrpc-gateway")
        self._services = Services(settings, on_forget=self._release)
        self._proxy_settings: dict[str, Settings] = {}
        self._releasing: set[asyncio.Task] = set()

    async def run_blocking(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def invoke(self, call: Call) -> Any:
        async with self._services.slot((call.realm, call.locator)) as service:
            if service.state is None:
                service.state = _Connections()
            connections: _Connections = service.state
            proxy = connections.pick(lambda: Proxy(
                call.locator, settings=proxy_settings(self.settings, self._proxy_settings, call.realm)))
            try:
                return await self._invoke_on(proxy, call)
            finally:
                connections.done(proxy)

    async def _invoke_on(self, proxy: Proxy, call: Call) -> Any:
        current_context.isolate()        # this request's own context (the task serves a connection)
        current_context.correlation_id = call.correlation_id
        if not proxy._pyroMethods and not proxy._pyroAttrs:
            await proxy._pyroBind()
        step = plan(call, proxy._pyroMethods, proxy._pyroAttrs, proxy._pyroOneway)
        if isinstance(step, dict):
            return step
        method, args, kwargs, flags = step
        result = await proxy._pyroInvoke(method, args, kwargs, flags)
        if flags & wire.FLAG_ONEWAY:
            return NO_REPLY
        if isinstance(result, AsyncStreamIterator):
            items = []
            try:
                async for item in result:
                    items.append(item)
                    if len(items) >= self.settings.GATEWAY_STREAM_MAX_ITEMS:
                        break
            finally:
                await result.aclose()
            return items
        return result

    def _release(self, connections: "_Connections | None") -> None:
        for proxy in connections.proxies if connections else ():
            task = asyncio.get_running_loop().create_task(proxy._pyroRelease())
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    def close(self) -> None:
        for connections in self._services.states():
            for proxy in connections.proxies if connections else ():
                if proxy._conn is not None:
                    proxy._conn.close()
        self._services.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Connections:
    """A service's proxies (a connection each): the least busy one takes the next call; a new one is
    opened while every one has a call in flight, up to GATEWAY_CONNECTIONS_PER_SERVICE. Pipelining lets one
    connection carry many calls, but a daemon reads one connection on one thread at a time."""

    def __init__(self) -> None:
        self.proxies: list[Proxy] = []
        self.in_flight: dict[int, int] = {}

    def pick(self, new: Any) -> Proxy:
        best = min(self.proxies, key=lambda p: self.in_flight[id(p)], default=None)
        if best is None or (self.in_flight[id(best)] and len(self.proxies) < GATEWAY_CONNECTIONS_PER_SERVICE):
            best = new()
            self.proxies.append(best)
            self.in_flight[id(best)] = 0
        self.in_flight[id(best)] += 1
        return best

    def done(self, proxy: Proxy) -> None:
        self.in_flight[id(proxy)] -= 1
