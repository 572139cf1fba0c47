"""The threaded proxy's lean lanes (issue 15, fifth pass) give exactly what the general path gives, and
fall back to it whenever their case does not hold: the request of scalars (ClientSession.call_request),
the usual reply taken as a payload (FrameReader.bare_head, ClientSession.receive_result), and the
proxy's own lane (a real daemon in this process)."""

from __future__ import annotations

import uuid
import zlib

import pytest
from support import handshaken_sessions

from meshrpc import Proxy, current_context, errors, expose
from meshrpc.config import Settings
from meshrpc.wire import frame as wire
from meshrpc.wire.serializers import BY_ID, BY_NAME
from meshrpc.wire import session as ws
from meshrpc.wire.session import NEED_DATA, TAKE_EVENT, ClientSession, ServerSession

SERIALIZERS = ["serpent", "marshal", "json", "msgpack"]
RESULTS = [1, "text", None, 2.5, [1, {"a": (2,)}], b"raw", {1, 2}, uuid.UUID(int=7)]


handshaken = handshaken_sessions


def twins(serializer: str = "serpent", **settings):
    """Two client sessions in the same state (one for the lane, one for the general path) and a server."""
    return handshaken(serializer, **settings), handshaken(serializer, **settings)


def outcome(client: ClientSession, event):
    """("value", v) of the usual reply event, ("event", kind, seq) of others, ("raised", ...) of an error reply."""
    if event is NEED_DATA:
        return NEED_DATA
    if event.__class__ is not wire.Frame or event.annotations:
        return ("event", type(event), getattr(event, "seq", None))
    try:
        return ("value", client.reply_value(event, client.take_blobs(event)))
    except Exception as exc:  # a remote exception
        return ("raised", type(exc), str(exc))


def general_value(client: ClientSession, data: bytes):
    """What the general path makes of `data`: an outcome, or ("error", type, text)."""
    try:
        client.receive_data(data)
        event = client.next_event()
    except errors.MeshError as exc:
        return ("error", type(exc), str(exc))
    return outcome(client, event)


def lane_value(client: ClientSession, data: bytes):
    """The same through receive_result (then next_event when it says TAKE_EVENT)."""
    try:
        payload = client.receive_result(data)
        if payload is TAKE_EVENT:
            return outcome(client, client.next_event())
    except errors.MeshError as exc:
        return ("error", type(exc), str(exc))
    try:
        return ("value", client.result_value(payload))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def call_both(lane: ClientSession, general: ClientSession, server: ServerSession, vargs=(1,)):
    """The same call on both sessions; the server's frame of it."""
    request = b"".join(lane.call_request("obj", "echo", vargs, None))
    assert request == b"".join(general.call_request("obj", "echo", vargs, None))
    server.receive_data(request)
    return server.next_event()


def replies(server: ServerSession, frame: wire.Frame) -> list[tuple[str, bytes]]:
    """Replies a daemon may send to `frame`, the usual one and every other kind."""
    out = [(f"result {r!r}", b"".join(server.result_reply(frame, r))) for r in RESULTS]
    out += [
        ("error", b"".join(server.error_reply(frame, ValueError("bad")))),
        ("annotated", b"".join(server.result_reply(frame, 5, {"RESP": b"r"}))),
        ("not run", b"".join(server.not_run_reply(frame))),
        ("stream", b"".join(server.stream_reply(frame, "s1"))),
        ("correlation id", wire.encode(wire.Frame(wire.MSG_RESULT, 77, frame.seq, b"\xe9\x05\x00\x00\x00", 0, {},
                                                  bytes(range(16))))),
        ("compressed", wire.encode(wire.Frame(wire.MSG_RESULT, 77, frame.seq, zlib.compress(b"\xe9\x05\x00\x00\x00"),
                                              wire.FLAG_COMPRESSED))),
        ("wrong seq", wire.encode(wire.Frame(wire.MSG_RESULT, 77, (frame.seq + 1) & 0xFFFF, b"N"))),
        ("wrong type", wire.encode(wire.Frame(wire.MSG_INVOKE, 77, frame.seq, b"N"))),
        ("wrong serializer", wire.encode(wire.Frame(wire.MSG_RESULT, 2, frame.seq, b"N"))),
        ("unknown serializer", wire.encode(wire.Frame(wire.MSG_RESULT, 99, frame.seq, b"N"))),
        ("bad magic", wire.encode(wire.Frame(wire.MSG_RESULT, 77, frame.seq, b"N"))[:-3] + b"\x00\x00N"),
        ("bad tag", b"XYRO" + wire.encode(wire.Frame(wire.MSG_RESULT, 77, frame.seq, b"N"))[4:]),
        ("garbage payload", wire.encode(wire.Frame(wire.MSG_RESULT, 77, frame.seq, b"\xff\xff"))),
    ]
    usual = out[0][1]
    out += [
        ("partial", usual[:-1]),
        ("header only", usual[:wire.HEADER_SIZE]),
        ("short", usual[:7]),
        ("two frames", usual + usual),
        ("frame and a part", usual + usual[:10]),
    ]
    return out


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_receive_result_equals_the_general_path_for_every_kind_of_reply(serializer):
    (lane, server), (general, _) = twins(serializer)
    frame = call_both(lane, general, server)
    for name, data in replies(server, frame):
        (lane, _), (general, _) = twins(serializer)
        call_both(lane, general, server)
        assert lane_value(lane, data) == general_value(general, data), name


