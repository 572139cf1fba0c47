"""Unit tests of the sans-I/O protocol 502 frame codec (meshrpc.wire.frame).

No sockets: bytes in, frames out. Cross-checked against the reference peer, Pyro5's protocol module,
whose `SendingMessage(...).data` gives the bytes Pyro5 sends and whose `recv_stub` parses a stream.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import struct
import uuid
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrpc.errors import MessageTooLargeError, ProtocolError
from meshrpc.wire import frame as F
from meshrpc.wire.frame import Frame, FrameReader, encode, encode_parts

try:  # the reference peer (a test dependency); only the cross-checks need it
    import Pyro5.protocol as P5
except ImportError:  # pragma: no cover
    P5 = None

pytestmark = pytest.mark.timeout(30)
needs_pyro5 = pytest.mark.skipif(P5 is None, reason="Pyro5 is not installed")

HYPOTHESIS = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- helpers

def decode_all(data: bytes, chunks: list[int] | None = None, **kwargs) -> list[Frame]:
    """Feed `data` to a fresh FrameReader (in the given chunk sizes, else at once); return all frames."""
    reader = FrameReader(**kwargs)
    frames: list[Frame] = []
    pos = 0
    sizes = list(chunks or [len(data) or 1])
    while pos < len(data):
        size = sizes.pop(0) if sizes else len(data) - pos
        reader.feed(data[pos:pos + size])
        pos += size
        while (frame := reader.next_frame()) is not None:
            frames.append(frame)
    return frames


def decode_one(data: bytes, **kwargs) -> Frame:
    frames = decode_all(data, **kwargs)
    assert len(frames) == 1, frames
    return frames[0]


def header_bytes(msg_type: int, ser: int, flags: int, seq: int, data_len: int, ann_len: int,
                 corr: bytes = bytes(16), tag: bytes = b"PYRO", version: int = 502, magic: int = 0x4DC5) -> bytes:
    """The 40-byte header assembled field by field, independently of the code under test."""
    out = (tag + version.to_bytes(2, "big") + bytes([msg_type, ser]) + flags.to_bytes(2, "big")
           + seq.to_bytes(2, "big") + data_len.to_bytes(4, "big") + ann_len.to_bytes(4, "big")
           + corr + b"\0\0" + magic.to_bytes(2, "big"))
    assert len(out) == 40
    return out


def same_frame(a: Frame, b: Frame) -> bool:
    return (a.type, a.serializer_id, a.seq, bytes(a.payload), a.flags, a.annotations, a.correlation_id) == \
           (b.type, b.serializer_id, b.seq, bytes(b.payload), b.flags, b.annotations, b.correlation_id)


def expected_after_decode(frame: Frame) -> Frame:
    """What a receiver yields for `frame`: seq masked to 16 bits, CORR_ID flag present iff an id was sent."""
    flags = frame.flags & ~F.FLAG_COMPRESSED
    if frame.correlation_id:
        flags |= F.FLAG_CORR_ID
    corr = frame.correlation_id if flags & F.FLAG_CORR_ID else None
    return Frame(frame.type, frame.serializer_id, frame.seq & 0xFFFF, bytes(frame.payload), flags,
                 {k: bytes(v) for k, v in frame.annotations.items()}, corr)


# --------------------------------------------------------------------------- constants and header layout

def test_constants_match_the_documented_protocol():
    assert F.HEADER.format == "!4sHBBHHII16sHH"
    assert F.HEADER_SIZE == 40
    assert F.TAG == b"PYRO" and F.PROTOCOL_VERSION == 502 and F.MAGIC == 0x4DC5
    assert (F.MSG_CONNECT, F.MSG_CONNECTOK, F.MSG_CONNECTFAIL, F.MSG_INVOKE, F.MSG_RESULT, F.MSG_PING) == \
        (1, 2, 3, 4, 5, 6)
    assert (F.FLAG_EXCEPTION, F.FLAG_COMPRESSED, F.FLAG_ONEWAY, F.FLAG_BATCH, F.FLAG_ITEMSTREAMRESULT,
            F.FLAG_KEEPSERIALIZED, F.FLAG_CORR_ID) == (1, 2, 4, 8, 16, 32, 64)


@needs_pyro5
def test_constants_match_pyro5():
    assert F.PROTOCOL_VERSION == P5.PROTOCOL_VERSION
    assert F.MAGIC == P5._magic_number
    assert F.HEADER.format == P5._header_format
    for name in ("CONNECT", "CONNECTOK", "CONNECTFAIL", "INVOKE", "RESULT", "PING"):
        assert getattr(F, "MSG_" + name) == getattr(P5, "MSG_" + name)
    for name in ("EXCEPTION", "COMPRESSED", "ONEWAY", "BATCH", "ITEMSTREAMRESULT", "KEEPSERIALIZED", "CORR_ID"):
        assert getattr(F, "FLAG_" + name) == getattr(P5, "FLAGS_" + name)


def test_header_layout_byte_for_byte():
    payload = b"hello payload"
    data = encode(Frame(F.MSG_INVOKE, 1, 0x1234, payload, flags=F.FLAG_ONEWAY | F.FLAG_BATCH))
    assert data == header_bytes(4, 1, 0x000C, 0x1234, len(payload), 0) + payload
    assert data[:4] == b"PYRO"
    assert data[4:6] == b"\x01\xf6"  # 502
    assert data[6] == 4 and data[7] == 1
    assert data[8:10] == b"\x00\x0c"
    assert data[10:12] == b"\x12\x34"
    assert data[12:16] == len(payload).to_bytes(4, "big")
    assert data[16:20] == b"\0\0\0\0"
    assert data[20:36] == bytes(16)
    assert data[36:38] == b"\0\0"
    assert data[38:40] == b"\x4d\xc5"
    assert struct.unpack("!4sHBBHHII16sHH", data[:40]) == (
        b"PYRO", 502, 4, 1, 12, 0x1234, len(payload), 0, bytes(16), 0, 0x4DC5)


def test_header_sizes_count_annotations_and_payload_separately():
    ann = {"STRM": b"abc", "XTRA": b""}
    data = encode(Frame(F.MSG_RESULT, 3, 7, b"12345", annotations=ann))
    ann_block = b"STRM\x00\x00\x00\x03abc" + b"XTRA\x00\x00\x00\x00"
    assert data == header_bytes(5, 3, 0, 7, 5, len(ann_block)) + ann_block + b"12345"


def test_empty_frame():
    data = encode(Frame(F.MSG_PING, 42, 0, b""))
    assert data == header_bytes(6, 42, 0, 0, 0, 0)
    frame = decode_one(data)
    assert frame.payload == b"" and frame.annotations == {} and frame.correlation_id is None


# --------------------------------------------------------------------------- annotations

def test_annotations_round_trip_in_order_and_unknown_ids_are_carried():
    ann = {"STRM": b"0123456789abcdef", "BLBI": b"\x00\xff" * 10, "MESH": b"x", "zz01": b""}
    frame = decode_one(encode(Frame(F.MSG_INVOKE, 1, 1, b"p", annotations=ann)))
    assert frame.annotations == ann
    assert list(frame.annotations) == list(ann)
    assert all(type(v) is bytes for v in frame.annotations.values())


@pytest.mark.parametrize("key", ["abc", "abcde", ""])
def test_annotation_id_must_be_four_characters(key):
    with pytest.raises(ProtocolError, match="4 ASCII"):
        encode(Frame(F.MSG_INVOKE, 1, 1, b"", annotations={key: b"x"}))


def test_non_ascii_annotation_id_is_a_protocol_error_on_encode():
    # regression: key.encode("ascii") used to leak a UnicodeEncodeError instead of ProtocolError
    with pytest.raises(ProtocolError):
        encode(Frame(F.MSG_INVOKE, 1, 1, b"", annotations={"é123": b"x"}))


def test_annotation_values_may_be_bytearray_or_memoryview():
    ann = {"AAAA": bytearray(b"xy"), "BBBB": memoryview(b"zw")}
    frame = decode_one(encode(Frame(F.MSG_INVOKE, 1, 1, b"", annotations=ann)))
    assert frame.annotations == {"AAAA": b"xy", "BBBB": b"zw"}


def _with_annotation_block(block: bytes, payload: bytes = b"pp") -> bytes:
    return header_bytes(4, 1, 0, 1, len(payload), len(block)) + block + payload


@pytest.mark.parametrize("block", [
    b"STR",                                       # shorter than an annotation header
    b"STRM\x00\x00\x00",                          # truncated length field
    b"STRM\x00\x00\x00\x05abc",                   # length runs past the block
    b"STRM\x00\x00\x00\x01a" + b"XX",             # trailing garbage after a valid chunk
    b"ST\xffM\x00\x00\x00\x00",                   # id is not ASCII
    b"STRM\xff\xff\xff\xff",                      # absurd length
])
def test_truncated_or_garbage_annotations_are_protocol_errors(block):
    with pytest.raises(ProtocolError):
        decode_all(_with_annotation_block(block))


def test_too_many_annotations_rejected():
    ann = {f"A{i:03d}": b"" for i in range(10)}
    data = encode(Frame(F.MSG_INVOKE, 1, 1, b"", annotations=ann))
    assert decode_one(data, max_annotations=10).annotations == ann
    with pytest.raises(ProtocolError, match="annotations"):
        decode_all(data, max_annotations=9)


def test_parse_annotations_directly():
    assert F.parse_annotations(b"") == {}
    assert F.parse_annotations(b"ABCD\x00\x00\x00\x02hi") == {"ABCD": b"hi"}
    with pytest.raises(ProtocolError):
        F.parse_annotations(b"ABCD\x00\x00\x00\x03hi")


# --------------------------------------------------------------------------- correlation id

def test_correlation_id_sets_flag_and_travels():
    corr = uuid.uuid4().bytes
    data = encode(Frame(F.MSG_INVOKE, 1, 9, b"x", correlation_id=corr))
    assert data[20:36] == corr
    assert int.from_bytes(data[8:10], "big") & F.FLAG_CORR_ID
    frame = decode_one(data)
    assert frame.correlation_id == corr
    assert frame.flags & F.FLAG_CORR_ID


def test_no_correlation_id_means_zeros_and_no_flag():
    data = encode(Frame(F.MSG_INVOKE, 1, 9, b"x"))
    assert data[20:36] == bytes(16)
    assert not int.from_bytes(data[8:10], "big") & F.FLAG_CORR_ID
    assert decode_one(data).correlation_id is None


def test_correlation_bytes_without_flag_are_ignored_on_receive():
    corr = b"\x01" * 16
    data = header_bytes(5, 1, 0, 1, 0, 0, corr=corr)
    assert decode_one(data).correlation_id is None


@pytest.mark.parametrize("corr", [b"short", b"x" * 17])
def test_correlation_id_of_wrong_length_is_rejected(corr):
    # BUG (meshrpc/wire/frame.py, encode_parts): struct's "16s" silently zero-pads a short id and truncates
    # a long one, so the peer echoes back a different id. Check len(corr) == 16 and raise ProtocolError
    # (or ValueError) otherwise.
    with pytest.raises((ProtocolError, ValueError)):
        encode(Frame(F.MSG_INVOKE, 1, 1, b"", correlation_id=corr))


# --------------------------------------------------------------------------- sequence numbers

@pytest.mark.parametrize("seq, wire", [(0, 0), (1, 1), (0xFFFF, 0xFFFF), (0x10000, 0), (0x10001, 1),
                                       (3 * 0x10000 + 5, 5), (-1, 0xFFFF)])
def test_sequence_number_wraps_at_16_bits(seq, wire):
    data = encode(Frame(F.MSG_INVOKE, 1, seq, b""))
    assert int.from_bytes(data[10:12], "big") == wire
    assert decode_one(data).seq == wire


# --------------------------------------------------------------------------- compression

def test_compression_flag_set_when_it_helps_and_receiver_decompresses():
    payload = b"abcdefgh" * 500
    data = encode(Frame(F.MSG_RESULT, 1, 1, payload), compress_min=0)
    flags = int.from_bytes(data[8:10], "big")
    assert flags & F.FLAG_COMPRESSED
    assert int.from_bytes(data[12:16], "big") == len(data) - 40 < len(payload)
    assert zlib.decompress(data[40:]) == payload
    frame = decode_one(data)
    assert frame.payload == payload
    assert not frame.flags & F.FLAG_COMPRESSED


def test_compression_skipped_when_it_does_not_help():
    payload = os.urandom(3000)  # incompressible
    data = encode(Frame(F.MSG_RESULT, 1, 1, payload), compress_min=0)
    assert not int.from_bytes(data[8:10], "big") & F.FLAG_COMPRESSED
    assert data[40:] == payload


def test_compression_threshold_and_default_off():
    payload = b"a" * 1000
    assert encode(Frame(F.MSG_RESULT, 1, 1, payload))[40:] == payload  # default: never compress
    assert encode(Frame(F.MSG_RESULT, 1, 1, payload), compress_min=1001)[40:] == payload
    assert int.from_bytes(encode(Frame(F.MSG_RESULT, 1, 1, payload), compress_min=1000)[8:10], "big") \
        & F.FLAG_COMPRESSED


def test_annotations_are_never_compressed():
    ann = {"DATA": b"z" * 1000}
    data = encode(Frame(F.MSG_RESULT, 1, 1, b"y" * 1000, annotations=ann), compress_min=0)
    assert data[40:48] == b"DATA\x00\x00\x03\xe8"
    assert data[48:1048] == b"z" * 1000
    frame = decode_one(data)
    assert frame.annotations == ann and frame.payload == b"y" * 1000


def test_receiver_decompresses_any_flagged_payload():
    payload = b"some data " * 10
    packed = zlib.compress(payload, 1)
    data = header_bytes(5, 1, F.FLAG_COMPRESSED, 1, len(packed), 0) + packed
    assert decode_one(data).payload == payload


def test_corrupt_compressed_payload_is_protocol_error():
    data = header_bytes(5, 1, F.FLAG_COMPRESSED, 1, 10, 0) + b"notzlib!!!"
    with pytest.raises(ProtocolError, match="corrupt"):
        decode_all(data)


def test_truncated_compressed_payload_is_protocol_error():
    # BUG (meshrpc/wire/frame.py, decompress): a zlib stream cut short decompresses to a partial payload
    # without any error because inflater.eof is never checked. Pyro5 (zlib.decompress) fails here.
    # Fix: after decompress(), `if not inflater.eof: raise ProtocolError("compressed payload is truncated")`.
    packed = zlib.compress(os.urandom(500) + b"x" * 1000)[:-20]
    data = header_bytes(5, 1, F.FLAG_COMPRESSED, 1, len(packed), 0) + packed
    with pytest.raises(ProtocolError):
        decode_all(data)


def test_zlib_bomb_rejected():
    bomb = zlib.compress(bytes(20 * 1024 * 1024), 9)  # 20 MiB of zeros in ~20 KiB
    assert len(bomb) < 64 * 1024
    data = header_bytes(5, 1, F.FLAG_COMPRESSED, 1, len(bomb), 0) + bomb
    with pytest.raises(MessageTooLargeError):
        decode_all(data, max_size=1024 * 1024)


def test_decompressed_size_limit_boundary():
    limit = 10_000
    ok = zlib.compress(b"q" * limit)
    assert decode_one(header_bytes(5, 1, F.FLAG_COMPRESSED, 1, len(ok), 0) + ok, max_size=limit).payload == \
        b"q" * limit
    over = zlib.compress(b"q" * (limit + 1))
    with pytest.raises(MessageTooLargeError):
        decode_all(header_bytes(5, 1, F.FLAG_COMPRESSED, 1, len(over), 0) + over, max_size=limit)


# --------------------------------------------------------------------------- sizes

def test_encode_rejects_oversized_message():
    with pytest.raises(MessageTooLargeError, match="MAX_MESSAGE_SIZE"):
        encode(Frame(F.MSG_RESULT, 1, 1, b"x" * 101), max_size=100)
    with pytest.raises(MessageTooLargeError):  # annotations count too
        encode(Frame(F.MSG_RESULT, 1, 1, b"x" * 90, annotations={"ABCD": b"y" * 10}), max_size=100)
    assert encode(Frame(F.MSG_RESULT, 1, 1, b"x" * 100), max_size=100)


def test_encode_size_limit_applies_to_the_payload_before_compression():
    """As the receiver applies it (decompress: MAX_MESSAGE_SIZE bounds the inflated payload): a message
    that fits only compressed would reach a meshrpc peer and be refused there, closing the connection."""
    with pytest.raises(MessageTooLargeError, match="before compression"):
        encode(Frame(F.MSG_RESULT, 1, 1, b"x" * 10_000), compress_min=0, max_size=1000)
    assert encode(Frame(F.MSG_RESULT, 1, 1, b"x" * 1000), compress_min=0, max_size=1000)


def test_oversized_declared_size_rejected_before_the_body_is_buffered():
    reader = FrameReader(max_size=1000)
    reader.feed(header_bytes(4, 1, 0, 1, 0xFFFFFFF0, 0))
    with pytest.raises(MessageTooLargeError, match="1000"):
        reader.next_frame()
    assert reader.buffered == 40  # nothing beyond the header was needed


def test_oversized_annotations_plus_payload_rejected():
    reader = FrameReader(max_size=1000)
    reader.feed(header_bytes(4, 1, 0, 1, 600, 600))
    with pytest.raises(MessageTooLargeError):
        reader.next_frame()


def test_message_too_large_is_a_protocol_error():
    assert issubclass(MessageTooLargeError, ProtocolError)


def test_size_exactly_at_limit_accepted():
    data = encode(Frame(F.MSG_RESULT, 1, 1, b"x" * 96, annotations={"ABCD": b""}))
    assert decode_one(data, max_size=104).payload == b"x" * 96


# --------------------------------------------------------------------------- early rejection

@pytest.mark.parametrize("prefix", [b"GET / ", b"HTTP/1", b"\x16\x03\x01\x02\x00\x01", b"PYRO\x01\xf5",
                                    b"PYRO\x00\x00", b"pyro\x01\xf6"])
def test_wrong_tag_or_version_rejected_after_six_bytes(prefix):
    reader = FrameReader()
    reader.feed(prefix[:5])
    assert reader.next_frame() is None  # 5 bytes: not enough to judge
    with pytest.raises(ProtocolError):
        reader.feed(prefix[5:6])


def test_version_error_message_names_both_versions():
    reader = FrameReader()
    with pytest.raises(ProtocolError, match="501.*502"):
        reader.feed(b"PYRO" + (501).to_bytes(2, "big"))


def test_foreign_protocol_error_message_is_helpful():
    with pytest.raises(ProtocolError, match="another protocol"):
        FrameReader().feed(b"SSH-2.0-OpenSSH")


def test_bad_magic_rejected():
    with pytest.raises(ProtocolError, match="magic"):
        decode_all(header_bytes(4, 1, 0, 1, 0, 0, magic=0x1234))


@pytest.mark.parametrize("msg_type", [0, 7, 42, 255])
def test_unknown_message_type_rejected(msg_type):
    with pytest.raises(ProtocolError, match="message type"):
        decode_all(header_bytes(msg_type, 1, 0, 1, 0, 0))


def test_bad_second_frame_detected_as_soon_as_its_prefix_arrives():
    good = encode(Frame(F.MSG_PING, 1, 1, b"ok"))
    reader = FrameReader()
    reader.feed(good + b"PYRO")
    with pytest.raises(ProtocolError):
        # the leftover is checked once 6 bytes are there, even while a frame is pending
        reader.feed(b"\x00\x01")
        while reader.next_frame() is not None:
            pass


# --------------------------------------------------------------------------- incremental reading

def _sample_frames() -> list[Frame]:
    return [
        Frame(F.MSG_CONNECT, 1, 0, b"{'handshake':'hello','object':'obj'}"),
        Frame(F.MSG_INVOKE, 2, 1, b"\x00" * 70000, flags=F.FLAG_ONEWAY, correlation_id=b"C" * 16),
        Frame(F.MSG_RESULT, 3, 2, b"", flags=F.FLAG_EXCEPTION | F.FLAG_ITEMSTREAMRESULT,
              annotations={"STRM": b"1234"}),
        Frame(F.MSG_PING, 42, 0xFFFF, b"ping"),
        Frame(F.MSG_RESULT, 4, 3, b"xyz" * 1000, annotations={"BLBI": b"info", "MESH": b""}),
    ]


def test_several_frames_in_one_feed():
    frames = _sample_frames()
    data = b"".join(encode(f) for f in frames)
    got = decode_all(data)
    assert len(got) == len(frames)
    for g, f in zip(got, frames):
        assert same_frame(g, expected_after_decode(f))


def test_byte_by_byte_equals_all_at_once():
    frames = _sample_frames()[:1] + _sample_frames()[2:]  # skip the 70 kB one to stay fast
    data = b"".join(encode(f, compress_min=100) for f in frames)
    whole = decode_all(data)
    reader = FrameReader()
    single: list[Frame] = []
    for i in range(len(data)):
        reader.feed(data[i:i + 1])
        while (frame := reader.next_frame()) is not None:
            single.append(frame)
    assert len(single) == len(whole) == len(frames)
    assert all(same_frame(a, b) for a, b in zip(single, whole))
    assert reader.buffered == 0


def test_random_chunkings_yield_identical_frames():
    frames = _sample_frames()
    data = b"".join(encode(f) for f in frames)
    reference = decode_all(data)
    rng = random.Random(502)
    for _ in range(30):
        chunks = [rng.randint(1, 5000) for _ in range(200)]
        got = decode_all(data, chunks)
        assert len(got) == len(reference)
        assert all(same_frame(a, b) for a, b in zip(got, reference))


def test_feed_accepts_memoryview_and_bytearray():
    data = encode(Frame(F.MSG_RESULT, 1, 1, b"abc"))
    reader = FrameReader()
    reader.feed(memoryview(data)[:20])
    reader.feed(bytearray(data[20:]))
    frame = reader.next_frame()
    assert frame is not None and frame.payload == b"abc"
    assert type(frame.payload) is bytes


def test_wanted_reports_missing_bytes():
    data = encode(Frame(F.MSG_RESULT, 1, 1, b"0123456789", annotations={"ABCD": b"xy"}))
    reader = FrameReader()
    assert reader.wanted() >= 1
    reader.feed(data[:10])
    assert reader.wanted() == 30
    reader.feed(data[10:40])
    assert reader.next_frame() is None
    assert reader.wanted() == len(data) - 40
    reader.feed(data[40:-1])
    assert reader.next_frame() is None
    assert reader.wanted() == 1
    reader.feed(data[-1:])
    assert reader.next_frame() is not None
    assert reader.buffered == 0


def test_encode_parts_avoids_copying_large_payloads():
    small = Frame(F.MSG_RESULT, 1, 1, b"s" * 100)
    assert len(encode_parts(small)) == 1
    payload = b"L" * 100_000
    parts = encode_parts(Frame(F.MSG_RESULT, 1, 1, payload))
    assert len(parts) == 2
    assert parts[1] is payload
    assert b"".join(parts) == encode(Frame(F.MSG_RESULT, 1, 1, payload))


def test_frame_repr_is_short():
    text = repr(Frame(F.MSG_RESULT, 1, 1, b"x" * 100_000, annotations={"ABCD": b""}))
    assert "100000B" in text and len(text) < 200


# --------------------------------------------------------------------------- hypothesis

_ann_key = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_", min_size=4, max_size=4)
_flags = st.integers(0, 0xFFFF).map(lambda f: f & ~(F.FLAG_COMPRESSED | F.FLAG_CORR_ID))
frames_st = st.builds(
    Frame,
    type=st.sampled_from(sorted(F.MESSAGE_TYPES)),
    serializer_id=st.integers(0, 255),
    seq=st.integers(0, 0x3FFFF),
    payload=st.one_of(st.binary(max_size=600), st.sampled_from([b"a" * 2000, b"xyz" * 300])),
    flags=_flags,
    annotations=st.dictionaries(_ann_key, st.binary(max_size=40), max_size=4),
    correlation_id=st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
)


@HYPOTHESIS
@given(frames=st.lists(frames_st, min_size=1, max_size=5), compress=st.sampled_from([-1, 0, 500]),
       data=st.data())
def test_hypothesis_random_chunking_of_random_frames(frames, compress, data):
    wire = b"".join(encode(f, compress_min=compress) for f in frames)
    chunks = data.draw(st.lists(st.integers(1, max(1, len(wire))), max_size=30))
    got = decode_all(wire, chunks)
    assert len(got) == len(frames)
    for g, f in zip(got, frames):
        assert same_frame(g, expected_after_decode(f)), (g, f)


def _drain(reader: FrameReader, wire: bytes, chunks: list[int]) -> None:
    pos = 0
    for size in chunks + [len(wire)]:
        if pos >= len(wire):
            break
        reader.feed(wire[pos:pos + size])
        pos += size
        while reader.next_frame() is not None:
            pass


@HYPOTHESIS
@given(wire=st.binary(max_size=400), chunks=st.lists(st.integers(1, 64), max_size=20))
def test_hypothesis_random_bytes_only_raise_protocol_error(wire, chunks):
    reader = FrameReader(max_size=4096)
    try:
        _drain(reader, wire, chunks)
    except ProtocolError:
        pass


@HYPOTHESIS
@given(frame=frames_st, compress=st.sampled_from([-1, 0]),
       mutations=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10_000)), chunks=st.lists(st.integers(1, 64), max_size=20))
def test_hypothesis_mutated_frames_only_raise_protocol_error(frame, compress, mutations, cut, chunks):
    """Valid frames with random byte changes (often past the prefix checks) and truncations."""
    wire = bytearray(encode(frame, compress_min=compress))
    for pos, value in mutations:
        wire[pos % len(wire)] = value
    if cut is not None:
        wire = wire[:cut % (len(wire) + 1)]
    reader = FrameReader(max_size=4096)
    try:
        _drain(reader, bytes(wire), chunks)
    except ProtocolError:
        pass


@HYPOTHESIS
@given(ann_len=st.integers(0, 64), block=st.binary(max_size=64))
def test_hypothesis_annotation_block_garbage(ann_len, block):
    block = block[:ann_len].ljust(ann_len, b"\0")
    wire = header_bytes(4, 1, 0, 1, 0, ann_len) + block
    try:
        decode_all(wire)
    except ProtocolError:
        pass


# --------------------------------------------------------------------------- cross-check with Pyro5

class FakeConnection:
    """Just enough of Pyro5's socket connection for `Pyro5.protocol.recv_stub`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def recv(self, size: int) -> bytes:
        chunk = self.data[self.pos:self.pos + size]
        if len(chunk) < size:
            raise ConnectionError("fake connection ran dry")
        self.pos += size
        return chunk


