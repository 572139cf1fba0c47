"""The daemon's lane (issue 15, sixth pass), sans-I/O: ServerSession.receive_request takes the usual
request without the reader and a Frame, and bare_result answers it; both give exactly what the
general path (receive_data, next_event, decode_call, result_reply) gives, and every other message
goes to the general path. The lane's condition is computed here independently (from the message's
bytes and the general path's frame), so a lane that takes too much, or too little, fails."""

from __future__ import annotations

import enum
import marshal
import math
import struct
import uuid
import zlib

import pytest
from hypothesis import given, settings as hsettings, strategies as st
from support import handshaken_sessions

from meshrpc import errors
from meshrpc.config import Settings
from meshrpc.blob import SerializedBlob
from meshrpc.wire import frame as wire, plain
from meshrpc.wire.serializers import BY_ID, BY_NAME, Serializer
from meshrpc.wire.session import NEED_DATA, TAKE_EVENT, ClientSession, ServerSession

SERIALIZERS = ["serpent", "marshal", "json", "msgpack"]
# the server's settings that change what a reply or a request looks like
SETTINGS = [{}, {"SERPENT_BINARY": False}, {"COMPRESSION": True, "COMPRESSION_MIN_SIZE": 8},
            {"MAX_MESSAGE_SIZE": 2000}]


class Color(enum.IntEnum):
    RED = 1


RESULTS = [1, -7, 2 ** 70, 0, True, False, None, 2.5, -0.0, math.inf, "", "text", "é" * 3, "x" * 3000, "y" * 70000,
           [1, 2], (1, "a"), {"a": 1}, {1, 2}, b"raw", bytearray(b"ba"), uuid.UUID(int=7), Color.RED, 3 + 4j,
           ValueError("as a value")]


def pair(serializer: str, **settings):
    return handshaken_sessions(serializer, **settings)


def request(client, method="echo", vargs=(1,), kwargs=None, flags=0, annotations=None, correlation_id=None):
    """An INVOKE from a real client session (its one-call-at-a-time rule reset: no reply comes here)."""
    data = b"".join(client.call_request("obj", method, vargs, kwargs, flags, annotations, correlation_id))
    client._waiting = -1
    return data


def connect(serializer: str) -> bytes:
    """A CONNECT from a fresh client session."""
    return b"".join(ClientSession(BY_NAME[serializer], Settings()).connect_request("obj", "hello", {}, None))


def raw(serializer_id: int, payload: bytes, msg_type=wire.MSG_INVOKE, flags=0, seq=0xBEEF, annotations=None,
        correlation_id=None) -> bytes:
    return wire.encode(wire.Frame(msg_type, serializer_id, seq, payload, flags, annotations or {}, correlation_id))


