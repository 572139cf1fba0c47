"""Registry rules with an in-memory source and a hand-driven clock: no network, no sleeps."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import pytest

from meshrpc.config import Settings
from meshrpc.limits import MESH_GOODBYE_GRACE
from meshrpc.errors import NamingError
from meshrpc.mesh import ADDED, REMOVED, UPDATED, Registry, records
from meshrpc.mesh.records import Entry, Heartbeat

pytestmark = pytest.mark.timeout(30)
REALM = "unit"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """Stands in for discovery: counts attaches, answers probes from a table."""

    def __init__(self) -> None:
        self.attached: list[Registry] = []
        self.reachable: dict[str, bool] = {}
        self.probed: list[str] = []

    def attach(self, registry: Registry) -> None:
        self.attached.append(registry)

    def detach(self, registry: Registry) -> None:
        self.attached.remove(registry)

    def probe(self, entry: Entry, timeout: float, done: Callable[[Entry, bool], None]) -> bool:
        self.probed.append(entry.uri)
        if entry.uri not in self.reachable:
            return False
        done(entry, self.reachable[entry.uri])
        return True

    outcomes: dict[str, str]
    checked: list[str]
    queried: list[list[str]]

    def check(self, entry: Entry, timeout: float, done: Callable[[Entry, str], None]) -> bool:
        self.__dict__.setdefault("checked", []).append(entry.uri)
        outcome = self.__dict__.get("outcomes", {}).get(entry.uri)
        if outcome is None:
            return False
        done(entry, outcome)
        return True

    def query(self, names: list[str]) -> None:
        self.__dict__.setdefault("queried", []).append(list(names))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


def new_registry(clock: Clock, source: FakeSource, **changes: object) -> Registry:
    settings = Settings().copy(REALM=REALM, **changes)
    return Registry(settings, source=source, clock=clock, rng=random.Random(7))


@pytest.fixture
def reg(clock: Clock, source: FakeSource) -> Registry:
    return new_registry(clock, source)


@pytest.fixture
def events(reg: Registry) -> list[tuple[str, str, str]]:
    got: list[tuple[str, str, str]] = []
    reg.subscribe(lambda event, e: got.append((event, e.name, e.uri)))
    return got


def entry(name: str = "svc", port: int = 1, node: str = "n1", inc: int = 1, ver: int = 1,
          tags: set[str] | None = None, host: str = "10.0.0.1", realm: str = REALM) -> Entry:
    return records.make_entry(realm=realm, name=name, uri=f"PYRO:o@{host}:{port}", metadata=tags or set(),
                              node=node, incarnation=inc, version=ver)


def uri(port: int = 1, host: str = "10.0.0.1") -> str:
    return f"PYRO:o@{host}:{port}"


# ---- queries

def test_lazy_start_and_queries(reg: Registry, source: FakeSource, clock: Clock) -> None:
    assert source.attached == []                       # constructing does not browse
    assert reg.lookup("nothing") == []
    assert source.attached == [reg]
    reg.feed(entry("home.kitchen.light", 1, tags={"lamp", "kitchen"}))
    reg.feed(entry("home.kitchen.fan", 2, tags={"fan", "kitchen"}))
    reg.feed(entry("garage.door", 3, tags={"door"}))
    assert [e.uri for e in reg.lookup("home.kitchen.light")] == [uri(1)]
    assert {e.name for e in reg.yplookup(meta_all={"kitchen"})} == {"home.kitchen.light", "home.kitchen.fan"}
    assert {e.name for e in reg.yplookup(meta_any={"door", "fan"})} == {"garage.door", "home.kitchen.fan"}
    assert {e.name for e in reg.yplookup(meta_all={"kitchen"}, meta_any={"fan"})} == {"home.kitchen.fan"}
    assert reg.yplookup(meta_all="lamp")[0].name == "home.kitchen.light"      # one tag as a str
    assert [e.name for e in reg.list(prefix="home.")] == ["home.kitchen.fan", "home.kitchen.light"]
    assert [e.name for e in reg.list(regex=r"garage|home\.kitchen\.l")] == ["garage.door", "home.kitchen.light"]
    assert [e.name for e in reg.list(regex="door")] == []                   # re.match, like Pyro5
    with pytest.raises(NamingError):
        reg.list(regex="(")
    assert reg.lookup("home.kitchen.light")[0].last_seen == clock.now


def test_other_realm_is_ignored(reg: Registry) -> None:
    reg.feed(entry(realm="elsewhere"))
    reg.feed(Heartbeat("elsewhere", "n1", 1, 1))
    assert reg.lookup("svc") == [] and reg.stats()["nodes"] == 0


# ---- versions and ownership

def test_versions_order_news(reg: Registry, events: list) -> None:
    reg.feed(entry(ver=2, tags={"a"}))
    reg.feed(entry(ver=1, tags={"old"}))               # older: ignored
    reg.feed(entry(ver=2, tags={"a"}))                 # same: a refresh, no event
    assert reg.lookup("svc")[0].metadata == {"a"}
    reg.feed(entry(ver=3, tags={"b"}))
    assert reg.lookup("svc")[0].metadata == {"b"}
    assert events == [(ADDED, "svc", uri()), (UPDATED, "svc", uri())]


def test_only_the_owner_writes(reg: Registry, events: list) -> None:
    reg.feed(entry(node="owner", inc=5, tags={"mine"}))
    reg.feed(entry(node="intruder", inc=4, ver=99, tags={"evil"}))   # older incarnation: no takeover
    reg.feed_goodbye(entry(node="intruder", inc=9))                  # not the owner: no effect
    assert reg.lookup("svc")[0].node == "owner"
    reg.feed(entry(node="successor", inc=6, tags={"new"}))           # same uri restarted: takeover
    assert reg.lookup("svc")[0].node == "successor"
    reg.feed_goodbye(entry(node="owner", inc=5))                     # the old owner's late goodbye
    assert reg.lookup("svc")[0].node == "successor"
    assert events == [(ADDED, "svc", uri()), (UPDATED, "svc", uri())]


def test_node_restart_replaces_all_its_entries_at_once(reg: Registry, events: list) -> None:
    reg.feed(entry("a", 1, node="n1", inc=1))
    reg.feed(entry("b", 2, node="n1", inc=1))
    reg.feed(Heartbeat(REALM, "n1", 2, 1))              # same node id, newer incarnation
    assert reg.lookup("a") == [] and reg.lookup("b") == []
    reg.feed(entry("a", 7, node="n1", inc=1))           # stale news from the old incarnation
    assert reg.lookup("a") == []
    reg.feed(entry("a", 8, node="n1", inc=2))
    assert [e.uri for e in reg.lookup("a")] == [uri(8)]
    assert [ev for ev, *_ in events] == [ADDED, ADDED, REMOVED, REMOVED, ADDED]


def test_goodbye_leaves_a_tombstone(reg: Registry, clock: Clock, events: list) -> None:
    reg.feed(entry(ver=1))
    reg.feed_goodbye(entry(ver=1))
    reg.feed(entry(ver=1))                              # a late copy of the withdrawn announcement
    assert reg.lookup("svc") == []
    reg.feed(entry(ver=2))                              # published again: newer version
    assert len(reg.lookup("svc")) == 1
    reg.feed_goodbye(entry(ver=2))
    clock.now += reg.settings.MESH_TOMBSTONE_KEEP + 1
    reg.sweep()
    assert reg.stats()["tombstones"] == 0
    assert [ev for ev, *_ in events] == [ADDED, REMOVED, ADDED, REMOVED]


def test_node_goodbye_removes_all_its_entries(reg: Registry) -> None:
    reg.feed(entry("a", 1))
    reg.feed(entry("b", 2))
    reg.feed_goodbye(Heartbeat(REALM, "n1", 1, 5))
    assert reg.list() == [] and reg.stats()["nodes"] == 0


# ---- liveness

def test_heartbeats_keep_entries_alive_and_silence_expires_them(reg: Registry, clock: Clock,
                                                                 events: list) -> None:
    window = reg.settings.MESH_LIVENESS_WINDOW
    reg.feed(entry("a", 1, node="n1"))
    reg.feed(entry("b", 2, node="n2"))
    for _ in range(10):                                 # n1 heartbeats, n2 is silent
        clock.now += 1.0
        reg.feed(Heartbeat(REALM, "n1", 1, 1))
        reg.sweep()
    assert [e.name for e in reg.list()] == ["a"]
    assert reg.stats()["dormant"] == 1
    clock.now += window + 0.1                           # now n1 goes silent too
    reg.sweep()
    assert reg.list() == []
    reg.feed(Heartbeat(REALM, "n1", 1, 2))              # it comes back (partition healed)
    assert [e.name for e in reg.list()] == ["a"]
    assert events == [(ADDED, "a", uri(1)), (ADDED, "b", uri(2)), (REMOVED, "b", uri(2)),
                      (REMOVED, "a", uri(1)), (ADDED, "a", uri(1))]
    clock.now += reg.settings.MESH_DORMANT_KEEP + 1     # dormant entries are forgotten eventually
    reg.feed(Heartbeat(REALM, "n1", 1, 3))
    reg.sweep()
    assert reg.stats()["entries"] == 1 and reg.stats()["nodes"] == 1


def test_expiry_is_exactly_the_window(reg: Registry, clock: Clock) -> None:
    reg.feed(entry())
    clock.now += reg.settings.MESH_LIVENESS_WINDOW
    reg.sweep()
    assert len(reg.lookup("svc")) == 1
    clock.now += 0.01
    reg.sweep()
    assert reg.lookup("svc") == []


def test_stale_cached_record_is_not_proof_of_life(reg: Registry, clock: Clock, events: list) -> None:
    reg.feed(entry(), heard=clock.now - 100)            # heard long ago (seeded from a cache)
    assert reg.lookup("svc") == [] and events == []
    reg.feed(Heartbeat(REALM, "n1", 1, 1), heard=clock.now - 50)   # an old heartbeat neither
    assert reg.lookup("svc") == []
    reg.feed(Heartbeat(REALM, "n1", 1, 2))
    assert len(reg.lookup("svc")) == 1 and events == [(ADDED, "svc", uri())]


# ---- suspicion, probes, replica policy

def test_report_failure_passes_a_provider_over_but_never_hides_the_only_one(reg: Registry, clock: Clock,
                                                                           events: list) -> None:
    reg.feed(entry(port=1, node="a"))
    reg.report_failure(uri(1))                           # the only provider: still chosen
    assert reg.choose("svc").uri == uri(1)
    reg.feed(entry(port=2, node="b"))
    reg.report_failure(uri(1))
    assert {reg.choose("svc").uri for _ in range(30)} == {uri(2)}
    assert len(reg.lookup("svc")) == 2                   # a routing hint, not a removal
    clock.now += reg.settings.MESH_SUSPECT_HOLD + 0.01   # decays by itself
    assert {reg.choose("svc").uri for _ in range(50)} == {uri(1), uri(2)}
    reg.report_failure("not a uri")                      # ignored
    assert events == [(ADDED, "svc", uri(1)), (ADDED, "svc", uri(2))]


def test_a_report_checks_the_endpoint_and_a_refusal_removes_it(reg: Registry, source: FakeSource,
                                                                       events: list) -> None:
    source.outcomes = {uri(1): "refused", uri(2): "open"}
    reg.feed(entry(port=1, node="a"))
    reg.feed(Heartbeat(REALM, "a", 1, 1))
    reg.feed(entry(port=2, node="b"))
    reg.report_failure(uri(2), kind="unreachable")       # checked, and it answers: kept
    reg.report_failure(uri(1), kind="refused")           # checked, refused: gone
    assert source.checked == [uri(2), uri(1)]
    assert [e.uri for e in reg.lookup("svc")] == [uri(2)]
    assert (REMOVED, "svc", uri(1)) in events
    reg.feed(Heartbeat(REALM, "a", 1, 1))                # a late copy of one sent before the refusal...
    assert [e.uri for e in reg.lookup("svc")] == [uri(2)]   # ...proves nothing
    reg.feed(Heartbeat(REALM, "a", 1, 2))                # a newer one: it is back
    assert len(reg.lookup("svc")) == 2


def test_choose_prefers_this_machine_then_random(reg: Registry) -> None:
    reg.set_local_hosts({"192.168.1.5"})
    for port, host, node in [(1, "10.0.0.1", "a"), (2, "10.0.0.2", "b"), (3, "192.168.1.5", "c")]:
        reg.feed(entry(port=port, host=host, node=node))
    assert {reg.choose("svc").uri for _ in range(20)} == {uri(3, "192.168.1.5")}
    reg.report_failure(uri(3, "192.168.1.5"))            # passed over while it is suspect
    assert {reg.choose("svc").uri for _ in range(50)} == {uri(1), uri(2, "10.0.0.2")}
    assert reg.choose("other") is None
    assert reg.choose_meta(meta_all=set()) is not None


def test_newer_provider_elsewhere_replaces_an_unreachable_one(reg: Registry, source: FakeSource,
                                                               events: list) -> None:
    source.reachable = {uri(1): False, uri(3): True}
    reg.feed(entry(port=1, node="old", inc=10))          # killed daemon
    reg.feed(entry(port=3, node="replica", inc=11))      # a live replica
    assert uri(1) in source.probed                      # contested by the newer replica: refused
    assert [e.uri for e in reg.lookup("svc")] == [uri(3)]
    source.probed.clear()
    reg.feed(entry(port=2, node="new", inc=20))          # a restart elsewhere
    assert source.probed == [uri(3)]                    # the replica answers: it stays
    assert [e.uri for e in reg.lookup("svc")] == [uri(2), uri(3)]
    reg.feed(entry(port=4, node="late", inc=5))          # an older newcomer is itself contested
    assert uri(4) in source.probed
    assert (REMOVED, "svc", uri(1)) in events


def test_probing_can_be_disabled(clock: Clock, source: FakeSource) -> None:
    reg = new_registry(clock, source, MESH_PROBE_CONTESTED=False)
    reg.feed(entry(port=1, node="a", inc=1))
    reg.feed(entry(port=2, node="b", inc=2))
    assert source.probed == [] and len(reg.lookup("svc")) == 2


# ---- bounds

def test_flood_cannot_grow_memory(clock: Clock, source: FakeSource, caplog: pytest.LogCaptureFixture) -> None:
    reg = new_registry(clock, source, MESH_MAX_ENTRIES=100, MESH_MAX_NODES=10)
    with caplog.at_level(logging.WARNING, logger="meshrpc.mesh"):
        for i in range(2000):
            reg.feed(entry(f"flood{i}", i + 1, node=f"n{i % 50}"))
            reg.feed_goodbye(entry(f"gone{i}", i + 1))
    stats = reg.stats()
    assert stats["entries"] <= 100 and stats["nodes"] <= 10 and stats["tombstones"] <= 100
    assert sum("too many" in r.getMessage() for r in caplog.records) == 2   # once per kind


def test_dormant_entries_make_room_first(clock: Clock, source: FakeSource) -> None:
    reg = new_registry(clock, source, MESH_MAX_ENTRIES=3)
    for i in range(3):
        reg.feed(entry(f"s{i}", i + 1, node="silent"))
    clock.now += 10
    reg.sweep()
    reg.feed(entry("fresh", 9, node="other"))
    assert [e.name for e in reg.list()] == ["fresh"] and reg.stats()["entries"] == 3


# ---- events and waiting

def test_wait_for_returns_as_soon_as_an_answer_arrives(reg: Registry) -> None:
    feeder = threading.Timer(0.05, lambda: reg.feed(entry("late.name", tags={"x"})))
    started = time.monotonic()
    feeder.start()
    found = reg.resolve("late.name", timeout=10)
    elapsed = time.monotonic() - started
    assert [e.name for e in found] == ["late.name"] and elapsed < 2.0
    assert reg.resolve_meta(meta_all={"x"}, timeout=0.01)[0].name == "late.name"
    assert reg.wait_for(lambda e: e.name.startswith("late"), 0)[0].name == "late.name"
    started = time.monotonic()
    assert reg.resolve("never", timeout=0.05) == []
    assert 0.04 <= time.monotonic() - started < 1.0
    assert reg.choose("late.name", timeout=1).name == "late.name"


def test_callbacks_in_order_survive_errors_and_reentrancy(reg: Registry) -> None:
    seen: list[str] = []

    def bad(event: str, e: Entry) -> None:
        raise RuntimeError("subscriber bug")

    def reentrant(event: str, e: Entry) -> None:
        seen.append(f"{event}:{e.name}")
        if e.name == "first":
            reg.feed(entry("second", 2))               # a callback causing another change

    reg.subscribe(bad)
    unsubscribe = reg.subscribe(reentrant)
    reg.feed(entry("first", 1))
    assert seen == ["added:first", "added:second"]
    unsubscribe()
    reg.feed(entry("third", 3))
    assert seen == ["added:first", "added:second"]


def test_close_detaches(reg: Registry, source: FakeSource) -> None:
    reg.lookup("x")
    reg.close()
    assert source.attached == []
    reg.lookup("x")                                     # no restart after close
    assert source.attached == []


def test_realm_is_validated(clock: Clock, source: FakeSource) -> None:
    with pytest.raises(NamingError):  # Settings.copy refuses an empty realm too; the registry checks its own
        Registry(Settings(REALM=""), source=source, clock=clock)


def test_report_failure_of_an_other_address_passes_the_entry_over(reg: Registry) -> None:
    multi = records.make_entry(realm=REALM, name="svc", uri=uri(1), metadata=set(), node="n1",
                               incarnation=1, version=1, other_hosts=["192.0.2.1"])
    reg.feed(multi)
    reg.feed(entry("svc", 2, node="n2"))
    reg.report_failure(uri(1, host="192.0.2.1"))           # the address a proxy here chose
    assert {reg.choose("svc").uri for _ in range(30)} == {uri(2)}
    assert reg.stats()["avoided"] == 1
    reg.report_failure(uri(9, host="192.0.2.1"))           # another port: nobody's
    assert reg.stats()["avoided"] == 1


def test_a_change_of_other_addresses_is_an_update(reg: Registry, events: list) -> None:
    reg.feed(entry())
    grown = records.make_entry(realm=REALM, name="svc", uri=uri(), metadata=set(), node="n1",
                               incarnation=1, version=2, other_hosts=["192.0.2.1"])
    reg.feed(grown)
    assert events == [(ADDED, "svc", uri()), (UPDATED, "svc", uri())]
    assert reg.lookup("svc")[0].other_hosts == ("192.0.2.1",)


# ---- suspicion before removal (Lifeguard): checks, refutation, a window that grows with loss

def beat_for(reg: Registry, clock: Clock, node: str, seconds: float, lost_every: int = 0,
             start_seq: int = 1) -> int:
    """Heartbeats once a second for `seconds`, every lost_every-th one lost; returns the next seq."""
    seq = start_seq
    for _ in range(int(seconds)):
        clock.now += 1.0
        if not (lost_every and seq % lost_every == 0):
            reg.feed(Heartbeat(REALM, node, 1, seq))
        seq += 1
        reg.sweep()
    return seq


def test_a_silent_node_is_suspected_and_checked_and_an_answer_refutes_it(reg: Registry, clock: Clock,
                                                                         source: FakeSource) -> None:
    source.outcomes = {uri(1): "open"}
    reg.feed(entry(port=1, node="a"))
    seq = beat_for(reg, clock, "a", 3)
    clock.now += reg.settings.MESH_SUSPECT_AFTER + 0.1   # silent: suspected, checked, answers
    reg.sweep()
    assert source.checked == [uri(1)]
    assert reg.stats()["suspect_nodes"] == 0 and len(reg.lookup("svc")) == 1
    clock.now += reg.settings.MESH_LIVENESS_WINDOW - 1   # past the window since the last heartbeat
    reg.sweep()
    assert len(reg.lookup("svc")) == 1                   # the accepted connection vouched for it
    source.outcomes = {}                                 # now the checks get no answer
    for _ in range(int(reg.settings.MESH_LIVENESS_WINDOW * 4) + 2):
        clock.now += 0.25
        reg.sweep()
    assert reg.lookup("svc") == [] and reg.stats()["suspect_nodes"] == 1
    reg.feed(Heartbeat(REALM, "a", 1, seq))              # a late heartbeat clears the suspicion
    assert len(reg.lookup("svc")) == 1 and reg.stats()["suspect_nodes"] == 0


def test_a_killed_daemon_whose_port_refuses_is_gone_after_suspect_after(reg: Registry, clock: Clock,
                                                                         source: FakeSource) -> None:
    source.outcomes = {uri(1): "refused"}
    reg.feed(entry(port=1, node="a"))
    beat_for(reg, clock, "a", 3)
    clock.now += reg.settings.MESH_SUSPECT_AFTER - 0.05
    reg.sweep()
    assert len(reg.lookup("svc")) == 1
    clock.now += 0.1
    reg.sweep()
    assert reg.lookup("svc") == []                       # well before MESH_LIVENESS_WINDOW


def test_a_node_without_heartbeats_comes_back_when_a_check_of_its_dormant_entry_is_accepted(
        reg: Registry, clock: Clock, source: FakeSource, events: list[tuple[str, str, str]]) -> None:
    """A foreign responder (Avahi publishing a meshrpc-shaped record) sends no heartbeats and does
    not announce again when a partition heals: only checks vouch for it, also once it is dormant.
    (w11-avahi: before, its entry stayed hidden until the record's TTL ran out, about an hour.)"""
    source.outcomes = {uri(1): "open"}
    reg.feed(entry(port=1, node="avahi"))
    for _ in range(8):                                   # checks keep it alive, no heartbeat needed
        clock.now += 1.0
        reg.sweep()
    assert len(reg.lookup("svc")) == 1 and source.checked
    source.outcomes = {}                                 # a partition: checks get no answer
    for _ in range(int(reg.settings.MESH_LIVENESS_WINDOW * 4) + 4):
        clock.now += 0.25
        reg.sweep()
    assert reg.lookup("svc") == [] and events[-1] == (REMOVED, "svc", uri(1))
    source.checked.clear()
    source.outcomes = {uri(1): "open"}                   # healed; the responder stays silent
    for _ in range(int(reg.settings.MESH_LIVENESS_WINDOW_MAX) + 2):
        clock.now += 1.0
        reg.sweep()
        if reg.lookup("svc"):
            break
    assert len(reg.lookup("svc")) == 1 and events[-1] == (ADDED, "svc", uri(1))
    assert source.checked == [uri(1)]


def test_the_checks_of_a_node_take_its_endpoints_in_turn(reg: Registry, clock: Clock, source: FakeSource) -> None:
    """A foreign responder may announce objects at several endpoints under one node id, one of them dead:
    the checks that keep it alive must not always ask the same one (w11-avahi: the first entry of a set
    was always checked, and a dead endpoint next to a live one stayed listed for good)."""
    source.outcomes = {uri(1): "open", uri(2): "silent"}
    for port in (1, 2):
        reg.feed(entry(name=f"svc{port}", port=port, node="avahi"))
    while len(source.__dict__.setdefault("checked", [])) < 2:
        clock.now += 0.25
        reg.sweep()
    assert sorted(source.checked) == [uri(1), uri(2)]
    source.outcomes[uri(2)] = "refused"
    for _ in range(40):
        clock.now += 0.25
        reg.sweep()
    assert [e.uri for e in reg.list()] == [uri(1)]          # the dead one went, the live one stayed


def test_a_node_without_heartbeats_may_publish_a_record_it_withdrew_again(
        reg: Registry, clock: Clock, source: FakeSource, events: list[tuple[str, str, str]]) -> None:
    """A foreign responder's record keeps its version for good: after its goodbye, the same record
    heard again later than MESH_GOODBYE_GRACE is a new publication (w11-avahi: the tombstone hid it);
    a copy within the grace is a late one. A meshrpc node's same version stays buried."""
    source.outcomes = {uri(1): "open", uri(2): "open"}
    reg.feed(entry(port=1, node="avahi"))
    reg.feed_goodbye(entry(port=1, node="avahi"))
    clock.now += 0.5
    reg.feed(entry(port=1, node="avahi"))                # late copy
    assert reg.lookup("svc") == []
    clock.now += MESH_GOODBYE_GRACE
    reg.feed(entry(port=1, node="avahi"))                # published again
    assert [e.uri for e in reg.lookup("svc")] == [uri(1)] and events[-1] == (ADDED, "svc", uri(1))
    reg.feed(entry(port=2, node="mesh"))
    reg.feed(Heartbeat(REALM, "mesh", 1, 1))
    reg.feed_goodbye(entry(port=2, node="mesh"))
    clock.now += 2 * MESH_GOODBYE_GRACE
    reg.feed(entry(port=2, node="mesh"))                 # meshrpc bumps the version when it publishes again
    assert [e.uri for e in reg.lookup("svc")] == [uri(1)]


def test_a_node_known_only_from_a_stale_cached_copy_is_not_checked(reg: Registry, clock: Clock,
                                                                  source: FakeSource) -> None:
    """Only a node heard live counts as one without heartbeats: an old cached copy (a daemon gone long
    ago, its port maybe reused by another) is neither checked nor brought back."""
    source.outcomes = {uri(1): "open"}
    reg.feed(entry(port=1, node="gone"), heard=clock.now - 60.0)
    for _ in range(40):
        clock.now += 0.5
        reg.sweep()
    assert reg.lookup("svc") == [] and source.__dict__.get("checked", []) == []


def test_a_dormant_node_without_heartbeats_is_checked_with_back_off(reg: Registry, clock: Clock,
                                                                    source: FakeSource) -> None:
    source.outcomes = {uri(1): "refused"}                # a record pointing at a port nobody serves
    reg.feed(entry(port=1, node="avahi"))
    times = []
    for _ in range(120):
        clock.now += 0.5
        before = len(source.__dict__.setdefault("checked", []))
        reg.sweep()
        if len(source.checked) > before:
            times.append(clock.now)
    assert reg.lookup("svc") == []
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps == sorted(gaps) and gaps[-1] <= reg.settings.MESH_LIVENESS_WINDOW_MAX + 0.5
    assert len(times) < 12                               # 60 s: not a connect every second


def test_a_copy_of_a_refused_announcement_does_not_bring_it_back(reg: Registry, clock: Clock, source: FakeSource,
                                                                 events: list[tuple[str, str, str]]) -> None:
    """Avahi answers a query for a record whose port nobody serves as long as the record is published:
    the same announcement again is no proof of life (it made the entry come and go). A newer version is."""
    source.outcomes = {uri(1): "refused"}
    reg.feed(entry(port=1, node="avahi"))
    clock.now += reg.settings.MESH_SUSPECT_AFTER + 0.1
    reg.sweep()
    assert reg.lookup("svc") == [] and events == [(ADDED, "svc", uri(1)), (REMOVED, "svc", uri(1))]
    clock.now += 0.5
    reg.feed(entry(port=1, node="avahi"))                # the same record, answered again
    assert reg.lookup("svc") == [] and len(events) == 2
    source.outcomes = {uri(1): "open"}                   # served again: the next check brings it back
    for _ in range(40):
        clock.now += 0.5
        reg.sweep()
        if reg.lookup("svc"):
            break
    assert len(reg.lookup("svc")) == 1 and events[-1] == (ADDED, "svc", uri(1))


def test_the_liveness_window_grows_with_measured_heartbeat_loss(reg: Registry, clock: Clock) -> None:
    settings = reg.settings
    reg.feed(entry(port=1, node="clean"))
    reg.feed(entry(port=2, node="lossy"))
    for second in range(60):                             # one heartbeat in five lost: 20 %
        clock.now += 1.0
        reg.feed(Heartbeat(REALM, "clean", 1, second + 1))
        if second % 5 != 4:
            reg.feed(Heartbeat(REALM, "lossy", 1, second + 1))
        reg.sweep()
    health = reg.node_health()
    assert 0.12 < health["lossy"]["loss"] < 0.3
    # 0.2 ** 9 ~ 5e-7 < MESH_SILENCE_ODDS: about 9-10 missed heartbeats before "gone"
    assert 8.0 < health["lossy"]["window"] <= settings.MESH_LIVENESS_WINDOW_MAX
    # local health: the clean node's window is raised by the loss seen overall, not below the minimum
    assert health["clean"]["window"] > settings.MESH_LIVENESS_WINDOW
    clock.now += 6.0                                     # 6 s of silence: gone on a clean LAN, not here
    reg.sweep()
    assert {e.uri for e in reg.lookup("svc")} == {uri(1), uri(2)}
    clock.now += settings.MESH_LIVENESS_WINDOW_MAX
    reg.sweep()
    assert reg.lookup("svc") == []


def test_twenty_percent_random_loss_causes_no_false_departure(clock: Clock, source: FakeSource) -> None:
    reg = new_registry(clock, source)
    reg.feed(entry(port=1, node="a"))
    rng = random.Random(3)
    removed: list[str] = []
    reg.subscribe(lambda event, e: removed.append(e.uri) if event == REMOVED else None)
    for seq in range(1, 1801):                           # 30 minutes of heartbeats at 20 % loss
        clock.now += 1.0
        if rng.random() >= 0.2:
            reg.feed(Heartbeat(REALM, "a", 1, seq))
        for _ in range(4):
            reg.sweep()
            clock.now += 0.0
    assert removed == []


# ---- anti-entropy: a heartbeat digest, the node's index, exactly the missing entries

def items_of(*entries: Entry) -> list[tuple[str, int]]:
    return [(records.instance_label(e), e.version) for e in entries]


def digest_beat(node: str, seq: int, *entries: Entry) -> Heartbeat:
    return Heartbeat(REALM, node, 1, seq, count=len(entries), digest=records.entries_digest(items_of(*entries)))


def test_a_missing_entry_is_found_through_the_index_and_asked_for_exactly(reg: Registry, clock: Clock,
                                                                          source: FakeSource) -> None:
    a, b, c = (entry(name, port, node="n1", ver=v) for name, port, v in [("a", 1, 1), ("b", 2, 2), ("c", 3, 3)])
    reg.feed(a)
    reg.feed(c)                                          # b's announcements were all lost
    reg.feed(digest_beat("n1", 1, a, b, c))
    reg.sweep()
    assert source.__dict__.get("queried") is None        # grace: b may still be on its way
    clock.now += reg.settings.MESH_SYNC_GRACE + 0.01
    reg.sweep()
    assert source.queried == [[records.index_name("n1", 0)]]
    for page in records.index_pages(REALM, "n1", 1, 3, items_of(a, b, c)):
        reg.feed(page)
    reg.sweep()
    assert source.queried[-1] == [records.service_name(records.instance_label(b))]
    reg.feed(b)
    reg.feed(digest_beat("n1", 2, a, b, c))
    assert reg.stats()["syncing"] == 0
    assert {e.name for e in reg.list()} == {"a", "b", "c"}


def test_a_lost_goodbye_is_noticed_and_the_entry_dropped(reg: Registry, clock: Clock, events: list) -> None:
    a, b = entry("a", 1, node="n1", ver=1), entry("b", 2, node="n1", ver=2)
    reg.feed(a)
    reg.feed(b)
    reg.feed(digest_beat("n1", 1, a))                    # the node withdrew b; we missed the goodbye
    clock.now += reg.settings.MESH_SYNC_GRACE + 0.01
    reg.sweep()
    for page in records.index_pages(REALM, "n1", 1, 3, items_of(a)):
        reg.feed(page)
    assert [e.name for e in reg.list()] == ["a"]
    assert (REMOVED, "b", uri(2)) in events
    reg.feed(b)                                          # a late copy does not bring it back
    assert [e.name for e in reg.list()] == ["a"]


def test_queries_back_off_exponentially_and_never_give_up_while_the_node_lives(clock: Clock,
                                                                                source: FakeSource) -> None:
    reg = new_registry(clock, source, MESH_QUERY_BACKOFF_MIN=1.0)   # whole seconds: exact gaps
    a, b = entry("a", 1, node="n1", ver=1), entry("b", 2, node="n1", ver=2)
    reg.feed(a)
    asked_at: list[float] = []
    seq = 1
    while clock.now < 1000.0 + 60:                       # a minute of heartbeats; no index ever arrives
        reg.feed(digest_beat("n1", seq, a, b))
        seq += 1
        for _ in range(4):
            clock.now += 0.25
            before = len(source.__dict__.get("queried", []))
            reg.sweep()
            if len(source.__dict__.get("queried", [])) > before:
                asked_at.append(clock.now)
    gaps = [round(later - earlier) for earlier, later in zip(asked_at, asked_at[1:])]
    assert gaps[:4] == [1, 2, 4, 8]
    assert set(gaps[4:]) == {8} and len(gaps) >= 9      # capped at MESH_QUERY_BACKOFF_MAX, still asking
    clock.now += reg.settings.MESH_LIVENESS_WINDOW_MAX + 1   # the node dies: the asking stops
    reg.sweep()
    count = len(source.queried)
    for _ in range(40):
        clock.now += 1
        reg.sweep()
    assert len(source.queried) == count and reg.stats()["syncing"] == 0


def test_heartbeats_without_a_digest_start_no_anti_entropy(reg: Registry, clock: Clock,
                                                           source: FakeSource) -> None:
    reg.feed(entry("a", 1, node="n1"))
    for seq in range(5):
        reg.feed(Heartbeat(REALM, "n1", 1, seq))
        clock.now += 1
        reg.sweep()
    assert source.__dict__.get("queried") is None and reg.stats()["syncing"] == 0


# ---- an entry of a live node is never removed on partial or stale evidence (issue 13)

def live_for(reg: Registry, clock: Clock, seq: int, *entries: Entry) -> int:
    """Heartbeats with the digest of entries, once a second until the registry asks for the index
    again (anti-entropy back-off); returns the next seq."""
    asked = len(reg._source.__dict__.get("queried", []))   # type: ignore[union-attr]
    for _ in range(60):
        if len(reg._source.__dict__.get("queried", [])) > asked:   # type: ignore[union-attr]
            break
        clock.now += 1.0
        reg.feed(digest_beat("n1", seq, *entries))
        seq += 1
        reg.sweep()
    return seq

def test_an_index_that_disagrees_with_the_heartbeat_removes_nothing(reg: Registry, clock: Clock,
                                                                    events: list) -> None:
    a, b, c = (entry(name, port, node="n1", ver=v) for name, port, v in [("a", 1, 1), ("b", 2, 2), ("c", 3, 3)])
    reg.feed(a)
    reg.feed(b)                                          # c's announcements were all lost
    reg.feed(digest_beat("n1", 1, a, b, c))
    clock.now += reg.settings.MESH_SYNC_GRACE + 0.01
    reg.sweep()
    # an index that lists neither b nor c (a stale or mixed snapshot: its digest is not the heartbeat's)
    for page in records.index_pages(REALM, "n1", 1, 3, items_of(a)):
        reg.feed(page)
    assert {e.name for e in reg.list()} == {"a", "b"}
    assert not [event for event in events if event[0] == REMOVED]
    # the index the heartbeat vouches for: c is asked for, nothing is dropped
    live_for(reg, clock, 2, a, b, c)
    for page in records.index_pages(REALM, "n1", 1, 3, items_of(a, b, c)):
        reg.feed(page)
    assert {e.name for e in reg.list()} == {"a", "b"}
    reg.feed(c)
    assert {e.name for e in reg.list()} == {"a", "b", "c"}
    assert not [event for event in events if event[0] == REMOVED]


def test_a_lost_goodbye_is_repaired_once_heartbeat_and_index_agree(reg: Registry, clock: Clock,
                                                                  events: list) -> None:
    a, b = entry("a", 1, node="n1", ver=1), entry("b", 2, node="n1", ver=2)
    reg.feed(a)
    reg.feed(b)
    reg.feed(digest_beat("n1", 1, a))                    # b withdrawn, the goodbye lost
    clock.now += reg.settings.MESH_SYNC_GRACE + 0.01
    reg.sweep()
    reg.feed(digest_beat("n1", 2, a, b))                 # a newer heartbeat: b is back (re-published)
    for page in records.index_pages(REALM, "n1", 1, 3, items_of(a)):
        reg.feed(page)                                   # an index overtaken by that change
    assert {e.name for e in reg.list()} == {"a", "b"}
    live_for(reg, clock, 3, a)                           # withdrawn again, and the index agrees
    for page in records.index_pages(REALM, "n1", 1, 4, items_of(a)):
        reg.feed(page)
    assert [e.name for e in reg.list()] == ["a"] and (REMOVED, "b", uri(2)) in events


def test_a_node_heard_through_its_announcements_keeps_all_its_entries(reg: Registry, clock: Clock,
                                                                      source: FakeSource, events: list) -> None:
    source.outcomes = {}                                 # checks get no answer (a lossy link)
    a, b = entry("a", 1, node="n1"), entry("b", 2, node="n1")
    reg.feed(a)
    reg.feed(b)
    seq = beat_for(reg, clock, "n1", 3)
    # every heartbeat is lost for twice the window, but a's answers (to other hosts' questions) arrive
    for _ in range(int(2 * reg.settings.MESH_LIVENESS_WINDOW_MAX)):
        clock.now += 1.0
        reg.feed(a)
        reg.sweep()
    assert {e.name for e in reg.list()} == {"a", "b"}
    assert not [event for event in events if event[0] == REMOVED]
    clock.now += reg.settings.MESH_LIVENESS_WINDOW_MAX + 1   # then nothing at all: the node is gone
    reg.sweep()
    assert reg.list() == [] and seq > 0


def test_an_older_heartbeat_arriving_late_does_not_overrule_the_newest_digest(reg: Registry, clock: Clock,
                                                                             source: FakeSource) -> None:
    a, b = entry("a", 1, node="n1", ver=1), entry("b", 2, node="n1", ver=2)
    reg.feed(a)
    reg.feed(b)
    reg.feed(digest_beat("n1", 5, a, b))
    reg.feed(digest_beat("n1", 4, a))                    # e.g. re-fed when zeroconf's cache expires it
    clock.now += reg.settings.MESH_SYNC_GRACE + 0.01
    reg.sweep()
    assert source.__dict__.get("queried") is None and reg.stats()["syncing"] == 0
    assert {e.name for e in reg.list()} == {"a", "b"}