@pytest.fixture
def pyro5_context():
    """Pyro5's thread-local call context and config, restored afterwards."""
    from Pyro5 import config as p5config
    from Pyro5.callcontext import current_context
    saved = (current_context.correlation_id, p5config.COMPRESSION)
    yield current_context, p5config
    current_context.correlation_id, p5config.COMPRESSION = saved


PYRO5_CASES = [
    (F.MSG_CONNECT, 0, 0, 1, b"{'handshake':'hello','object':'thing'}", None),
    (F.MSG_INVOKE, F.FLAG_ONEWAY, 17, 1, b"('obj','m',(),{})", None),
    (F.MSG_INVOKE, F.FLAG_BATCH, 0xFFFF, 3, b'{"object":"o"}', {"BLBI": b"blob info"}),
    (F.MSG_RESULT, F.FLAG_EXCEPTION | F.FLAG_ITEMSTREAMRESULT, 99, 2, b"\x00\x01\x02",
     {"STRM": b"b1a2c3d4-0000-4000-8000-000000000000"}),
    (F.MSG_RESULT, F.FLAG_KEEPSERIALIZED, 5, 4, b"\x93\x01\x02\x03", {"STRM": b"a", "MESH": b"", "XY12": b"\xff"}),
    (F.MSG_PING, 0, 0, 42, b"ping", None),
    (F.MSG_CONNECTFAIL, 0, 3, 1, b"'unknown object'", None),
    (F.MSG_CONNECTOK, 0, 4, 1, b"", None),
]


