"""The zeroconf side: the process's one `zeroconf.Zeroconf` and everything that talks to it.

Owns: lazy creation of the Zeroconf instance on the union of the interfaces its users need, service
registration for publishers, heartbeats (timers on zeroconf's loop, so slow subscriber callbacks
cannot silence them), the browser and record listener that feed registries, a one-shot query at
cold start (unicast answers, `meshrpc-mesh-oneshot` thread, 1 s), TXT queries for services the
browser saw without their TXT (lost answers, asked again with back-off), each node's index (pages
answered from zeroconf's service registry, never announced) and the digest its heartbeat carries,
extra announcements of new objects, TXT queries registries ask for (anti-entropy; one-shot
questions answered by unicast, oneshot.py), the
`meshrpc-mesh` worker thread (decode, feed, sweep, watch interfaces) and endpoint probes/checks.

Threading rule from zeroconf: its sync API must not be called from its loop thread. Nothing here
blocks on the loop; calls made *on* the loop thread (e.g. from an asyncio-based user) are scheduled
instead of awaited.

The instance may also be the host program's (`use_zeroconf`, docs/mesh.md): then it is used as it
is, never reconfigured or closed, and closing withdraws only what this process published on it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import math
import queue
import random
import select
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zeroconf import (
    DNSIncoming,
    DNSOutgoing,
    DNSQuestion,
    DNSText,
    RecordUpdate,
    RecordUpdateListener,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)

from ..config import Settings
from ..errors import ConfigError, NamingError
from ..limits import (MESH_INDEX_TTL, MESH_ONE_SHOT_LISTEN, MESH_ONE_SHOT_RCVBUF, MESH_QUESTIONS_BYTES,
                      MESH_TXT_FIRST_QUERY, MESH_TXT_QUERY_ROUNDS)
from ..wire.constants import (DNS_CLASS_IN, DNS_CLASS_IN_UNIQUE, DNS_FLAGS_QUERY, DNS_FLAGS_RESPONSE_AA, DNS_TYPE_PTR,
                              DNS_TYPE_TXT, MDNS_GROUP, MESH_INDEX_SERVICE_TYPE, MESH_SERVICE_TYPE)
from . import net, records
from .oneshot import OneShotAsker
from .records import Entry, Heartbeat

if TYPE_CHECKING:
    from .publisher import MeshPublisher
    from .registry import Registry

log = logging.getLogger("meshrpc.mesh")

# (the TXT questions' and the cold start's timings are explained in limits.py)
_INDEX_SUFFIX = "." + MESH_INDEX_SERVICE_TYPE.lower()
_SUFFIX = "." + MESH_SERVICE_TYPE.lower()
_STOP = object()


@dataclass
class _Beat:
    realm: str
    node: str
    incarnation: int
    interval: float
    ttl: int
    seq: int = 0
    key: str = ""                         # mesh key: heartbeats carry an authenticator
    count: int = -1                       # the node's entries: how many, and their digest
    digest: str = ""
    index: tuple[int, list[tuple[str, int]]] | None = None   # (version, items) not yet in the index
    pages: int = 0                        # index pages currently in zeroconf's registry

    def heartbeat(self) -> Heartbeat:
        hb = Heartbeat(self.realm, self.node, self.incarnation, self.seq, count=self.count,
                       digest=self.digest)
        if self.key:
            from . import auth
            hb = auth.sign(self.key, hb)  # type: ignore[assignment]
        return hb

    def record(self, goodbye: bool = False) -> DNSText:
        # receivers pass a TTL-0 record on only if it equals a cached one: a goodbye repeats the last beat
        if not goodbye or self.seq == 0:
            self.seq += 1
        text = records.encode_heartbeat(self.heartbeat())
        return DNSText(records.service_name(records.heartbeat_label(self.node)), DNS_TYPE_TXT,
                       DNS_CLASS_IN_UNIQUE, 0 if goodbye else self.ttl, text)


def _drop_queued_answers(zc: Zeroconf, keys: set[str]) -> None:
    """On the loop: forget the answers about the services `keys` (lower-case instance names) that
    zeroconf holds back to multicast later (RFC 6762 6 and 14: up to a second after the question);
    sent after the goodbye they would announce the withdrawn service, alive, to every listener that
    joined since. Best effort: the queues are zeroconf's (public attributes, not a documented API)."""
    def about(record: Any) -> bool:
        alias = getattr(record, "alias", None)
        return record.key in keys or (isinstance(alias, str) and alias.lower() in keys)
    for queue_ in (getattr(zc, "out_queue", None), getattr(zc, "out_delay_queue", None)):
        for group in getattr(queue_, "queue", ()):
            try:
                answers = group.answers
                for record in [r for r in answers if about(r)]:
                    del answers[record]
                for record, additionals in answers.items():
                    if any(about(extra) for extra in additionals):
                        answers[record] = {extra for extra in additionals if not about(extra)}
            except (AttributeError, TypeError):  # another zeroconf's layout: nothing to drop here
                return


