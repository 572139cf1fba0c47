"""One call at a time on an asyncio proxy connection that does not pipeline (a Pyro5 daemon, a
threaded meshrpc daemon): the calls take turns, in the order they asked.

asyncio.Lock would do, but its acquire is a coroutine even when nobody holds it, and its release
looks for a waiter to wake: a sequential caller pays both on every call. Here a free turn is taken
by a plain method call (no coroutine, no Future); only a call that finds the turn taken waits.
"""

from __future__ import annotations

import asyncio
import collections


class Turn:
    """`take_now()` (a free turn: True, and it is yours) or `await take(loop)`; then `release()`
    (a hot path may test `taken` and `queue` itself: a free turn is `taken = True`; with nobody
    queued, releasing is `taken = False`).
    Loop thread only. A waiter that is cancelled leaves the queue; one cancelled just after the turn
    was handed to it passes the turn on, so a cancellation never leaves the turn taken."""

    __slots__ = ("taken", "queue")

    def __init__(self) -> None:
        self.taken = False
        self.queue: collections.deque[asyncio.Future[None]] = collections.deque()

    def take_now(self) -> bool:
        if self.taken:  # (never free while calls are queued: release() hands it to the first)
            return False
        self.taken = True
        return True

    async def take(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.take_now():
            return
        handed = loop.create_future()
        self.queue.append(handed)
        try:
            await handed  # release() hands the turn over: `taken` stays True for this call
        except BaseException:
            if handed.done() and not handed.cancelled():
                self.release()  # handed over, then cancelled before it ran: the next one's turn
            elif handed in self.queue:  # (release() may have passed over it already)
                self.queue.remove(handed)
            raise

    def release(self) -> None:
        queue = self.queue
        while queue:
            handed = queue.popleft()
            if not handed.done():
                handed.set_result(None)
                return
        self.taken = False