@needs_pyro5
@pytest.mark.parametrize("with_corr", [False, True])
@pytest.mark.parametrize("msg_type, flags, seq, ser, payload, ann", PYRO5_CASES)
def test_encode_equals_pyro5_bytes(pyro5_context, msg_type, flags, seq, ser, payload, ann, with_corr):
    ctx, p5config = pyro5_context
    p5config.COMPRESSION = False
    corr = uuid.uuid4() if with_corr else None
    ctx.correlation_id = corr
    theirs = P5.SendingMessage(msg_type, flags, seq, ser, payload, annotations=ann).data
    ours = encode(Frame(msg_type, ser, seq, payload, flags, dict(ann or {}), corr.bytes if corr else None))
    assert ours == theirs


@needs_pyro5
@pytest.mark.parametrize("with_corr", [False, True])
@pytest.mark.parametrize("msg_type, flags, seq, ser, payload, ann", PYRO5_CASES)
def test_we_decode_pyro5_bytes(pyro5_context, msg_type, flags, seq, ser, payload, ann, with_corr):
    ctx, p5config = pyro5_context
    p5config.COMPRESSION = False
    corr = uuid.uuid4() if with_corr else None
    ctx.correlation_id = corr
    theirs = P5.SendingMessage(msg_type, flags, seq, ser, payload, annotations=ann).data
    frame = decode_one(theirs)
    assert (frame.type, frame.serializer_id, frame.seq, frame.payload) == (msg_type, ser, seq, payload)
    assert frame.annotations == dict(ann or {})
    assert frame.flags == flags | (F.FLAG_CORR_ID if corr else 0)
    assert frame.correlation_id == (corr.bytes if corr else None)


