"""The process's mirror of the mesh: pure logic, fed by a *source*.

The source (discovery.py in production, a fake in unit tests) calls `feed`, `feed_goodbye`,
`feed_index` and `sweep`; users call the query methods. Rules (see docs/mesh.md): the announcing node
owns an entry; (incarnation, version) orders news; a node's heartbeat vouches for all its entries;
a node silent for MESH_SUSPECT_AFTER is suspected and checked (a TCP connect: accepted refutes,
refused proves it dead); silent entries turn dormant after the node's liveness window, which grows
with the heartbeat loss measured from sequence gaps (Lifeguard), and come back when heard; goodbyes
leave tombstones; a heartbeat's digest of the node's entries that differs from ours starts
anti-entropy (fetch the node's index, ask for exactly the missing entries, drop the withdrawn ones,
with back-off, for as long as the node lives); a proxy's report_failure makes choose() pass the
provider over for MESH_SUSPECT_HOLD, unless it is the only one.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from ..config import Settings
from ..errors import NamingError
from ..limits import MESH_GOODBYE_GRACE
from ..uri import URI
from . import records
from .records import Entry, Heartbeat, IndexPage, check_realm

log = logging.getLogger("meshrpc.mesh")

ADDED, REMOVED, UPDATED = "added", "removed", "updated"
Callback = Callable[[str, Entry], None]
Matcher = str | Callable[[Entry], bool]
_NEVER = float("-inf")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})  # URI hosts that are this machine, whatever its addresses
# Outcomes of a liveness check (Source.check): the endpoint accepted a connection, refused it (nothing
# listens: the daemon is gone), or did not answer in time (no evidence either way on a lossy link).
OPEN, REFUSED, SILENT = "open", "refused", "silent"
# Kinds of failure a proxy reports (report_failure): refused and shutdown also trigger a check.
FAILURE_KINDS = frozenset({"refused", "unreachable", "handshake", "shutdown"})
_LOSS_MEMORY = 32        # heartbeats: the loss estimate's moving average forgets with this horizon
_MAX_GAP = 10            # a longer gap (partition, pause) counts as this many lost heartbeats
_LOSS_CAP = 0.95


class Source(Protocol):
    """What feeds a registry. attach() starts feeding (it may feed synchronously)."""

    def attach(self, registry: Registry) -> None: ...

    def detach(self, registry: Registry) -> None: ...

    def probe(self, entry: Entry, timeout: float, done: Callable[[Entry, bool], None]) -> bool:
        """Check entry's endpoint in the background, then call done(entry, reachable).
        False: no probe was started."""
        ...

    # Optional (a source without them gets no liveness checks or anti-entropy):
    #   check(entry, timeout, done(entry, OPEN | REFUSED | SILENT)) -> bool   like probe, three outcomes
    #   query(names: list[str]) -> None    ask once for the TXT records of these full record names


# Set by meshrpc.mesh to the process-wide discovery, so that this module never imports zeroconf.
default_source: Callable[[], Source] | None = None


@dataclass(eq=False)
class _Slot:
    entry: Entry
    heard: float                          # last own announcement (monotonic seconds)
    dormant_since: float | None = None    # not vouched for within the liveness window
    suspected_at: float | None = None     # replaced: a newer provider appeared and this one refused
    probing: bool = False
    refused: bool = False                 # dormant since its endpoint refused a check: a copy of the same
                                          # announcement is no proof of life (a foreign responder repeats it)
    avoid_until: float = _NEVER           # a proxy could not reach it: choose() passes it over until
    _label: tuple[str, str] | None = None  # (node, instance label) cache
    _location: str | None = None          # the uri's endpoint (host:port or unix socket) cache

    @property
    def visible(self) -> bool:
        return self.dormant_since is None and self.suspected_at is None

    @property
    def label(self) -> str:
        if self._label is None or self._label[0] != self.entry.node:
            self._label = (self.entry.node, records.instance_label(self.entry).lower())
        return self._label[1]

    @property
    def location(self) -> str:
        if self._location is None:
            self._location = URI(self.entry.uri).location or ""
        return self._location


@dataclass(eq=False)
class _Sync:
    """Anti-entropy with one node: its index (pages of one snapshot), then the entries it lacks."""

    next_ask: float
    attempt: int = 0
    version: int = -1                     # snapshot version of the pages collected
    pages: dict[int, IndexPage] = field(default_factory=dict)
    wanted: dict[str, int] = field(default_factory=dict)    # label -> version still to get


@dataclass(eq=False)
class _Node:
    incarnation: int
    heard: float                          # last heartbeat (or accepted liveness check)
    created: float
    keys: set[tuple[str, str]] = field(default_factory=set)
    seq: int = -1                         # last heartbeat sequence number
    loss: float = 0.0                     # estimated share of its heartbeats lost (moving average)
    samples: int = 0
    suspect_since: float | None = None    # silent past MESH_SUSPECT_AFTER, not yet refuted
    announced_live: bool = False          # an announcement of it came while fresh (not only a cached copy)
    recheck_gap: float = 0.0              # a node without heartbeats: pause before its dormant entries' next check
    next_recheck: float = _NEVER
    checked: dict[str, float] = field(default_factory=dict)   # endpoint -> when a check of it last started
    checking: bool = False                # a liveness check is running
    next_check: float = _NEVER
    claimed: tuple[int, str] | None = None   # (count, digest) of its entries, from its last heartbeat
    entry_heard: float = _NEVER           # last announcement of any of its entries
    refused_seq: int = -1                 # last heartbeat before a check was refused: older ones are stale
    node_id: str = ""
    mismatch_since: float | None = None
    sync: _Sync | None = None

    @property
    def without_heartbeats(self) -> bool:
        """Heard live, never a heartbeat: a foreign responder (Avahi, Bonjour) publishing records in
        meshrpc's shape. (A node known only from stale cached copies is not one: nothing says it lived.)"""
        return self.seq < 0 and self.announced_live