def requests(serializer: str) -> list[tuple[str, bytes]]:
    """Requests of every kind a daemon may get from a client of `serializer`."""
    client, _ = pair(serializer)
    client._seq = 0xFFF0  # seqs of both bytes, and the wrap to 0
    compressing, _ = pair(serializer, COMPRESSION=True, COMPRESSION_MIN_SIZE=8)
    codec = BY_NAME[serializer]
    marker = {"__class__": "meshrpc.oob", "i": 0}  # an out-of-band marker, and no blobs
    out = [(f"echo({v!r})", request(client, vargs=(v,)))
           for v in [1, "x", None, 2.5, 2 ** 70, True, [1, [2]], {"a": (1,)}, b"raw", {3}, uuid.UUID(int=1)]]
    out += [
        ("no arguments", request(client, vargs=())),
        ("keywords", request(client, vargs=(1,), kwargs={"b": 2})),
        ("another method", request(client, method="other", vargs=("a", 2))),
        ("oneway", request(client, flags=wire.FLAG_ONEWAY)),
        ("batch", request(client, "<batch>", [("echo", (1,), {}), ("echo", (2,), {})], flags=wire.FLAG_BATCH)),
        ("annotated", request(client, annotations={"XTRA": b"1"})),
        ("correlation id", request(client, correlation_id=bytes(range(16)))),
        ("blob", request(client, vargs=(SerializedBlob("info", (1, 2)),))),
        ("compressed", request(compressing, vargs=("z" * 200,))),
        ("large", request(client, vargs=("L" * (wire.LARGE_FRAME + 10),))),
        ("ping", b"".join(pair(serializer)[0].ping_request())),
    ]
    usual = out[0][1]
    out += [
        ("partial", usual[:-1]),
        ("header only", usual[:wire.HEADER_SIZE]),
        ("short", usual[:7]),
        ("two requests", usual + usual),
        ("a request and a part", usual + usual[:10]),
        ("unknown serializer", raw(99, b"N")),
        ("garbage payload", raw(codec.id, b"\xff\xfe\x00garbage")),
        ("marshal bomb", raw(2, b"(\x04\x00\x00\x00[\xff\xff\xff\x7f")),
        ("binary bomb", raw(77, b"[\xff\xff\xff\x7f")),
        ("not a call", raw(codec.id, codec.dumps([1, 2]))),
        ("out-of-band marker", raw(codec.id, codec.dumps_call("obj", "echo", (marker,), {}))),
        ("a class", raw(codec.id, codec.dumps_call("obj", "echo", ({"__class__": "Pyro5.errors.PyroError",
                                                                      "__exception__": True, "args": ["x"],
                                                                      "attributes": {}},), {}))),
        ("a class, binary", raw(77, plain.dumps_call("obj", "echo", ({"__class__": "Pyro5.errors.PyroError",
                                                                       "__exception__": True, "args": ["x"],
                                                                       "attributes": {}},), {}))),
        ("a class refused", raw(codec.id, codec.dumps_call("obj", "echo", ({"__class__": "os.system"},), {}))),
        ("compressed flag, raw", raw(codec.id, zlib.compress(codec.dumps_call("obj", "echo", (1,), {})),
                                     flags=wire.FLAG_COMPRESSED)),
        ("exception flag", raw(codec.id, codec.dumps_call("obj", "echo", (1,), {}), flags=wire.FLAG_EXCEPTION)),
        ("result type", raw(codec.id, codec.dumps(1), msg_type=wire.MSG_RESULT)),
        ("connect", connect(serializer)),
        ("bad magic", usual[:-len(usual) + 38] + b"\x00\x00" + usual[40:]),
        ("bad tag", b"XYRO" + usual[4:]),
        ("bad version", usual[:4] + b"\x01\xf5" + usual[6:]),
        ("size too small", usual[:12] + struct.pack("!I", len(usual) - 41) + usual[16:]),
        ("checksum set", usual[:36] + b"\x12\x34" + usual[38:]),
        ("correlation bytes without the flag", usual[:20] + bytes(range(16)) + usual[36:]),
    ]
    return out


def general(server: ServerSession, data: bytes | None):
    """What the general path makes of `data` (None: of what the reader holds already), and the frame
    when `data` was exactly one whole INVOKE."""
    try:
        if data is not None:
            server.receive_data(data)
        event = server.next_event()
    except errors.MeshError as exc:
        return ("error", type(exc), str(exc)), None
    if event is NEED_DATA:
        return NEED_DATA, None
    whole = server.reader.buffered == 0 and server.next_event() is NEED_DATA
    if event.__class__ is not wire.Frame or event.type != wire.MSG_INVOKE:
        return ("event", type(event), getattr(event, "seq", None)), None
    try:
        return ("call", comparable(server.decode_call(event))), (event if whole else None)
    except errors.MeshError as exc:
        return ("error", type(exc), str(exc)), (event if whole else None)


def comparable(value):
    """A decoded call (or value), its SerializedBlobs and exceptions (which have no ==) as their parts."""
    if isinstance(value, SerializedBlob):
        return value.info, value._data, value._serializer_id
    if isinstance(value, BaseException):
        return type(value), comparable(value.args)
    if type(value) in (tuple, list):
        return type(value)(map(comparable, value))
    if type(value) is dict:
        return {k: comparable(v) for k, v in value.items()}
    return value


def lane_expected(data: bytes, frame) -> bool:
    """The lane's case, from the bytes: one whole INVOKE with no flags (raw) and no annotations, in a
    known serializer."""
    if frame is None or len(data) < wire.HEADER_SIZE:
        return False
    header = wire.HEADER.unpack_from(data)
    return (header[2] == wire.MSG_INVOKE and header[4] == 0 and header[7] == 0 and header[3] in BY_ID
            and len(data) < wire.LARGE_FRAME)


def replies(server: ServerSession, frame, results=RESULTS) -> list:
    """Every reply a daemon may send to `frame`, as buffers (or the error that making it raised)."""
    out = []
    for make in ([lambda r=r: server.result_reply(frame, r) for r in results]
                 + [lambda: server.result_reply(frame, [1], None, wire.FLAG_BATCH),
                    lambda: server.result_reply(frame, 5, {"RESP": b"r"}),
                    lambda: server.error_reply(frame, ValueError("bad")),
                    lambda: server.error_reply(frame, KeyError("k"), {"RESP": b"r"}),
                    lambda: server.stream_reply(frame, "s1", {}),
                    lambda: server.not_run_reply(frame)]):
        try:
            out.append([bytes(part) for part in make()])
        except errors.MeshError as exc:
            out.append(("error", type(exc), str(exc)))
    return out