@needs_pyro5
@pytest.mark.parametrize("msg_type, flags, seq, ser, payload, ann", PYRO5_CASES)
def test_pyro5_decodes_our_bytes(msg_type, flags, seq, ser, payload, ann):
    corr = uuid.uuid4().bytes
    wire = encode(Frame(msg_type, ser, seq, payload, flags, dict(ann or {}), corr))
    msg = P5.recv_stub(FakeConnection(wire))
    assert (msg.type, msg.serializer_id, msg.seq, bytes(msg.data)) == (msg_type, ser, seq, payload)
    assert msg.flags == flags | F.FLAG_CORR_ID
    assert bytes(msg.corr_id) == corr
    assert {k: bytes(v) for k, v in msg.annotations.items()} == dict(ann or {})


@needs_pyro5
def test_compressed_frames_interoperate_both_ways(pyro5_context):
    _, p5config = pyro5_context
    payload = b"compress me please " * 200
    # theirs -> ours (Pyro5 compresses at level 4 when COMPRESSION is on and the payload > 100 bytes)
    p5config.COMPRESSION = True
    theirs = P5.SendingMessage(F.MSG_RESULT, 0, 7, 1, payload, annotations={"STRM": b"s"}).data
    assert int.from_bytes(theirs[8:10], "big") & F.FLAG_COMPRESSED
    frame = decode_one(theirs)
    assert frame.payload == payload and not frame.flags & F.FLAG_COMPRESSED
    assert frame.annotations == {"STRM": b"s"}
    # ours -> theirs
    wire = encode(Frame(F.MSG_RESULT, 1, 7, payload, annotations={"STRM": b"s"}), compress_min=0)
    msg = P5.recv_stub(FakeConnection(wire))
    assert bytes(msg.data) == payload and not msg.flags & F.FLAG_COMPRESSED


