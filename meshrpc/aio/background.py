"""One asyncio loop on a thread of its own, for plain (non-asyncio) code: asynchronous calls with futures.

`shared()` is the process's one (started on first use, a daemon thread `meshrpc-futures-loop`):
every asynchronous proxy (meshrpc.asyncproxy) runs its meshrpc.aio.Proxy there, so a thousand
calls in flight cost no thread each. User code (meshrpc.Future callables, then/iferror chains) may
block, so it never runs on that loop: it runs on a small bounded pool (FUTURE_WORKERS).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from typing import Any, Callable, Coroutine

from ..config import Settings, config as default_config


class BackgroundLoop:
    def __init__(self, settings: Settings, name: str = "meshrpc-futures") -> None:
        self.loop = asyncio.new_event_loop()
        self.workers = concurrent.futures.ThreadPoolExecutor(max(1, settings.FUTURE_WORKERS),
                                                             thread_name_prefix=f"{name}-worker")
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name=f"{name}-loop", daemon=True)
        self._thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run coro on the loop; its concurrent future (cancel() cancels the task)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_later(self, delay: float, func: Callable[[], Any]) -> asyncio.TimerHandle:
        handle: list[asyncio.TimerHandle] = []
        ready = threading.Event()

        def arm() -> None:
            handle.append(self.loop.call_later(delay, func))
            ready.set()
        self.loop.call_soon_threadsafe(arm)
        ready.wait()
        return handle[0]

    def on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.on_loop():
            self._thread.join(5.0)
        self.workers.shutdown(wait=False, cancel_futures=True)


_shared: BackgroundLoop | None = None
_shared_lock = threading.Lock()


def shared(settings: Settings | None = None) -> BackgroundLoop:
    """The process's background loop (created on first use, with FUTURE_WORKERS from settings)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = BackgroundLoop(settings or default_config)
            atexit.register(_shared.close)
        return _shared
