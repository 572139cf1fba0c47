"""The etcd mirror's logic and RESOLVE's grammar, without etcd (the real cluster: integration/test_etcd.py)."""

from __future__ import annotations

from typing import Any

import pytest

import meshrpc
from meshrpc.errors import NamingError
from meshrpc.etcd import entries
from meshrpc.etcd.gateway import target_of
from meshrpc.etcd.mirror import Mirror
from meshrpc.mesh import auth, records
from meshrpc.resolve import announces_on_mesh, resolve_sources, split_sources

REALM = "unit"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def settings(**extra: Any) -> meshrpc.Settings:
    return meshrpc.config.copy(REALM=REALM, RESOLVE="etcd://127.0.0.1:1", **extra)


def kv(name: str, uri: str, revision: int, *, tags: set[str] | None = None, node: str = "n1", version: int = 1,
       key: str = "") -> dict[str, Any]:
    entry = records.make_entry(realm=REALM, name=name, uri=uri, metadata=tags or set(), node=node,
                               incarnation=1, version=version)
    if key:
        entry = auth.sign(key, entry)
    prefix = entries.realm_prefix(settings())
    return {"key": entries.key_for(prefix, entry), "value": entries.encode_value(entry),
            "mod_revision": revision, "type": "PUT"}


def deleted(item: dict[str, Any], revision: int) -> dict[str, Any]:
    return {"key": item["key"], "value": b"", "mod_revision": revision, "type": "DELETE"}


def mirror_with_events(**extra: Any) -> tuple[Mirror, list[tuple[str, str]]]:
    mirror = Mirror(settings(**extra), clock=Clock())
    events: list[tuple[str, str]] = []
    mirror.subscribe(lambda event, entry: events.append((event, entry.name)))
    return mirror, events


def test_listing_then_watch_events_in_revision_order_without_duplicates() -> None:
    mirror, events = mirror_with_events()
    a, b = kv("a", "PYRO:a@h:1", 2), kv("b", "PYRO:b@h:1", 3, tags={"t"})
    mirror.load(3, [a, b])
    assert [e.name for e in mirror.list()] == ["a", "b"] and mirror.yplookup({"t"})[0].name == "b"
    c = kv("c", "PYRO:c@h:1", 4)
    mirror.apply(5, [c, deleted(a, 5)])
    mirror.apply(5, [c, deleted(a, 5)])          # a resumed watch sending the same again: old news
    assert events == [("added", "a"), ("added", "b"), ("added", "c"), ("removed", "a")]
    assert [e.name for e in mirror.list()] == ["b", "c"] and mirror.revision == 5


def test_relisting_after_compaction_turns_the_difference_into_events() -> None:
    mirror, events = mirror_with_events()
    a, b = kv("a", "PYRO:a@h:1", 2), kv("b", "PYRO:b@h:1", 3)
    mirror.load(3, [a, b])
    events.clear()
    b2 = kv("b", "PYRO:b@h:1", 9, tags={"new"}, version=2)
    mirror.load(10, [b2, kv("d", "PYRO:d@h:1", 10)])
    assert sorted(events) == [("added", "d"), ("removed", "a"), ("updated", "b")]


def test_stale_mirror_keeps_serving_and_suspicion_hides_for_a_while() -> None:
    mirror, _ = mirror_with_events()
    mirror.load(3, [kv("a", "PYRO:a@h:1", 2), kv("a", "PYRO:a2@h:2", 3)])
    mirror.set_stale("etcd unreachable")
    assert mirror.stale and len(mirror.lookup("a")) == 2
    mirror.report_failure("PYRO:a@h:1")
    assert [e.uri for e in mirror.lookup("a")] == ["PYRO:a2@h:2"]
    mirror._clock.now += mirror.settings.MESH_SUSPECT_HOLD + 0.1
    assert len(mirror.lookup("a")) == 2
    mirror.apply(3, [])
    assert not mirror.stale


def test_one_provider_per_name_and_uri() -> None:
    mirror, _ = mirror_with_events()
    old = kv("a", "PYRO:a@h:1", 2, node="old")    # a restarted daemon's key may outlive it until its lease ends
    new = kv("a", "PYRO:a@h:1", 3, node="new", version=5)
    mirror.load(3, [old, new])
    assert [e.node for e in mirror.lookup("a")] == ["new"]


def test_mesh_key_signatures_are_checked() -> None:
    mirror, _ = mirror_with_events(KEY="secret")
    mirror.load(4, [kv("signed", "PYRO:s@h:1", 2, key="secret"), kv("unsigned", "PYRO:u@h:1", 3),
                    kv("other", "PYRO:o@h:1", 4, key="another")])
    assert [e.name for e in mirror.list()] == ["signed"]


def test_never_synced_mirror_says_why() -> None:
    mirror = Mirror(settings(LOOKUP_TIMEOUT=0.5), start=lambda m: m.set_stale("etcd unreachable at X: check Y"))
    with pytest.raises(NamingError, match="check Y"):
        mirror.lookup("a")


def test_resolve_names_the_sources_and_the_cluster() -> None:
    assert split_sources("mdns,etcd://h1:2379,h2:2379,h3:2379,ns") == [
        ("mesh", []), ("etcd", ["etcd://h1:2379", "h2:2379", "h3:2379"]), ("ns", [])]
    s = meshrpc.config.copy(RESOLVE="mdns, etcds://h1:2379,[::1]:2379")
    assert resolve_sources(s) == ["mesh", "etcd"]
    target = target_of(s)
    assert target is not None and target.tls and target.members == (("h1", 2379), ("::1", 2379))
    assert announces_on_mesh(s) and not announces_on_mesh(s.copy(RESOLVE="etcd://h:1"))
    assert announces_on_mesh(meshrpc.config.copy(RESOLVE="ns"))
    for bad in ("etcd", "mesh,bogus", "etcd://"):
        with pytest.raises(NamingError, match="RESOLVE"):
            resolve_sources(meshrpc.config.copy(RESOLVE=bad))
    with pytest.raises(NamingError, match="etcds://"):
        target_of(meshrpc.config.copy(RESOLVE="etcd://h:1", ETCD_CACERT="ca.pem"))