def bare_results(server: ServerSession, results=RESULTS) -> list:
    out = []
    for result in results:
        try:
            out.append([bytes(part) for part in server.bare_result(result)])
        except errors.MeshError as exc:
            out.append(("error", type(exc), str(exc)))
    return out


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "defaults")
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_receive_request_equals_the_general_path_for_every_kind_of_request(serializer, settings):
    taken = 0
    for name, data in requests(serializer):
        _, lane = pair(serializer, **settings)
        _, reference = pair(serializer, **settings)
        expected, frame = general(reference, data)
        try:
            call = lane.receive_request(data)
        except (errors.SerializeError, errors.SecurityError) as exc:
            # the lane took it, and the call does not decode: as decode_call says
            assert lane_expected(data, frame), name
            assert expected == ("error", type(exc), str(exc)), name
            assert replies(lane, lane.bare_frame()) == replies(reference, frame), name
            taken += 1
            continue
        except errors.MeshError as exc:  # not a request: the reader refused its first bytes, as receive_data does
            assert expected == ("error", type(exc), str(exc)), name
            continue
        if call is TAKE_EVENT:
            assert not lane_expected(data, frame), f"{name}: the lane should have taken it"
            assert general(lane, None)[0] == expected, name  # the bytes went to the reader, as receive_data
            continue
        assert lane_expected(data, frame), f"{name}: the lane took what is not its case"
        taken += 1
        assert ("call", comparable(call)) == expected, name
        assert lane.request_seq == frame.seq, name
        assert lane.request_serializer_id == BY_ID[frame.serializer_id].values.id, name
        assert lane.reader.buffered == 0, name
        assert replies(lane, lane.bare_frame()) == replies(reference, frame), name
        assert bare_results(lane) == replies(reference, frame, RESULTS)[:len(RESULTS)], name
    assert taken >= 14  # the usual requests (and the ones that do not decode) went through the lane


def test_the_lane_waits_for_the_handshake_and_for_buffered_bytes():
    client, _ = pair("serpent")
    data = request(client)
    fresh = ServerSession(Settings())
    assert fresh.receive_request(data) is TAKE_EVENT  # no handshake yet: the general path refuses it
    with pytest.raises(errors.ProtocolError, match="expected CONNECT"):
        fresh.next_event()
    _, server = pair("serpent")
    server.receive_data(data[:5])  # a message begun: the next bytes complete it, never a request alone
    assert server.receive_request(data[5:] + data) is TAKE_EVENT
    assert server.next_event().type == wire.MSG_INVOKE
    assert server.next_event().type == wire.MSG_INVOKE


def test_the_lane_follows_a_rehandshake():
    client, _ = pair("marshal")
    server = ServerSession(Settings(), pipelining=False, rehandshake=True)
    server.receive_data(connect("marshal"))
    server.accept_connect(server.next_event(), "hello", {})
    assert server.receive_request(request(client)) == ("obj", "echo", (1,), {})
    # another proxy's CONNECT on the same socket: until it is accepted, a request is the general path's
    server.receive_request(connect("marshal"))
    assert server.next_event().type == wire.MSG_CONNECT and not server.handshaken
    assert server.receive_request(request(client)) is TAKE_EVENT
    with pytest.raises(errors.ProtocolError):
        server.next_event()


def test_bare_frame_needs_a_request():
    _, server = pair("serpent")
    with pytest.raises(errors.ProtocolError):
        server.bare_frame()


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("name", ["serpent", "marshal", "json", "msgpack", "serpent-binary"])
def test_scalar_value_forms_are_the_serializers_bytes(name, binary):
    codec = BY_NAME.get(name) or BY_ID[77]
    form = codec.scalar_value_form(binary)
    if name in ("json", "msgpack") or (name == "serpent" and not binary) or name == "serpent-binary":
        assert form is None
        return
    values = [0, 1, -1, 2 ** 31, -2 ** 63, 2 ** 200, True, False, None, 0.0, -0.0, 1.5, math.inf, math.nan, "",
              "é", "x" * 70000]
    for value in values:
        assert codec.encode(value, [] if codec.oob else None, binary) == (form[0], marshal.dumps(value, form[1]))