@needs_pyro5
def test_pyro5_ping_message_decodes():
    wire = P5.SendingMessage(F.MSG_PING, 0, 0, 42, b"ping").data
    frame = decode_one(wire)
    assert (frame.type, frame.serializer_id, frame.payload) == (F.MSG_PING, 42, b"ping")


@needs_pyro5
@HYPOTHESIS
@given(frame=frames_st)
def test_hypothesis_pyro5_parses_whatever_we_encode(frame):
    wire = encode(frame)
    msg = P5.recv_stub(FakeConnection(wire))
    expected = expected_after_decode(frame)
    assert (msg.type, msg.serializer_id, msg.seq, msg.flags, bytes(msg.data)) == \
        (expected.type, expected.serializer_id, expected.seq, expected.flags, expected.payload)
    assert {k: bytes(v) for k, v in msg.annotations.items()} == expected.annotations


# --- large frames read into a buffer of their own (FrameReader.receive_buffer, issue 15)

def _read_like_a_socket(reader: FrameReader, stream: bytes, chunk: int) -> list[Frame]:
    """What FramedConnection does: recv_into the reader's buffer when it offers one, else feed."""
    frames, pos = [], 0
    while pos < len(stream):
        into = reader.receive_buffer()
        if into is not None:
            count = min(len(into), chunk, len(stream) - pos)
            into[:count] = stream[pos:pos + count]
            reader.received(count)
        else:
            count = min(chunk, len(stream) - pos)
            reader.feed(stream[pos:pos + count])
        pos += count
        while (frame := reader.next_frame()) is not None:
            frames.append(frame)
    return frames


