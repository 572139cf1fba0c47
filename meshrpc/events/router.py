"""The sending end: one Outbox per subscriber, and the Router that picks the outboxes of a subject.

Each outbox has its own bounded Backlog (streams.py) and its own sender thread with its own
connection, so a slow or dead subscriber holds up nothing but its own backlog: publish() only
appends to backlogs and never waits on the network. A sender takes everything queued (up to
EVENTS_BATCH_MAX) and sends it in one call; after a failure it sends the same batch again (the
receiver skips what it already has) until the subscriber is removed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import MeshError, SecurityError
from ..limits import EVENTS_ABSENT_MAX, EVENTS_ROUTE_CACHE_MAX
from ..wire.constants import EVENT_REPLAYED, EVENT_RETAIN
from .streams import Backlog, EventTuple
from .subjects import Pattern

log = logging.getLogger("meshrpc.events")


Send = Callable[[Any, str, int, list], None]      # (proxy, stream, first_seq, events)


@dataclass
class _Absent:
    patterns: tuple[Pattern, ...]
    next_seq: int
    since: float

    def matches(self, subject: str) -> bool:
        return any(p.matches(subject) for p in self.patterns)


def send_deliver(proxy: Any, stream: str, first_seq: int, events: list) -> None:
    proxy.deliver(stream, first_seq, events)


class Outbox:
    """Events on their way to one subscriber (identified by the URI of the object that takes them)."""

    def __init__(self, uri: str, patterns: Iterable[Pattern], settings: Settings, stream: str, *,
                 first_seq: int = 0, send: Send = send_deliver, give_up_after: float | None = None,
                 on_give_up: Callable[[Outbox], None] | None = None) -> None:
        self.uri = uri
        self.patterns = tuple(patterns)
        self.settings = settings
        self.stream = stream
        self.backlog = Backlog(settings.EVENTS_QUEUE_MAX, first_seq)
        self.delivered = 0
        self.failures = 0
        self.acked = first_seq        # every event numbered below this was delivered or dropped
        self._send = send
        self._give_up_after = give_up_after
        self._on_give_up = on_give_up
        self._stopped = threading.Event()
        self._progress = threading.Condition()
        self._overflowing = False
        self._thread = threading.Thread(target=self._run, name=f"meshrpc-events-to-{uri[-24:]}", daemon=True)
        self._thread.start()

    def matches(self, subject: str) -> bool:
        return any(p.matches(subject) for p in self.patterns)

    def put(self, event: EventTuple) -> None:
        if not self.backlog.put(event) and not self._overflowing:
            self._overflowing = True           # logged once per episode; every drop is counted
            log.warning("subscriber %s is slow: its backlog is full (EVENTS_QUEUE_MAX=%d), dropping the "
                        "oldest events (dropped so far: %d)", self.uri, self.backlog.limit, self.backlog.dropped)

    def flush(self, timeout: float) -> bool:
        """Wait until everything put so far was delivered (or dropped); False on timeout."""
        target = self.backlog.next_seq
        deadline = time.monotonic() + timeout
        with self._progress:    # a closed outbox may still finish the batch it is sending: wait for that too
            while self.acked < target and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return self.acked >= target

    def close(self) -> int:
        """Stop sending; the events still queued are dropped and counted. Returns the next number
        (a later outbox to the same subscriber continues from it, so the gap shows)."""
        self._stopped.set()
        self.backlog.close()          # wakes the sender, which tells flush() waiters as it ends
        return self.backlog.next_seq

    def stats(self) -> dict[str, Any]:
        return {"uri": self.uri, "patterns": [p.text for p in self.patterns], "queued": len(self.backlog),
                "delivered": self.delivered, "dropped": self.backlog.dropped, "failures": self.failures}

    def _run(self) -> None:
        from ..client.proxy import Proxy
        proxy: Any = None
        try:
            while True:
                item = self.backlog.take(self.settings.EVENTS_BATCH_MAX)
                if item is None:
                    return
                first, batch = item
                if len(self.backlog) == 0 and self._overflowing:
                    self._overflowing = False
                    log.warning("subscriber %s caught up; %d events were dropped for it in all",
                                self.uri, self.backlog.dropped)
                pause = self.settings.REBIND_BACKOFF_MIN
                failing_since: float | None = None
                while not self._stopped.is_set():
                    try:
                        if proxy is None:
                            proxy = Proxy(self.uri, settings=self.settings)
                            proxy._pyroTimeout = self.settings.EVENTS_DELIVER_TIMEOUT
                        self._send(proxy, self.stream, first, batch)
                        break
                    except (MeshError, OSError) as exc:
                        self.failures += 1
                        now = time.monotonic()
                        failing_since = failing_since or now
                        log.info("delivery to %s failed (%s); trying again", self.uri, exc)
                        if proxy is not None:
                            proxy._pyroRelease()
                            proxy = None
                        if isinstance(exc, SecurityError):    # a mesh key mismatch does not heal by trying
                            log.warning("dropping subscriber %s: it refuses this publisher (%s)", self.uri, exc)
                            if self._on_give_up is not None:
                                self._on_give_up(self)
                            return
                        if self._give_up_after is not None and now - failing_since > self._give_up_after:
                            log.warning("dropping subscriber %s: unreachable for %.1f s", self.uri, now - failing_since)
                            if self._on_give_up is not None:
                                self._on_give_up(self)
                            return
                        self._stopped.wait(pause)
                        pause = min(pause * 2, self.settings.REBIND_BACKOFF_MAX)
                else:
                    return
                self.delivered += len(batch)
                with self._progress:
                    self.acked = first + len(batch)
                    self._progress.notify_all()
        finally:
            if proxy is not None:
                proxy._pyroRelease()
            with self._progress:
                self._progress.notify_all()


class Router:
    """The outboxes of one publishing side (a process's bus, or the event server), the route cache
    subject -> outboxes, and the retained last value per subject. Thread-safe."""

    def __init__(self, settings: Settings, stream: str, *, send: Send = send_deliver) -> None:
        self.settings = settings
        self.stream = stream
        self._send = send
        self._lock = threading.Lock()
        self._outboxes: dict[str, Outbox] = {}
        self._routes: dict[str, tuple[tuple[Outbox, ...], tuple[_Absent, ...]]] = {}
        self._retained: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._absent: OrderedDict[str, _Absent] = OrderedDict()   # subscribers gone, maybe for a moment
        self.published = 0
        self.missed = 0                # events that departed subscribers would have had
        self.dropped_gone = 0          # by subscribers removed since
        self.delivered_gone = 0
        self._changed = threading.Condition(self._lock)

    def publish(self, subject: str, message: Any, *, retain: bool = False, when: float | None = None) -> int:
        """Queue the event for every matching subscriber; the number of them."""
        when = time.time() if when is None else when
        with self._lock:
            self.published += 1
            if retain:
                self._retained[subject] = (message, when)
                self._retained.move_to_end(subject)
                if len(self._retained) > self.settings.EVENTS_RETAIN_MAX:
                    self._retained.popitem(last=False)
            route = self._routes.get(subject)
            if route is None:
                route = (tuple(o for o in self._outboxes.values() if o.matches(subject)),
                         tuple(a for a in self._absent.values() if a.matches(subject)))
                if len(self._routes) >= EVENTS_ROUTE_CACHE_MAX:
                    self._routes.clear()
                self._routes[subject] = route
            outboxes, absent = route
            event = (subject, message, when, EVENT_RETAIN if retain else 0)
            for outbox in outboxes:
                outbox.put(event)
            for gone in absent:          # it would have had this one: if it comes back, the gap shows
                gone.next_seq += 1
            self.missed += len(absent)
            return len(outboxes)

    def set_subscriber(self, uri: str, patterns: Iterable[Pattern], *, send: Send | None = None,
                       give_up_after: float | None = None) -> None:
        """Add a subscriber, or change its patterns. Retained values its (new) patterns match are
        queued for it first."""
        patterns = tuple(patterns)
        with self._lock:
            outbox = self._outboxes.get(uri)
            old = outbox.patterns if outbox is not None else ()
            if outbox is None:
                outbox = Outbox(uri, patterns, self.settings, self.stream, first_seq=self._first_seq(uri),
                                send=send or self._send, give_up_after=give_up_after, on_give_up=self._gave_up)
                self._outboxes[uri] = outbox
                log.info("subscriber %s: %s", uri, ", ".join(p.text for p in patterns))
            elif set(old) == set(patterns):
                return
            outbox.patterns = patterns
            self._routes.clear()
            for subject, (message, when) in self._retained.items():
                if outbox.matches(subject) and not any(p.matches(subject) for p in old):
                    outbox.put((subject, message, when, EVENT_REPLAYED))
            self._changed.notify_all()

    def remove_subscriber(self, uri: str) -> None:
        with self._lock:
            outbox = self._outboxes.pop(uri, None)
            if outbox is None:
                return
            self._routes.clear()
        left = len(outbox.backlog)
        self._remember(outbox, outbox.close())
        self._forget_counts(outbox)
        log.info("subscriber %s removed%s", uri, f" ({left} undelivered events dropped)" if left else "")

    def _gave_up(self, outbox: Outbox) -> None:
        with self._lock:
            if self._outboxes.get(outbox.uri) is outbox:
                del self._outboxes[outbox.uri]
                self._routes.clear()
        self._remember(outbox, outbox.close())
        self._forget_counts(outbox)

    def _forget_counts(self, outbox: Outbox) -> None:
        """A closed outbox's drops stay in the totals."""
        with self._lock:
            self.dropped_gone += outbox.backlog.dropped
            self.delivered_gone += outbox.delivered

    def _remember(self, outbox: Outbox, next_seq: int) -> None:
        """A subscriber went (goodbye, silence, or unreachable): remember its patterns and number
        for a while, counting what it misses, so that if it comes back its first batch shows the gap."""
        now = time.monotonic()
        with self._lock:
            self._absent.pop(outbox.uri, None)
            self._absent[outbox.uri] = _Absent(outbox.patterns, next_seq, now)
            keep = self.settings.MESH_DORMANT_KEEP
            while self._absent and (len(self._absent) > EVENTS_ABSENT_MAX
                                    or now - next(iter(self._absent.values())).since > keep):
                self._absent.popitem(last=False)
            self._routes.clear()

    def _first_seq(self, uri: str) -> int:
        """Lock held. The number a (returning) subscriber's stream continues from."""
        gone = self._absent.pop(uri, None)
        return gone.next_seq if gone is not None else 0

    def subscribers(self, subject: str | None = None) -> list[str]:
        with self._lock:
            return sorted(uri for uri, o in self._outboxes.items() if subject is None or o.matches(subject))

    def wait_for_subscribers(self, subject: str | None, count: int, timeout: float) -> int:
        """Wait until at least count subscribers (of subject) are known; how many there are."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = sum(1 for o in self._outboxes.values() if subject is None or o.matches(subject))
                remaining = deadline - time.monotonic()
                if found >= count or remaining <= 0:
                    return found
                self._changed.wait(remaining)

    def flush(self, timeout: float) -> bool:
        """Wait until every event published so far reached its subscribers (or was dropped)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            outboxes = list(self._outboxes.values())
        return all(o.flush(max(0.0, deadline - time.monotonic())) for o in outboxes)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            per = [o.stats() for o in self._outboxes.values()]
            return {"published": self.published, "subscribers": per, "retained": len(self._retained),
                    "delivered": sum(s["delivered"] for s in per) + self.delivered_gone,
                    "dropped": sum(s["dropped"] for s in per) + self.dropped_gone,
                    "missed_while_away": self.missed, "away": len(self._absent)}

    def close(self) -> None:
        with self._lock:
            outboxes = list(self._outboxes.values())
            self._outboxes.clear()
            self._routes.clear()
        for outbox in outboxes:
            outbox.close()
