"""The per-call fast lanes of the wire core give exactly what the general path gives, and fall back to it
whenever their case does not hold (docs/performance.md: the lean path of issue 15)."""

from __future__ import annotations

import contextvars
import marshal
import uuid

import pytest
from support import handshaken_sessions

from meshrpc import errors
from meshrpc.context import current_context, current_state
from meshrpc.wire import frame as wire, marshal_check, plain
from meshrpc.wire.serializers import BY_ID, BY_NAME, call_tuple
from meshrpc.wire.session import ClientSession, NotRun, Pong

SCALAR_CALLS = [("obj", "echo", (1,), None), ("obj", "m", (), {}), ("o", "m", (None, True, 2.5, "s", -7, 2 ** 70), None)]
OTHER_CALLS = [
    ("obj", "m", (1,), {"k": 2}),          # keywords
    ("obj", "m", ([1, 2], {"a": 1}), None),  # nested plain values: the full check
    ("obj", "m", [1, 2], None),             # vargs a list
    ("obj", "m", None, None),               # no vargs
    ("obj", "m", (b"bytes",), None),         # not plain
    ("obj", "m", (1.5j,), None),
    (7, "m", (1,), None),                    # an object id that is not a str
]


@pytest.mark.parametrize("call", SCALAR_CALLS + OTHER_CALLS)
def test_dumps_call_equals_dumps_of_the_call_tuple(call):
    assert plain.dumps_call(*call) == plain.dumps(call_tuple(*call))


def test_scalar_call_says_yes_only_for_names_and_scalar_arguments():
    assert all(plain.scalar_call(*c) for c in SCALAR_CALLS)
    assert not any(plain.scalar_call(*c) for c in OTHER_CALLS)


class StrSub(str):
    pass


@pytest.mark.parametrize("value", [None, True, 0, -1, 2 ** 100, 1.5, float("inf"), "", "text", "ü"])
def test_scalars_dump_as_marshal_version_2(value):
    assert plain.dumps(value) == marshal.dumps(value, plain.MARSHAL_VERSION)


def test_scalar_subclasses_are_not_plain():
    assert plain.dumps(StrSub("x")) is None
    assert plain.dumps_call("o", "m", (StrSub("x"),), None) is None


@pytest.mark.parametrize("size, compress_min, max_size", [(0, -1, 0), (30, -1, 1 << 30), (65535, -1, 0),
                                                            (65536, -1, 0), (5000, 100, 0), (5000, 10000, 0)])
@pytest.mark.parametrize("flags", [0, wire.FLAG_ONEWAY, wire.FLAG_BATCH])
def test_encode_message_equals_encode_parts(size, compress_min, max_size, flags):
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    for seq in (0, 1, 0xFFFF, 0x10001):
        for annotations, corr in ((None, None), ({"XTRA": b"v"}, None), (None, bytes(range(16)))):
            bare = wire.encode_message(wire.MSG_INVOKE, 77, seq, payload, flags, annotations, corr,
                                       compress_min=compress_min, max_size=max_size)
            general = wire.encode_parts(wire.Frame(wire.MSG_INVOKE, 77, seq, payload, flags, annotations or {}, corr),
                                        compress_min=compress_min, max_size=max_size)
            assert [bytes(p) for p in bare] == [bytes(p) for p in general]


def test_encode_message_keeps_the_size_limit():
    with pytest.raises(errors.MessageTooLargeError):
        wire.encode_message(wire.MSG_RESULT, 1, 1, b"x" * 101, max_size=100)


handshaken = handshaken_sessions


def general_request(client: ClientSession, call, annotations=None, corr=None, flags=0) -> bytes:
    wire_id, payload = client.serializer.encode_call(*call, [] if client._oob_mode else None, client.binary)
    return b"".join(wire.encode_parts(wire.Frame(wire.MSG_INVOKE, wire_id, client.last_seq, payload, flags,
                                                 annotations or {}, corr),
                                      compress_min=client.compress_min, max_size=client.max_size))


