"""The NameServer object without sockets: Pyro5's API shapes and errors, input limits, autoclean
sweeps with a fake probe, and where broadcast discovery may send (computed, nothing sent)."""

from __future__ import annotations

import ipaddress

import pytest

from meshrpc import URI
from meshrpc.errors import NamingError
from meshrpc.naming import broadcast
from meshrpc.wire.constants import NAMESERVER_NAME
from meshrpc.limits import NS_MAX_ENTRIES, NS_MAX_NAME_LENGTH, NS_MAX_TAGS, NS_MAX_TAG_LENGTH
from meshrpc.naming.server import AutoCleaner, NameServer
from meshrpc.naming.storage import MemoryStorage

pytestmark = pytest.mark.timeout(60)

NS_URI = URI("PYRO:Pyro.NameServer@127.0.0.1:9999")


@pytest.fixture
def ns() -> NameServer:
    server = NameServer(MemoryStorage())
    server._register_self(NS_URI)
    yield server
    server.close()


def test_lookup_and_register_shapes(ns: NameServer) -> None:
    assert ns.count() == 1
    assert ns.lookup(NAMESERVER_NAME) == NS_URI
    ns.register("a", "pyro:obj@host:1", metadata=["t1", "t2"])
    found = ns.lookup("a")
    assert isinstance(found, URI) and str(found) == "PYRO:obj@host:1"  # stored in canonical form
    uri, meta = ns.lookup("a", return_metadata=True)
    assert uri == URI("PYRO:obj@host:1") and meta == {"t1", "t2"} and isinstance(meta, set)
    ns.register("b", URI("PYRO:other@host:2"))
    assert ns.lookup("b", True) == (URI("PYRO:other@host:2"), set())
    ns.register("a", "PYRO:new@host:3")  # replaces, metadata too
    assert ns.lookup("a", True) == (URI("PYRO:new@host:3"), set())
    assert ns.ping() is None


def test_errors_match_pyro5(ns: NameServer) -> None:
    with pytest.raises(NamingError, match="^unknown name: nope$"):
        ns.lookup("nope")
    ns.register("a", "PYRO:x@h:1")
    with pytest.raises(NamingError, match="^name already registered: a$"):
        ns.register("a", "PYRO:y@h:1", safe=True)
    assert ns.lookup("a") == URI("PYRO:x@h:1")
    ns.register("fresh", "PYRO:y@h:1", safe=True)
    with pytest.raises(NamingError, match="^unknown name: nope$"):
        ns.set_metadata("nope", {"t"})
    with pytest.raises(ValueError, match="one thing at a time"):
        ns.list(prefix="a", regex="a")
    with pytest.raises(ValueError, match="meta_all or meta_any"):
        ns.yplookup(meta_all=["a"], meta_any=["b"])
    with pytest.raises(TypeError, match="should not be a str"):
        ns.register("c", "PYRO:x@h:1", metadata="tag")
    with pytest.raises(TypeError, match="should not be a str"):
        ns.set_metadata("a", "tag")
    with pytest.raises(TypeError, match="metadata_all should not be a str"):
        ns.yplookup(meta_all="tag")
    with pytest.raises(TypeError, match="metadata_any should not be a str"):
        ns.yplookup(meta_any="tag")
    with pytest.raises(TypeError, match="only URIs or strings"):
        ns.register("c", 42)
    with pytest.raises(TypeError, match="name must be a str"):
        ns.register(42, "PYRO:x@h:1")
    with pytest.raises(TypeError, match="name must be a str"):
        ns.lookup(["a"])
    with pytest.raises(NamingError, match="invalid uri"):
        ns.register("c", "not a uri")
    with pytest.raises(NamingError, match="invalid regex"):
        ns.list(regex="(")


def test_limits(ns: NameServer) -> None:
    ns.register("n" * NS_MAX_NAME_LENGTH, "PYRO:x@h:1")
    with pytest.raises(NamingError, match="name too long"):
        ns.register("n" * (NS_MAX_NAME_LENGTH + 1), "PYRO:x@h:1")
    with pytest.raises(NamingError, match="name must not be empty"):
        ns.register("", "PYRO:x@h:1")
    with pytest.raises(NamingError, match="uri too long"):
        ns.register("a", "PYRO:" + "x" * 5000 + "@h:1")
    with pytest.raises(NamingError, match="too many metadata tags"):
        ns.register("a", "PYRO:x@h:1", metadata={f"t{i}" for i in range(NS_MAX_TAGS + 1)})
    with pytest.raises(NamingError, match="too many metadata tags"):
        ns.register("a", "PYRO:x@h:1", metadata=(f"t{i}" for i in range(10 ** 9)))  # not drained
    with pytest.raises(NamingError, match="tag too long"):
        ns.register("a", "PYRO:x@h:1", metadata={"t" * (NS_MAX_TAG_LENGTH + 1)})
    with pytest.raises(NamingError, match="too large"):
        ns.register("a", "PYRO:x@h:1", metadata={c * NS_MAX_TAG_LENGTH for c in "abcdefghijklmnopqrst"})
    with pytest.raises(TypeError, match="tags must be strings"):
        ns.register("a", "PYRO:x@h:1", metadata={1, 2})
    with pytest.raises(TypeError):
        ns.register("a", "PYRO:x@h:1", metadata={"k": "v"})
    with pytest.raises(TypeError):
        ns.list(prefix=5)
    with pytest.raises(TypeError):
        ns.remove(regex=["a"])
    assert ns.count() == 2  # only the valid registrations happened