class _Listener(RecordUpdateListener):
    """Runs on zeroconf's loop: picks our TXT records and queues them, nothing more."""

    def __init__(self, discovery: Discovery) -> None:
        self._discovery = discovery

    def async_update_records(self, zc: Zeroconf, now: float, updates: list[RecordUpdate]) -> None:
        if not self._discovery.has_registries:
            return                            # a publish-only process: attach() seeds from the cache later
        for update in updates:
            record = update.new
            if record.type == DNS_TYPE_TXT:
                name = record.name.lower()
                if name.endswith(_SUFFIX) or name.endswith(_INDEX_SUFFIX):
                    self._discovery.enqueue_record(record)


class Discovery:
    """Process-wide: use get_discovery(). `settings` gives the process-wide limits."""

    def __init__(self, settings: Settings, zeroconf: Zeroconf | None = None) -> None:
        self.settings = settings.copy()
        self._lock = threading.Lock()
        self._zc: Zeroconf | None = None
        self._adopted = zeroconf  # the host program's instance (use_zeroconf): used, never reconfigured or closed
        self._registered: dict[str, ServiceInfo] = {}  # what this process registered (withdrawn from an adopted one)
        self._interfaces: list[str] = []
        self._needs: dict[int, Callable[[], list[str]]] = {}
        self._registries: list[Registry] = []
        self._publishers: weakref.WeakSet[MeshPublisher] = weakref.WeakSet()
        self._beats: dict[str, _Beat] = {}
        self._trains: dict[str, Any] = {}     # service key -> zeroconf's announcement task (loop only)
        self._in_progress: dict[str, Any] = {}  # service key -> its register/update task (loop only)
        self._beating = False                 # a heartbeat timer chain is armed on the loop
        self._browser: ServiceBrowser | None = None
        self._listener = _Listener(self)
        self._unresolved: dict[str, tuple[str, float, int]] = {}   # loop only: key -> (name, due, asked)
        self._resolve_armed = False                                 # loop only
        self._reannounce: dict[str, tuple[float, int, float]] = {}  # loop only: name -> (due, left, gap)
        self._reannounce_armed = False                              # loop only
        self._asker: OneShotAsker | None = None                     # loop only
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, self.settings.MESH_FEED_QUEUE_MAX))
        self._worker: threading.Thread | None = None
        self._probe_slots = threading.BoundedSemaphore(max(1, self.settings.MESH_PROBE_CONCURRENCY))
        self._warned: OrderedDict[str, None] = OrderedDict()
        self.realms_heard: OrderedDict[str, float] = OrderedDict()  # realm -> when last heard (monotonic)
        self._overflow_warned = False
        self.closed = False

    @property
    def has_registries(self) -> bool:
        return bool(self._registries)

    def adopt(self, zeroconf: Zeroconf | None) -> None:
        """Use the host program's Zeroconf instead of starting one (None: start one of its own), before
        the mesh started."""
        with self._lock:
            if self._zc is not None and self._zc is not zeroconf:
                if self._zc is self._adopted:
                    raise ConfigError("the mesh already runs on the Zeroconf given to use_zeroconf(): another "
                                      "one (or None) takes effect after meshrpc.mesh.reset_for_tests()")
                raise ConfigError("the mesh already runs on a Zeroconf instance of its own: call "
                                  "meshrpc.mesh.use_zeroconf() before the first publish or lookup of the process")
            self._adopted = zeroconf

    # ------------------------------------------------------------ the Zeroconf instance

    def zeroconf(self, owner: object, interfaces: Callable[[], list[str]]) -> Zeroconf:
        """The shared Zeroconf, created or widened so that it covers owner's interfaces."""
        with self._lock:
            if self.closed:
                raise NamingError("mesh discovery was closed")
            self._needs[id(owner)] = interfaces
            wanted = self._wanted_interfaces()
            if self._zc is None:
                if self._adopted is not None:
                    if self._adopted.done:
                        del self._needs[id(owner)]
                        raise NamingError("the Zeroconf instance given to meshrpc.mesh.use_zeroconf() was closed")
                    log.debug("mesh: using the program's zeroconf (its interfaces; ours would be %s)", wanted)
                    self._zc = self._adopted
                else:
                    log.debug("mesh: starting zeroconf on %s", wanted)
                    try:
                        # a list, never InterfaceChoice.All; on a thread of its own even when created from a running
                        # asyncio loop: sync and asyncio users of the process share it, whatever loop comes and goes
                        self._zc = Zeroconf(interfaces=wanted, use_asyncio=False)
                    except Exception as exc:
                        del self._needs[id(owner)]
                        raise NamingError(f"cannot start mDNS on interfaces {wanted}: {exc}") from exc
                self._interfaces = wanted
                self._zc.add_listener(self._listener, None)
                self._worker = threading.Thread(target=self._run, name="meshrpc-mesh", daemon=True)
                self._worker.start()
                atexit.register(self.close)          # normal exit sends goodbyes
            elif wanted != self._interfaces:
                self._set_interfaces(wanted)
            return self._zc

    def release(self, owner: object) -> None:
        with self._lock:
            if self._needs.pop(id(owner), None) is not None and self._needs and self._zc is not None \
                    and not self.closed:
                wanted = self._wanted_interfaces()
                if wanted != self._interfaces:
                    self._set_interfaces(wanted)

    def _wanted_interfaces(self) -> list[str]:
        wanted: dict[str, None] = {}
        for interfaces in self._needs.values():
            wanted.update(dict.fromkeys(interfaces()))
        return list(wanted) or list(net.LOOPBACK)

    def _set_interfaces(self, wanted: list[str]) -> None:
        """Lock held. zeroconf re-announces our services on interfaces that appeared (not on the host
        program's instance: its interfaces are its owner's)."""
        assert self._zc is not None
        log.info("mesh: interfaces %s -> %s", self._interfaces, wanted)
        self._interfaces = wanted
        if self._zc is not self._adopted:
            self._schedule(self._zc.async_update_interfaces(wanted), wait=None)

    # ------------------------------------------------------------ publishing (used by MeshPublisher)

    def register(self, info: ServiceInfo, timeout: float | None) -> None:
        # cooperating_responders: instance labels are unique by construction, so no 1.6 s probing
        async def run(zc: Zeroconf) -> None:
            with self._publishing(info):
                self._registered[info.key] = info
                self._announcing(info, await zc.async_register_service(info, cooperating_responders=True))
        self._schedule(run(self._require_zc()), wait=timeout)

    def update(self, info: ServiceInfo, timeout: float | None) -> None:
        async def run(zc: Zeroconf) -> None:
            with self._publishing(info):
                self._registered[info.key] = info
                self._announcing(info, await zc.async_update_service(info))
        self._schedule(run(self._require_zc()), wait=timeout)

    @contextlib.contextmanager
    def _publishing(self, info: ServiceInfo) -> Iterator[None]:
        """On the loop: while a register or update of info is in progress (register() returns after
        MESH_PUBLISH_TIMEOUT even when zeroconf is not done, e.g. under load), an unregister of it waits
        for it; else the registration would complete after the goodbye and announce it for good."""
        key, task = info.key, asyncio.current_task()
        self._in_progress[key] = task
        try:
            yield
        finally:
            if self._in_progress.get(key) is task:
                del self._in_progress[key]

    def _announcing(self, info: ServiceInfo, broadcast: Any) -> None:
        """On the loop: keep the announcement train zeroconf sends after a register or update (its
        broadcasts go on after an unregister otherwise: a listener that joined after the goodbye would
        hear the withdrawn service announced, alive)."""
        key = info.key
        earlier = self._trains.get(key)
        if earlier is not None and earlier is not broadcast:
            earlier.cancel()                  # the newer train announces the current records
        self._trains[key] = broadcast

        def done(_: Any) -> None:
            if self._trains.get(key) is broadcast:
                del self._trains[key]
        broadcast.add_done_callback(done)

    def unregister(self, infos: list[ServiceInfo], timeout: float | None) -> None:
        """Goodbyes for infos, in parallel; waits until they were sent (at most timeout; None: no wait).
        An announcement train still running for one of them stops first: nothing announces it after
        its goodbye."""
        async def run(zc: Zeroconf) -> None:
            pending = [task for task in (self._in_progress.get(info.key) for info in infos) if task is not None]
            if pending:
                await asyncio.wait(pending)   # the registration first, then its goodbye
            for info in infos:
                train = self._trains.pop(info.key, None)
                if train is not None:
                    train.cancel()
            _drop_queued_answers(zc, {info.key for info in infos})
            for info in infos:
                self._registered.pop(info.key, None)
            broadcasts = [await zc.async_unregister_service(info) for info in infos]
            await asyncio.gather(*broadcasts)
        if infos and self._zc is not None and not self.closed:
            self._schedule(run(self._zc), wait=timeout)

    def add_publisher(self, publisher: MeshPublisher) -> None:
        with self._lock:
            self._publishers.add(publisher)

    def start_heartbeat(self, realm: str, node: str, incarnation: int, settings: Settings) -> None:
        with self._lock:
            if node in self._beats:
                return
            self._beats[node] = _Beat(realm, node, incarnation, settings.MESH_HEARTBEAT_INTERVAL,
                                      max(1, math.ceil(settings.MESH_LIVENESS_WINDOW)), key=settings.KEY)
            first, self._beating = not self._beating, True
        if first:
            self._call_on_loop(self._beat)

    def stop_heartbeat(self, node: str, goodbye: bool) -> None:
        """Stop node's heartbeats; goodbye: tell receivers the node is gone (all its entries)."""
        with self._lock:
            beat = self._beats.pop(node, None)
            zc = self._zc
        if beat is not None and zc is not None:
            self._call_on_loop(lambda: self._drop_index(zc, beat))
        if beat is None or zc is None or not goodbye:
            return
        out = DNSOutgoing(DNS_FLAGS_RESPONSE_AA)
        out.add_answer_at_time(beat.record(goodbye=True), 0)
        self._call_on_loop(lambda: zc.async_send(out))
        self.local_feed(beat.heartbeat(), goodbye=True)

    def _beat(self) -> None:
        """On zeroconf's loop: one packet with the heartbeat of every local node, then re-arm."""
        with self._lock:
            zc, beats = self._zc, list(self._beats.values())
            if self.closed or zc is None or not beats:
                self._beating = False
                return
            out = DNSOutgoing(DNS_FLAGS_RESPONSE_AA)
            for beat in beats:
                if beat.index is not None:    # the index follows the digest before the digest is sent
                    try:
                        self._publish_index(zc, beat)
                    except Exception:         # the heartbeat must go on: it vouches for everything
                        log.exception("mesh: could not update the index of node %s", beat.node)
                out.add_answer_at_time(beat.record(), 0)
            interval = min(beat.interval for beat in beats)
            assert zc.loop is not None
            zc.loop.call_later(interval, self._beat)
        zc.async_send(out)
        heard = time.monotonic()
        for beat in beats:   # registries of this process need not wait for the multicast loopback
            self._put(("item", beat.heartbeat(), False, heard))

    def set_index(self, node: str, version: int, items: list[tuple[str, int]]) -> None:
        """A publisher's objects changed ((instance label, version) of each, its version counter):
        its heartbeats carry the new count and digest; its index pages are rebuilt before the next
        heartbeat goes out, so a registry that sees the digest can fetch the matching index."""
        with self._lock:
            beat = self._beats.get(node)
            if beat is None:
                return
            beat.count, beat.digest = len(items), records.entries_digest(items)
            beat.index = (version, list(items))

    def _publish_index(self, zc: Zeroconf, beat: _Beat) -> None:
        """On the loop: the node's index pages go into zeroconf's service registry, which answers TXT
        questions for them; they are never announced (a registry asks only on a digest mismatch)."""
        assert beat.index is not None
        version, items = beat.index
        beat.index = None
        pages = records.index_pages(beat.realm, beat.node, beat.incarnation, version, items)
        for page in pages:
            if beat.key:
                from . import auth
                page = auth.sign(beat.key, page)  # type: ignore[assignment]
            info = ServiceInfo(MESH_INDEX_SERVICE_TYPE, records.index_name(beat.node, page.page), port=0,
                               properties=records.encode_index_page(page),
                               server=records.server_name(beat.node), host_ttl=MESH_INDEX_TTL, other_ttl=MESH_INDEX_TTL)
            if zc.registry.async_get_info_name(info.key) is None:
                zc.registry.async_add(info)
            else:
                zc.registry.async_update(info)
        self._drop_index(zc, beat, keep=len(pages))

    @staticmethod
    def _drop_index(zc: Zeroconf, beat: _Beat, keep: int = 0) -> None:
        """On the loop: remove the node's index pages from `keep` on."""
        for number in range(keep, beat.pages):
            info = zc.registry.async_get_info_name(records.index_name(beat.node, number).lower())
            if info is not None:
                zc.registry.async_remove(info)
        beat.pages = keep

    def announce_again(self, name: str, repeats: int) -> None:
        """Announce the service `name` (already registered) `repeats` more times, 1 s after now, then
        2, 4 ... s apart (RFC 6762 8.3 allows up to eight): a lossy link rarely loses all of them.
        Batched: one packet train for every service due at the same time."""
        if repeats <= 0:
            return

        def arm() -> None:
            self._reannounce[name.lower()] = (time.monotonic() + 1.0, repeats, 2.0)
            self._arm_reannounce(1.0)
        self._call_on_loop(arm)

    def _arm_reannounce(self, delay: float) -> None:
        self._arm("_reannounce_armed", delay, self._send_reannouncements)

    def _arm(self, flag: str, delay: float, callback: Callable[[], None]) -> None:
        """On the loop: call callback after delay unless already armed (flag: the attribute that says so)."""
        zc = self._zc
        if not getattr(self, flag) and zc is not None and zc.loop is not None and not self.closed:
            setattr(self, flag, True)
            zc.loop.call_later(delay, callback)

    def _send_reannouncements(self) -> None:
        """On the loop: send the announcements that are due, re-arm for the rest."""
        self._reannounce_armed = False
        zc = self._zc
        if zc is None or self.closed:
            self._reannounce.clear()
            return
        now = time.monotonic()
        out = DNSOutgoing(DNS_FLAGS_RESPONSE_AA)
        for key, (due, left, gap) in list(self._reannounce.items()):
            if due > now:
                continue
            info = zc.registry.async_get_info_name(key)
            if info is None:                  # withdrawn meanwhile
                del self._reannounce[key]
                continue
            for record in (info.dns_pointer(), info.dns_service(), info.dns_text(), *info.dns_addresses()):
                out.add_answer_at_time(record, 0)
            if left <= 1:
                del self._reannounce[key]
            else:
                self._reannounce[key] = (now + gap, left - 1, gap * 2)
        if out.answers:
            zc.async_send(out)
        if self._reannounce:
            self._arm_reannounce(max(0.05, min(due for due, _, _ in self._reannounce.values()) - now))

    def query(self, names: list[str]) -> None:
        """Ask once, by multicast, for the TXT records of these full record names (a registry's
        anti-entropy); the answers reach registries like any other record."""
        if names:
            wanted = list(names)
            self._call_on_loop(lambda: self._send_questions(wanted))

    def _send_questions(self, names: list[str]) -> None:
        """On the loop: TXT questions, as many packets as they need (no known answers: nothing that
        we lack can be suppressed); one-shot (answered at once by unicast, oneshot.py) unless
        MESH_ONE_SHOT_QUESTIONS is off or no interface can send them."""
        zc = self._zc
        if zc is None or self.closed:
            return
        chunks = _question_chunks(names)
        if self.settings.MESH_ONE_SHOT_QUESTIONS:
            if self._asker is None:
                self._asker = OneShotAsker(zc)
            questions = [[DNSQuestion(name, DNS_TYPE_TXT, DNS_CLASS_IN) for name in chunk] for chunk in chunks]
            with self._lock:
                interfaces = list(self._interfaces)
            if self._asker.ask(interfaces, questions):
                return
        for chunk in chunks:
            out = DNSOutgoing(DNS_FLAGS_QUERY)
            for name in chunk:
                out.add_question(DNSQuestion(name, DNS_TYPE_TXT, DNS_CLASS_IN))
            zc.async_send(out)

    def local_feed(self, item: Entry | Heartbeat, goodbye: bool = False) -> None:
        """This process's own publications reach its registries directly (at once, no network)."""
        if self._on_loop():
            self._put(("item", item, goodbye, time.monotonic()))   # keep callbacks off the loop
        else:
            self._dispatch(item, goodbye, time.monotonic())

    # ------------------------------------------------------------ browsing (the registries' Source)

    def attach(self, registry: Registry) -> None:
        settings = registry.settings
        fixed = net.interfaces_for(settings.HOST, settings.INTERFACES)
        dynamic = net.is_wildcard(settings.HOST, settings.INTERFACES)
        zc = self.zeroconf(registry, (lambda: net.interfaces_for(settings.HOST)) if dynamic
                           else (lambda: fixed))
        registry.set_local_hosts(net.local_hosts())
        with self._lock:
            self._registries.append(registry)
            start_browser = self._browser is None
            publishers = list(self._publishers)
        if start_browser:
            # The browser sends the queries (first within ~0.1 s, then backing off); answers reach
            # registries through the record listener. Its events only tell which services to
            # resolve when their TXT did not come along (_resolve_missing).
            self._browser = ServiceBrowser(zc, MESH_SERVICE_TYPE, handlers=[self._on_browser_event])
            with self._lock:
                interfaces = list(self._interfaces)
            threading.Thread(target=self._one_shot_query, args=(zc, interfaces), name="meshrpc-mesh-oneshot",
                             daemon=True).start()
        for publisher in publishers:   # what this process publishes itself
            for entry in publisher.entries():
                registry.feed(entry)
        self._seed_from_cache(zc)

    def detach(self, registry: Registry) -> None:
        with self._lock:
            if registry in self._registries:
                self._registries.remove(registry)
        self.release(registry)

    def probe(self, entry: Entry, timeout: float, done: Callable[[Entry, bool], None]) -> bool:
        return self.check(entry, timeout, lambda checked, outcome: done(checked, outcome == "open"))

    def check(self, entry: Entry, timeout: float, done: Callable[[Entry, str], None]) -> bool:
        """Like probe, with three outcomes (registry.OPEN / REFUSED / SILENT): a suspected node's check."""
        if not self._probe_slots.acquire(blocking=False):
            return False

        def run() -> None:
            outcome = "silent"                # whatever goes wrong, the registry hears back (no evidence)
            try:
                outcome = net.probe_outcome(net.reachable_uri(entry.uri, entry.other_hosts), timeout)
            except Exception:
                log.exception("mesh: checking %s failed", entry.uri)
            finally:
                self._probe_slots.release()
            done(entry, outcome)
        threading.Thread(target=run, name="meshrpc-mesh-check", daemon=True).start()
        return True

    def _on_browser_event(self, zeroconf: Zeroconf, service_type: str, name: str,
                          state_change: ServiceStateChange) -> None:
        """On the browser's thread: a service (PTR) appeared, changed or left."""
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            self._call_on_loop(lambda: self._unresolved.pop(key, None))
        elif key.endswith(_SUFFIX):
            self._call_on_loop(lambda: self._note_service(key, name))

    def _note_service(self, key: str, name: str) -> None:
        """On the loop: check later that this service's TXT arrived."""
        if key in self._unresolved or len(self._unresolved) >= self.settings.MESH_MAX_ENTRIES:
            return
        self._unresolved[key] = (name, time.monotonic() + MESH_TXT_FIRST_QUERY, 0)
        self._arm_resolver(MESH_TXT_FIRST_QUERY)

    def _arm_resolver(self, delay: float) -> None:
        self._arm("_resolve_armed", delay, self._resolve_missing)

    def _resolve_missing(self) -> None:
        """On the loop: ask for the TXT of reported services whose TXT is not cached, each again
        after a pause that doubles (MESH_QUERY_BACKOFF_MIN .. MAX), all due ones in few packets."""
        self._resolve_armed = False
        zc = self._zc
        if zc is None or self.closed:
            self._unresolved.clear()
            return
        now, now_ms = time.monotonic(), current_time_millis()
        asking: list[str] = []
        for key, (name, due, asked) in list(self._unresolved.items()):
            if due > now:
                continue
            if any(record.type == DNS_TYPE_TXT and not record.is_expired(now_ms)
                   for record in zc.cache.async_entries_with_name(key)):
                del self._unresolved[key]
                continue
            if asked >= MESH_TXT_QUERY_ROUNDS:
                del self._unresolved[key]
                log.info("mesh: no TXT record for %s after %d queries; the heartbeat digest of its "
                         "daemon, while it lives, will ask again", name, asked)
                continue
            asking.append(name)
            pause = min(self.settings.MESH_QUERY_BACKOFF_MAX, self.settings.MESH_QUERY_BACKOFF_MIN * 2 ** asked)
            self._unresolved[key] = (name, now + pause * random.uniform(0.9, 1.1), asked + 1)
        if asking:
            log.debug("mesh: asking for %d missing TXT records", len(asking))
            self._send_questions(asking)
        if self._unresolved:
            self._arm_resolver(max(0.05, min(due for _, due, _ in self._unresolved.values()) - now))

    def _one_shot_query(self, zc: Zeroconf, interfaces: list[str]) -> None:
        """Thread: a one-shot PTR query on each (IPv4) interface; unicast answers go to zeroconf's
        record manager, as if zeroconf had received them (the listener then feeds registries)."""
        sockets: list[socket.socket] = []
        query_ids: dict[socket.socket, int] = {}
        try:
            for address in interfaces:
                if ":" in address:
                    continue
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MESH_ONE_SHOT_RCVBUF)
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
                    sock.bind((address, 0))      # this interface only, an ephemeral port
                    # multicast=False: the packet carries our random id (zeroconf writes 0 otherwise), so
                    # a second cold start within 0.8 s is not dropped by responders as a duplicate
                    query_ids[sock] = random.randrange(1, 0x10000)
                    out = DNSOutgoing(DNS_FLAGS_QUERY, False, query_ids[sock])
                    out.add_question(DNSQuestion(MESH_SERVICE_TYPE, DNS_TYPE_PTR, DNS_CLASS_IN))
                    for packet in out.packets():
                        sock.sendto(packet, MDNS_GROUP)
                except OSError as exc:
                    log.debug("mesh: one-shot query on %s failed: %s", address, exc)
                    sock.close()
                    continue
                sockets.append(sock)
            deadline = time.monotonic() + MESH_ONE_SHOT_LISTEN
            answers = 0
            while sockets and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.debug("mesh: one-shot query on %s: %d answer packets in %.1f s", interfaces,
                              answers, MESH_ONE_SHOT_LISTEN)
                    return
                readable, _, _ = select.select(sockets, [], [], remaining)
                for sock in readable:
                    try:
                        data, source = sock.recvfrom(9000)
                    except OSError:
                        continue
                    if source[1] != MDNS_GROUP[1]:
                        continue                 # RFC 6762 11: mDNS answers come from port 5353
                    message = DNSIncoming(data, source)
                    if message.valid and message.is_response() and message.id == query_ids[sock]:
                        answers += 1
                        self._call_on_loop(lambda m=message: zc.record_manager.async_updates_from_response(m))
        except Exception:  # an optimisation: the browser finds everything anyway, only later
            log.exception("mesh: one-shot query failed")
        finally:
            for sock in sockets:
                sock.close()

    def _seed_from_cache(self, zc: Zeroconf) -> None:
        """Records heard before we browsed (zeroconf caches everything) count with their age."""
        def collect() -> None:
            for name in zc.cache.names():
                if name.endswith(_SUFFIX):
                    for record in zc.cache.async_entries_with_name(name):
                        if record.type == DNS_TYPE_TXT and not record.is_expired(current_time_millis()):
                            self.enqueue_record(record)

        async def on_loop() -> None:
            collect()
        if self._on_loop():
            collect()  # (only a host program's instance runs on a loop a registry may start from)
        else:
            self._schedule(on_loop(), wait=self.settings.MESH_PUBLISH_TIMEOUT)

    # ------------------------------------------------------------ the worker thread

    def enqueue_record(self, record: DNSText) -> None:
        """From the loop: queue a TXT record with the monotonic time it was received."""
        age = max(0.0, (current_time_millis() - record.created) / 1000.0)
        self._put(("txt", record.name, record.text, record.ttl == 0, time.monotonic() - age))

    def _put(self, item: Any) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if not self._overflow_warned:   # flood: drop rather than grow without bound
                self._overflow_warned = True
                log.warning("mesh: more than %d records waiting; dropping (MESH_FEED_QUEUE_MAX)",
                            self._queue.maxsize)

    def _run(self) -> None:
        next_sweep = next_check = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_sweep:
                for registry in self._registry_list():
                    registry.sweep()
                next_sweep = now + min((r.settings.MESH_SWEEP_INTERVAL for r in self._registry_list()),
                                       default=self.settings.MESH_SWEEP_INTERVAL)
            if now >= next_check:
                self._check_interfaces()
                next_check = now + self.settings.MESH_INTERFACE_CHECK_INTERVAL
            try:
                item = self._queue.get(timeout=max(0.0, min(next_sweep, next_check) - time.monotonic()))
            except queue.Empty:
                continue
            if item is _STOP:
                return
            try:
                self._handle(item)
            except Exception:  # the worker must survive anything the network sends
                log.exception("mesh: failed to process %r", item[:2])

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind, first, second, third, *rest = item
        if kind == "item":
            self._dispatch(first, second, third)
            return
        name, text, goodbye, heard = first, second, third, rest[0]
        label = records.label_of(name) or records.label_of(name, MESH_INDEX_SERVICE_TYPE)
        decoded, why = records.decode(text, label=label, max_size=self.settings.MESH_TXT_MAX) \
            if label is not None else (None, "its instance name has a dot (or it is a subtype): meshrpc "
                                       "reads one-label instance names only, its own have no dots")
        if decoded is None:
            self._warn_once(name, why)
            return
        if isinstance(decoded, records.IndexPage) and goodbye:
            return                            # an index page leaving a cache says nothing
        self._dispatch(decoded, goodbye, heard)

    def _dispatch(self, item: Entry | Heartbeat | records.IndexPage, goodbye: bool, heard: float) -> None:
        self._note_realm(item.realm)
        for registry in self._registry_list():
            if registry.realm == item.realm:
                if goodbye:
                    registry.feed_goodbye(item)
                else:
                    registry.feed(item, heard)

    def _note_realm(self, realm: str) -> None:
        """Remember the realms heard (bounded like everything fed from outside), for `browse --all-realms`
        and for hints that say what was heard when a realm looks empty."""
        realms = self.realms_heard
        realms.pop(realm, None)
        realms[realm] = time.monotonic()
        if len(realms) > self.settings.MESH_MAX_NODES:
            realms.popitem(last=False)

    def _warn_once(self, source: str, why: str) -> None:
        key = source.lower()
        if key in self._warned:
            return
        self._warned[key] = None
        if len(self._warned) > self.settings.MESH_MAX_NODES:     # bounded like everything fed from outside
            self._warned.popitem(last=False)
        log.warning("mesh: ignoring record %s: %s", source[:200], why)

    def _check_interfaces(self) -> None:
        """Addresses change at runtime (DHCP, VPN, cable); zeroconf does not notice by itself.

        The sockets follow first (waited for, at most MESH_PUBLISH_TIMEOUT, outside the lock: the
        heartbeat timer on the loop takes it), then publishers re-announce with the new addresses,
        so that their announcements leave through the new sockets."""
        with self._lock:
            if self._zc is None or self.closed:
                return
            try:
                wanted = self._wanted_interfaces()
            except Exception:  # a netifaces hiccup must not stop the worker
                log.exception("mesh: could not read interfaces")
                return
            if wanted == self._interfaces:
                return
            log.info("mesh: interfaces %s -> %s", self._interfaces, wanted)
            self._interfaces = wanted
            zc = self._zc
            publishers, registries = list(self._publishers), list(self._registries)
        try:
            if zc is not self._adopted:  # (the host program's instance keeps its owner's interfaces)
                self._schedule(zc.async_update_interfaces(wanted), wait=self.settings.MESH_PUBLISH_TIMEOUT)
        except Exception:  # keep the worker alive; the next check tries again
            log.exception("mesh: could not move mDNS to interfaces %s", wanted)
            with self._lock:
                if self._interfaces == wanted:
                    self._interfaces = []
        hosts = net.local_hosts()
        for registry in registries:
            registry.set_local_hosts(hosts)
        for publisher in publishers:
            try:
                publisher.refresh_addresses()
            except Exception:
                log.exception("mesh: %r could not re-announce after an interface change", publisher)

    def _registry_list(self) -> list[Registry]:
        with self._lock:
            return list(self._registries)

    # ------------------------------------------------------------ loop helpers and shutdown

    def _require_zc(self) -> Zeroconf:
        zc = self._zc
        if zc is None or self.closed:
            raise NamingError("mesh discovery is not running")
        if zc is self._adopted and zc.done:
            raise NamingError("the Zeroconf instance given to meshrpc.mesh.use_zeroconf() was closed")
        return zc

    def _on_loop(self) -> bool:
        zc = self._zc
        try:
            return zc is not None and asyncio.get_running_loop() is zc.loop
        except RuntimeError:                  # no loop running in this thread
            return False

    def _call_on_loop(self, func: Callable[[], Any]) -> None:
        zc = self._zc
        if zc is not None and zc.loop is not None and not zc.loop.is_closed():
            zc.loop.call_soon_threadsafe(func)

    def _leave(self, zc: Zeroconf, beats: list[_Beat]) -> None:
        """Closing on the host program's instance: withdraw what this process put there (services with
        goodbyes, index pages), stop listening, and leave the instance running."""
        if zc.done or zc.loop is None or zc.loop.is_closed():
            return                            # its owner closed it: nothing of ours is left there

        async def withdraw() -> None:
            # what is registered, or being registered, when this runs on the loop: a register() that came
            # just before the close completes first, then its goodbye (as unregister); else it stayed
            # announced in the program's instance for good
            pending = [task for task in self._in_progress.values() if task is not asyncio.current_task()]
            if pending:
                await asyncio.wait(pending)
            infos = list(self._registered.values())
            self._registered.clear()
            for beat in beats:
                self._drop_index(zc, beat)
            zc.async_remove_listener(self._listener)
            _drop_queued_answers(zc, {info.key for info in infos})
            broadcasts = []
            for info in infos:
                train = self._trains.pop(info.key, None)
                if train is not None:
                    train.cancel()
                if zc.registry.async_get_info_name(info.key) is not None:
                    broadcasts.append(await zc.async_unregister_service(info))
            await asyncio.gather(*broadcasts)
        try:
            self._schedule(withdraw(), wait=self.settings.MESH_GOODBYE_TIMEOUT)
        except NamingError as exc:
            log.warning("mesh: withdrawing from the program's zeroconf failed: %s", exc)

    def _schedule(self, coro: Coroutine[Any, Any, Any], wait: float | None) -> None:
        """Run coro on zeroconf's loop; wait up to `wait` seconds for it unless on the loop or None."""
        zc = self._zc
        assert zc is not None and zc.loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, zc.loop)
        future.add_done_callback(_log_failure)
        if wait is None or self._on_loop():
            return
        try:
            future.result(wait)
        except (concurrent.futures.TimeoutError, TimeoutError):
            log.debug("mesh: zeroconf operation still running after %.2f s", wait)
        except Exception as exc:
            raise NamingError(f"mesh discovery failed: {exc}") from exc

    def close(self) -> None:
        """Goodbyes for everything this process published, then stop (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            zc, browser, worker, beats = self._zc, self._browser, self._worker, list(self._beats.values())
            self._beats.clear()
            self._browser = None
        atexit.unregister(self.close)
        if zc is not None:
            # (the host program's instance may be closed, its loop too: a program that ended, then atexit)
            if beats and not zc.done and zc.loop is not None and not zc.loop.is_closed():
                out = DNSOutgoing(DNS_FLAGS_RESPONSE_AA)
                for beat in beats:
                    out.add_answer_at_time(beat.record(goodbye=True), 0)
                with contextlib.suppress(RuntimeError):  # (its loop closed meanwhile)
                    zc.send(out)
            if browser is not None:
                browser.cancel()
            asker, self._asker = self._asker, None
            if asker is not None:
                self._call_on_loop(asker.close)
            if zc is self._adopted:
                self._leave(zc, beats)
            elif not self._on_loop():
                zc.remove_listener(self._listener)
                zc.close()                    # sends goodbyes for every registered service
        try:
            self._queue.put(_STOP, timeout=self.settings.MESH_GOODBYE_TIMEOUT)
        except queue.Full:
            pass
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=self.settings.MESH_GOODBYE_TIMEOUT)


def _question_chunks(names: list[str]) -> list[list[str]]:
    """Names grouped so that each group's questions fit one datagram (no name compression assumed)."""
    chunks: list[list[str]] = [[]]
    size = 0
    for name in names:
        cost = len(name.encode("utf-8")) + 6      # labels' length bytes, type, class
        if chunks[-1] and size + cost > MESH_QUESTIONS_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(name)
        size += cost
    return [chunk for chunk in chunks if chunk]