def test_receive_result_takes_the_usual_reply_without_the_reader():
    client, server = handshaken("serpent")
    server.receive_data(b"".join(client.call_request("obj", "echo", (1,), None)))
    data = b"".join(server.result_reply(server.next_event(), 42))
    payload = client.receive_result(data)
    assert payload is not TAKE_EVENT and client.result_value(payload) == 42
    assert client.outstanding == 0 and client.reader.buffered == 0
    # the next call goes on as usual
    server.receive_data(b"".join(client.call_request("obj", "echo", ("x",), None)))
    assert client.result_value(client.receive_result(b"".join(server.result_reply(server.next_event(), "x")))) == "x"


def test_receive_result_leaves_pings_pipelining_and_buffered_bytes_to_the_general_path():
    client, server = handshaken("serpent")
    server.receive_data(b"".join(client.call_request("obj", "echo", (1,), None)))
    usual = b"".join(server.result_reply(server.next_event(), 1))
    client.receive_data(usual[:3])  # bytes buffered already: the rest completes them, never a frame alone
    assert client.receive_result(usual[3:]) is TAKE_EVENT
    assert client.reply_value(client.next_event()) == 1
    client._pings.add(99)  # a ping outstanding: the general path sorts replies out
    server.receive_data(b"".join(client.call_request("obj", "echo", (1,), None)))
    assert client.receive_result(b"".join(server.result_reply(server.next_event(), 1))) is TAKE_EVENT
    assert client.reply_value(client.next_event()) == 1


# frames and near-frames for bare_head and bare_header
FRAMES = [
    wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N")),
    wire.encode(wire.Frame(wire.MSG_RESULT, 1, 2, b"N" * 1000)),
    wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N" * 1000, wire.FLAG_EXCEPTION)),
    wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N", 0, {"ANNO": b"1"})),
    wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N", 0, {"ANNO": b"1"}))[:wire.HEADER_SIZE] + b"N",  # cut
    wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N", 0, {}, bytes(16))),
    wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N", 0, {}, uuid.UUID(int=5).bytes)),
    wire.encode(wire.Frame(wire.MSG_PING, 1, 65535, b"ping")),
    wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N"))[:-1],
    wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N")) + b"P",
    wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N"))[:38] + b"\x00\x00" + b"N",
    b"PYRO\x01\xf7" + wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N"))[6:],
    bytes(wire.HEADER_SIZE),
]


def read_whole(data):
    """The frame the reader gives for all of `data` (None: none, or bytes left over, or not valid)."""
    reader = wire.FrameReader(1 << 20)
    try:
        reader.feed(data)
        frame = reader.next_frame()
    except errors.ProtocolError:
        return None
    return frame if reader.buffered == 0 else None