@pytest.mark.parametrize("serializer", ["serpent", "marshal", "json", "msgpack"])
@pytest.mark.parametrize("call", SCALAR_CALLS + OTHER_CALLS[:4])
def test_call_request_and_the_round_trip_match_the_general_path(serializer, call):
    client, server = handshaken(serializer)
    for annotations, corr in (({}, None), ({"XTRA": b"1"}, None), ({}, uuid.uuid4().bytes)):
        request = b"".join(client.call_request(*call, 0, annotations, corr))
        assert request == general_request(client, call, annotations, corr)
        server.receive_data(request)
        frame = server.next_event()
        assert frame.annotations == annotations and frame.correlation_id == corr
        object_id, method, vargs, kwargs = server.decode_call(frame)
        assert (object_id, method, vargs, kwargs) == (call[0], call[1], tuple(call[2] or ()), call[3] or {})
        assert type(vargs) is tuple and type(kwargs) is dict
        client.receive_data(b"".join(server.result_reply(frame, vargs, {})))
        event = client.next_event()
        assert event.seq == client.last_seq and event.correlation_id == corr
        assert list(client.reply_value(event, client.take_blobs(event))) == list(vargs)  # json: a list


def test_result_reply_bare_equals_the_general_frame():
    client, server = handshaken("serpent")
    for corr in (None, uuid.uuid4().bytes):
        server.receive_data(b"".join(client.call_request("obj", "echo", (5,), None, 0, {}, corr)))
        frame = server.next_event()
        for result in (5, "x", None, [1, {"a": (2,)}], b"raw"):
            reply_id, payload = BY_ID[1].encode(result, None, True)
            expected = wire.encode_parts(wire.Frame(wire.MSG_RESULT, reply_id, frame.seq, payload, 0, {}, corr))
            if result != b"raw":  # bytes go out of band between meshrpc peers: a different frame
                assert server.result_reply(frame, result) == expected
        client.receive_data(b"".join(server.result_reply(frame, 5, {"RESP": b"r"})))
        event = client.next_event()
        assert event.annotations == {"RESP": b"r"} and client.reply_value(event) == 5


def test_reply_checks_still_hold_on_the_hot_path():
    client, server = handshaken("serpent")
    server.receive_data(b"".join(client.call_request("obj", "echo", (1,), None, 0, {}, None)))
    frame = server.next_event()
    wrong = wire.Frame(wire.MSG_RESULT, frame.serializer_id, (frame.seq + 1) & 0xFFFF, marshal.dumps(1, 2))
    client.receive_data(wire.encode(wrong))
    with pytest.raises(errors.ProtocolError, match="seq"):
        client.next_event()


def test_a_reply_of_the_wrong_type_is_refused():
    client, server = handshaken("serpent")
    server.receive_data(b"".join(client.call_request("obj", "echo", (1,), None, 0, {}, None)))
    frame = server.next_event()
    client.receive_data(wire.encode(wire.Frame(wire.MSG_INVOKE, frame.serializer_id, frame.seq, b"")))
    with pytest.raises(errors.ProtocolError, match="invalid reply"):
        client.next_event()


def test_ping_and_not_run_still_take_the_general_path():
    client, server = handshaken("serpent")
    server.receive_data(b"".join(client.ping_request()))
    client.receive_data(b"".join(server.pong(server.next_event())))
    assert isinstance(client.next_event(), Pong)
    server.receive_data(b"".join(client.call_request("obj", "echo", (1,), None, 0, {}, None)))
    client.receive_data(b"".join(server.not_run_reply(server.next_event())))
    assert isinstance(client.next_event(), NotRun)


@pytest.mark.parametrize("serializer", ["serpent", "marshal", "msgpack", "json"])
def test_loads_call_fast_lane_and_fallbacks(serializer):
    codec = BY_NAME[serializer]
    call = codec.loads_call(codec.dumps_call("o", "m", (1, [2]), {"k": 3}))
    assert call == ("o", "m", (1, [2]), {"k": 3}) and type(call[2]) is tuple
    call = codec.loads_call(codec.dumps_call("o", "m", None, None))
    assert call == ("o", "m", (), {})
    if codec.tuple_calls:
        assert codec.loads_call(codec.dumps(("o", "m", [1], None))) == ("o", "m", (1,), {})
        for bad in [("o", "m", 1, {}), ("o", 5, (), {}), ("o", "m", (), 5), ("o", "m"), 7]:
            with pytest.raises(errors.SerializeError, match="malformed"):
                codec.loads_call(codec.dumps(bad))


