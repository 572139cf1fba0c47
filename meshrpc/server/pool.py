"""A worker pool that grows on demand up to a bound and tells whether work is waiting."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger("meshrpc.server")

IDLE_WORKER_EXIT = 60.0  # seconds an idle worker thread waits before it ends


class WorkerPool:
    def __init__(self, max_workers: int, name: str = "meshrpc-worker") -> None:
        self.max_workers = max(1, max_workers)
        self.name = name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._queued = 0
        self._threads: set[threading.Thread] = set()
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is closed")
            self._queued += 1
            if self._queued > self._idle and len(self._threads) < self.max_workers:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True)
                self._threads.add(thread)
                thread.start()
        self._tasks.put((fn, args))

    def backlog(self) -> int:
        """Tasks submitted that no worker has taken yet."""
        return max(0, self._queued - self._idle)

    @property
    def size(self) -> int:
        return len(self._threads)

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                self._idle += 1
            try:
                item = self._tasks.get(timeout=IDLE_WORKER_EXIT)
            except queue.Empty:
                item = False
            with self._lock:
                self._idle -= 1
                if item is False:
                    if self._queued == 0 or self._closed:
                        self._threads.discard(me)
                        return
                    continue
                self._queued -= 1
            if item is None:
                with self._lock:
                    self._threads.discard(me)
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # a task must never kill its worker
                log.exception("unexpected error in worker task")

    def close(self, wait: float = 0.0) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
            for _ in threads:
                self._queued += 1
                self._tasks.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(wait)