@hsettings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text()))
def test_scalar_value_forms_hold_for_any_scalar(value):
    for codec in BY_ID.values():
        for binary in (False, True):
            form = codec.scalar_value_form(binary)
            if form is not None:
                oob = [] if codec.oob else None
                assert codec.encode(value, oob, binary) == (form[0], marshal.dumps(value, form[1]))
                assert oob in ([], None)


_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30),
              st.binary(max_size=30)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=12)


@hsettings(max_examples=150, deadline=None)
@given(st.sampled_from(SERIALIZERS), st.sampled_from(SETTINGS[:3]), st.lists(_VALUES, max_size=3), _VALUES)
def test_the_lane_decodes_and_answers_any_value_as_the_general_path(serializer, settings, vargs, result):
    client, lane = pair(serializer, **settings)
    _, reference = pair(serializer, **settings)
    data = request(client, vargs=tuple(vargs))
    expected, frame = general(reference, data)
    taken = lane.receive_request(data)
    assert taken is not TAKE_EVENT or not lane_expected(data, frame)
    if taken is TAKE_EVENT:
        return
    assert ("call", comparable(taken)) == expected
    assert bare_results(lane, [result]) == replies(reference, frame, [result])[:1]


def test_bare_result_builds_scalars_itself_and_leaves_the_rest_to_result_reply(monkeypatch):
    client, server = pair("serpent")
    server.receive_request(request(client))
    built = []
    original = ServerSession.result_reply

    def counted(session, *args, **kwargs):
        built.append(args[1])
        return original(session, *args, **kwargs)
    monkeypatch.setattr(ServerSession, "result_reply", counted)
    for value in [1, "x", None, 2.5, True, 2 ** 80]:
        server.bare_result(value)
    assert built == []  # scalars: no serializer, no encode_message
    for value in [[1], Color.RED, b"raw", "y" * 70000]:
        server.bare_result(value)
    assert built == [[1], Color.RED, b"raw", "y" * 70000]
    assert plain.SCALARS == {type(None), bool, int, float, str}


def _decoded(decode, data):
    try:
        return ("call", comparable(decode(data)))
    except errors.MeshError as exc:
        return ("error", type(exc), str(exc))


def _calls_in_marshal() -> list[bytes]:
    """INVOKE payloads in marshal form, good and bad: plain ones, classes, references, other shapes."""
    exc = {"__class__": "Pyro5.errors.PyroError", "__exception__": True, "args": ["x"], "attributes": {}}
    values = [("obj", "echo", (1,), {}), ("obj", "echo", (exc,), {}), ("obj", "echo", [1, 2], None),
              ("obj", "echo", (1,), {"k": exc}), ["obj", "echo", (), {}], ("obj", 5, (), {}), ("obj", "echo", 1, {}),
              ("obj", "echo"), 7, ("obj", "echo", ({"__class__": "os.system"},), {}), ("obj", "echo", ("ab", "ab"), {})]
    out = []
    for value in values:
        for version in (2, 4):
            out.append(marshal.dumps(value, version))
    out += [b"(\x04\x00\x00\x00[\xff\xff\xff\x7f", b"", b"\xff", marshal.dumps(("obj", "echo", (1,), {}))[:-1]]
    return out


@pytest.mark.parametrize("codec", [BY_ID[2], BY_ID[77]], ids=lambda c: c.name)
def test_loads_call_in_one_step_equals_loads_then_the_shape_rules(codec):
    """SerpentBinary's and marshal's own loads_call (loads inline) against the base class's (loads, then
    the shape test and rules)."""
    base = Serializer.loads_call
    for data in _calls_in_marshal():
        assert _decoded(codec.loads_call, data) == _decoded(lambda d: base(codec, d), data), data


@hsettings(max_examples=200, deadline=None)
@given(st.lists(_VALUES, max_size=3), st.dictionaries(st.text(max_size=4), _VALUES, max_size=2), st.booleans())
def test_loads_call_in_one_step_equals_loads_then_the_shape_rules_for_any_call(vargs, kwargs, with_class):
    base = Serializer.loads_call
    if with_class:
        vargs = [*vargs, {"__class__": "Pyro5.errors.PyroError", "__exception__": True, "args": [1], "attributes": {}}]
    for version in (2, 4):
        try:
            data = marshal.dumps(("obj", "m", tuple(vargs), kwargs), version)
        except ValueError:
            continue
        for codec in (BY_ID[2], BY_ID[77]):
            assert _decoded(codec.loads_call, data) == _decoded(lambda d: base(codec, d), data)


