"""Out-of-band bytes (meshrpc <-> meshrpc, serpent and json), sans-I/O: serializer and frame round trips."""

from __future__ import annotations

import pytest

from meshrpc.errors import MessageTooLargeError, ProtocolError, SerializeError
from meshrpc.wire import frame as wire
from meshrpc.wire.constants import OOB_CLASS
from meshrpc.wire.serializers import by_name

OOB_SERIALIZERS = ("serpent", "json")

NESTED = {
    "list": [b"a", b"", [b"deep", {"k": b"v"}]],
    "tuple": (b"t1", bytearray(b"t2"), memoryview(b"t3")),
    "dict": {"value": b"\x00\xff" * 100, "n": 1, "s": "text"},
    "empty": b"",
}


def _through_frame(ser: str, obj: object) -> tuple[object, bytes, list]:
    """Serialize in oob mode, encode a frame, decode it, and deserialize: (value, payload, blobs sent)."""
    serializer = by_name(ser)
    oob: list = []
    payload = serializer.dumps(obj, oob)
    annotations = {wire.OOB_ANNOTATION: wire.pack_oob(oob)} if oob else {}
    data = wire.encode(wire.Frame(wire.MSG_RESULT, serializer.id, 1, payload, 0, annotations))
    reader = wire.FrameReader()
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None
    blobs = wire.unpack_oob(frame.annotations[wire.OOB_ANNOTATION]) if oob else []
    return serializer.loads(frame.payload, blobs), payload, oob


def _plain(value: object, tuples_as_lists: bool) -> object:
    """The expected value: bytes-likes become bytes (json turns tuples into lists)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return {k: _plain(v, tuples_as_lists) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, tuples_as_lists) for v in value]
        return items if tuples_as_lists or isinstance(value, list) else tuple(items)
    return value


@pytest.mark.parametrize("ser", OOB_SERIALIZERS)
def test_nested_round_trip(ser: str) -> None:
    value, payload, oob = _through_frame(ser, NESTED)
    assert value == _plain(NESTED, ser == "json")
    assert len(oob) == 9
    assert b"base64" not in payload and OOB_CLASS.encode() in payload
    assert type(value["tuple"][1]) is bytes and type(value["tuple"][2]) is bytes


@pytest.mark.parametrize("ser", OOB_SERIALIZERS)
def test_top_level_and_empty(ser: str) -> None:
    assert _through_frame(ser, b"")[0] == b""
    value, payload, _ = _through_frame(ser, b"x" * 100_000)
    assert value == b"x" * 100_000 and len(payload) < 100


@pytest.mark.parametrize("ser", OOB_SERIALIZERS)
def test_many_blobs(ser: str) -> None:
    items = [bytes([i % 256]) * (i % 7) for i in range(5000)]  # far more than PROTOCOL_ANNOTATIONS_MAX
    value, _, oob = _through_frame(ser, items)
    assert value == items and len(oob) == 5000


@pytest.mark.parametrize("ser", OOB_SERIALIZERS)
def test_call_round_trip(ser: str) -> None:
    serializer = by_name(ser)
    oob: list = []
    payload = serializer.dumps_call("obj", "put", (b"k", [b"v"]), {"extra": b"e"}, oob)
    assert len(oob) == 3
    blobs = wire.unpack_oob(wire.encode(wire.Frame(1, 1, 1, b"", 0, {"MROB": wire.pack_oob(oob)}))[48:])
    assert serializer.loads_call(payload, blobs) == ("obj", "put", (b"k", [b"v"]), {"extra": b"e"})


@pytest.mark.parametrize("ser", OOB_SERIALIZERS)
def test_plain_mode_is_unchanged(ser: str) -> None:
    """Without oob, bytes still travel as serpent's/Pyro5's base64 dicts (what Pyro5 peers need)."""
    serializer = by_name(ser)
    payload = serializer.dumps({"v": b"abc"})
    assert b"base64" in payload and OOB_CLASS.encode() not in payload
    assert serializer.dumps({"v": b"abc"}, None) == payload


@pytest.mark.parametrize("ser", OOB_SERIALIZERS)
def test_markers_refused_without_oob_or_out_of_range(ser: str) -> None:
    serializer = by_name(ser)
    oob: list = []
    payload = serializer.dumps([b"a", b"b"], oob)
    with pytest.raises(SerializeError):
        serializer.loads(payload)  # a plain (Pyro5-compatible) reader does not know the marker class
    with pytest.raises(SerializeError):
        serializer.loads(payload, [b"a"])  # index 1 is missing


@pytest.mark.parametrize("ser", ("marshal", "msgpack"))
def test_native_bytes_serializers_ignore_oob(ser: str) -> None:
    try:
        serializer = by_name(ser)
    except SerializeError:
        pytest.skip("msgpack not installed")
    oob: list = []
    assert not serializer.oob
    assert serializer.dumps([b"a"], oob) == serializer.dumps([b"a"]) and oob == []


def test_pack_oob_buffers_are_not_copied() -> None:
    big = b"z" * 200_000
    parts = wire.pack_oob([big, b"small"])
    assert parts[1].obj is big
    frame = wire.Frame(wire.MSG_RESULT, 1, 1, b"payload", 0, {wire.OOB_ANNOTATION: parts, "XTRA": b"1"})
    encoded = wire.encode_parts(frame)
    assert any(isinstance(p, memoryview) and p.obj is big for p in encoded)
    reader = wire.FrameReader()
    reader.feed(b"".join(encoded))
    decoded = reader.next_frame()
    assert decoded.payload == b"payload" and decoded.annotations["XTRA"] == b"1"
    assert wire.unpack_oob(decoded.annotations[wire.OOB_ANNOTATION]) == [big, b"small"]


def test_max_message_size_counts_blobs() -> None:
    frame = wire.Frame(wire.MSG_RESULT, 1, 1, b"p", 0, {wire.OOB_ANNOTATION: wire.pack_oob([b"x" * 5000])})
    with pytest.raises(MessageTooLargeError):
        wire.encode_parts(frame, max_size=4096)
    assert wire.encode_parts(frame, max_size=6000)


@pytest.mark.parametrize("bad", [b"", b"\x00\x00\x00\x02\x00\x00\x00\x01", b"\x00\x00\x00\x01\x00\x00\x00\x05ab"])
def test_unpack_malformed(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.unpack_oob(bad)
