"""The receiving end: the object a subscribing process serves, and the subscriptions it feeds."""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..server.decorators import expose, idempotent
from ..wire.constants import EVENT_REPLAYED
from .streams import Receipts
from .subjects import Pattern

log = logging.getLogger("meshrpc.events")

_STRIPES = 64   # locks that keep each stream's batches in order (streams share a stripe by hash)


@dataclass(frozen=True)
class Event:
    """One delivered event. subject, msg and time (the publisher's time.time()) as in Pyro3's
    Event Server; retained: a last value replayed to a late joiner; publisher and seq: which
    stream it came on and its number there."""

    subject: str
    msg: Any
    time: float
    retained: bool = False
    publisher: str = ""
    seq: int = -1

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "msg": self.msg, "time": self.time, "retained": self.retained,
                "publisher": self.publisher, "seq": self.seq}


Handler = Callable[[Event], Any]


class Subscription:
    """What subscribe() returns: its patterns, counters, and unsubscribe() (also `with`)."""

    def __init__(self, patterns: Iterable[Pattern], handler: Handler, cancel: Callable[[Subscription], None]) -> None:
        self.patterns = tuple(patterns)
        self.handler = handler
        self.received = 0
        self.failed = 0            # handler calls that raised (logged)
        self._cancel = cancel
        self.active = True

    def matches(self, subject: str) -> bool:
        return any(p.matches(subject) for p in self.patterns)

    def dispatch(self, event: Event) -> None:
        self.received += 1
        try:
            self.handler(event)
        except Exception:  # a failing handler must not stop the stream (or the other handlers)
            self.failed += 1
            log.exception("event handler %r failed on %s", self.handler, event.subject)

    def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            self._cancel(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        return f"<Subscription {[p.text for p in self.patterns]} received={self.received}>"


class Inbox:
    """Served by a subscribing process: publishers (or an event server) call deliver() with
    batches of numbered events. Handlers run on the daemon's worker for that publisher's
    connection, in order; batches of different publishers are handled concurrently."""

    def __init__(self, on_loss: Callable[[str, int], None] | None = None) -> None:
        self._subscriptions: tuple[Subscription, ...] = ()
        self._receipts = Receipts()
        self._receipts_lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._on_loss = on_loss
        self.received = 0

    def add(self, subscription: Subscription) -> None:
        self._subscriptions = (*self._subscriptions, subscription)

    def remove(self, subscription: Subscription) -> None:
        self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return self._subscriptions

    @expose
    @idempotent   # a re-sent batch is recognised by its numbers and skipped
    def deliver(self, stream: str, first_seq: int, events: list) -> None:
        if not isinstance(stream, str) or not isinstance(first_seq, int) or not isinstance(events, (list, tuple)):
            raise ValueError("deliver(stream: str, first_seq: int, events: list)")
        with self._stripes[zlib.crc32(stream.encode("utf-8", "replace")) % _STRIPES]:
            with self._receipts_lock:
                skip, gap = self._receipts.accept(stream, first_seq, len(events))
            if gap:
                log.warning("lost %d event(s) from publisher %s before number %d", gap, stream, first_seq)
                if self._on_loss is not None:
                    self._on_loss(stream, gap)
            for offset in range(skip, len(events)):
                try:
                    subject, msg, when, flags = events[offset]
                except (TypeError, ValueError):
                    log.warning("ignoring a malformed event from %s: %.80r", stream, events[offset])
                    continue
                if not isinstance(subject, str) or not isinstance(flags, int):
                    continue
                event = Event(subject, msg, when, bool(flags & EVENT_REPLAYED), stream, first_seq + offset)
                self.received += 1
                for subscription in self._subscriptions:
                    if subscription.matches(subject):
                        subscription.dispatch(event)

    def stats(self) -> dict[str, Any]:
        with self._receipts_lock:
            return {"received": self.received, **self._receipts.stats()}
