"""The mesh key: signed announcements (records + registry) and the handshake MAC helpers."""

from __future__ import annotations

import dataclasses
import struct

import pytest

from meshrpc.config import Settings
from meshrpc.mesh import auth, records
from meshrpc.wire import constants
from meshrpc.mesh.records import Heartbeat
from meshrpc.mesh.registry import Registry

KEY = "correct horse battery staple"
REALM = "auth-test"


def _entry(**changes):
    fields: dict = {"realm": REALM, "name": "svc.greeter", "uri": "PYRO:obj_1@10.0.0.1:9999",
                    "metadata": {"b", "a,%x"}, "node": "node-1", "incarnation": 1000, "version": 3}
    fields.update(changes)
    return records.make_entry(**fields)


def _wire(item) -> bytes:
    return records.encode_heartbeat(item) if isinstance(item, Heartbeat) else records.encode_entry(item)


def _roundtrip(item):
    decoded, why = records.decode(_wire(item), realm=REALM)
    assert decoded is not None, why
    return decoded


class _NoSource:
    def attach(self, registry): pass
    def detach(self, registry): pass
    def probe(self, entry, timeout, done): return False


def _registry(key: str = KEY) -> Registry:
    registry = Registry(Settings().copy(REALM=REALM, KEY=key), source=_NoSource())
    return registry


def test_canonical_bytes_are_deterministic_and_tag_order_free() -> None:
    one = _entry(metadata=["x", "y", "z"])
    two = _entry(metadata=["z", "x", "y"])
    assert auth.canonical_entry(one) == auth.canonical_entry(two)
    assert auth.authenticator(KEY, one) == auth.authenticator(KEY, two)
    assert len(auth.authenticator(KEY, one)) == constants.MESH_AUTH_BYTES
    # fields cannot slide into each other (length-prefixed)
    assert auth.canonical_entry(_entry(name="ab", metadata=["c"])) != \
        auth.canonical_entry(_entry(name="a", metadata=["bc"]))
    assert auth.authenticator(KEY, one) != auth.authenticator(KEY + "x", one)


def test_signed_entry_survives_the_wire_and_verifies() -> None:
    signed = auth.sign(KEY, _entry())
    back = _roundtrip(signed)
    assert back.auth == signed.auth and back == signed
    assert auth.verify(KEY, back) == ""
    hb = auth.sign(KEY, Heartbeat(REALM, "node-1", 1000, 7))
    assert auth.verify(KEY, _roundtrip(hb)) == ""


def test_keyless_wire_is_unchanged() -> None:
    entry = _entry()
    assert b"a=" not in records.encode_entry(entry)
    assert auth.sign("", entry) is entry
    assert records.encode_heartbeat(Heartbeat(REALM, "n", 1, 2)) == \
        b"\x03v=1" + bytes([2 + len(REALM)]) + b"r=" + REALM.encode() + b"\x03o=n\x03i=1\x03h=2"


@pytest.mark.parametrize("field,value", [
    ("realm", "auth-other"), ("name", "svc.evil"), ("uri", "PYRO:obj_1@10.6.6.6:9999"),
    ("metadata", frozenset({"b"})), ("node", "node-2"), ("incarnation", 1001), ("version", 4),
    ("other_hosts", ("10.6.6.6",))])
def test_tampering_with_any_signed_field_is_rejected(field: str, value: object) -> None:
    signed = auth.sign(KEY, _entry())
    forged = dataclasses.replace(signed, **{field: value})
    assert forged.auth == signed.auth
    assert "bad mesh key authenticator" in auth.verify(KEY, forged)


@pytest.mark.parametrize("field,value", [("node", "node-2"), ("incarnation", 9), ("seq", 8), ("realm", "x")])
def test_tampered_heartbeat_is_rejected(field: str, value: object) -> None:
    signed = auth.sign(KEY, Heartbeat(REALM, "node-1", 1000, 7))
    assert auth.verify(KEY, dataclasses.replace(signed, **{field: value}))


def test_missing_or_garbage_authenticator() -> None:
    entry = _entry()
    assert "no mesh key authenticator" in auth.verify(KEY, entry)
    assert auth.verify("", entry) == ""                      # keyless: accepts anything
    txt = records.encode_entry(entry) + b"\x04a=!!"
    decoded, _ = records.decode(txt, realm=REALM)
    assert decoded is not None and decoded.auth == b"?"
    assert auth.verify(KEY, decoded)
    assert auth.verify("", decoded) == ""


