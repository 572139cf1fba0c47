"""What keeps one client from hurting the others: request rates per address, connections that are
slow to send a request head (slow loris), and the number of open connections."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..limits import GATEWAY_MAX_TRACKED_CLIENTS


class RateLimiter:
    """A token bucket per client address: `rate` requests per second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # address -> (tokens, when)

    def allow(self, address: str) -> float:
        """0.0 when a request from address may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, then = self._buckets.pop(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[address] = (tokens, now)
        if len(self._buckets) > GATEWAY_MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)       # the least recently seen address starts afresh
        return wait


class _Refuse(asyncio.Protocol):
    """Closes a connection at once (over the connection limit)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionGuard:
    """Wraps aiohttp's protocol factory: at most `max_connections` open; a connection that has no
    request in progress for `header_timeout` seconds (it never finished a request head, or sat idle
    after a reply) is closed. `started`/`finished` are called by a middleware around each request."""

    def __init__(self, server: Any, header_timeout: float, max_connections: int) -> None:
        self.server = server                      # aiohttp.web.Server: the handler factory
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.refused = 0
        self.closed_slow = 0
        self._busy: dict[Any, int] = {}          # handler -> requests in progress
        self._waiting: dict[Any, float] = {}     # handler -> since when it has none
        self._task: asyncio.Task | None = None

    def factory(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) >= self.max_connections:
            self.refused += 1
            return _Refuse()
        return self.server()

    def started(self, handler: Any) -> None:
        self._busy[handler] = self._busy.get(handler, 0) + 1
        self._waiting.pop(handler, None)

    def finished(self, handler: Any) -> None:
        left = self._busy.get(handler, 1) - 1
        if left > 0:
            self._busy[handler] = left
        else:
            self._busy.pop(handler, None)
            self._waiting[handler] = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sweep_forever())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(1.0, self.header_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def sweep(self) -> None:
        now = time.monotonic()
        open_now = set(self.server.connections)
        for gone in [h for h in self._waiting if h not in open_now]:
            del self._waiting[gone]
        for gone in [h for h in self._busy if h not in open_now]:
            del self._busy[gone]
        for handler in open_now:
            if handler in self._busy:
                continue
            since = self._waiting.setdefault(handler, now)   # first seen now: the clock starts
            if now - since > self.header_timeout:
                transport = handler.transport
                if transport is not None:
                    self.closed_slow += 1
                    transport.close()
                self._waiting.pop(handler, None)
