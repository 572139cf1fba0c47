"""The central event server (`meshrpc events serve`), for networks where multicast does not reach.

It speaks two dialects on one object, registered as `Pyro.EventService` (Pyro3's name; on the
mesh, and in the name server when NS_HOST is set, so it is found as the name server is):
- meshrpc buses (EVENTS_SERVER): relay(stream, first_seq, events) from publishers, numbered so
  re-sent batches are skipped; attach(inbox_uri, tags, lease) / detach(inbox_uri) from subscribers,
  who renew the lease. Deliveries go to their inboxes in batches, numbered, as on the mesh.
- Pyro3's Event Server API: publish(subjects, message), subscribe(subjects, subscriber),
  subscribeMatch(patterns, subscriber), unsubscribe(subjects, subscriber); the subscriber's
  event(ev) is called once per event with ev.subject, ev.msg, ev.time.
Every subscriber has its own bounded backlog and sender, as a mesh publisher gives them.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any

from ..config import Settings
from ..server.decorators import expose, idempotent
from ..wire.constants import EVENT_RETAIN, EVENTS_SERVER_NAME
from .inbox import Event
from .router import Router
from .streams import Receipts
from .subjects import Pattern, SubjectError, check_subject, pattern_of_tag

log = logging.getLogger("meshrpc.events")


def send_events(proxy: Any, stream: str, first_seq: int, events: list) -> None:
    """To a Pyro3-style subscriber: event(ev), one call per event (oneway if it says so)."""
    for subject, msg, when, _flags in events:
        proxy.event(Event(subject, msg, when))


def _subjects(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _uri_of(subscriber: Any) -> str:
    uri = getattr(subscriber, "_pyroUri", subscriber)
    if not isinstance(uri, str):
        uri = str(uri)
    if not uri.startswith("PYRO"):
        raise ValueError("a subscriber is a proxy (or URI) of an object with an event(ev) method")
    return uri


@expose
class EventServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.router = Router(settings, "es-" + secrets.token_hex(6))
        self._receipts = Receipts()
        self._relay_lock = threading.Lock()
        self._lock = threading.Lock()
        self._leases: dict[str, float] = {}                 # inbox uri -> expiry (monotonic)
        self._pyro3: dict[str, set[Pattern]] = {}           # Pyro3-style subscriber uri -> patterns
        self._stop = threading.Event()
        threading.Thread(target=self._expire_leases, name="meshrpc-events-leases", daemon=True).start()

    # ---------------------------------------------------------------- meshrpc buses
    @idempotent
    def relay(self, stream: str, first_seq: int, events: list) -> None:
        with self._relay_lock:
            skip, gap = self._receipts.accept(str(stream), int(first_seq), len(events))
            if gap:
                log.warning("lost %d event(s) from publisher %s", gap, stream)
            for subject, msg, when, flags in events[skip:]:
                if isinstance(subject, str):
                    self.router.publish(subject, msg, retain=bool(flags & EVENT_RETAIN), when=when)

    @idempotent
    def attach(self, inbox: str, tags: list, lease: float) -> None:
        patterns = [p for p in map(pattern_of_tag, tags) if p is not None]
        if not patterns:
            raise ValueError("attach needs at least one ev:PATTERN or evre:REGEX tag")
        with self._lock:
            self._leases[str(inbox)] = time.monotonic() + min(float(lease), 10 * self.settings.EVENTS_LEASE)
        self.router.set_subscriber(_uri_of(inbox), patterns)

    @idempotent
    def detach(self, inbox: str) -> None:
        with self._lock:
            self._leases.pop(str(inbox), None)
        self.router.remove_subscriber(str(inbox))

    @idempotent
    def subscriber_count(self, subject: str | None = None) -> int:
        """Subscribers (of subject) attached now: what a bus in server mode waits for."""
        return len(self.router.subscribers(subject))

    # ---------------------------------------------------------------- Pyro3's Event Server API
    def publish(self, subjects: Any, message: Any) -> None:
        try:
            for subject in _subjects(subjects):
                self.router.publish(check_subject(subject), message)
        except SubjectError as exc:
            raise ValueError(str(exc)) from None

    def subscribe(self, subjects: Any, subscriber: Any) -> None:
        """Exact subjects (compared ignoring case, as Pyro3)."""
        self._pyro3_add(subscriber, [Pattern.regex(re.escape(s) + "$") for s in _subjects(subjects)])

    def subscribeMatch(self, patterns: Any, subscriber: Any) -> None:  # noqa: N802 - Pyro3's name
        """Regex patterns (re.match, ignoring case, as Pyro3)."""
        try:
            compiled = [Pattern.regex(p) for p in _subjects(patterns)]
        except SubjectError as exc:
            raise ValueError(str(exc)) from None
        self._pyro3_add(subscriber, compiled)

    def unsubscribe(self, subjects: Any, subscriber: Any) -> None:
        uri = _uri_of(subscriber)
        texts = set(_subjects(subjects))
        with self._lock:
            patterns = self._pyro3.get(uri, set())
            gone = texts | {re.escape(t) + "$" for t in texts}     # subscribeMatch's, and subscribe's
            patterns = {p for p in patterns if p.text not in gone}
            if patterns:
                self._pyro3[uri] = patterns
            else:
                self._pyro3.pop(uri, None)
        if patterns:
            self.router.set_subscriber(uri, patterns, send=send_events, give_up_after=self.settings.EVENTS_LEASE)
        else:
            self.router.remove_subscriber(uri)

    def _pyro3_add(self, subscriber: Any, patterns: Iterable[Pattern]) -> None:
        uri = _uri_of(subscriber)
        with self._lock:
            merged = self._pyro3.setdefault(uri, set())
            merged.update(patterns)
            merged = set(merged)
        self.router.set_subscriber(uri, merged, send=send_events, give_up_after=self.settings.EVENTS_LEASE)

    # ---------------------------------------------------------------- upkeep
    def stats(self) -> dict[str, Any]:
        return {**self.router.stats(), "relay": self._receipts.stats()}

    def _expire_leases(self) -> None:
        while not self._stop.wait(max(0.05, self.settings.EVENTS_LEASE / 6)):
            now = time.monotonic()
            with self._lock:
                expired = [uri for uri, until in self._leases.items() if until < now]
                for uri in expired:
                    del self._leases[uri]
            for uri in expired:
                log.info("subscription of %s expired (not renewed within EVENTS_LEASE)", uri)
                self.router.remove_subscriber(uri)

    def close(self) -> None:
        self._stop.set()
        self.router.close()


def serve(host: str | None = None, port: int = 0, *, announce: bool = True, settings: Settings | None = None,
          out: Any = None) -> None:
    """Run an event server until Ctrl-C or SIGTERM."""
    import signal
    from ..config import config
    from ..server.daemon import Daemon
    settings = (settings or config).copy()
    server = EventServer(settings)
    with Daemon(host, port, settings=settings) as daemon:
        uri = daemon.register(server, EVENTS_SERVER_NAME, name=EVENTS_SERVER_NAME if announce else None)
        if out is not None:
            if out.json_mode:
                out.json({"uri": str(uri), "name": EVENTS_SERVER_NAME if announce else None})
            else:
                out.line(f"event server ready: {uri}")
                out.status("Ctrl-C stops it")
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda signum, frame: daemon.shutdown())
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
