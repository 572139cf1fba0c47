"""The mesh as the gateway shows it: registry events carried onto the event loop, fanned out to
event-stream subscribers, and the last call's latency and outcome per service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import CommunicationError
from ..mesh.records import Entry

log = logging.getLogger("meshrpc.gateway")


def entry_id(realm: str, entry: Entry) -> str:
    return f"{realm}|{entry.name}|{entry.uri}"


def entry_row(realm: str, entry: Entry, now: float, exposed: bool) -> dict[str, Any]:
    return {"id": entry_id(realm, entry), "realm": realm, "name": entry.name, "uri": entry.uri,
            "tags": sorted(entry.metadata), "host": entry.host, "other_hosts": list(entry.other_hosts),
            "node": entry.node, "age": round(max(0.0, now - entry.last_seen), 1) if entry.last_seen else None,
            "exposed": exposed}


@dataclass
class CallStat:
    latency_ms: float
    ok: bool             # no exception at all
    reachable: bool      # the service answered (an exception raised by the service still counts)
    error: str           # the exception's class name, or ""
    at: float            # Unix time

    def as_dict(self) -> dict[str, Any]:
        return {"latency_ms": round(self.latency_ms, 2), "ok": self.ok, "reachable": self.reachable,
                "error": self.error, "at": self.at}


class Subscriber:
    """One event-stream client: a bounded queue of (event, data); `overflowed` once it fell behind."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(size)
        self.overflowed = False

    def put(self, event: str, data: Any) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait((event, data))
        except asyncio.QueueFull:
            self.overflowed = True   # later events are lost: the reader ends the stream when it sees this


class MeshWatch:
    """Subscribes to the registries of the watched realms; lives on one event loop."""

    def __init__(self, registries: Iterable[Any], exposed: Callable[[str], bool], queue_size: int) -> None:
        self.registries = list(registries)
        self.exposed = exposed
        self.queue_size = queue_size
        self.calls: dict[str, CallStat] = {}
        self._subscribers: set[Subscriber] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for registry in self.registries:
            self._unsubscribe.append(registry.subscribe(self._from_registry(registry.realm)))

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    def _from_registry(self, realm: str) -> Callable[[str, Entry], None]:
        def on_event(event: str, entry: Entry) -> None:   # on the mesh's thread: hand over, never block
            loop = self._loop
            if loop is None:
                return
            try:
                loop.call_soon_threadsafe(self._publish, event, realm, entry)
            except RuntimeError:      # the loop closed (the gateway stopped) meanwhile
                pass
        return on_event

    def _publish(self, event: str, realm: str, entry: Entry) -> None:
        row = entry_row(realm, entry, time.monotonic(), self.exposed(entry.name))
        for subscriber in list(self._subscribers):
            subscriber.put(event, row)

    # ------------------------------------------------------------ queries (on the loop)

    def rows(self, tags: Iterable[str] = (), realm: str | None = None) -> list[dict[str, Any]]:
        wanted = set(tags)
        now = time.monotonic()
        rows = []
        for registry in self.registries:
            if realm and registry.realm != realm:
                continue
            for entry in registry.list():
                if wanted <= entry.metadata:
                    rows.append(entry_row(registry.realm, entry, now, self.exposed(entry.name)))
        rows.sort(key=lambda r: (r["name"], r["realm"], r["uri"]))
        return rows

    def tick(self) -> dict[str, Any]:
        """What changes without events: every entry's age, and the calls' statistics."""
        return {"ages": {row["id"]: row["age"] for row in self.rows()},
                "calls": {name: stat.as_dict() for name, stat in self.calls.items()}}

    def record_call(self, name: str, latency_ms: float, error: BaseException | None) -> None:
        reachable = not isinstance(error, CommunicationError)
        stat = CallStat(latency_ms, error is None, reachable, "" if error is None else type(error).__name__,
                        time.time())
        self.calls[name] = stat
        if len(self.calls) > 10000:               # bounded: forget the oldest
            del self.calls[next(iter(self.calls))]
        for subscriber in list(self._subscribers):
            subscriber.put("call", {"name": name, **stat.as_dict()})

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(self.queue_size)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
