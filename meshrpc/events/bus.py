"""EventBus: publish and subscribe for one process (or one part of it), over the mesh or through
an event server (docs/events.md).

Mesh mode (no broker): subscribing starts a small daemon serving an Inbox and announces it under
the name `meshrpc.events.inbox` with one metadata tag per pattern (`ev:home.*.door`) through the
daemon announcers of the registries RESOLVE names (the mesh, etcd: `registry_names`); publishing
watches those registries for the announcements (subscriptions to their changes, not polling),
merges them into one provider set and keeps one Outbox per subscriber. Server mode (EVENTS_SERVER or server=): the same
inbox attaches to the event server with a lease, and publishing sends to the server.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..config import Settings
from ..errors import MeshError
from ..limits import EVENTS_SERVER_POLL
from ..uri import URI
from ..wire.constants import EVENTS_INBOX_NAME, EVENTS_SERVER_NAME
from .inbox import Handler, Inbox, Subscription
from .router import Router
from .subjects import Pattern, SubjectError, check_subject, pack_tags, pattern_of_tag

log = logging.getLogger("meshrpc.events")

_TXT_RESERVE = 500    # bytes of a mesh announcement that are not tags: realm, node, uri, addresses, signature


def server_uri(text: str) -> URI:
    """The event server a setting or option names: a URI, or host:port."""
    text = text.strip()
    if ":" in text and not text.upper().startswith(("PYRO:", "PYRONAME:", "PYROMETA:")):
        host, _, port = text.rpartition(":")
        return URI(f"PYRO:{EVENTS_SERVER_NAME}@{host}:{port}")
    return URI(text)


def registry_names(settings: Settings) -> list[str]:
    """The registries subscribers announce on and publishers watch, as daemons announce: the mesh
    unless RESOLVE names etcd and not the mesh; etcd when RESOLVE names a cluster (docs/etcd.md)."""
    from ..resolve import REGISTRIES, announces_on_mesh, split_sources
    names = [name for name, _ in split_sources(settings.RESOLVE) if name in REGISTRIES]
    return (["mesh"] if announces_on_mesh(settings) else []) + (["etcd"] if "etcd" in names else [])


def send_relay(proxy: Any, stream: str, first_seq: int, events: list) -> None:
    proxy.relay(stream, first_seq, events)


class EventBus:
    """publish(subject, message), subscribe(patterns, handler) -> Subscription, close().

    settings: default meshrpc.config; server: an event server (default EVENTS_SERVER; "" = mesh);
    on_loss(publisher, count): called when events from a publisher never arrived (also logged)."""

    def __init__(self, settings: Settings | None = None, *, server: str | None = None,
                 on_loss: Callable[[str, int], None] | None = None) -> None:
        if settings is None:
            from ..config import config as default_settings
            settings = default_settings
        self.settings = settings.copy()
        self.id = secrets.token_hex(8)         # this bus's stream id, as publisher
        chosen = self.settings.EVENTS_SERVER if server is None else server
        self.server: URI | None = server_uri(chosen) if chosen else None
        self._on_loss = on_loss
        self._lock = threading.RLock()
        self._entries_lock = threading.Lock()      # the registry's callbacks take only this one
        self._router: Router | None = None
        self._stop_watching: list[Callable[[], None]] = []
        # (registry, (name, uri)) -> (reachable uri, patterns): a subscriber on two registries is one
        self._subscriber_entries: dict[tuple[str, tuple[str, str]], tuple[str, frozenset[Pattern]]] = {}
        self._inbox = Inbox(on_loss=self._lost)
        self._daemon: Any = None
        self._inbox_uri = ""
        self._announcers: list[Any] | None = None
        self._announced: dict[str, frozenset[str]] = {}
        self._lease_stop = threading.Event()
        self._lease_thread: threading.Thread | None = None
        self._closed = False
        self.lost = 0

    # ---------------------------------------------------------------- publishing

    def publish(self, subject: str, message: Any, *, retain: bool = False) -> int:
        """Send message to every subscriber of subject known now; returns how many (0 is fine: no
        one listens). Never waits on the network. retain: keep it as subject's last value, replayed
        to subscribers that join later."""
        check_subject(subject)
        return self._publishing().publish(subject, message, retain=retain)

    def subscribers(self, subject: str | None = None) -> list[str]:
        """URIs of the subscribers (of subject) this bus delivers to now."""
        return self._publishing().subscribers(subject)

    def wait_for_subscribers(self, subject: str | None = None, count: int = 1, timeout: float = 3.0) -> int:
        """Wait until at least count subscribers (of subject) are known; how many are. With an event
        server: the subscribers attached there (asked every EVENTS_SERVER_POLL seconds meanwhile)."""
        router = self._publishing()
        if self.server is None:
            return router.wait_for_subscribers(subject, count, timeout)
        from ..client.proxy import Proxy
        deadline = time.monotonic() + timeout
        with Proxy(self.server, settings=self.settings) as server:
            while True:
                found = server.subscriber_count(subject)
                if found >= count or time.monotonic() >= deadline or self._lease_stop.wait(EVENTS_SERVER_POLL):
                    return found

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything published so far was delivered (or dropped and counted)."""
        router = self._router
        return True if router is None else router.flush(timeout)

    def _publishing(self) -> Router:
        with self._lock:
            if self._closed:
                raise MeshError("this event bus is closed")
            if self._router is not None:
                return self._router
            if self.server is not None:
                router = Router(self.settings, self.id, send=send_relay)
                router.set_subscriber(str(self.server), [Pattern.parse(">")])
                self._router = router
                return router
            from ..mesh import ADDED
            from ..resolve import _registry_views
            self._router = Router(self.settings, self.id)
            for source, registry in _registry_views(self.settings, registry_names(self.settings)):
                def changed(event: str, entry: Any, source: str = source) -> None:
                    self._registry_changed(source, event, entry)
                self._stop_watching.append(registry.subscribe(changed))
                try:
                    known = registry.list(prefix=EVENTS_INBOX_NAME)     # known before we subscribed
                except MeshError as exc:    # etcd not reached yet: its watcher reports them when it is
                    log.warning("events: subscribers in %s not known yet: %s", source, exc)
                    known = []
                for entry in known:
                    changed(ADDED, entry)
            return self._router

    def _registry_changed(self, source: str, event: str, entry: Any) -> None:
        """Registry callback (its thread; quick): a subscriber announcement came, changed or went."""
        if entry.name != EVENTS_INBOX_NAME and not entry.name.startswith(EVENTS_INBOX_NAME + "."):
            return
        from ..mesh import REMOVED, net
        router = self._router
        if router is None:
            return
        uri = net.reachable_uri(entry.uri, entry.other_hosts)
        with self._entries_lock:
            if event == REMOVED:
                self._subscriber_entries.pop((source, entry.key), None)
            else:
                patterns = frozenset(p for p in map(pattern_of_tag, entry.metadata) if p is not None)
                self._subscriber_entries[(source, entry.key)] = (uri, patterns)
            merged = set().union(*(p for u, p in self._subscriber_entries.values() if u == uri))
            if merged:
                router.set_subscriber(uri, sorted(merged, key=lambda p: (p.is_regex, p.text)))
            else:
                router.remove_subscriber(uri)

    # ---------------------------------------------------------------- subscribing

    def subscribe(self, patterns: str | Iterable[str], handler: Handler, *, regex: bool = False) -> Subscription:
        """Call handler(event) for each event whose subject matches one of patterns (NATS rules:
        `*` one token, `>` the tail; regex=True: Pyro3's re.match, case-insensitive). Handlers run
        on a daemon worker, in order per publisher; keep them short."""
        texts = [patterns] if isinstance(patterns, str) else list(patterns)
        if not texts:
            raise SubjectError("subscribe to at least one pattern")
        compiled = [Pattern.regex(t) if regex else Pattern.parse(t) for t in texts]
        if not callable(handler):
            raise TypeError("the handler must be callable: handler(event)")
        subscription = Subscription(compiled, handler, self._cancel)
        with self._lock:
            if self._closed:
                raise MeshError("this event bus is closed")
            self._start_inbox()
            self._inbox.add(subscription)
            try:
                self._announce()
            except BaseException:
                self._inbox.remove(subscription)
                raise
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.unsubscribe()

    def _cancel(self, subscription: Subscription) -> None:
        with self._lock:
            self._inbox.remove(subscription)
            if not self._closed:
                self._announce()

    def _start_inbox(self) -> None:
        if self._daemon is not None:
            return
        from ..server.daemon import Daemon
        # no spin-waiting for a publisher's next batch: at event rates it costs a core's share for
        # nothing (tools/bench_events.py: 40% less CPU per delivery, the same latency)
        daemon = Daemon(settings=self.settings.copy(SERVER_SPIN=False))
        self._inbox_uri = str(daemon.register(self._inbox, "events.inbox." + self.id))
        threading.Thread(target=daemon.requestLoop, name="meshrpc-events-inbox", daemon=True).start()
        self._daemon = daemon

    def _patterns(self) -> list[Pattern]:
        return sorted({p for s in self._inbox.subscriptions for p in s.patterns}, key=lambda p: (p.is_regex, p.text))

    def _announce(self) -> None:
        """Lock held. Tell the mesh (or the event server) which patterns this process wants now."""
        patterns = self._patterns()
        if self.server is not None:
            self._attach([p.tag for p in patterns])
            return
        groups = pack_tags(patterns, self.settings.MESH_TXT_MAX - _TXT_RESERVE)
        wanted = {EVENTS_INBOX_NAME if i == 0 else f"{EVENTS_INBOX_NAME}.{i}": tags for i, tags in enumerate(groups)}
        if self._announcers is None:
            self._announcers = self._registry_announcers()
        for name, tags in wanted.items():
            if self._announced.get(name) != tags:
                for announcer in self._announcers:
                    announcer.register(name, self._inbox_uri, frozenset(tags))
                self._announced[name] = tags
        for name in [n for n in self._announced if n not in wanted]:
            for announcer in self._announcers:
                announcer.withdraw(name, self._inbox_uri)
            del self._announced[name]

    def _registry_announcers(self) -> list[Any]:
        """The daemon announcers (server/hooks.py) of the registries in registry_names(): the mesh
        publisher, etcd's registrar (a lease: a killed subscriber leaves within ETCD_LEASE_TTL). Not
        the name server's: it holds one URI per name, and there are many subscribers."""
        from ..server.hooks import plugged_in
        wanted = registry_names(self.settings)
        made = (factory(self.settings.HOST, self.settings) for key, factory in plugged_in() if key in wanted)
        return [announcer for announcer in made if announcer is not None]

    # ---------------------------------------------------------------- server mode: leases

    def _attach(self, tags: list[str]) -> None:
        """Lock held. Attach the inbox to the event server now, and keep renewing the lease."""
        self._announced = {"server": frozenset(tags)}
        self._renew_once()
        if self._lease_thread is None:
            self._lease_thread = threading.Thread(target=self._renew_leases, name="meshrpc-events-lease", daemon=True)
            self._lease_thread.start()

    def _renew_once(self) -> None:
        from ..client.proxy import Proxy
        tags = sorted(self._announced.get("server", ()))
        with Proxy(self.server, settings=self.settings) as server:
            server._pyroTimeout = self.settings.EVENTS_DELIVER_TIMEOUT
            if tags:
                server.attach(self._inbox_uri, tags, self.settings.EVENTS_LEASE)
            else:
                server.detach(self._inbox_uri)

    def _renew_leases(self) -> None:
        while not self._lease_stop.wait(self.settings.EVENTS_LEASE / 3):
            try:
                with self._lock:
                    if self._announced.get("server"):
                        self._renew_once()
            except MeshError as exc:   # the server is down or restarting: try again next period
                log.warning("cannot renew the subscription at the event server %s: %s", self.server, exc)

    # ---------------------------------------------------------------- the rest

    def _lost(self, publisher: str, count: int) -> None:
        self.lost += count
        if self._on_loss is not None:
            self._on_loss(publisher, count)

    def stats(self) -> dict[str, Any]:
        """Counters: as publisher (published, delivered, dropped, per subscriber) and as subscriber
        (received, lost, duplicates)."""
        router = self._router
        sending = router.stats() if router is not None else {"published": 0, "delivered": 0, "dropped": 0,
                                                             "subscribers": [], "retained": 0}
        return {"id": self.id, **sending, "inbox": self._inbox_uri or None, **self._inbox.stats()}

    def close(self, flush: float = 0.0) -> None:
        """Stop: optionally wait flush seconds for undelivered events, withdraw subscriptions."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if flush > 0:
            self.flush(flush)
        self._lease_stop.set()
        for stop_watching in self._stop_watching:
            stop_watching()
        if self._router is not None:
            self._router.close()
        if self.server is not None and self._announced.get("server"):
            self._announced = {}
            try:
                self._renew_once()     # detach
            except MeshError:
                pass
        for announcer in self._announcers or ():
            announcer.close()
        if self._daemon is not None:
            self._daemon.shutdown()

    def __enter__(self) -> EventBus:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = f"server {self.server}" if self.server is not None else "mesh"
        return f"<EventBus {self.id} ({mode}), {len(self._inbox.subscriptions)} subscriptions>"