def test_full_name_server(monkeypatch: pytest.MonkeyPatch, ns: NameServer) -> None:
    monkeypatch.setattr("meshrpc.naming.server.NS_MAX_ENTRIES", 3)
    ns.register("a", "PYRO:x@h:1")
    ns.register("b", "PYRO:x@h:1")
    with pytest.raises(NamingError, match="full"):
        ns.register("c", "PYRO:x@h:1")
    ns.register("a", "PYRO:y@h:1")  # replacing an entry is fine when full
    assert NS_MAX_ENTRIES >= 1000


def test_list_remove_yplookup(ns: NameServer) -> None:
    ns.register("shop.cart", "PYRO:c@h:1", metadata={"shop", "cart"})
    ns.register("shop.till", "PYRO:t@h:1", metadata={"shop"})
    ns.register("other", "PYRO:o@h:1")
    everything = ns.list()
    assert everything == {NAMESERVER_NAME: str(NS_URI), "shop.cart": "PYRO:c@h:1", "shop.till": "PYRO:t@h:1",
                          "other": "PYRO:o@h:1"}
    assert ns.list(prefix="shop.") == {"shop.cart": "PYRO:c@h:1", "shop.till": "PYRO:t@h:1"}
    assert ns.list(regex=r"shop\.c") == {"shop.cart": "PYRO:c@h:1"}
    assert ns.list(regex="cart") == {}  # re.match semantics: anchored at the start
    assert ns.list(prefix="shop.c", return_metadata=True) == {"shop.cart": ("PYRO:c@h:1", {"shop", "cart"})}
    assert ns.yplookup(meta_all=["shop"]) == {"shop.cart": ("PYRO:c@h:1", {"shop", "cart"}),
                                              "shop.till": ("PYRO:t@h:1", {"shop"})}
    assert ns.yplookup(meta_any={"cart", "zzz"}, return_metadata=False) == {"shop.cart": "PYRO:c@h:1"}
    assert ns.yplookup() == {}
    assert ns.yplookup(meta_all=["class:Pyro5.nameserver.NameServer"], return_metadata=False) == {
        NAMESERVER_NAME: str(NS_URI)}
    ns.set_metadata("other", ["new"])
    assert ns.lookup("other", True)[1] == {"new"}
    ns.set_metadata("other", None)
    assert ns.lookup("other", True)[1] == set()
    # removal: one name, prefix, regex; the name server's own entry stays
    assert ns.remove(NAMESERVER_NAME) == 0
    assert ns.remove(prefix="Pyro") == 0
    assert ns.remove("missing") == 0
    assert ns.remove("other") == 1
    assert ns.remove(regex=r".*till") == 1
    assert ns.remove(prefix="shop") == 1
    assert ns.remove(regex=".*") == 0
    assert ns.remove() == 0
    assert ns.list() == {NAMESERVER_NAME: str(NS_URI)}


def test_regex_bomb_answers(ns: NameServer) -> None:
    for i in range(50):
        ns.register("a" * 1000 + str(i), f"PYRO:o{i}@h:1")
    try:
        assert ns.list(regex=r"(a+)+$") == {}
    except NamingError as exc:  # allowed: the time budget ran out on a very slow machine
        assert "took longer" in str(exc)
    with pytest.raises(NamingError, match="backreferences"):
        ns.list(regex=r"(a)\1")
    assert ns.count() == 51


class _FakeProbe:
    def __init__(self) -> None:
        self.dead: set[tuple] = set()
        self.calls: list[str] = []

    def __call__(self, uri: URI, timeout: float) -> bool:
        self.calls.append(str(uri.location))
        return (uri.host, uri.port) not in self.dead