@pytest.mark.parametrize("seq", [1, 2, 65535])
@pytest.mark.parametrize("data", FRAMES)
def test_bare_head_agrees_with_the_reader(data, seq):
    """bare_head says yes exactly when the reader gives one whole frame of that seq without annotations
    or flags for all of `data` (the tag and version then being right), and then its first 8 bytes; it never
    consumes anything."""
    probe = wire.FrameReader(1 << 20)
    head = probe.bare_head(data, seq)
    assert probe.buffered == 0
    frame = read_whole(data)
    usual = (frame is not None and not frame.annotations and frame.seq == seq
             and not frame.flags and not frame.correlation_id)
    if head is not None and not usual:  # the caller tells by the head: only good tags and versions may pass
        assert head[:6] != b"PYRO\x01\xf6"
    else:
        assert (head is not None) is usual
    if usual:
        assert head == wire.TAG + b"\x01\xf6" + bytes((frame.type, frame.serializer_id))
        assert data[wire.HEADER_SIZE:] == frame.payload


def test_bare_head_keeps_the_size_limit_and_large_frames_out():
    data = wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N" * 100))
    assert wire.FrameReader(1 << 20).bare_head(data, 1) is not None
    assert wire.FrameReader(1 << 20).bare_head(data, 2) is None  # another call's reply
    assert wire.FrameReader(1 << 20).bare_head(data, -1) is None  # no call waiting
    assert wire.FrameReader(99).bare_head(data, 1) is None  # above MAX_MESSAGE_SIZE: next_frame says so
    big = wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N" * wire.LARGE_FRAME))
    assert wire.FrameReader(1 << 30).bare_head(big, 1) is None
    assert wire.FrameReader(1 << 20).bare_head(bytearray(data), 1) is None  # bytes only (slices stay bytes)
    buffered = wire.FrameReader(1 << 20)
    buffered.feed(data[:3])
    assert buffered.bare_head(data, 1) is None  # bytes before it: the reader's


@pytest.mark.parametrize("data", FRAMES)
def test_bare_header_agrees_with_the_reader(data):
    """bare_header says yes exactly when the reader gives one whole frame without annotations for all of
    `data`, and then the same fields; it never consumes anything."""
    probe = wire.FrameReader(1 << 20)
    header = probe.bare_header(data)
    assert probe.buffered == 0
    frame = read_whole(data)
    whole = frame is not None and not frame.annotations
    assert (header is not None) is whole
    if header is not None:
        corr_flag = wire.FLAG_CORR_ID if frame.correlation_id else 0
        assert header[:4] == (frame.type, frame.serializer_id, frame.flags | corr_flag, frame.seq)
        assert data[wire.HEADER_SIZE:] == frame.payload


def test_bare_header_keeps_the_size_limit_and_large_frames_out():
    data = wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N" * 100))
    assert wire.FrameReader(1 << 20).bare_header(data) is not None
    assert wire.FrameReader(99).bare_header(data) is None  # above MAX_MESSAGE_SIZE: next_frame says so
    big = wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"N" * wire.LARGE_FRAME))
    assert wire.FrameReader(1 << 30).bare_header(big) is None
    assert wire.FrameReader(1 << 20).bare_header(bytearray(data)) is None  # bytes only (slices stay bytes)


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("vargs, kwargs", [((1,), None), ((), None), ((None, True, 2.5, "s", -7, 2 ** 70), None),
                                           ((1,), {"k": 2}), (([1],), None), ([1], None), ((b"x",), None)])
def test_the_scalar_request_lane_equals_the_serializer_and_encode_message(serializer, vargs, kwargs):
    client, _ = handshaken(serializer)
    request = b"".join(client.call_request("obj", "m", vargs, kwargs))
    seq = client.last_seq
    oob: list = []
    wire_id, payload = client.serializer.encode_call("obj", "m", vargs, kwargs, oob if client._oob_mode else None,
                                                     client.binary)
    annotations = {wire.OOB_ANNOTATION: wire.pack_oob(oob)} if oob else {}
    assert request == b"".join(wire.encode_parts(wire.Frame(wire.MSG_INVOKE, wire_id, seq, payload, 0, annotations)))
    assert client.outstanding == 1


@pytest.mark.parametrize("settings", [{"COMPRESSION": True, "COMPRESSION_MIN_SIZE": 10}, {"MAX_MESSAGE_SIZE": 200}])
def test_the_scalar_request_lane_keeps_compression_and_the_size_limit(settings):
    client, _ = handshaken("serpent", **settings)
    vargs = ("a long enough string to compress " * 8,)
    if "MAX_MESSAGE_SIZE" in settings:
        with pytest.raises(errors.MessageTooLargeError):
            client.call_request("obj", "m", vargs, None)
        return
    request = b"".join(client.call_request("obj", "m", vargs, None))
    assert wire.HEADER.unpack_from(request)[4] & wire.FLAG_COMPRESSED