def test_serpent_binary_call_fast_lane_refuses_what_the_check_refuses():
    codec = BY_ID[77]
    assert codec.loads_call(marshal.dumps(("o", "m", (1,), {}), 2)) == ("o", "m", (1,), {})
    huge_list = b"(\x04\x00\x00\x00" + b"[\xff\xff\xff\x7f"
    with pytest.raises(errors.SerializeError, match="size"):
        codec.loads_call(huge_list)
    with pytest.raises(errors.SerializeError, match="not accepted"):
        codec.loads_call(b"(\x04\x00\x00\x00" + marshal.dumps(compile("1", "f", "eval"), 2))  # a code object


@pytest.mark.parametrize("data", [b"i\x01\x00\x00\x00", marshal.dumps(("o", "m", (1, 2.5, None, "x"), {}), 2),
                                  marshal.dumps([{"a": (1, 2 ** 80)}, {1, 2}], 2)])
def test_marshal_check_accepts_plain_data(data):
    marshal_check.check(data, plain_only=True)
    marshal_check.check(data)


@pytest.mark.parametrize("data, why", [(b"[\xff\xff\xff\x7f", "size"), (b"l\xff\xff\xff\x7f", "size"),
                                       (b"u\x10\x00\x00\x00ab", "size"), (b"u\x01\x00", "truncated"),
                                       (b"c", "not accepted"), (b"\x00", "not accepted")])
def test_marshal_check_refuses(data, why):
    with pytest.raises(errors.SerializeError, match=why):
        marshal_check.check(data)


def test_marshal_check_plain_only_refuses_references_and_other_types():
    for data in (b"r\x00\x00\x00\x00", marshal.dumps(1.5j, 2), marshal.dumps(frozenset({1}), 2)):
        with pytest.raises(errors.SerializeError, match="not accepted"):
            marshal_check.check(data, plain_only=True)


def test_begin_gives_every_call_a_fresh_state():
    contextvars.copy_context().run(begin_twice)  # the test's own thread keeps its (client) state


def begin_twice():
    current_context.begin("conn", ("h", 1), 7, 4, 1, {"A": b"1"}, None)
    first = current_state()
    first.response_annotations["X"] = b"y"
    assert (first.client, first.client_sock_addr, first.seq, first.msg_flags, first.serializer_id) == \
        ("conn", ("h", 1), 7, 4, 1)
    assert current_context.correlation_id is not None  # a fresh one, as Pyro5 gives
    corr = uuid.uuid4()
    current_context.begin("conn", ("h", 1), 8, 0, 1, {}, corr.bytes)
    second = current_state()
    assert second is not first and second.response_annotations == {} and current_context.correlation_id == corr


def test_frames_above_the_slice_copy_size_decode_the_same():
    reader = wire.FrameReader()
    for size in (0, 4095, 4096, 4097, 70000):
        payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        data = wire.encode(wire.Frame(wire.MSG_RESULT, 1, 3, payload, 0, {"ANNO": b"v"}))
        reader.feed(data + data[:7])  # a second frame's start behind it: checked and kept
        frame = reader.next_frame()
        assert frame.payload == payload and type(frame.payload) is bytes and frame.annotations == {"ANNO": b"v"}
        reader.feed(data[7:])
        assert reader.next_frame().payload == payload


@pytest.mark.parametrize("call", SCALAR_CALLS + OTHER_CALLS)
def test_marshal_dumps_call_equals_dumps_of_the_call_tuple(call):
    # (marshal's version 4 flags an object it may refer back to by its reference count, so equal values
    # may differ in those bits: the decoded values are compared)
    codec = BY_NAME["marshal"]
    assert codec.loads(codec.dumps_call(*call)) == codec.loads(codec.dumps(call_tuple(*call)))
    if plain.is_plain(call_tuple(*call)):
        assert marshal.loads(codec.dumps_call(*call)) == call_tuple(*call)


@pytest.mark.parametrize("value", [None, True, 3, 2.5, "s", StrSub("sub"), b"b", [1], {"a": 1}])
def test_scalar_results_encode_as_the_general_path_does(value):
    serpent, marshal_codec = BY_NAME["serpent"], BY_NAME["marshal"]
    expected = plain.dumps(value)
    assert serpent.encode(value, None, True) == ((77, expected) if expected is not None
                                                 else (1, serpent.dumps(value, None)))
    if plain.is_plain(value):
        assert marshal_codec.dumps(value) == marshal.dumps(value)
    for codec in (BY_ID[77], marshal_codec):
        if plain.is_plain(value):
            assert codec.loads(codec.dumps(value)) == value