# ---------------------------------------------------------------- many requests in one read (receive_requests)

def outcomes_general(server: ServerSession, data: bytes) -> list:
    """Everything the general path makes of `data`: each request's call (or why it does not decode) with
    its seq, other events, and the error that ends it."""
    try:
        server.receive_data(data)
    except errors.MeshError as exc:
        return [("error", type(exc), str(exc))]
    return drained(server, [])


def drained(server: ServerSession, out: list) -> list:
    """`out` and the outcomes of the events the reader holds (outcomes_general's)."""
    try:
        while (event := server.next_event()) is not NEED_DATA:
            if event.__class__ is not wire.Frame or event.type != wire.MSG_INVOKE:
                out.append(("event", type(event), getattr(event, "seq", None)))
                continue
            try:
                out.append(("call", comparable(server.decode_call(event)), event.seq))
            except errors.MeshError as exc:
                out.append(("error", type(exc), str(exc), event.seq))
    except errors.MeshError as exc:
        out.append(("error", type(exc), str(exc)))
    return out


def outcomes_lane(server: ServerSession, data: bytes) -> tuple[list, int]:
    """The same through receive_requests and next_request, then the general path for what they left;
    and how many requests the lane took."""
    out, taken = [], 0
    take, args = server.receive_requests, (data,)
    while True:
        try:
            call = take(*args)
        except (errors.SerializeError, errors.SecurityError) as exc:
            out.append(("error", type(exc), str(exc), server.request_seq))
            taken += 1
        except errors.MeshError as exc:  # the reader refused the first bytes, as receive_data does
            out.append(("error", type(exc), str(exc)))
            return out, taken
        else:
            if call is TAKE_EVENT:
                break
            out.append(("call", comparable(call), server.request_seq))
            taken += 1
        take, args = server.next_request, ()
    return drained(server, out), taken


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "defaults")
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_receive_requests_equals_the_general_path_for_every_kind_of_request_and_runs_of_them(serializer, settings):
    cases = requests(serializer)
    usual = [data for name, data in cases if name.startswith("echo(")]
    runs = [("run of usual ones", b"".join(usual)),
            ("usual ones, an annotated one, usual ones", usual[0] + dict(cases)["annotated"] + usual[1] + usual[2]),
            ("usual ones, one that does not decode, usual ones", usual[0] + dict(cases)["garbage payload"] + usual[1]),
            ("usual ones and a part", usual[0] + usual[1] + usual[2][:50])]
    taken_in_all = 0
    for name, data in cases + runs:
        _, lane = pair(serializer, **settings)
        _, reference = pair(serializer, **settings)
        got, taken = outcomes_lane(lane, data)
        assert got == outcomes_general(reference, data), name
        taken_in_all += taken
    assert taken_in_all >= 14 + len(usual) + 3 + 2 + 2  # the usual requests went through the lane


def test_receive_requests_answers_each_request_as_the_general_path_would():
    client, _ = pair("serpent")
    data = b"".join(request(client, vargs=(n,)) for n in range(3))
    _, lane = pair("serpent")
    _, reference = pair("serpent")
    reference.receive_data(data)
    call = lane.receive_requests(data)
    for n in range(3):
        frame = reference.next_event()
        assert call == ("obj", "echo", (n,), {}) and lane.request_seq == frame.seq
        assert bare_results(lane) == replies(reference, frame)[:len(RESULTS)]
        assert replies(lane, lane.bare_frame()) == replies(reference, frame)
        call = lane.next_request()
    assert call is TAKE_EVENT and lane.next_request() is TAKE_EVENT and lane.next_event() is NEED_DATA


def test_receive_requests_waits_for_the_handshake_and_for_buffered_bytes():
    client, _ = pair("serpent")
    data = request(client)
    fresh = ServerSession(Settings())
    assert fresh.receive_requests(data + data) is TAKE_EVENT  # no handshake yet: the general path refuses it
    with pytest.raises(errors.ProtocolError, match="expected CONNECT"):
        fresh.next_event()
    _, server = pair("serpent")
    inner = data
    outer = raw(77, inner)  # a request whose payload looks like a request
    server.receive_data(outer[:wire.HEADER_SIZE])
    assert server.receive_requests(outer[wire.HEADER_SIZE:]) is TAKE_EVENT  # never a request inside another
    assert server.next_event().payload == inner