def test_registry_with_key_ignores_unsigned_and_forged_keyless_accepts() -> None:
    keyed, keyless = _registry(), _registry("")
    genuine = auth.sign(KEY, _entry())
    forged = _entry(uri="PYRO:obj_1@10.6.6.6:9999", node="rogue")
    wrong_key = auth.sign("other", _entry(uri="PYRO:obj_1@10.7.7.7:9999", node="rogue2"))
    for registry in (keyed, keyless):
        for item in (genuine, forged, wrong_key):
            registry.feed(_roundtrip(item))
    assert [e.uri for e in keyed.lookup("svc.greeter")] == [genuine.uri]
    assert {e.uri for e in keyless.lookup("svc.greeter")} == {genuine.uri, forged.uri, wrong_key.uri}
    # an unsigned goodbye cannot remove the genuine entry from a keyed registry
    keyed.feed_goodbye(_entry())
    assert [e.uri for e in keyed.lookup("svc.greeter")] == [genuine.uri]
    keyed.feed_goodbye(genuine)
    assert keyed.lookup("svc.greeter") == []


def test_registry_with_key_ignores_unsigned_heartbeats() -> None:
    clock = [100.0]
    settings = Settings().copy(REALM=REALM, KEY=KEY)
    registry = Registry(settings, source=_NoSource(), clock=lambda: clock[0])
    registry.feed(auth.sign(KEY, _entry()))
    clock[0] += settings.MESH_LIVENESS_WINDOW * 0.9
    registry.feed(Heartbeat(REALM, "node-1", 1000, 1))          # unsigned: does not vouch
    clock[0] += settings.MESH_LIVENESS_WINDOW * 0.5
    registry.sweep()
    assert registry.lookup("svc.greeter") == []


def test_txt_size_limit_counts_the_authenticator() -> None:
    entry = _entry(metadata=[])
    plain = len(records.encode_entry(entry))
    signed = auth.sign(KEY, entry)
    assert len(records.encode_entry(signed)) == plain + 1 + 2 + 24
    records.encode_entry(entry, plain)                          # fits unsigned
    with pytest.raises(records.NamingError):
        records.encode_entry(signed, plain)


# ---------------------------------------------------------------- handshake

def test_handshake_round_trip() -> None:
    cache = auth.ReplayCache()
    token = auth.client_token(KEY, "obj")
    assert len(token) == constants.KEY_CLIENT_TOKEN_BYTES
    answer, why = auth.check_client_token(KEY, token, "obj", 60, cache)
    assert why == "" and answer is not None and len(answer) == constants.KEY_SERVER_TOKEN_BYTES
    assert auth.check_server_token(KEY, token, answer) == ""
    # the answer is bound to this client's nonce and to the key
    other = auth.client_token(KEY, "obj")
    assert auth.check_server_token(KEY, other, answer)
    assert auth.check_server_token("wrong", token, answer)
    assert "did not prove" in auth.check_server_token(KEY, token, None)
    assert "malformed" in auth.check_server_token(KEY, token, b"short")


def test_handshake_refusals() -> None:
    cache = auth.ReplayCache()
    assert auth.check_client_token(KEY, None, "obj", 60, cache) == (None, auth.REQUIRED_REASON)
    assert "MESHRPC_KEY" in auth.REQUIRED_REASON
    token = auth.client_token("wrong", "obj")
    assert auth.check_client_token(KEY, token, "obj", 60, cache) == (None, auth.BAD_KEY_REASON)
    token = auth.client_token(KEY, "obj")
    assert auth.check_client_token(KEY, token, "another-object", 60, cache)[0] is None
    flipped = token[:-1] + bytes([token[-1] ^ 1])
    assert auth.check_client_token(KEY, flipped, "obj", 60, cache)[0] is None
    assert auth.check_client_token(KEY, token[:-1], "obj", 60, cache)[0] is None
    # outside the window (either direction)
    now = struct.unpack(">Q", token[16:24])[0]
    assert auth.check_client_token(KEY, token, "obj", 60, cache, now_ms=now + 61_000)[0] is None
    assert auth.check_client_token(KEY, token, "obj", 60, cache, now_ms=now - 61_000)[0] is None
    # replay
    assert auth.check_client_token(KEY, token, "obj", 60, cache)[0] is not None
    assert auth.check_client_token(KEY, token, "obj", 60, cache) == (None, auth.REPLAY_REASON)


def test_replay_cache_is_bounded_and_expires() -> None:
    cache = auth.ReplayCache(max_size=8)
    for i in range(100):
        assert cache.add(bytes([i]), keep=10, now=0.0)
    assert len(cache) == 8
    assert not cache.add(bytes([99]), keep=10, now=1.0)          # still remembered
    assert cache.add(bytes([99]), keep=10, now=11.0)              # expired, then remembered again
    assert len(cache) == 1


def test_other_hosts_are_signed_and_entries_without_them_sign_as_before() -> None:
    plain = _entry()
    assert b"other hosts" not in auth.canonical_entry(plain)
    multi = dataclasses.replace(plain, other_hosts=("192.0.2.1", "198.51.100.1"))
    signed = auth.sign(KEY, multi)
    assert auth.verify(KEY, _roundtrip(signed)) == ""
    for forged in (("192.0.2.1",), ("192.0.2.1", "203.0.113.9"), ()):
        assert "bad mesh key authenticator" in auth.verify(KEY, dataclasses.replace(signed, other_hosts=forged))
