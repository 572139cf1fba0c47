"""The two ends of one publisher-to-subscriber stream, as pure logic (no I/O, no threads).

`Backlog` (publisher side): a bounded queue of events numbered 0, 1, 2... When it is full the
OLDEST event is dropped and counted: the newest state matters most to the people this is for
(a door that is now closed), and a publisher must never block on one slow subscriber. A dropped
event's number is used up, so the subscriber sees the gap.

`Receipts` (subscriber side): the next number expected from each stream. A batch's events below
it are duplicates (a batch re-sent after a connection failure) and skipped; numbers above it are
losses, counted. So every loss is counted exactly once, wherever it happened.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any

EventTuple = tuple  # (subject, message, time, flags) as it travels


class Backlog:
    """Events waiting for one subscriber. Thread-safe; `take` blocks until there is something."""

    def __init__(self, limit: int, first_seq: int = 0) -> None:
        if limit < 1:
            raise ValueError("a backlog holds at least one event")
        self.limit = limit
        self._events: deque[EventTuple] = deque()
        self._next_seq = first_seq      # number of the next event put
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._waiting = False
        self.closed = False
        self.dropped = 0                # events dropped because the backlog was full
        self.sent = 0                   # events taken for sending

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def put(self, event: EventTuple) -> bool:
        """Queue event; False when it pushed out the oldest one (counted in dropped)."""
        with self._lock:
            if self.closed:
                return True
            kept = True
            if len(self._events) >= self.limit:
                self._events.popleft()
                self.dropped += 1
                kept = False
            self._events.append(event)
            self._next_seq += 1
            if self._waiting:
                self._ready.notify()
            return kept

    def take(self, most: int, timeout: float | None = None) -> tuple[int, list[EventTuple]] | None:
        """(number of the first event, up to `most` events), waiting while empty; None once closed
        (or after timeout with nothing queued)."""
        with self._lock:
            while not self._events and not self.closed:
                self._waiting = True
                try:
                    if not self._ready.wait(timeout):
                        return None
                finally:
                    self._waiting = False
            if self.closed:
                return None
            count = min(most, len(self._events))
            first = self._next_seq - len(self._events)
            batch = [self._events.popleft() for _ in range(count)]
            self.sent += count
            return first, batch

    def __len__(self) -> int:
        return len(self._events)

    def close(self) -> int:
        """Stop; the events still queued are dropped (counted) and their number returned."""
        with self._lock:
            self.closed = True
            left = len(self._events)
            self.dropped += left
            self._events.clear()
            self._ready.notify_all()
            return left


class Receipts:
    """Per stream (one publisher's stream to this subscriber), the next number expected. Bounded:
    the streams heard from least recently are forgotten beyond `limit`."""

    def __init__(self, limit: int = 10_000) -> None:
        self._expected: OrderedDict[str, int] = OrderedDict()
        self._limit = limit
        self.lost = 0            # events that never arrived (dropped by a publisher, or lost on the way)
        self.duplicates = 0      # events that arrived twice (a re-sent batch) and were skipped

    def accept(self, stream: str, first_seq: int, count: int) -> tuple[int, int]:
        """A batch of count events numbered from first_seq: (index of the first new event in the
        batch, events lost just before it). Not thread-safe: one caller per stream at a time."""
        expected = self._expected.pop(stream, 0)
        skip = min(count, max(0, expected - first_seq))
        self.duplicates += skip
        gap = max(0, first_seq - expected)
        self.lost += gap
        self._expected[stream] = max(expected, first_seq + count)
        if len(self._expected) > self._limit:
            self._expected.popitem(last=False)
        return skip, gap

    def expected(self, stream: str) -> int:
        return self._expected.get(stream, 0)

    def stats(self) -> dict[str, Any]:
        return {"streams": len(self._expected), "lost": self.lost, "duplicates": self.duplicates}