def test_a_large_frame_is_read_in_place_and_its_blobs_come_out_as_bytes():
    blob = os.urandom(3 * F.LARGE_FRAME)
    big = Frame(F.MSG_RESULT, 1, 7, b"payload", 0, {F.OOB_ANNOTATION: F.pack_oob([blob, b"tail"]), "XTRA": b"x"})
    small = Frame(F.MSG_RESULT, 1, 8, b"next")
    stream = b"".join(bytes(p) for p in encode_parts(big)) + encode(small)
    reader = FrameReader()
    frames = _read_like_a_socket(reader, stream, 100_000)
    assert [f.seq for f in frames] == [7, 8] and reader.buffered == 0
    first = frames[0]
    assert first.payload == b"payload" and first.annotations["XTRA"] == b"x"
    assert isinstance(first.annotations[F.OOB_ANNOTATION], F.OobBlobs)  # split while the buffer was at hand
    blobs = F.unpack_oob(first.annotations[F.OOB_ANNOTATION])
    assert blobs == [blob, b"tail"] and all(type(b) is bytes for b in blobs)
    assert frames[1].payload == b"next"


def test_the_buffer_of_a_large_frame_serves_the_next_one_and_nothing_it_gave_out_changes():
    first_blob, second_blob = os.urandom(2 * F.LARGE_FRAME), os.urandom(F.LARGE_FRAME)
    reader = FrameReader()
    stream = b"".join(bytes(p) for p in encode_parts(Frame(F.MSG_RESULT, 1, 1, b"one", 0,
                                                           {F.OOB_ANNOTATION: F.pack_oob([first_blob])})))
    (first,) = _read_like_a_socket(reader, stream, 65536)
    # the next large frame reuses the buffer at once (no proof needed: the memory is held already)
    header = F.HEADER.pack(F.TAG, F.PROTOCOL_VERSION, F.MSG_RESULT, 1, 0, 2, len(second_blob), 0, bytes(16), 0, F.MAGIC)
    reader.feed(header)
    into = reader.receive_buffer()
    assert into is not None and len(into) == len(second_blob)
    into[:] = second_blob
    reader.received(len(second_blob))
    second = reader.next_frame()
    assert second.payload == second_blob
    assert F.unpack_oob(first.annotations[F.OOB_ANNOTATION]) == [first_blob] and first.payload == b"one"
    reader.release_spare()
    reader.feed(header)
    assert reader.receive_buffer() is None  # released: a header alone gets no buffer again