def test_autoclean_sweeps(ns: NameServer) -> None:
    probe = _FakeProbe()
    cleaner = AutoCleaner(ns, interval=60, misses=2, probe=probe)
    ns.register("live.1", "PYRO:a@h:1")
    ns.register("live.2", "PYRO:b@h:1")
    ns.register("dead.1", "PYRO:a@h:2")
    ns.register("dead.2", "PYRO:b@h:2")
    ns.register("byname", "PYRONAME:elsewhere")  # not a daemon location: never probed
    probe.dead.add(("h", 2))
    assert cleaner.sweep() == 0
    assert sorted(probe.calls) == ["h:1", "h:2"]  # one probe per daemon, none for the name server itself
    ns.register("dead.2", "PYRO:b@h:3")  # re-registered elsewhere meanwhile: must survive
    assert cleaner.sweep() == 1
    assert set(ns.list()) == {NAMESERVER_NAME, "live.1", "live.2", "dead.2", "byname"}
    probe.dead.add(("h", 1))
    assert cleaner.sweep() == 0
    probe.dead.discard(("h", 1))  # came back: the count of misses starts over
    assert cleaner.sweep() == 0
    probe.dead.add(("h", 1))
    assert cleaner.sweep() == 0
    assert cleaner.sweep() == 2
    assert set(ns.list()) == {NAMESERVER_NAME, "dead.2", "byname"}


def test_autoclean_broken_probe_keeps_entries(ns: NameServer) -> None:
    def broken(uri: URI, timeout: float) -> bool:
        raise RuntimeError("probe bug")
    cleaner = AutoCleaner(ns, interval=60, misses=1, probe=broken)
    ns.register("a", "PYRO:a@h:1")
    assert cleaner.sweep() == 0
    assert "a" in ns.list()
    with pytest.raises(ValueError):
        AutoCleaner(ns, interval=0)
    with pytest.raises(ValueError):
        AutoCleaner(ns, interval=1, misses=0)


# ----------------------------------------------------------------------------- broadcast addresses
def test_broadcast_addresses_for_loopback() -> None:
    for host in ("localhost", "127.0.0.1"):
        assert broadcast.responder_addresses(host) == ["127.0.0.1", "127.255.255.255"]
        assert broadcast.broadcast_targets(host) == ["127.0.0.1", "127.255.255.255"]
    assert broadcast.broadcast_targets("127.0.0.2") == ["127.0.0.2", "127.255.255.255"]
    assert broadcast.responder_addresses("0.0.0.0") == [""]
    assert broadcast.responder_addresses("") == [""]
    for host in ("::1", "[::1]", "::", "fe80::1", "./u:/tmp/sock"):
        assert broadcast.responder_addresses(host) == []
        assert broadcast.broadcast_targets(host) == []


def test_broadcast_addresses_follow_the_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = [(ipaddress.IPv4Interface("127.0.0.1/8"), "127.255.255.255"),
            (ipaddress.IPv4Interface("10.1.2.3/24"), "10.1.2.255"),
            (ipaddress.IPv4Interface("172.16.0.9/16"), None)]  # e.g. a point-to-point link
    monkeypatch.setattr(broadcast, "_interface_networks", lambda: fake)
    # and the limited broadcast address, where Pyro5 clients ask by default
    assert broadcast.responder_addresses("10.1.2.3") == ["10.1.2.3", "10.1.2.255", "255.255.255.255"]
    assert broadcast._networks_of("10.1.2.3") == [ipaddress.IPv4Network("10.1.2.0/24")]
    assert broadcast.broadcast_targets("10.1.2.3") == ["10.1.2.3", "10.1.2.255"]
    assert broadcast.broadcast_targets("10.1.2.77") == ["10.1.2.77", "10.1.2.255"]  # a peer on that LAN
    assert broadcast.broadcast_targets("172.16.0.9") == ["172.16.0.9"]
    assert broadcast.broadcast_targets("192.0.2.1") == ["192.0.2.1"]  # no interface of ours holds it
    assert broadcast.broadcast_targets("0.0.0.0") == ["127.255.255.255", "10.1.2.255"]


def test_an_address_without_a_broadcast_address_gets_its_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ip addr add 10.1.2.3/24 dev eth0` (no `brd +`): netifaces reports the address itself as the
    broadcast address. Broadcasts then went to ourselves and the responder never bound 10.1.2.255, so a
    client with HOST=0.0.0.0 found no name server on the LAN (w11-newcomer; tests/netlab/test_broadcast_lab.py
    shows it between two hosts)."""
    infos = [{"addr": "127.0.0.1", "netmask": "255.0.0.0", "peer": "127.0.0.1"},
             {"addr": "10.1.2.3", "netmask": "255.255.255.0", "broadcast": "10.1.2.3"},
             {"addr": "192.0.2.9", "netmask": "255.255.255.255", "broadcast": "192.0.2.9"}]  # a /32: none
    monkeypatch.setattr(broadcast, "ipv4_interface_infos", lambda: iter(infos))
    assert broadcast._interface_networks() == [(ipaddress.IPv4Interface("127.0.0.1/8"), "127.255.255.255"),
                                               (ipaddress.IPv4Interface("10.1.2.3/24"), "10.1.2.255"),
                                               (ipaddress.IPv4Interface("192.0.2.9/32"), None)]
    assert broadcast.broadcast_targets("0.0.0.0") == ["127.255.255.255", "10.1.2.255"]
    assert broadcast.responder_addresses("10.1.2.3") == ["10.1.2.3", "10.1.2.255", "255.255.255.255"]
