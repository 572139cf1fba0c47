"""A worker pool that grows on demand up to a bound and tells whether work is waiting."""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Callable

from ..limits import IDLE_WORKER_EXIT

log = logging.getLogger("meshrpc.server")


class WorkerPool:
    def __init__(self, max_workers: int, name: str = "meshrpc-worker") -> None:
        self.max_workers = max(1, max_workers)
        self.name = name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._queued = 0
        self._starting = 0  # threads started for queued tasks that have not taken one yet
        self._threads: set[threading.Thread] = set()
        self._closed = False
        # kept up to date under the lock by _recount(): a worker reads them after every request, as
        # plain attributes (no call). backlogged: tasks wait that no worker (running, or starting for
        # them) will take soon. has_room: at most half the workers started, so a task submitted now
        # gets a thread of its own and a lingering worker need not watch the backlog signal (one
        # blocking read instead of poll + read).
        self.backlogged = False
        self.has_room = True
        # readable while tasks wait for a worker: lingering workers poll it next to their socket, so
        # they give way at once, and sleep undisturbed otherwise (no periodic wake-ups to check)
        self._signal_r, self._signal_w = os.pipe()
        os.set_blocking(self._signal_r, False)
        os.set_blocking(self._signal_w, False)
        self._signalled = False

    @property
    def backlog_fd(self) -> int:
        return self._signal_r

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is closed")
            self._queued += 1
            if self._queued > self._idle + self._starting and len(self._threads) < self.max_workers:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True)
                self._threads.add(thread)
                self._starting += 1
                thread.start()
            self._recount()
            if self.backlogged and not self._signalled:
                self._signalled = True
                try:
                    os.write(self._signal_w, b"!")
                except OSError:
                    pass
        self._tasks.put((fn, args))

    def _recount(self) -> None:  # with the lock held, after any change of the counts or the threads
        self.backlogged = self._queued > self._idle + self._starting
        self.has_room = len(self._threads) * 2 <= self.max_workers

    def _clear_signal(self) -> None:  # with the lock held
        if self._signalled and not self.backlogged:
            self._signalled = False
            try:
                while os.read(self._signal_r, 64):
                    pass
            except OSError:
                pass

    @property
    def size(self) -> int:
        return len(self._threads)

    def _work(self) -> None:
        me = threading.current_thread()
        with self._lock:
            self._starting -= 1
            self._recount()
        while True:
            with self._lock:
                self._idle += 1
                self._recount()
            try:
                item = self._tasks.get(timeout=IDLE_WORKER_EXIT)
            except queue.Empty:
                item = False
            with self._lock:
                self._idle -= 1
                if item is False:
                    ending = self._queued == 0 or self._closed
                    if ending:
                        self._threads.discard(me)
                    self._recount()
                    if ending:
                        return
                    continue
                self._queued -= 1
                self._recount()
                self._clear_signal()
            if item is None:
                with self._lock:
                    self._threads.discard(me)
                    self._recount()
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
            self._recount()
        for fd in (self._signal_r, self._signal_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join(wait)