def test_a_large_frame_read_in_place_equals_the_same_frame_fed():
    blob = os.urandom(2 * F.LARGE_FRAME + 5)
    data = b"".join(bytes(p) for p in encode_parts(Frame(F.MSG_INVOKE, 4, 3, blob, F.FLAG_CORR_ID, {},
                                                          uuid.uuid4().bytes)))
    fed = FrameReader()
    fed.feed(data)
    expected = fed.next_frame()
    (got,) = _read_like_a_socket(FrameReader(), data, 65536)
    assert (got.type, got.serializer_id, got.seq, got.flags, got.payload, got.correlation_id) == (
        expected.type, expected.serializer_id, expected.seq, expected.flags, expected.payload, expected.correlation_id)


def test_a_header_alone_gets_no_buffer_of_the_announced_size():
    """A peer that announces a huge frame and sends little must not make the reader allocate it:
    the buffer of its own comes only after 1/LARGE_FRAME_PROOF of the frame has arrived."""
    size = 512 * 1024 * 1024
    header = F.HEADER.pack(F.TAG, F.PROTOCOL_VERSION, F.MSG_INVOKE, 1, 0, 1, size, 0, bytes(16), 0, F.MAGIC)
    reader = FrameReader(max_size=1024 ** 3)
    reader.feed(header + bytes(1000))
    assert reader.receive_buffer() is None and reader.next_frame() is None
    assert reader.wanted() == size - 1000


