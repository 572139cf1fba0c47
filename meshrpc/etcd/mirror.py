"""The process's mirror of one realm's entries in etcd: pure logic, fed by a watcher (watcher.py).

The watcher calls `load(revision, kvs)` after a full prefix read (the first one, and again after a
compaction) and `apply(revision, events)` for every watch response; `set_stale(why)` when etcd cannot
be reached. Queries answer from memory: a mirror that lost etcd keeps serving its last-known entries
(`stale` says so) until it is fed again. Events older than the mirror's revision are ignored, so a
watch resumed from an earlier revision never duplicates anything.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from ..config import Settings
from ..errors import NamingError
from ..mesh.records import Entry
from ..mesh.registry import ADDED, LOOPBACK_HOSTS, REMOVED, UPDATED
from ..uri import URI
from . import entries

log = logging.getLogger("meshrpc.etcd")

Callback = Callable[[str, Entry], None]


class Mirror:
    """Entries of one realm as etcd holds them. Thread-safe. `start` (called once, at the first query)
    starts whatever feeds it."""

    complete = True      # once synced it holds everything: a query need not listen for answers (cli.browse)

    def __init__(self, settings: Settings, *, start: Callable[[Mirror], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings.copy()
        self.realm = self.settings.REALM
        self.prefix = entries.realm_prefix(self.settings)
        self._key = self.settings.KEY
        self._start = start
        self.feeder: Any = None                           # what start() set up (the watcher), for stats
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[bytes, Entry] = {}           # etcd key -> entry
        self._revision = 0
        self._synced = False
        self._stale_since: float | None = None
        self._problem = ""                                # why etcd could not be reached, last time
        self._attempted = False                           # the feeder tried at least once
        self._suspected: dict[str, float] = {}            # uri -> when a proxy reported it unreachable
        self._subscribers: list[Callback] = []
        self._started = False
        self._warned: set[bytes] = set()
        self._local_hosts: frozenset[str] = LOOPBACK_HOSTS

    # ---------------------------------------------------------------- feeding (one feeder thread)

    def load(self, revision: int, kvs: Iterable[dict[str, Any]]) -> None:
        """The whole realm as read at revision: replaces what the mirror had (changes become events)."""
        now = self._clock()
        fresh: dict[bytes, Entry] = {}
        for kv in kvs:
            entry = self._decode(kv["key"], kv["value"], now)
            if entry is not None:
                fresh[kv["key"]] = entry
        with self._lock:
            old = self._entries
            events = [(REMOVED, entry) for key, entry in old.items() if key not in fresh]
            for key, entry in fresh.items():
                before = old.get(key)
                if before is None:
                    events.append((ADDED, entry))
                elif _differs(before, entry):
                    events.append((UPDATED, entry))
                else:
                    fresh[key] = before
            self._entries = fresh
            self._revision = revision
            self._synced, self._attempted, self._stale_since, self._problem = True, True, None, ""
            self._changed.notify_all()
        self._deliver(events)

    def apply(self, revision: int, changes: Iterable[dict[str, Any]]) -> None:
        """One watch response: PUT and DELETE events; those at or below the mirror's revision are old news."""
        now = self._clock()
        events: list[tuple[str, Entry]] = []
        with self._lock:
            for change in changes:
                if change["mod_revision"] <= self._revision:
                    continue
                key = change["key"]
                before = self._entries.get(key)
                if change["type"] == "DELETE":
                    if before is not None:
                        del self._entries[key]
                        events.append((REMOVED, before))
                    continue
                entry = self._decode(key, change["value"], now)
                if entry is None:
                    continue
                self._suspected.pop(entry.uri, None)      # announced again: worth a try
                self._entries[key] = entry
                if before is None:
                    events.append((ADDED, entry))
                elif _differs(before, entry):
                    events.append((UPDATED, entry))
            self._revision = max(self._revision, revision)
            self._stale_since, self._problem = None, ""
            if events:
                self._changed.notify_all()
        self._deliver(events)

    def set_stale(self, why: str) -> None:
        """etcd cannot be reached: keep serving what we have, marked stale."""
        with self._lock:
            first = self._stale_since is None
            if first:
                self._stale_since = self._clock()
            self._problem, self._attempted = why, True
            self._changed.notify_all()
        if first and self._synced:
            log.warning("etcd: %s; serving the last-known %d entries of realm %r (stale) until it is back",
                        why, len(self._entries), self.realm)

    @property
    def revision(self) -> int:
        return self._revision

    def _decode(self, key: bytes, value: bytes, now: float) -> Entry | None:
        entry, why = entries.decode_value(self.prefix, key, value, self.realm)
        if entry is not None and self._key:
            from ..mesh import auth
            why = auth.verify(self._key, entry)
            entry = None if why else entry
        if entry is None:
            if key not in self._warned and len(self._warned) < 1000:
                self._warned.add(key)
                log.warning("etcd: ignoring %r in realm %r: %s", key[-80:], self.realm, why)
            return None
        return replace(entry, last_seen=now)

    # ---------------------------------------------------------------- queries

    @property
    def stale(self) -> bool:
        """True while etcd cannot be reached (the entries are the last ones known)."""
        return self._stale_since is not None

    @property
    def problem(self) -> str:
        return self._problem

    def lookup(self, name: str) -> list[Entry]:
        """Providers of name, newest first (one per uri); [] when none."""
        return self._select(lambda e: e.name == name)

    def yplookup(self, meta_all: Iterable[str] | None = None, meta_any: Iterable[str] | None = None) -> list[Entry]:
        all_tags = frozenset([meta_all] if isinstance(meta_all, str) else meta_all or ())
        any_tags = frozenset([meta_any] if isinstance(meta_any, str) else meta_any or ())
        return self._select(lambda e: all_tags <= e.metadata and (not any_tags or not any_tags.isdisjoint(e.metadata)))

    def list(self, prefix: str | None = None, regex: str | None = None) -> list[Entry]:
        try:
            pattern = re.compile(regex) if regex is not None else None
        except re.error as exc:
            raise NamingError(f"invalid regex {regex!r}: {exc}") from None
        found = self._select(lambda e: (prefix is None or e.name.startswith(prefix))
                             and (pattern is None or pattern.match(e.name) is not None))
        return sorted(found, key=lambda e: e.name)

    def _select(self, predicate: Callable[[Entry], bool]) -> list[Entry]:
        self.ensure_synced()
        now = self._clock()
        hold = self.settings.MESH_SUSPECT_HOLD
        best: dict[tuple[str, str], Entry] = {}
        with self._lock:
            for entry in self._entries.values():
                suspected = self._suspected.get(entry.uri)
                if suspected is not None and now - suspected < hold:
                    continue
                if predicate(entry):
                    seen = best.get(entry.key)
                    if seen is None or entry.order > seen.order:
                        best[entry.key] = entry       # a restarted daemon's old lease may linger
        return sorted(best.values(), key=lambda e: e.order, reverse=True)

    def ensure_synced(self, timeout: float | None = None) -> None:
        """Start the feeder at the first query and wait (up to timeout, default LOOKUP_TIMEOUT) for its
        first listing. NamingError when etcd could not be reached and nothing is known yet."""
        if not self._started:
            with self._lock:
                start, self._started = (self._start if not self._started else None), True
            if start is not None:
                start(self)
        wait = self.settings.LOOKUP_TIMEOUT if timeout is None else timeout
        deadline = self._clock() + wait
        with self._changed:
            while not self._synced:
                if self._attempted and self._problem:
                    raise NamingError(self._problem)
                remaining = deadline - self._clock()
                if remaining <= 0:
                    raise NamingError(f"no answer from etcd within {wait:g} s (LOOKUP_TIMEOUT)")
                self._changed.wait(remaining)

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """callback(event, entry) for every change; returns unsubscribe. Called on the feeder's thread."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    def report_failure(self, uri: str | URI, kind: str = "unreachable") -> None:
        """A proxy could not reach uri: hide it for MESH_SUSPECT_HOLD seconds, or until announced again."""
        try:
            canonical = str(URI(uri))
        except (ValueError, TypeError):
            return
        with self._lock:
            if any(e.uri == canonical for e in self._entries.values()):
                self._suspected[canonical] = self._clock()
                if len(self._suspected) > self.settings.MESH_MAX_ENTRIES:
                    del self._suspected[next(iter(self._suspected))]

    def set_local_hosts(self, hosts: Iterable[str]) -> None:
        self._local_hosts = LOOPBACK_HOSTS | frozenset(hosts)

    def is_local(self, host: str) -> bool:
        return host in self._local_hosts or host.startswith("127.")

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"entries": len(self._entries), "revision": self._revision, "synced": self._synced,
                    "stale": self._stale_since is not None}

    def _deliver(self, events: list[tuple[str, Entry]]) -> None:
        if not events:
            return
        with self._lock:
            subscribers = list(self._subscribers)
        for event, entry in events:
            for callback in subscribers:
                try:
                    callback(event, entry)
                except Exception:  # one bad subscriber must not stop the others
                    log.exception("etcd mirror subscriber %r failed on %s %s", callback, event, entry.name)


def _differs(old: Entry, new: Entry) -> bool:
    return (old.uri, old.metadata, old.other_hosts, old.order, old.node) != \
           (new.uri, new.metadata, new.other_hosts, new.order, new.node)
