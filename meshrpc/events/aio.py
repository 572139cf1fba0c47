"""Events for asyncio code: the same bus, with handlers that run on the caller's event loop.

    from meshrpc.events.aio import EventBus
    async with EventBus() as bus:
        await bus.subscribe("home.*.door", on_door)          # a coroutine function or a plain one
        bus.publish("home.hall.door", {"open": True})       # never waits: no await needed
        async for event in bus.events("home.>"):            # or iterate
            ...

The network side is the threaded bus (its inbox daemon and senders run on their own threads);
each delivered event is handed to the loop and the inbox waits until the handler finished, so
order per publisher is kept and a slow handler slows only its own stream (the publisher's
bounded backlog then drops the oldest, counted). Nothing here blocks the loop: the calls that may
touch the network (the first subscribe or publish, close) run in a worker thread.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from ..config import Settings
from . import bus as threaded
from .inbox import Event, Subscription


class EventBus:
    """asyncio face of meshrpc.events.EventBus (same arguments)."""

    def __init__(self, settings: Settings | None = None, *, server: str | None = None,
                 on_loss: Callable[[str, int], None] | None = None) -> None:
        self.sync = threaded.EventBus(settings, server=server, on_loss=on_loss)

    def publish(self, subject: str, message: Any, *, retain: bool = False) -> int:
        """As the threaded publish(): queues and returns at once (call start() first in a loop that
        must never wait on the mesh's first start-up, a few ms)."""
        return self.sync.publish(subject, message, retain=retain)

    async def start(self) -> None:
        """Start watching the mesh for subscribers now (off the loop), rather than at the first publish."""
        await asyncio.to_thread(self.sync._publishing)

    async def subscribe(self, patterns: str | Iterable[str], handler: Callable[[Event], Any], *,
                        regex: bool = False) -> Subscription:
        """handler(event) runs on this loop; a coroutine function is awaited before the next event
        of the same publisher is handed over."""
        loop = asyncio.get_running_loop()
        is_coroutine = inspect.iscoroutinefunction(handler)

        async def run(event: Event) -> None:
            result = handler(event)
            if is_coroutine or inspect.isawaitable(result):
                await result

        def on_inbox_thread(event: Event) -> None:
            if not loop.is_running():
                return                       # the program is ending: nobody to hand it to
            asyncio.run_coroutine_threadsafe(run(event), loop).result()
        return await asyncio.to_thread(self.sync.subscribe, patterns, on_inbox_thread, regex=regex)

    async def events(self, patterns: str | Iterable[str], *, regex: bool = False) -> AsyncIterator[Event]:
        """The matching events as an async iterator; leaving the loop unsubscribes."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1)   # the publisher's backlog does the buffering
        subscription = await self.subscribe(patterns, queue.put, regex=regex)
        try:
            while True:
                yield await queue.get()
        finally:
            await asyncio.to_thread(subscription.unsubscribe)

    async def wait_for_subscribers(self, subject: str | None = None, count: int = 1, timeout: float = 3.0) -> int:
        return await asyncio.to_thread(self.sync.wait_for_subscribers, subject, count, timeout)

    async def flush(self, timeout: float = 10.0) -> bool:
        return await asyncio.to_thread(self.sync.flush, timeout)

    def stats(self) -> dict[str, Any]:
        return self.sync.stats()

    async def aclose(self, flush: float = 0.0) -> None:
        await asyncio.to_thread(self.sync.close, flush)

    async def __aenter__(self) -> EventBus:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
