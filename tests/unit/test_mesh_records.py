"""Mesh announcements on the wire: labels, TXT encoding, and a decoder that never raises."""

from __future__ import annotations

import random

import pytest

from meshrpc.errors import NamingError
from meshrpc.mesh import records
from meshrpc.wire import constants
from meshrpc.mesh.records import Entry, Heartbeat

pytestmark = pytest.mark.timeout(30)


def make(name: str = "home.kitchen.light", tags: set[str] | None = None, **kw: object) -> Entry:
    args: dict = {"realm": "r1", "name": name, "uri": "PYRO:obj_1@127.0.0.1:40123",
                      "metadata": tags if tags is not None else {"lamp"}, "node": "a1b2c3d4e5f6",
                      "incarnation": 1700000000000, "version": 3}
    args.update(kw)
    return records.make_entry(**args)


def strings(txt: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(txt):
        out.append(txt[pos + 1: pos + 1 + txt[pos]])
        pos += 1 + txt[pos]
    return out


def roundtrip(entry: Entry) -> Entry:
    decoded, why = records.decode(records.encode_entry(entry), realm=entry.realm,
                                  label=records.instance_label(entry))
    assert why == "" and isinstance(decoded, Entry)
    return decoded


# ---- labels

@pytest.mark.parametrize("name", ["home.kitchen.light", "x", "ünïcode.名前", "a" * 300, "...", "a b/c\\d"])
def test_label_is_a_single_short_ascii_label(name: str) -> None:
    label = records.instance_label(make(name))
    assert "." not in label and len(label.encode()) <= 63 and label.isascii()
    assert records.label_of(records.service_name(label)) == label


def test_label_is_readable_and_unique_by_construction() -> None:
    base = make()
    assert records.instance_label(base).startswith("home-kitchen-light-")
    others = [make(realm="r2"), make(node="ffff"), make(uri="PYRO:obj_1@127.0.0.1:40124"),
              make("home.kitchen-light")]
    labels = {records.instance_label(e) for e in [base, *others]}
    assert len(labels) == 5
    assert records.instance_label(make()) == records.instance_label(base)   # deterministic


def test_label_of_rejects_foreign_names() -> None:
    assert records.label_of("x._http._tcp.local.") is None
    assert records.label_of("a.b._meshrpc._tcp.local.") is None
    assert records.label_of("ok._MESHRPC._tcp.local.") == "ok"


# ---- round trips

def test_roundtrip_plain() -> None:
    entry = make()
    assert roundtrip(entry) == entry
    assert entry.host == "127.0.0.1"


@pytest.mark.parametrize("tags", [set(), {"a"}, {"a,b", "c%2C", "%", ",", "ünï", "x y"}])
def test_roundtrip_tags_with_separators(tags: set[str]) -> None:
    assert roundtrip(make(tags=tags)).metadata == frozenset(tags)


def test_long_name_and_tags_are_split_not_dropped() -> None:
    name = "very.long." + "ä" * 300                       # 610 UTF-8 bytes
    tags = {f"tag-{i:03d}" for i in range(50)}           # ~400 bytes joined
    entry = make(name, tags, uri="PYRO:obj@./u:/tmp/" + "s" * 120)
    txt = records.encode_entry(entry)
    assert len(txt) <= constants.MESH_TXT_ADVISED_MAX
    assert all(len(s) <= 255 for s in strings(txt))
    assert any(s.startswith(b"n*=") for s in strings(txt)) and any(s.startswith(b"t*=") for s in strings(txt))
    got = roundtrip(entry)
    assert got == entry and got.host == "localhost"       # unix socket: this machine


def test_too_much_metadata_is_refused_with_a_clear_error() -> None:
    with pytest.raises(NamingError, match="MESH_TXT_MAX"):
        records.encode_entry(make(tags={f"tag-{i}" for i in range(300)}))
    with pytest.raises(NamingError, match="MESH_TXT_MAX"):             # enormous: refused, fast
        records.encode_entry(make(tags={f"tag-{i}" for i in range(100_000)}))
    records.encode_entry(make(tags={f"tag-{i}" for i in range(300)}), max_size=8000)   # configurable


@pytest.mark.parametrize("bad", [
    {"name": ""}, {"uri": "PYRONAME:x"}, {"uri": "nonsense"}, {"tags": {""}}, {"tags": "abc"},
    {"node": "has.dot"}, {"node": ""}, {"realm": ""}, {"realm": "r" * 64}, {"version": -1},
    {"name": "\udcff"},
])
def test_make_entry_validates(bad: dict) -> None:
    with pytest.raises(NamingError):
        make(**bad)


def test_heartbeat_roundtrip() -> None:
    hb = Heartbeat("r1", "a1b2c3", 17, 99)
    decoded, why = records.decode(records.encode_heartbeat(hb), realm="r1", label="mrhb-a1b2c3")
    assert decoded == hb and why == ""
    assert records.decode(records.encode_heartbeat(hb), label="mrhb-other")[0] is None


# ---- the decoder never raises

def _txt(*items: bytes) -> bytes:
    return b"".join(bytes([len(i)]) + i for i in items)


GOOD = [b"v=1", b"r=r1", b"o=abc", b"i=1", b"s=1", b"n=x", b"u=PYRO:o@127.0.0.1:1"]


@pytest.mark.parametrize("txt, reason", [
    (b"", "format version"),
    (_txt(b"hello=world"), "format version"),
    (_txt(b"v=2", *GOOD[1:]), "unsupported format"),
    (_txt(*GOOD[:1], b"r=other", *GOOD[2:]), "other realm"),
    (_txt(*[g for g in GOOD if not g.startswith(b"n=")]), "missing key 'n'"),
    (_txt(*GOOD[:3], b"i=12a", *GOOD[4:]), "not a number"),
    (_txt(*GOOD[:3], b"i=" + b"9" * 30, *GOOD[4:]), "not a number"),
    (_txt(*GOOD[:2], b"o=bad.node", *GOOD[3:]), "node"),
    (_txt(*GOOD[:-1], b"u=PYRONAME:x"), "only PYRO"),
    (_txt(*GOOD[:-1], b"u=garbage"), "invalid URI"),
    (_txt(*GOOD[:5], b"n*=3", b"n0=a", b"n2=c", GOOD[-1]), "incomplete chunks"),
    (_txt(*GOOD[:5], b"n*=999", GOOD[-1]), "chunk count"),
    (_txt(*GOOD[:5], b"n=\xff\xfe", GOOD[-1]), "UTF-8"),
    (b"\x10v=1", "truncated"),
    (_txt(*GOOD) + b"\xff" + b"x" * 1400, "exceeds"),
])
def test_garbage_is_rejected_with_a_reason(txt: bytes, reason: str) -> None:
    decoded, why = records.decode(txt, realm="r1")
    assert decoded is None and reason in why


def test_label_must_match_content() -> None:
    entry = make()
    txt = records.encode_entry(entry)
    decoded, why = records.decode(txt, realm="r1", label="home-kitchen-light-000000000000")
    assert decoded is None and "label" in why
    assert records.decode(txt, realm=None)[0] == entry        # realm None: any realm


def test_first_occurrence_of_a_key_wins() -> None:
    txt = _txt(*GOOD, b"n=second")
    decoded, _ = records.decode(txt, realm="r1")
    assert isinstance(decoded, Entry) and decoded.name == "x"


def test_random_bytes_never_raise() -> None:
    rng = random.Random(1234)
    good = records.encode_entry(make(tags={f"t{i}" for i in range(40)}))
    for _ in range(3000):
        if rng.random() < 0.5:
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
        else:                                          # mutate a valid record
            data = bytearray(good)
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            blob = bytes(data[: rng.randrange(len(data) + 1)])
        decoded, why = records.decode(blob, realm="r1")
        assert decoded is None or isinstance(decoded, (Entry, Heartbeat))
        assert decoded is not None or why
    assert records.decode("not bytes")[0] is None  # type: ignore[arg-type]


# ---- other addresses of a daemon bound to every interface

def test_other_hosts_travel_in_the_txt_and_exclude_the_uri_host() -> None:
    entry = make(uri="PYRO:obj_1@10.0.0.5:40123", other_hosts=["192.0.2.5", "10.0.0.5", "192.0.2.5", "198.51.100.7"])
    assert entry.other_hosts == ("192.0.2.5", "198.51.100.7")
    assert b"x=192.0.2.5,198.51.100.7" in strings(records.encode_entry(entry))
    assert roundtrip(entry) == entry
    assert b"x=" not in records.encode_entry(make())             # the usual entry: no key at all


@pytest.mark.parametrize("hosts,message", [
    (["not-an-address"], "IPv4"), (["::1"], "IPv4"), ([f"192.0.2.{i}" for i in range(1, 11)], "at most"),
    ("192.0.2.1", "not a string")])
def test_bad_other_hosts_are_refused_when_publishing(hosts: object, message: str) -> None:
    with pytest.raises(NamingError, match=message):
        make(other_hosts=hosts)


def test_other_hosts_need_a_tcp_uri() -> None:
    with pytest.raises(NamingError, match="TCP"):
        make(uri="PYRO:obj_1@./u:/tmp/sock", other_hosts=["192.0.2.1"])


@pytest.mark.parametrize("value", [b"", b"192.0.2.1,", b"192.0.2.300", b"192.0.2.1,evil", b",".join([b"192.0.2.1"] * 0)
                                   + b",".join(b"192.0.2.%d" % i for i in range(1, 12))])
def test_garbage_other_hosts_reject_the_record(value: bytes) -> None:
    txt = records.encode_entry(make()) + bytes([2 + len(value)]) + b"x=" + value
    decoded, why = records.decode(txt, realm="r1")
    assert decoded is None and why