def test_the_scalar_request_lane_refuses_what_call_request_refuses():
    client, server = handshaken("serpent")
    client.call_request("obj", "m", (1,), None)
    with pytest.raises(errors.ProtocolError, match="one call at a time"):
        client.call_request("obj", "m", (1,), None)  # a reply is due and the peer does not pipeline
    client.abandon(client.last_seq)
    with pytest.raises(errors.ProtocolError, match="out of step"):
        client.call_request("obj", "m", (1,), None)
    fresh = ClientSession(BY_NAME["serpent"], Settings())
    with pytest.raises(errors.ProtocolError, match="handshake"):
        fresh.call_request("obj", "m", (1,), None)


def test_only_serializers_with_a_scalar_form_say_so():
    assert BY_NAME["serpent"].scalar_call_form(True) == (77, 2)
    assert BY_NAME["serpent"].scalar_call_form(False) is None
    assert BY_NAME["marshal"].scalar_call_form(False)[0] == 2
    assert BY_NAME["json"].scalar_call_form(True) is None and BY_NAME["msgpack"].scalar_call_form(True) is None
    assert BY_ID[77].values is BY_NAME["serpent"]


# ---------------------------------------------------------------- the proxy's lane, with a real daemon

@expose
class Echo:
    def echo(self, value):
        return value

    def fail(self):
        raise KeyError("no such thing")

    def annotate(self):
        current_context.response_annotations = {"RESP": b"yes"}
        return "annotated"

    def corr(self):
        return str(current_context.correlation_id)


@pytest.fixture
def served(start_daemon):
    return start_daemon(host="127.0.0.1").register(Echo(), "echo")


class Counting:
    """Counts the replies the lane took (ClientSession.receive_result gave a payload)."""

    def __init__(self, monkeypatch):
        self.lane = 0
        original = ClientSession.receive_result

        def counted(session, data):
            payload = original(session, data)
            self.lane += payload is not TAKE_EVENT
            return payload
        monkeypatch.setattr(ClientSession, "receive_result", counted)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_the_proxy_lane_gives_what_the_general_path_gives(served, monkeypatch, serializer):
    counting = Counting(monkeypatch)
    with Proxy(served) as proxy:
        proxy._pyroSerializer = serializer
        values = [1, "x", None, 2 ** 70, 2.5, True]
        assert [proxy.echo(v) for v in values] == values
        assert counting.lane == len(values)  # the usual replies went through the lane
        assert proxy.echo([1, {"a": 2}]) == [1, {"a": 2}]
        with pytest.raises(KeyError):
            proxy.fail()  # an error reply: the general path, the connection stays
        assert proxy.echo(5) == 5
        assert proxy.annotate() == "annotated"
        assert current_context.response_annotations == {"RESP": b"yes"}
        assert proxy.echo(6) == 6
        assert current_context.response_annotations == {}  # a lean reply clears the last reply's annotations


def test_a_correlation_id_or_annotations_take_the_general_path(served, monkeypatch):
    counting = Counting(monkeypatch)
    with Proxy(served) as proxy:
        proxy.echo(1)
        before = counting.lane
        corr = uuid.uuid4()
        current_context.correlation_id = corr
        try:
            assert proxy.corr() == str(corr)
        finally:
            current_context.correlation_id = None
        current_context.annotations = {"XTRA": b"1"}
        try:
            assert proxy.echo(2) == 2
        finally:
            current_context.annotations = {}
        assert counting.lane == before + 1  # only echo(2)'s reply (a Pyro5 daemon's would carry the id)


def test_hooks_and_raw_replies_take_the_general_path(served, monkeypatch):
    seen = []

    class Hooked(Proxy):
        def _pyroResponseAnnotations(self, annotations, msgtype):
            seen.append((dict(annotations), msgtype))

    counting = Counting(monkeypatch)
    with Hooked(served) as proxy:
        assert proxy.echo(3) == 3
        assert seen[-1] == ({}, wire.MSG_RESULT)
    with Proxy(served) as proxy:
        proxy._pyroRawWireResponse = True
        raw = proxy.echo(4)
        assert raw.__class__ is wire.Frame and raw.type == wire.MSG_RESULT
    assert counting.lane == 0