def test_a_large_frame_over_the_size_limit_is_refused_before_any_buffer():
    header = F.HEADER.pack(F.TAG, F.PROTOCOL_VERSION, F.MSG_INVOKE, 1, 0, 1, 10 * F.LARGE_FRAME, 0, bytes(16), 0,
                           F.MAGIC)
    reader = FrameReader(max_size=F.LARGE_FRAME)
    reader.feed(header)
    with pytest.raises(MessageTooLargeError):
        reader.receive_buffer()


def test_a_large_frame_keeps_an_annotation_named_like_the_blobs_that_is_not_blobs():
    """A Pyro5 peer may use any annotation id: a value that is not a blob table stays bytes, as in small frames."""
    odd = b"\xff" * 10
    stream = b"".join(bytes(p) for p in encode_parts(Frame(F.MSG_INVOKE, 1, 1, os.urandom(F.LARGE_FRAME), 0,
                                                           {F.OOB_ANNOTATION: odd})))
    (frame,) = _read_like_a_socket(FrameReader(), stream, 65536)
    assert frame.annotations[F.OOB_ANNOTATION] == odd and type(frame.annotations[F.OOB_ANNOTATION]) is bytes


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


@pytest.mark.parametrize("first", [F.HEADER_SIZE, 4000, 65536, 70001, 200_000])
def test_the_rest_of_a_large_frame_is_received_at_a_page_boundary(first):
    """The kernel's copy into a buffer 16 bytes past a page (malloc's) cost about 1.7x the CPU of one
    into a page-aligned buffer: whatever came before the buffer, the socket's writes start at a page,
    the frame and the next one still decode, and the buffer serves the next large frame the same way."""
    blobs = [os.urandom(2 * F.LARGE_FRAME + 12345), os.urandom(F.LARGE_FRAME + 99)]  # the second fits the first's
    frames = [Frame(F.MSG_RESULT, 1, seq, b"p", 0, {F.OOB_ANNOTATION: F.pack_oob([blob])})
              for seq, blob in enumerate(blobs, 1)]
    reader = FrameReader()
    for frame, blob in zip(frames, blobs):
        data = b"".join(bytes(p) for p in encode_parts(frame))
        if frame.seq == 1:  # a new buffer only once a quarter of the frame is in (LARGE_FRAME_PROOF)
            first = max(first, len(data) // F.LARGE_FRAME_PROOF + 1)
        reader.feed(data[:first])
        into = reader.receive_buffer()
        assert into is not None and _address(into) % mmap.PAGESIZE == 0 and len(into) == len(data) - first
        assert reader.buffered == first and reader.wanted() == len(data) - first
        into[:] = data[first:]
        del into
        reader.received(len(data) - first)
        got = reader.next_frame()
        assert got.seq == frame.seq and F.unpack_oob(got.annotations[F.OOB_ANNOTATION]) == [blob]
        assert reader.buffered == 0


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_a_large_frame_buffer_is_private_memory():
    """Python's default anonymous mapping is shared memory, which a fork()ed child (multiprocessing's
    default start on Linux) would share and keep alive: the reader's must be private."""
    reader = FrameReader()
    data = b"".join(bytes(p) for p in encode_parts(Frame(F.MSG_RESULT, 1, 1, os.urandom(2 * F.LARGE_FRAME))))
    reader.feed(data[:len(data) // 2])
    into = reader.receive_buffer()
    address = _address(into)
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            low, high = (int(x, 16) for x in span.split("-"))
            if low <= address < high:
                break
        else:
            pytest.fail("the buffer's mapping is not in /proc/self/maps")
    assert perms.endswith("p"), line


def test_release_drops_a_half_read_large_frame_and_the_reader_starts_clean():
    """A connection dropped in the middle of a large frame: its reader (which a daemon's worker may
    still hold) keeps no buffer, and a view taken before the release stays safe to write."""
    data = b"".join(bytes(p) for p in encode_parts(Frame(F.MSG_RESULT, 1, 1, os.urandom(2 * F.LARGE_FRAME))))
    reader = FrameReader()
    reader.feed(data[:len(data) // 2])
    into = reader.receive_buffer()
    assert into is not None and reader.buffered == len(data) // 2
    reader.release()
    into[:10] = b"x" * 10  # a worker's recv_into that was under way: its memory is still there
    del into
    assert reader.buffered == 0 and reader._body is None and reader._spare is None
    reader.feed(encode(Frame(F.MSG_RESULT, 1, 2, b"next")))  # usable again (not that a daemon reuses it)
    assert reader.next_frame().payload == b"next"
