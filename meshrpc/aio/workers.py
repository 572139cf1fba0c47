"""The threads an asyncio daemon runs plain (not `async def`) methods on.

`loop.run_in_executor` with a ThreadPoolExecutor costs the loop thread about 2,500 Python opcodes per
call: a concurrent Future and a work item, a semaphore and locks in Python, an asyncio Future chained
to the concurrent one, their callbacks, and a handle per result. Here a call is handed over as one
tuple through a `queue.SimpleQueue` (C: no Python lock), and its outcome comes back as one tuple in
a deque: the first outcome of a batch wakes the loop (`call_soon_threadsafe`), the ones that finish
before the loop takes them ride along with it.

Threads start as calls need them, at most `size`; the count of calls handed over and not yet taken
back is kept by the loop thread alone, and there is a thread for each: a method that waits for
another call of the same daemon (a callback round trip) gets a thread for it while fewer than `size`
plain calls are running. Calls beyond `size` wait on the loop's side, in a queue per owner (a client
connection), and are handed over in turn, one owner after the other: a client that sends thousands
of calls at once does not make another client's call wait behind all of them.
The threads are daemon threads: a method that never returns does not keep the process alive.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger("meshrpc.aio")

_STOP = None  # what a thread takes from the queue to end


class Workers:
    """At most `size` threads named `name`_N running `function(*args)` for the loop's calls; each
    outcome (the function's return value) is handed to `done(outcome, *args)` on the loop.
    `failed(exc, *args)` gives the outcome of a function that raised (it should not)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, name: str,
                 failed: Callable[..., Any]) -> None:
        self._loop = loop
        self._size = max(1, size)
        self._name = name
        self._failed = failed
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._outcomes: collections.deque = collections.deque()
        self._woken = False  # a _take_outcomes is scheduled on the loop
        self._closed = False
        self.running = 0  # calls handed over and not taken back yet (the loop thread's count), at most size
        self._waiting: dict[Any, collections.deque] = {}  # owner -> its calls not handed over yet, in order
        self._turns: collections.deque = collections.deque()  # owners with waiting calls, the next first
        self._idle: asyncio.Future[None] | None = None  # all_done()'s
        # the context the loop's outcomes are handed on in (a copy of the creator's): not the worker
        # thread's, which keeps what every plain method run there set (call_soon_threadsafe would
        # take that one, and the next request read in the handle would start from it)
        self._context = contextvars.copy_context()

    def submit(self, owner: Any, function: Callable[..., Any], done: Callable[..., Any], *args: Any) -> None:
        """Run function(*args) on a thread; done(outcome, *args) on the loop then (loop thread only).
        All threads busy: it waits its turn among `owner`'s calls (see the module's doc)."""
        if self._closed:
            raise RuntimeError("the daemon's workers are shut down")
        if self.running >= self._size or self._turns:
            waiting = self._waiting.get(owner)
            if waiting is None:
                waiting = self._waiting[owner] = collections.deque()
                self._turns.append(owner)
            waiting.append((function, done, args))
            return
        self._hand_over(function, done, args)

    @property
    def in_hand(self) -> int:
        """Calls submitted and not done yet: those running (or about to) and those waiting their turn."""
        return self.running + sum(map(len, self._waiting.values()))

    def forget(self, owner: Any, keep: Callable[[tuple], bool] | None = None) -> None:
        """Drop `owner`'s calls not handed over yet (its connection is gone), except those whose args
        `keep(args)` says still run (they wait their turn as before)."""
        waiting = self._waiting.get(owner)
        if waiting is None:
            return
        if keep is not None:
            kept = [call for call in waiting if keep(call[2])]
            if kept:
                waiting.clear()
                waiting.extend(kept)
                return
        del self._waiting[owner]
        self._turns.remove(owner)

    def _hand_over_waiting(self) -> None:
        """Threads free: the waiting calls, one owner after the other."""
        turns, waiting = self._turns, self._waiting
        while turns and self.running < self._size:
            owner = turns.popleft()
            calls = waiting[owner]
            self._hand_over(*calls.popleft())
            if calls:
                turns.append(owner)
            else:
                del waiting[owner]

    def _hand_over(self, function: Callable[..., Any], done: Callable[..., Any], args: tuple) -> None:
        self.running += 1
        if self.running > len(self._threads) and len(self._threads) < self._size:
            thread = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._tasks.put((function, done, args))

    def _work(self) -> None:
        get, outcomes, failed = self._tasks.get, self._outcomes, self._failed
        while True:
            task = get()
            if task is _STOP:
                return
            function, done, args = task
            try:
                outcome = function(*args)
            except BaseException as exc:  # noqa: BLE001 - the call's outcome, on the loop
                outcome = failed(exc, *args)
            task = None
            outcomes.append((done, outcome, args))
            if not self._woken:  # (set before the loop takes the batch: at worst a second, empty wake-up)
                self._woken = True
                try:
                    self._loop.call_soon_threadsafe(self._wake, context=self._context)
                except RuntimeError:  # the loop is closed: nobody is left to answer
                    return

    def _wake(self) -> None:
        """The loop woke for outcomes: they are taken in its next turn, once the wake-up itself (the
        loop's self-pipe read, queued behind this) is done. Then the loop has nothing else queued, and
        a connection answered there may wait for its client's next request in the loop's selector
        (aio/spin.py) instead of giving way to that read."""
        self._loop.call_soon(self._take_outcomes, context=self._context)

    def _take_outcomes(self) -> None:
        """On the loop: every outcome that came, each handed to its `done`."""
        self._woken = False
        outcomes = self._outcomes
        while outcomes:
            done, outcome, args = outcomes.popleft()
            self.running -= 1
            try:
                done(outcome, *args)
            except Exception:  # one call's reply failed: the others still get theirs
                log.exception("answering a call failed")
        if self._turns and not self._closed:
            self._hand_over_waiting()
        if not self.running and self._idle is not None:
            if not self._idle.done():
                self._idle.set_result(None)
            self._idle = None

    def outcomes_waiting(self) -> bool:
        """Whether outcomes came that the loop has not handed on yet (the batch being handed on: a
        `done` asks, so that nothing waits for a client's next request while they wait)."""
        return bool(self._outcomes)

    def all_done(self) -> "asyncio.Future[None]":
        """A future (of the loop) done once no call is running."""
        idle = self._loop.create_future()
        if not self.running:
            idle.set_result(None)
        elif self._idle is None:
            self._idle = idle
        else:
            idle = self._idle
        return idle

    def shutdown(self) -> None:
        """No more calls; calls not started yet are dropped (their connections are closed by then),
        running ones finish on their threads, and the threads end."""
        self._closed = True
        self._waiting.clear()
        self._turns.clear()
        try:
            while True:
                self._tasks.get_nowait()
                self.running -= 1
        except queue.Empty:
            pass
        for _ in self._threads:
            self._tasks.put(_STOP)