def test_a_reply_that_does_not_decode_keeps_the_connection(served, monkeypatch):
    with Proxy(served) as proxy:
        proxy.echo(1)
        conn = proxy._pyroConnection
        original = ClientSession.result_value

        def broken(session, payload):
            raise errors.SerializeError("cannot decode")
        monkeypatch.setattr(ClientSession, "result_value", broken)
        with pytest.raises(errors.SerializeError, match="^cannot decode$"):
            proxy.echo(2)
        monkeypatch.setattr(ClientSession, "result_value", original)
        assert proxy.echo(3) == 3 and proxy._pyroConnection is conn


def test_a_reply_that_breaks_the_protocol_closes_the_connection(served, monkeypatch):
    with Proxy(served) as proxy:
        proxy.echo(1)

        def broken(session, data):
            raise errors.ProtocolError("garbled")
        monkeypatch.setattr(ClientSession, "receive_result", broken)
        with pytest.raises(errors.ProtocolError, match="garbled .*connection closed"):
            proxy.echo(2)
        assert proxy._pyroConnection is None


# ---------------------------------------------------------------- pipelined sessions (the aio proxy's lanes)

def pipelined(serializer: str = "serpent", **settings):
    """A pipelined ClientSession and a ServerSession that agreed to pipelining, handshaken in memory."""
    return handshaken_sessions(serializer, pipelining=True, **settings)


def results_value(client: ClientSession, data: bytes):
    """What receive_results (then next_event for what it left) makes of `data`: outcomes, as general_value."""
    out = []
    try:
        for seq, payload, codec in client.receive_results(data):
            try:
                out.append(("value", client.result_value(payload, codec)))
            except Exception as exc:
                out.append(("raised", type(exc), str(exc)))
        while (event := client.next_event()) is not NEED_DATA:
            out.append(outcome(client, event))
    except errors.MeshError as exc:
        out.append(("error", type(exc), str(exc)))
    return out


def events_value(client: ClientSession, data: bytes):
    """The same through receive_data and next_event only."""
    out = []
    try:
        client.receive_data(data)
        while (event := client.next_event()) is not NEED_DATA:
            out.append(outcome(client, event))
    except errors.MeshError as exc:
        out.append(("error", type(exc), str(exc)))
    return out


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_receive_results_equals_the_general_path_for_every_kind_of_reply(serializer):
    lane, server = pipelined(serializer)
    request = b"".join(lane.call_request("obj", "echo", (1,), None))
    server.receive_data(request)
    frame = server.next_event()
    for name, data in replies(server, frame):
        (lane, _), (general, _) = pipelined(serializer), pipelined(serializer)
        lane.call_request("obj", "echo", (1,), None)
        general.call_request("obj", "echo", (1,), None)
        assert results_value(lane, data) == events_value(general, data), name
        assert lane.outstanding == general.outstanding, name


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_receive_results_takes_many_replies_in_any_order_and_drops_abandoned_ones(serializer):
    client, server = pipelined(serializer)
    seqs = []
    for n in range(6):
        server.receive_data(b"".join(client.call_request("obj", "echo", (n,), None)))
        seqs.append(client.last_seq)
    requests = [server.next_event() for _ in seqs]
    assert client.abandon(seqs[2])  # its late reply is dropped, the others are matched
    data = b"".join(b"".join(server.result_reply(request, server.decode_call(request)[2][0] * 10))
                    for request in reversed(requests))
    taken = client.receive_results(data)
    assert {seq: client.result_value(payload, codec) for seq, payload, codec in taken} == {
        seq: n * 10 for n, seq in enumerate(seqs) if n != 2}
    assert [seq for seq, _, _ in taken] == [seq for seq in reversed(seqs) if seq != seqs[2]]
    assert client.outstanding == 0 and client.reader.buffered == 0 and client.next_event() is NEED_DATA