class Registry:
    """Entries of one realm, as announced on the mesh. Thread-safe."""

    def __init__(self, settings: Settings | None = None, *, source: Source | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        if settings is None:
            from ..config import config as default_settings  # the current process default
            settings = default_settings
        self.settings = settings.copy()
        self.realm = self.settings.REALM
        check_realm(self.realm)
        if self.settings.MESH_LIVENESS_WINDOW < 2 * self.settings.MESH_HEARTBEAT_INTERVAL:
            log.warning("mesh: MESH_LIVENESS_WINDOW %.2f s is under two heartbeat intervals (%.2f s): "
                        "one lost packet will hide live daemons", self.settings.MESH_LIVENESS_WINDOW,
                        self.settings.MESH_HEARTBEAT_INTERVAL)
        self._source = source
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._start_lock = threading.Lock()
        self._started = False
        self._closed = False
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._by_name: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self._by_uri: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self._nodes: dict[str, _Node] = {}
        self._tombstones: dict[tuple[str, str], tuple[tuple[int, int], float]] = {}
        self._local_hosts: frozenset[str] = LOOPBACK_HOSTS
        self._subscribers: list[Callback] = []
        self._pending: deque[tuple[str, Entry]] = deque()
        self._deliverer: int | None = None
        self._generation = 0                   # bumped whenever something became visible or changed
        self._full_warned: set[str] = set()     # "entries"/"nodes": warned until below the cap again
        self._key = self.settings.KEY            # mesh key: only announcements signed with it count
        self._auth_warned: dict[tuple[str, str], None] = {}   # bounded: log once per node and name
        self._local_loss = 0.0                   # mean heartbeat loss over all nodes (local health)

    # ---------------------------------------------------------------- queries

    def lookup(self, name: str) -> list[Entry]:
        """Live, unsuspected providers of name, newest first; [] when none (never waits)."""
        self._ensure_started()
        with self._lock:
            return self._select(name, None)

    def yplookup(self, meta_all: Iterable[str] | None = None,
                 meta_any: Iterable[str] | None = None) -> list[Entry]:
        """Entries having every tag of meta_all and at least one of meta_any (each filter optional)."""
        self._ensure_started()
        with self._lock:
            return self._select(None, _meta_matcher(meta_all, meta_any))

    def list(self, prefix: str | None = None, regex: str | None = None) -> list[Entry]:
        """Entries whose name starts with prefix and matches regex (re.match, as Pyro5), by name."""
        self._ensure_started()
        try:
            pattern = re.compile(regex) if regex is not None else None
        except re.error as exc:
            raise NamingError(f"invalid regex {regex!r}: {exc}") from None

        def matches(entry: Entry) -> bool:
            return ((prefix is None or entry.name.startswith(prefix))
                    and (pattern is None or pattern.match(entry.name) is not None))
        with self._lock:
            found = self._select(None, matches)
        return sorted(found, key=lambda e: e.name)

    def choose(self, name: str, timeout: float = 0.0) -> Entry | None:
        """One provider by the replica policy (providers a proxy just failed to reach last, then
        same machine first, random within the group); waits up to timeout seconds when none is known
        yet. None when there is none."""
        return self._pick(self.wait_for(name, timeout) if timeout > 0 else self.lookup(name))

    def choose_meta(self, meta_all: Iterable[str] | None = None, meta_any: Iterable[str] | None = None,
                    timeout: float = 0.0) -> Entry | None:
        """Like choose(), among the entries yplookup(meta_all, meta_any) returns."""
        return self._pick(self.wait_for(_meta_matcher(meta_all, meta_any), max(0.0, timeout)))

    def _pick(self, candidates: list[Entry]) -> Entry | None:
        now = self._clock()
        with self._lock:
            avoided = {e.key for e in candidates
                       if (slot := self._slots.get(e.key)) is not None and slot.avoid_until > now}
        # a provider a proxy could not reach is passed over while others exist, never hidden alone
        candidates = [e for e in candidates if e.key not in avoided] or candidates
        local = [e for e in candidates if self.is_local(e.host)]
        pool = local or candidates
        return self._rng.choice(pool) if pool else None

    def wait_for(self, what: Matcher, timeout: float) -> list[Entry]:
        """Matching live entries as soon as there is at least one; [] after timeout seconds.

        what: a name, or a predicate over entries (called without the registry's lock held)."""
        self._ensure_started()
        name, predicate = (what, None) if isinstance(what, str) else (None, what)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self._lock:
                candidates, generation = self._select(name, None), self._generation
            found = candidates if predicate is None else [e for e in candidates if predicate(e)]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            with self._changed:
                if generation == self._generation:          # nothing new since we looked
                    self._changed.wait(remaining)

    def resolve(self, name: str, timeout: float | None = None) -> list[Entry]:
        """Providers of name, waiting up to timeout (default LOOKUP_TIMEOUT) when none is known yet."""
        return self.wait_for(name, self.settings.LOOKUP_TIMEOUT if timeout is None else timeout)

    def resolve_meta(self, meta_all: Iterable[str] | None = None, meta_any: Iterable[str] | None = None,
                     timeout: float | None = None) -> list[Entry]:
        return self.wait_for(_meta_matcher(meta_all, meta_any),
                             self.settings.LOOKUP_TIMEOUT if timeout is None else timeout)

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """callback(event, entry) for every change of what lookup() shows; returns unsubscribe.

        Callbacks run one at a time, in order, on the thread that made the change; keep them short.
        The callback is in place before browsing starts, so a first subscriber misses nothing (it may
        be called before subscribe() returns); a later one sees changes from now on (lookup() or
        list() give the current state)."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        try:
            self._ensure_started()
        except BaseException:
            unsubscribe()
            raise
        return unsubscribe

    def removal_cause(self, entry: Entry) -> str:
        """Why entry left lookup(), asked by a subscriber when a "removed" event comes: "goodbye" (its
        daemon withdrew it), "expiry" (not heard within MESH_LIVENESS_WINDOW), "unreachable" (reported
        by a proxy, or a probe failed), "restart" (its daemon came back as a new incarnation), or ""
        (visible again by now)."""
        with self._lock:
            slot = self._slots.get(entry.key)
            if slot is not None:
                if slot.suspected_at is not None:
                    return "unreachable"
                return "expiry" if slot.dormant_since is not None else ""
            return "goodbye" if entry.key in self._tombstones else "restart"

    def report_failure(self, uri: str | URI, kind: str = "unreachable") -> None:
        """A proxy could not reach uri: choose() passes its entries over while another provider of
        the name exists (lookup() still lists them; the only provider is never hidden), for
        MESH_SUSPECT_HOLD, or three times that when kind (FAILURE_KINDS) says the endpoint refused or
        is shutting down. The endpoint is also checked at once (one TCP connect per node at a time):
        refused makes its entries dormant until their node is heard again; an answer or silence
        changes nothing, so a brand-new provider whose first connect was lost stays in place."""
        try:
            parsed = URI(uri)
        except (ValueError, TypeError):
            return
        canonical = str(parsed)
        now = self._clock()
        checks: list[Entry] = []
        with self._lock:
            keys = list(self._by_uri.get(canonical, ()))
            if not keys and parsed.host:   # the address a proxy chose among a provider's other_hosts
                keys = [key for key, slot in self._slots.items()
                        if parsed.host in slot.entry.other_hosts
                        and str(URI.from_parts(parsed.object, slot.entry.host, parsed.port)) == slot.entry.uri]
            hold = self.settings.MESH_SUSPECT_HOLD * (3 if kind in ("refused", "shutdown") else 1)
            for key in keys:
                slot = self._slots[key]
                slot.avoid_until = max(slot.avoid_until, now + hold)
                node = self._nodes.get(slot.entry.node)
                if node is not None and not node.checking:
                    node.checking = True
                    checks.append(slot.entry)
        for entry in checks:
            self._start_check(entry)

    @property
    def started(self) -> bool:
        """Browsing has started: queries no longer start zeroconf (they only take a lock)."""
        return self._started

    def is_local(self, host: str) -> bool:
        return host in self._local_hosts or host.startswith("127.")

    def stats(self) -> dict[str, int]:
        with self._lock:
            slots = self._slots.values()
            now = self._clock()
            return {"entries": len(self._slots), "visible": sum(s.visible for s in slots),
                    "dormant": sum(s.dormant_since is not None for s in slots),
                    "suspected": sum(s.suspected_at is not None for s in slots),
                    "avoided": sum(s.avoid_until > now for s in slots),
                    "nodes": len(self._nodes), "tombstones": len(self._tombstones),
                    "suspect_nodes": sum(n.suspect_since is not None for n in self._nodes.values()),
                    "syncing": sum(n.sync is not None for n in self._nodes.values())}

    def node_health(self) -> dict[str, dict[str, float]]:
        """Per node: estimated heartbeat loss, its current liveness window, seconds since heard."""
        now = self._clock()
        with self._lock:
            return {node_id: {"loss": round(node.loss, 4), "window": round(self._window(node), 3),
                              "silent": round(now - node.heard, 3) if node.heard > _NEVER else -1.0,
                              "suspect": node.suspect_since is not None}
                    for node_id, node in self._nodes.items()}

    def close(self) -> None:
        """Stop being fed (the process-wide registries are closed by reset_for_tests)."""
        with self._start_lock:
            self._closed = True
            source, started, self._started = self._source, self._started, False
        if started and source is not None:
            source.detach(self)

    # ---------------------------------------------------------------- feeding (called by the source)

    def feed(self, item: Entry | Heartbeat | IndexPage, heard: float | None = None) -> None:
        """An announcement, heartbeat or index page was received at monotonic time heard (default:
        now)."""
        if item.realm != self.realm:
            return
        if self._key and not self._authentic(item):
            return
        heard = self._clock() if heard is None else heard
        contested: list[Entry] = []
        with self._lock:
            if isinstance(item, IndexPage):
                self._apply_index(item, heard)
            elif isinstance(item, Heartbeat):
                self._apply_heartbeat(item, heard)
            else:
                self._apply_entry(item, heard, contested)
        self._drain()
        for entry in contested:
            self._start_probe(entry)

    def feed_goodbye(self, item: Entry | Heartbeat) -> None:
        """The owner withdrew an entry (Entry) or all of a node's entries (Heartbeat)."""
        if item.realm != self.realm:
            return
        if self._key and not self._authentic(item):
            return
        now = self._clock()
        with self._lock:
            if isinstance(item, Heartbeat):
                node = self._nodes.get(item.node)
                if node is not None and item.incarnation >= node.incarnation:
                    for key in list(node.keys):
                        self._bury(key, self._slots[key].entry.order, now)
                    del self._nodes[item.node]
            else:
                slot = self._slots.get(item.key)
                if slot is None or (slot.entry.node == item.node and item.order >= slot.entry.order):
                    self._bury(item.key, item.order, now)
        self._drain()

    def _authentic(self, item: Entry | Heartbeat | IndexPage) -> bool:
        """Mesh key set: does item carry a valid authenticator? (logs a refusal once per node/name)"""
        from . import auth
        why = auth.verify(self._key, item)
        if not why:
            return True
        what = (item.node, item.name if isinstance(item, Entry) else "")
        with self._lock:
            first = what not in self._auth_warned
            if first:
                self._auth_warned[what] = None
                if len(self._auth_warned) > self.settings.MESH_MAX_NODES:
                    del self._auth_warned[next(iter(self._auth_warned))]
        if first:
            log.warning("mesh: ignoring %s from node %s in realm %r: %s",
                        f"announcement of {item.name[:80]!r}" if isinstance(item, Entry)
                        else type(item).__name__.lower(),
                        item.node, self.realm, why)
        return False

    def sweep(self, now: float | None = None) -> None:
        """Liveness and repair: suspect and check silent nodes, hide entries nobody vouched for within
        their node's window, ask for what anti-entropy found missing, forget old dormant entries and
        tombstones."""
        now = self._clock() if now is None else now
        keep = self.settings.MESH_DORMANT_KEEP
        checks: list[Entry] = []
        asks: list[str] = []
        with self._lock:
            self._update_local_health()
            for node_id, node in list(self._nodes.items()):
                window = self._window(node)
                if now - max(node.heard, node.entry_heard) > self.settings.MESH_SUSPECT_AFTER and node.keys:
                    self._suspect_node(node, now, checks)
                if node.without_heartbeats:
                    self._recheck_dormant(node, now, checks)
                if node.sync is not None or node.mismatch_since is not None:
                    asks += self._sync_step(node, now)
                if now - max(node.heard, node.entry_heard) <= window:
                    continue                  # anything fresh from the node vouches for all its entries
                node.sync, node.mismatch_since = None, None   # a dead node has nothing to repair
                for key in list(node.keys):
                    slot = self._slots[key]
                    if slot.dormant_since is None:
                        if now - slot.heard > window:
                            self._make_dormant(slot, now)
                    elif now - slot.dormant_since > keep:
                        self._unlink(key)
                if not node.keys and now - max(node.heard, node.created) > keep:
                    del self._nodes[node_id]
            for key, (_, until) in list(self._tombstones.items()):
                if until < now:
                    del self._tombstones[key]
            if len(self._slots) < self.settings.MESH_MAX_ENTRIES:
                self._full_warned.discard("entries")
            if len(self._nodes) < self.settings.MESH_MAX_NODES:
                self._full_warned.discard("nodes")
        self._drain()
        for entry in checks:
            self._start_check(entry)
        query = getattr(self._source, "query", None)
        if asks and query is not None:
            query(asks)

    def set_local_hosts(self, hosts: Iterable[str]) -> None:
        """Addresses and names of this machine (for the replica policy)."""
        self._local_hosts = LOOPBACK_HOSTS | frozenset(hosts)

    # ---------------------------------------------------------------- internals (lock held)

    def _apply_entry(self, entry: Entry, heard: float, contested: list[Entry]) -> None:
        node = self._node(entry.node, entry.incarnation, heard)
        if node is None:
            return
        node.entry_heard = max(node.entry_heard, heard)
        if self._fresh(heard):
            node.announced_live = True
        key = entry.key
        tomb = self._tombstones.get(key)
        if tomb is not None and entry.order <= tomb[0]:
            buried = tomb[1] - self.settings.MESH_TOMBSTONE_KEEP
            if not (node.without_heartbeats and entry.order == tomb[0] and self._fresh(heard)
                    and heard >= buried + MESH_GOODBYE_GRACE):
                return                        # a late copy of something withdrawn
            del self._tombstones[key]         # a foreign responder published it again
        slot = self._slots.get(key)
        if slot is None:
            if not self._make_room(entry):
                return
            slot = self._slots[key] = _Slot(replace(entry, last_seen=heard), heard)
            self._link(key, entry)
            node.keys.add(key)
            if not self._fresh(max(heard, node.heard)):
                slot.dormant_since = self._clock()   # an old cached copy is no proof of life
                return
            self._pending.append((ADDED, self._public(slot)))
            self._notify()
            contested.extend(self._contest(slot.entry))
            return
        old = slot.entry
        if entry.order < old.order or (entry.node != old.node and entry.order == old.order):
            return                            # stale, or another node without newer news
        if entry.node != old.node:            # takeover: the same uri restarted under another node
            owner = self._nodes.get(old.node)
            if owner is not None:
                owner.keys.discard(key)
            node.keys.add(key)
        was_visible = slot.visible
        slot.heard = max(slot.heard, heard)
        slot.entry = replace(entry, last_seen=slot.heard)
        if not (slot.refused and entry.order <= old.order):   # a refused endpoint needs newer news
            self._revive(slot, heard)
        if slot.visible and not was_visible:
            self._pending.append((ADDED, self._public(slot)))
            self._notify()
        elif slot.visible and (old.metadata != entry.metadata or old.node != entry.node
                               or old.other_hosts != entry.other_hosts):
            self._pending.append((UPDATED, self._public(slot)))
            self._notify()

    def _apply_heartbeat(self, hb: Heartbeat, heard: float) -> None:
        node = self._node(hb.node, hb.incarnation, heard)
        if node is None:
            return
        self._count_loss(node, hb.seq)
        if hb.seq <= node.refused_seq:
            return                            # sent before its endpoint refused us: no proof of life
        node.heard = max(node.heard, heard)
        if self._fresh(heard):
            node.suspect_since = None         # refuted: a late heartbeat clears suspicion
        for key in node.keys:
            slot = self._slots[key]
            if not slot.visible:
                self._revive(slot, heard)
                if slot.visible:
                    self._pending.append((ADDED, self._public(slot)))
                    self._notify()
        if hb.count >= 0 and self._fresh(heard) and hb.seq >= node.seq:   # not an older beat's claim
            node.claimed = (hb.count, hb.digest)
            self._compare_digest(node, heard)

    # ---- liveness: heartbeat loss, adaptive window, suspicion (Lifeguard)

    def _count_loss(self, node: _Node, seq: int) -> None:
        """Sequence gaps are missed heartbeats: fold them into the node's loss estimate."""
        if node.seq >= 0 and seq > node.seq:
            gap = min(seq - node.seq, _MAX_GAP)
            for i in range(gap):
                node.samples += 1
                weight = max(1.0 / _LOSS_MEMORY, 1.0 / node.samples)
                node.loss += weight * ((1.0 if i < gap - 1 else 0.0) - node.loss)
        node.seq = max(node.seq, seq)

    def _update_local_health(self) -> None:
        """Loss seen from every node says more about our own link than about them (Lifeguard's
        local health): the mean over nodes with enough samples is a floor for every node's estimate."""
        measured = [n.loss for n in self._nodes.values() if n.samples >= 8]
        self._local_loss = sum(measured) / len(measured) if measured else 0.0

    def _window(self, node: _Node) -> float:
        """Seconds of silence after which the node counts as gone: enough missed heartbeats that,
        at the loss measured, a live node stays silent that long with odds MESH_SILENCE_ODDS."""
        settings = self.settings
        loss = min(_LOSS_CAP, max(node.loss, self._local_loss))
        if loss <= 0.0:
            return settings.MESH_LIVENESS_WINDOW
        missed = math.log(settings.MESH_SILENCE_ODDS) / math.log(loss)
        return min(settings.MESH_LIVENESS_WINDOW_MAX,
                   max(settings.MESH_LIVENESS_WINDOW, (missed + 1.0) * settings.MESH_HEARTBEAT_INTERVAL))

    def _suspect_node(self, node: _Node, now: float, checks: list[Entry]) -> None:
        if node.suspect_since is None:
            node.suspect_since = now
        if node.checking or now < node.next_check:
            return
        target = self._check_target(node, now, dormant=False)
        if target is not None:
            node.checking = True
            node.next_check = now + self.settings.MESH_HEARTBEAT_INTERVAL
            checks.append(target)

    def _check_target(self, node: _Node, now: float, dormant: bool) -> Entry | None:
        """The visible (or dormant) entry of node whose endpoint was checked longest ago: a node's
        checks take its endpoints in turn (a foreign responder may announce several under one node id,
        some of them dead)."""
        best: _Slot | None = None
        best_when = 0.0
        for key in node.keys:
            slot = self._slots[key]
            if (slot.dormant_since is not None) != dormant:
                continue
            when = node.checked.get(slot.location, _NEVER)
            if best is None or when < best_when:
                best, best_when = slot, when
                if when == _NEVER:
                    break
        if best is None:
            return None
        if len(node.checked) > 2 * len(node.keys) + 8:     # endpoints of entries gone since
            node.checked = {loc: t for loc, t in node.checked.items()
                            if any(self._slots[k].location == loc for k in node.keys)}
        node.checked[best.location] = now
        return best.entry

    def _recheck_dormant(self, node: _Node, now: float, checks: list[Entry]) -> None:
        """A node that never sent a heartbeat (a foreign responder: Avahi, Bonjour publishing a
        meshrpc-shaped record) is vouched for by accepted checks only, and nothing it sends later says
        that it is back (it does not announce again when a partition heals): its dormant entries are
        checked again, the pause doubling from MESH_HEARTBEAT_INTERVAL up to MESH_LIVENESS_WINDOW_MAX,
        for as long as they are kept (MESH_DORMANT_KEEP). An accepted check brings them back."""
        if node.checking or now < node.next_recheck:
            return
        target = self._check_target(node, now, dormant=True)
        if target is None:
            node.recheck_gap = 0.0
            return
        settings = self.settings
        node.recheck_gap = min(settings.MESH_LIVENESS_WINDOW_MAX,
                               max(settings.MESH_HEARTBEAT_INTERVAL, 2 * node.recheck_gap))
        node.checking = True
        node.next_recheck = now + node.recheck_gap
        checks.append(target)

    def _make_dormant(self, slot: _Slot, now: float) -> None:
        if slot.visible:
            self._pending.append((REMOVED, self._public(slot)))
        slot.dormant_since = now

    # ---- anti-entropy

    def _node_items(self, node: _Node) -> list[tuple[str, int]]:
        return [(self._slots[k].label, self._slots[k].entry.version) for k in node.keys]

    def _compare_digest(self, node: _Node, now: float) -> None:
        if node.claimed is None:
            return
        count, digest = node.claimed
        items = self._node_items(node)
        if len(items) == count and records.entries_digest(items) == digest:
            node.sync, node.mismatch_since = None, None
        elif node.mismatch_since is None and node.sync is None:
            node.mismatch_since = now         # maybe an announcement still on its way: wait a little

    def _sync_step(self, node: _Node, now: float) -> list[str]:
        """Lock held: the record names to ask for now (index pages, then missing entries)."""
        if node.sync is None:
            assert node.mismatch_since is not None
            if now - node.mismatch_since < self.settings.MESH_SYNC_GRACE:
                return []
            self._compare_digest(node, now)
            if node.mismatch_since is None:
                return []
            node.sync, node.mismatch_since = _Sync(next_ask=now), None
        sync = node.sync
        if now < sync.next_ask:
            return []
        names = self._still_wanted(node, sync)
        if not names:
            if sync.wanted or sync.pages:     # index used up and still no match: take a fresh one
                sync.pages.clear()
                sync.wanted.clear()
                sync.version = -1
            count = node.claimed[0] if node.claimed else 0
            names = [records.index_name(node.node_id, page)
                     for page in range(records.index_page_count(count))]
        delay = min(self.settings.MESH_QUERY_BACKOFF_MAX, self.settings.MESH_QUERY_BACKOFF_MIN * 2 ** sync.attempt)
        sync.attempt += 1
        sync.next_ask = now + delay * self._rng.uniform(0.9, 1.1)
        return names

    def _still_wanted(self, node: _Node, sync: _Sync) -> list[str]:
        """Names of missing index pages, or (index complete) of entries we still lack."""
        node_id = node.node_id
        if sync.version < 0 or not sync.pages:
            return []
        pages = next(iter(sync.pages.values())).pages
        if len(sync.pages) < pages:
            return [records.index_name(node_id, n) for n in range(pages) if n not in sync.pages]
        have = {self._slots[k].label: self._slots[k].entry.version for k in node.keys}
        for label, version in list(sync.wanted.items()):
            if have.get(label, -1) >= version:
                del sync.wanted[label]
        return [records.service_name(label) for label in sync.wanted]

    def _apply_index(self, page: IndexPage, heard: float) -> None:
        node = self._nodes.get(page.node)
        if node is None or node.sync is None or page.incarnation != node.incarnation:
            return
        sync = node.sync
        if page.version < sync.version:
            return                            # an older snapshot
        if page.version > sync.version or page.pages != next(iter(sync.pages.values()), page).pages:
            sync.pages.clear()
            sync.version = page.version
        sync.pages[page.page] = page
        if len(sync.pages) < page.pages:
            return
        listed = {label.lower(): version for p in sync.pages.values() for label, version in p.items}
        now = self._clock()
        # Drop what the index no longer lists only when the index is the state the node's latest
        # heartbeat vouches for: a stale snapshot (an old page from a cache, an answer overtaken by a
        # change) must never remove the entry of a live node; the next index will do.
        confirmed = node.claimed == (len(listed), records.entries_digest(listed.items()))
        for key in list(node.keys) if confirmed else ():   # ours but not the node's: a lost goodbye
            slot = self._slots[key]
            if slot.label not in listed and slot.entry.version <= sync.version:
                log.info("mesh: %s at %s was withdrawn by node %s (goodbye lost); dropping it",
                         slot.entry.name, slot.entry.uri, page.node)
                self._bury(key, slot.entry.order, now)
        have = {self._slots[k].label: self._slots[k].entry.version for k in node.keys}
        sync.wanted = {label: version for label, version in listed.items() if have.get(label, -1) < version}
        sync.next_ask = now                   # ask for the missing entries right away
        sync.attempt = 0
        if not sync.wanted:
            self._compare_digest(node, now)

    def _node(self, node_id: str, incarnation: int, heard: float) -> _Node | None:
        """The node record, created or reset for a newer incarnation; None for stale news."""
        node = self._nodes.get(node_id)
        if node is None:
            if len(self._nodes) >= self.settings.MESH_MAX_NODES and not self._forget_idle_node():
                self._warn_full("nodes", f"refusing node {node_id}")
                return None
            node = self._nodes[node_id] = _Node(incarnation, _NEVER, heard, node_id=node_id)
            return node
        if incarnation < node.incarnation:
            return None                       # from before the node restarted
        if incarnation > node.incarnation:    # restarted with the same node id: old entries are gone
            for key in list(node.keys):
                self._drop(key)
            node.incarnation, node.heard = incarnation, _NEVER
            node.seq, node.refused_seq, node.claimed, node.sync, node.mismatch_since = -1, -1, None, None, None
            node.announced_live, node.recheck_gap, node.next_recheck = False, 0.0, _NEVER
        return node

    def _notify(self) -> None:
        self._generation += 1
        self._changed.notify_all()

    def _fresh(self, heard: float) -> bool:
        return self._clock() - heard <= self.settings.MESH_LIVENESS_WINDOW

    def _revive(self, slot: _Slot, heard: float) -> None:
        if not self._fresh(heard):
            return
        slot.dormant_since = None
        slot.refused = False
        if slot.suspected_at is not None and heard >= slot.suspected_at + self.settings.MESH_SUSPECT_HOLD:
            slot.suspected_at = None

    def _suspect(self, slot: _Slot, now: float) -> None:
        if slot.visible:
            self._pending.append((REMOVED, self._public(slot)))
        slot.suspected_at = now

    def _contest(self, newcomer: Entry) -> list[Entry]:
        """Providers of newcomer's name older than the newest one, on other nodes: maybe the newest
        is their restart elsewhere. Returned (and marked) for one probe each."""
        if not self.settings.MESH_PROBE_CONTESTED or self._source is None:
            return []
        slots = [self._slots[key] for key in self._by_name.get(newcomer.name, ())]
        newest = max((s.entry for s in slots if s.visible), key=lambda e: e.incarnation, default=None)
        if newest is None:
            return []
        found = []
        for slot in slots:
            # only pairs involving the newcomer: replicas are probed once, when a provider appears
            involved = newest.key == newcomer.key or slot.entry.key == newcomer.key
            if (involved and slot.visible and not slot.probing and slot.entry.node != newest.node
                    and slot.entry.incarnation < newest.incarnation):
                slot.probing = True
                found.append(slot.entry)
        return found

    def _bury(self, key: tuple[str, str], order: tuple[int, int], now: float) -> None:
        """Drop an entry for good and remember it was withdrawn."""
        self._drop(key)
        old = self._tombstones.pop(key, None)
        if len(self._tombstones) >= self.settings.MESH_MAX_ENTRIES:
            del self._tombstones[next(iter(self._tombstones))]   # the oldest
        self._tombstones[key] = (max(order, old[0]) if old else order,
                                 now + self.settings.MESH_TOMBSTONE_KEEP)

    def _drop(self, key: tuple[str, str]) -> None:
        slot = self._slots.get(key)
        if slot is None:
            return
        if slot.visible:
            self._pending.append((REMOVED, self._public(slot)))
        self._unlink(key)

    def _link(self, key: tuple[str, str], entry: Entry) -> None:
        self._by_name[entry.name].add(key)
        self._by_uri[entry.uri].add(key)

    def _unlink(self, key: tuple[str, str]) -> None:
        slot = self._slots.pop(key)
        for index, value in ((self._by_name, slot.entry.name), (self._by_uri, slot.entry.uri)):
            keys = index.get(value)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[value]
        node = self._nodes.get(slot.entry.node)
        if node is not None:
            node.keys.discard(key)

    def _make_room(self, entry: Entry) -> bool:
        if len(self._slots) < self.settings.MESH_MAX_ENTRIES:
            return True
        dormant = [(s.dormant_since, k) for k, s in self._slots.items() if s.dormant_since is not None]
        if dormant:
            self._unlink(min(dormant)[1])
            return True
        self._warn_full("entries", f"refusing {entry.name!r} from node {entry.node}")
        return False

    def _forget_idle_node(self) -> bool:
        idle = [(n.heard, node_id) for node_id, n in self._nodes.items() if not n.keys]
        if idle:
            del self._nodes[min(idle)[1]]
            return True
        return False

    def _warn_full(self, kind: str, detail: str) -> None:
        if kind not in self._full_warned:
            self._full_warned.add(kind)
            log.warning("mesh registry of realm %r has too many %s: %s (MESH_MAX_ENTRIES=%d, "
                        "MESH_MAX_NODES=%d)", self.realm, kind, detail, self.settings.MESH_MAX_ENTRIES,
                        self.settings.MESH_MAX_NODES)

    def _public(self, slot: _Slot) -> Entry:
        """The entry with last_seen brought up to date (cached until it changes again)."""
        node = self._nodes.get(slot.entry.node)
        seen = max(slot.heard, node.heard if node is not None else _NEVER)
        if slot.entry.last_seen != seen:
            slot.entry = replace(slot.entry, last_seen=seen)
        return slot.entry

    def _select(self, name: str | None, predicate: Callable[[Entry], bool] | None) -> list[Entry]:
        keys = self._by_name.get(name, ()) if name is not None else self._slots.keys()
        found = []
        for key in keys:
            slot = self._slots[key]
            if slot.visible and (predicate is None or predicate(slot.entry)):
                found.append(self._public(slot))
        found.sort(key=lambda e: e.order, reverse=True)
        return found

    # ---------------------------------------------------------------- outside the lock

    def _drain(self) -> None:
        """Deliver pending events in order, one deliverer at a time (others leave theirs to it)."""
        me = threading.get_ident()
        with self._lock:
            if self._deliverer is not None or not self._pending:
                return                        # the active deliverer (maybe this very thread) takes them
            self._deliverer = me
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._deliverer = None
                        return
                    event, entry = self._pending.popleft()
                    subscribers = list(self._subscribers)
                for callback in subscribers:
                    try:
                        callback(event, entry)
                    except Exception:  # one bad subscriber must not stop the others
                        log.exception("mesh subscriber %r failed on %s %s", callback, event, entry.name)
        except BaseException:
            with self._lock:
                self._deliverer = None
            raise

    def _start_check(self, entry: Entry) -> None:
        check = getattr(self._source, "check", None)
        if check is None or not check(entry, self.settings.MESH_PROBE_TIMEOUT, self._check_done):
            with self._lock:
                node = self._nodes.get(entry.node)
                if node is not None:
                    node.checking = False

    def _check_done(self, entry: Entry, outcome: str) -> None:
        """A suspected node's endpoint answered (refutes), refused (it is gone) or stayed silent."""
        now = self._clock()
        with self._lock:
            node = self._nodes.get(entry.node)
            if node is None or node.incarnation != entry.incarnation:
                return
            node.checking = False
            endpoint = URI(entry.uri).location or ""
            if outcome == OPEN:
                node.heard = max(node.heard, now)
                node.suspect_since = None
                if node.without_heartbeats:   # a foreign responder: only checks vouch for it
                    self._revive_endpoint(node, endpoint, now)
            elif outcome == REFUSED:
                node.refused_seq = node.seq
                refused = []
                for key in node.keys:
                    slot = self._slots[key]
                    if slot.location == endpoint:
                        slot.refused = True
                        if slot.dormant_since is None:
                            self._make_dormant(slot, now)
                            refused.append(slot.entry.name)
                if refused:                   # once, not at every check of a dormant node
                    log.info("mesh: node %s refused a connection to %s: its entries there are gone (%s)",
                             entry.node, entry.uri, ", ".join(sorted(refused)[:5]))
        self._drain()

    def _revive_endpoint(self, node: _Node, endpoint: str, now: float) -> None:
        """Lock held: an accepted check of a node without heartbeats brings back its entries there."""
        node.recheck_gap = 0.0
        for key in node.keys:
            slot = self._slots[key]
            if not slot.visible and slot.location == endpoint:
                self._revive(slot, now)
                if slot.visible:
                    log.info("mesh: %s at %s answers again; it is back", slot.entry.name, slot.entry.uri)
                    self._pending.append((ADDED, self._public(slot)))
                    self._notify()

    def _start_probe(self, entry: Entry) -> None:
        source = self._source
        if source is None or not source.probe(entry, self.settings.MESH_PROBE_TIMEOUT, self._probe_done):
            with self._lock:
                slot = self._slots.get(entry.key)
                if slot is not None:
                    slot.probing = False

    def _probe_done(self, entry: Entry, reachable: bool) -> None:
        with self._lock:
            slot = self._slots.get(entry.key)
            if slot is None or slot.entry.node != entry.node:
                return
            slot.probing = False
            if not reachable:
                log.info("mesh: %s at %s is unreachable and replaced by a newer provider",
                         entry.name, entry.uri)
                self._suspect(slot, self._clock())
        self._drain()

    def _ensure_started(self) -> None:
        if self._started or self._closed:
            return
        with self._start_lock:
            if self._started or self._closed:
                return
            if self._source is None:
                if default_source is None:
                    raise NamingError("no mesh discovery is available")
                self._source = default_source()
            self._started = True
            try:
                self._source.attach(self)
            except Exception as exc:
                self._started = False
                raise NamingError(f"mesh discovery could not start: {exc}") from exc


def _meta_matcher(meta_all: Iterable[str] | None, meta_any: Iterable[str] | None) -> Callable[[Entry], bool]:
    all_tags = frozenset([meta_all] if isinstance(meta_all, str) else meta_all or ())
    any_tags = frozenset([meta_any] if isinstance(meta_any, str) else meta_any or ())

    def matches(entry: Entry) -> bool:
        return all_tags <= entry.metadata and (not any_tags or not any_tags.isdisjoint(entry.metadata))
    return matches