def _log_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("mesh: zeroconf operation failed: %s", future.exception())


_instance: Discovery | None = None
_instance_lock = threading.Lock()
_adopted: Zeroconf | None = None  # use_zeroconf(): the host program's instance, for every discovery from now on


def get_discovery(settings: Settings | None = None) -> Discovery:
    """The process's discovery (created on first use with settings, default meshrpc.config.config)."""
    global _instance
    with _instance_lock:
        if _instance is None or _instance.closed:
            if settings is None:
                from ..config import config as default_settings  # the current process default
                settings = default_settings
            _instance = Discovery(settings, _adopted)
        return _instance


def use_zeroconf(instance: Any) -> None:
    """The process's mesh uses `instance` (the host program's `Zeroconf` or `AsyncZeroconf`) from now
    on, instead of a Zeroconf of its own; None: its own again. ConfigError once the mesh runs on
    another instance (call it before the first publish or lookup). docs/mesh.md."""
    global _adopted
    zc = getattr(instance, "zeroconf", instance)  # an AsyncZeroconf holds its Zeroconf
    if zc is not None and not isinstance(zc, Zeroconf):
        raise ConfigError(f"use_zeroconf() takes a zeroconf.Zeroconf or zeroconf.asyncio.AsyncZeroconf, "
                          f"not {type(instance).__name__}")
    with _instance_lock:
        if _instance is not None and not _instance.closed:
            _instance.adopt(zc)
        _adopted = zc


def reset() -> None:
    """Close the process's discovery (goodbyes sent); the next use creates a fresh one."""
    global _instance
    with _instance_lock:
        instance, _instance = _instance, None
    if instance is not None:
        instance.close()