def test_receive_results_stops_at_the_first_other_message_and_buffers_the_rest():
    client, server = pipelined()
    for n in range(4):
        server.receive_data(b"".join(client.call_request("obj", "echo", (n,), None)))
    first, second, third, fourth = (server.next_event() for _ in range(4))
    usual = b"".join(server.result_reply(first, "a"))
    annotated = b"".join(server.result_reply(second, "b", {"RESP": b"r"}))
    after = b"".join(server.result_reply(third, "c"))
    part = b"".join(server.result_reply(fourth, "d"))
    taken = client.receive_results(usual + annotated + after + part[:30])
    assert [client.result_value(p, c) for _, p, c in taken] == ["a"]  # the rest waits for next_event
    assert client.reader.buffered == len(annotated + after) + 30
    assert client.reply_value(client.next_event()) == "b" and client.reply_value(client.next_event()) == "c"
    assert client.next_event() is NEED_DATA
    assert client.receive_results(part[30:]) == []  # bytes were buffered before: all to the reader
    assert client.reply_value(client.next_event()) == "d" and client.outstanding == 0


def test_receive_results_leaves_pings_and_unasked_replies_to_the_general_path():
    client, server = pipelined()
    server.receive_data(b"".join(client.call_request("obj", "echo", (1,), None)))
    request = server.next_event()
    server.receive_data(b"".join(client.ping_request()))
    ping = server.next_event()
    data = b"".join(server.result_reply(request, 1)) + b"".join(server.pong(ping))
    assert client.receive_results(data) == []  # a ping outstanding
    assert client.reply_value(client.next_event()) == 1 and isinstance(client.next_event(), ws.Pong)
    stray = wire.encode(wire.Frame(wire.MSG_RESULT, 77, (client.last_seq + 5) & 0xFFFF, b"N"))
    assert client.receive_results(stray) == []
    with pytest.raises(errors.ProtocolError, match="invalid reply"):
        client.next_event()
    plain, _ = handshaken("serpent")  # not pipelined: everything goes to the reader
    plain.call_request("obj", "echo", (1,), None)
    assert plain.receive_results(b"".join(server.result_reply(request, 1))) == []
    assert plain.reader.buffered


def test_receive_results_keeps_the_size_limit():
    client, server = pipelined(MAX_MESSAGE_SIZE=200)
    server.receive_data(b"".join(client.call_request("obj", "echo", (1,), None)))
    big = wire.encode(wire.Frame(wire.MSG_RESULT, 77, client.last_seq, b"N" * 300))
    assert client.receive_results(big) == []
    with pytest.raises(errors.MessageTooLargeError):
        client.next_event()


@pytest.mark.parametrize("serializer", SERIALIZERS)
@pytest.mark.parametrize("vargs, kwargs", [((1,), None), ((None, True, 2.5, "s", -7, 2 ** 70), None),
                                           ((1,), {"k": 2}), (([1],), None), ((b"x",), None)])
def test_the_scalar_request_lane_takes_pipelined_calls(serializer, vargs, kwargs):
    client, _ = pipelined(serializer)
    general, _ = pipelined(serializer)
    general._scalar_form = None  # the general path for the same request
    for n in range(3):  # several outstanding at once
        request = b"".join(client.call_request("obj", "m", vargs, kwargs))
        assert request == b"".join(general.call_request("obj", "m", vargs, kwargs))
        assert client.last_seq == general.last_seq
    assert client.outstanding == 3 == general.outstanding


def test_the_pipelined_scalar_lane_skips_seqs_in_use():
    client, _ = pipelined()
    client.call_request("obj", "a", (1,), None)
    held = client.last_seq
    client.call_request("obj", "b", (1,), None)
    client.abandon(client.last_seq)
    dropped = client.last_seq
    client._seq = (held - 1) & 0xFFFF  # the counter comes round to a seq outstanding, then an abandoned one
    client.call_request("obj", "c", (1,), None)
    assert client.last_seq == (dropped + 1) & 0xFFFF and client.outstanding == 2


def test_receive_results_never_reads_a_frame_inside_bytes_the_reader_holds_part_of():
    client, _ = pipelined()
    client.call_request("obj", "echo", (1,), None)
    outer_seq = client.last_seq
    client.call_request("obj", "echo", (2,), None)
    inner = wire.encode(wire.Frame(wire.MSG_RESULT, 77, client.last_seq, b"N"))  # looks like the usual reply
    outer = wire.encode(wire.Frame(wire.MSG_RESULT, 77, outer_seq, inner))  # ...as the payload of another
    client.receive_data(outer[:wire.HEADER_SIZE])
    assert client.receive_results(outer[wire.HEADER_SIZE:]) == []
    frame = client.next_event()
    assert (frame.seq, frame.payload) == (outer_seq, inner) and client.outstanding == 1
