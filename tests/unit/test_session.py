"""The session protocol (meshrpc.wire.session): a client and a server session paired in memory, no
socket. Every message kind and every refusal path."""

from __future__ import annotations

import random
import threading
import time
import zlib

import pytest

from meshrpc import errors
from meshrpc.blob import SerializedBlob
from meshrpc.config import Settings
from meshrpc.wire import constants, keyproof
from meshrpc.wire import frame as wire
from meshrpc.wire import session as ws
from meshrpc.wire.serializers import ExceptionWrapper, by_name

KEY = "session-test-key"
NOW = 1_700_000_000.0


def deliver(parts: list, to: ws._Session) -> None:
    for part in parts:
        to.receive_data(bytes(part))


def frames_of(parts: list) -> list[wire.Frame]:
    reader = wire.FrameReader()
    for part in parts:
        reader.feed(bytes(part))
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(frame)
    return out


def pair(serializer: str = "serpent", *, pipelining: bool = False, client_settings: Settings | None = None,
         server_settings: Settings | None = None, meta: dict | None = None,
         cache: keyproof.ReplayCache | None = None) -> tuple[ws.ClientSession, ws.ServerSession]:
    """A connected client/server pair."""
    client = ws.ClientSession(by_name(serializer), client_settings or Settings(), pipelining=pipelining)
    server = ws.ServerSession(server_settings or Settings(), cache or keyproof.ReplayCache())
    deliver(client.connect_request("obj", "hi", now=NOW), server)
    request = server.next_event(now=NOW)
    assert isinstance(request, ws.ConnectRequest) and request.refusal is None, request
    assert (request.object_id, request.handshake) == ("obj", "hi")
    deliver(server.accept_connect(request, "hello back", meta or {"methods": {"add"}}), client)
    connected = client.next_event()
    assert isinstance(connected, ws.Connected), connected
    assert connected.handshake == "hello back" and set(connected.metadata["methods"]) == {"add"}
    assert client.handshaken and server.handshaken and server.object_id == "obj"
    return client, server


def call(client: ws.ClientSession, server: ws.ServerSession, method: str, *args, flags: int = 0,
         **kwargs) -> wire.Frame:
    """Send a call, let the server decode it and answer with the sum of the args; the client's event."""
    deliver(client.call_request("obj", method, args, kwargs, flags), server)
    request = server.next_event()
    assert request.type == wire.MSG_INVOKE
    object_id, name, vargs, kw = server.decode_call(request)
    assert (object_id, name) == ("obj", method)
    deliver(server.result_reply(request, sum(vargs)), client)
    return client.next_event()


# ---------------------------------------------------------------- handshake and capabilities

@pytest.mark.parametrize("serializer", ["serpent", "marshal", "json", "msgpack"])
def test_handshake_and_a_call_in_every_serializer(serializer: str) -> None:
    client, server = pair(serializer)
    assert client.oob and server.oob and not client.pipelined and not server.pipelined
    reply = call(client, server, "add", 1, 2)
    assert isinstance(reply, wire.Frame) and client.reply_value(reply, client.take_blobs(reply)) == 3
    assert client.outstanding == 0


def test_capabilities_agreed_only_when_both_sides_offer_them() -> None:
    client, server = pair(pipelining=True)
    assert client.pipelined and server.pipelined and client.binary and server.binary and client.oob
    client, server = pair(pipelining=False, server_settings=Settings(SERPENT_BINARY=False))
    assert not client.pipelined and not server.pipelined and not client.binary and not server.binary
    # a server that answers one request after the other does not agree to pipelining
    client = ws.ClientSession(by_name("serpent"), Settings(), pipelining=True)
    server = ws.ServerSession(Settings(), pipelining=False)
    deliver(client.connect_request("obj"), server)
    [ok] = frames_of(server.accept_connect(server.next_event(), "hello", {}))
    assert constants.CAP_PIPELINE not in wire.capabilities(ok.annotations) and not server.pipelined
    client.receive_data(wire.encode(ok))
    client.next_event()
    assert not client.pipelined and client.oob


def test_a_pyro5_proxy_gets_the_plain_answer() -> None:
    # a CONNECT without the MRPC annotation, as Pyro5 sends it
    server = ws.ServerSession(Settings())
    serpent = by_name("serpent")
    server.receive_data(wire.encode(wire.Frame(wire.MSG_CONNECT, serpent.id, 7,
                                               serpent.dumps({"handshake": "hello", "object": "obj"}))))
    request = server.next_event()
    [reply] = frames_of(server.accept_connect(request, "hello", {}))
    assert reply.type == wire.MSG_CONNECTOK and reply.seq == 7 and reply.annotations == {}
    assert not server.oob and not server.binary and not server.pipelined


def test_a_pyro5_daemon_agrees_to_nothing_and_calls_go_one_at_a_time() -> None:
    client = ws.ClientSession(by_name("serpent"), Settings(), pipelining=True)
    [connect] = frames_of(client.connect_request("obj"))
    assert wire.capabilities(connect.annotations) == constants.CAP_OOB + constants.CAP_BINARY + constants.CAP_PIPELINE
    serpent = by_name("serpent")
    client.receive_data(wire.encode(wire.Frame(wire.MSG_CONNECTOK, serpent.id, connect.seq,
                                               serpent.dumps({"handshake": "hello", "meta": {}}))))
    assert isinstance(client.next_event(), ws.Connected)
    assert not client.pipelined and not client.oob and not client.binary
    client.call_request("obj", "add", (1,), {})
    with pytest.raises(errors.ProtocolError, match="one call at a time"):
        client.call_request("obj", "add", (2,), {})


def test_unknown_object_is_refused_and_the_client_may_connect_again() -> None:
    client = ws.ClientSession(by_name("json"), Settings())
    server = ws.ServerSession(Settings())
    deliver(client.connect_request("gone"), server)
    request = server.next_event()
    deliver(server.refuse_connect(request, constants.UNKNOWN_OBJECT_REASON), client)
    refused = client.next_event()
    assert isinstance(refused, ws.ConnectRefused) and refused.kind == "unknown-object"
    assert not client.handshaken and not server.handshaken
    with pytest.raises(errors.ProtocolError):
        client.call_request("gone", "x", (), {})
    deliver(client.connect_request("obj"), server)
    request = server.next_event()
    deliver(server.accept_connect(request, "hello", {}), client)
    assert isinstance(client.next_event(), ws.Connected)


def test_other_refusals_are_plain_refusals() -> None:
    client = ws.ClientSession(by_name("serpent"), Settings())
    server = ws.ServerSession(Settings())
    deliver(client.connect_request("obj"), server)
    deliver(server.refuse_connect(server.next_event(), "handshake denied: go away"), client)
    refused = client.next_event()
    assert refused.kind == "refused" and refused.reason == "handshake denied: go away"


@pytest.mark.parametrize("payload", [b"[1, 2]", b"{'object': 'obj'}", b"'just a string'", b"{{{"])
def test_bad_handshake_data_is_refused_with_the_reason(payload: bytes) -> None:
    server = ws.ServerSession(Settings())
    server.receive_data(wire.encode(wire.Frame(wire.MSG_CONNECT, by_name("serpent").id, 1, payload)))
    request = server.next_event()
    assert request.refusal and request.refusal.startswith("invalid handshake data")
    with pytest.raises(errors.ProtocolError):
        server.accept_connect(request, "hello", {})
    [reply] = frames_of(server.refuse_connect(request, request.refusal))
    assert reply.type == wire.MSG_CONNECTFAIL and "invalid handshake data" in by_name("serpent").loads(reply.payload)


def test_unknown_serializer_in_connect_and_in_invoke_is_a_protocol_error() -> None:
    server = ws.ServerSession(Settings())
    server.receive_data(wire.encode(wire.Frame(wire.MSG_CONNECT, 99, 1, b"x")))
    with pytest.raises(errors.ProtocolError, match="unknown serializer id 99"):
        server.next_event()
    client, server = pair()
    with pytest.raises(errors.ProtocolError, match="unknown serializer id 42"):
        server.decode_call(wire.Frame(wire.MSG_INVOKE, 42, 5, b""))
    with pytest.raises(errors.ProtocolError):
        server.not_run_reply(wire.Frame(wire.MSG_INVOKE, 42, 5, b""))


def test_first_message_must_be_connect_and_connect_only_once() -> None:
    server = ws.ServerSession(Settings())
    server.receive_data(wire.encode(wire.Frame(wire.MSG_INVOKE, 1, 1, b"x")))
    with pytest.raises(errors.ProtocolError, match="expected CONNECT"):
        server.next_event()
    client, server = pair()
    server.receive_data(wire.encode(wire.Frame(wire.MSG_CONNECT, 1, 1, b"x")))
    with pytest.raises(errors.ProtocolError, match="after the handshake"):
        server.next_event()
    with pytest.raises(errors.ProtocolError, match="already sent"):
        client.connect_request("obj")


def test_ping_before_and_after_the_handshake() -> None:
    server = ws.ServerSession(Settings())
    server.receive_data(wire.encode(wire.Frame(wire.MSG_PING, 1, 3, b"ping")))
    ping = server.next_event()
    assert ping.type == wire.MSG_PING
    [pong] = frames_of(server.pong(ping))
    assert (pong.type, pong.seq, pong.payload) == (wire.MSG_PING, 3, b"pong")
    client, server = pair()
    deliver(client.ping_request(), server)
    ping = server.next_event()
    deliver(server.pong(ping), client)
    assert isinstance(client.next_event(), ws.Pong) and client.outstanding == 0


# ---------------------------------------------------------------- the mesh key

def test_key_proof_both_ways() -> None:
    keyed = Settings(KEY=KEY)
    client, server = pair(client_settings=keyed, server_settings=keyed)
    [connect] = frames_of(ws.ClientSession(by_name("serpent"), keyed).connect_request("obj", now=NOW))
    assert len(connect.annotations[constants.KEY_ANNOTATION]) == constants.KEY_CLIENT_TOKEN_BYTES


def test_key_needs_now() -> None:
    keyed = Settings(KEY=KEY)
    with pytest.raises(ValueError, match="now"):
        ws.ClientSession(by_name("serpent"), keyed).connect_request("obj")
    server = ws.ServerSession(keyed)
    deliver(ws.ClientSession(by_name("serpent"), keyed).connect_request("obj", now=NOW), server)
    with pytest.raises(ValueError, match="now"):
        server.next_event()


@pytest.mark.parametrize("client_key, reason", [("", keyproof.REQUIRED_REASON),
                                                ("another key", keyproof.BAD_KEY_REASON)])
def test_daemon_refuses_a_missing_or_wrong_key(client_key: str, reason: str) -> None:
    client = ws.ClientSession(by_name("serpent"), Settings(KEY=client_key))
    server = ws.ServerSession(Settings(KEY=KEY), keyproof.ReplayCache())
    deliver(client.connect_request("obj", now=NOW), server)
    request = server.next_event(now=NOW)
    assert request.refusal == reason
    deliver(server.refuse_connect(request, request.refusal), client)
    refused = client.next_event()
    assert refused.kind == "mesh-key" and refused.reason == reason


def test_daemon_refuses_a_stale_clock_and_a_replay() -> None:
    keyed = Settings(KEY=KEY, KEY_WINDOW=60)
    cache = keyproof.ReplayCache()
    client = ws.ClientSession(by_name("serpent"), keyed)
    connect = b"".join(bytes(p) for p in client.connect_request("obj", now=NOW))
    stale = ws.ServerSession(keyed, cache)
    stale.receive_data(connect)
    assert stale.next_event(now=NOW + 61).refusal == keyproof.BAD_KEY_REASON
    first = ws.ServerSession(keyed, cache)
    first.receive_data(connect)
    assert first.next_event(now=NOW + 1).refusal is None
    replayed = ws.ServerSession(keyed, cache)
    replayed.receive_data(connect)
    assert replayed.next_event(now=NOW + 2).refusal == keyproof.REPLAY_REASON


def test_proxy_refuses_a_daemon_without_the_key_or_with_a_wrong_proof() -> None:
    keyed = Settings(KEY=KEY)
    # a daemon without a key accepts, but cannot prove anything
    client = ws.ClientSession(by_name("serpent"), keyed)
    server = ws.ServerSession(Settings())
    deliver(client.connect_request("obj", now=NOW), server)
    deliver(server.accept_connect(server.next_event(), "hello", {}), client)
    with pytest.raises(errors.SecurityError, match="did not prove"):
        client.next_event()
    # a forged proof
    client = ws.ClientSession(by_name("serpent"), keyed)
    server = ws.ServerSession(keyed, keyproof.ReplayCache())
    deliver(client.connect_request("obj", now=NOW), server)
    [ok] = frames_of(server.accept_connect(server.next_event(now=NOW), "hello", {}))
    proof = ok.annotations[constants.KEY_ANNOTATION]
    ok.annotations[constants.KEY_ANNOTATION] = proof[:-1] + bytes([proof[-1] ^ 1])
    client.receive_data(wire.encode(ok))
    with pytest.raises(errors.SecurityError, match="wrong"):
        client.next_event()


# ---------------------------------------------------------------- reply checks

def _reply(client: ws.ClientSession, frame: wire.Frame) -> None:
    client.receive_data(wire.encode(frame))


def test_wrong_reply_type_seq_or_serializer_is_a_protocol_error() -> None:
    serpent = by_name("serpent")
    for bad in (lambda seq: wire.Frame(wire.MSG_CONNECTOK, serpent.id, seq, serpent.dumps(1)),
                lambda seq: wire.Frame(wire.MSG_RESULT, serpent.id, seq + 1, serpent.dumps(1)),
                lambda seq: wire.Frame(wire.MSG_RESULT, by_name("json").id, seq, b"1"),
                lambda seq: wire.Frame(wire.MSG_PING, serpent.id, seq, b"pong")):
        client, _ = pair()
        client.call_request("obj", "add", (1,), {})
        _reply(client, bad(client.last_seq))
        with pytest.raises(errors.ProtocolError, match="invalid reply|serializer"):
            client.next_event()


def test_a_reply_nobody_asked_for_is_a_protocol_error() -> None:
    client, _ = pair()
    _reply(client, wire.Frame(wire.MSG_RESULT, 1, 5, b"1"))
    with pytest.raises(errors.ProtocolError, match="seq 5"):
        client.next_event()


def test_binary_serpent_replies_are_accepted_only_when_agreed() -> None:
    client, server = pair("serpent")
    deliver(client.call_request("obj", "echo", (1,), {}), server)
    request = server.next_event()
    [reply] = frames_of(server.result_reply(request, [1, 2.5, "x"]))
    assert reply.serializer_id == 77
    client.receive_data(wire.encode(reply))
    assert client.reply_value(client.next_event()) == [1, 2.5, "x"]
    plain, server = pair("serpent", server_settings=Settings(SERPENT_BINARY=False))
    plain.call_request("obj", "echo", (1,), {})
    _reply(plain, wire.Frame(wire.MSG_RESULT, 77, plain.last_seq, reply.payload))
    with pytest.raises(errors.ProtocolError, match="serializer 77"):
        plain.next_event()


# ---------------------------------------------------------------- call kinds

def test_remote_exception_is_raised_with_its_type() -> None:
    client, server = pair()
    deliver(client.call_request("obj", "fail", (), {}), server)
    request = server.next_event()
    deliver(server.error_reply(request, ZeroDivisionError("boom")), client)
    reply = client.next_event()
    with pytest.raises(ZeroDivisionError, match="boom"):
        client.reply_value(reply)


def test_an_unserializable_result_or_exception_becomes_a_serialize_error() -> None:
    client, server = pair("json")
    deliver(client.call_request("obj", "odd", (), {}), server)
    request = server.next_event()
    deliver(server.result_reply(request, threading.Lock()), client)
    with pytest.raises(errors.SerializeError, match="cannot serialize the result"):
        client.reply_value(client.next_event())


def test_a_reply_that_cannot_be_sent_becomes_the_error_saying_why() -> None:
    small = Settings(MAX_MESSAGE_SIZE=1000)
    client, server = pair(client_settings=small, server_settings=small, pipelining=True)
    requests = []
    for method in ("big", "big_error", "big_stream", "bad_annotation", "fine"):
        deliver(client.call_request("obj", method, (), {}), server)
        requests.append(server.next_event())
    big, big_error, big_stream, bad_annotation, fine = requests
    deliver(server.result_reply(big, "x" * 5000), client)
    deliver(server.error_reply(big_error, ValueError("y" * 5000)), client)
    deliver(server.stream_reply(big_stream, "s1", {"CUST": b"z" * 5000}), client)
    deliver(server.result_reply(bad_annotation, 1, {"toolong": b"x"}), client)
    deliver(server.result_reply(fine, 42), client)
    for expected in ("exceeds MAX_MESSAGE_SIZE", "exceeds MAX_MESSAGE_SIZE", "exceeds MAX_MESSAGE_SIZE",
                     "annotation id"):
        reply = client.next_event()
        with pytest.raises(errors.ProtocolError, match="the daemon could not send its reply: .*" + expected):
            client.reply_value(reply)
    assert client.reply_value(client.next_event()) == 42
    assert client.outstanding == 0


def test_not_run_answer() -> None:
    client, server = pair()
    deliver(client.call_request("obj", "add", (1,), {}), server)
    request = server.next_event()
    deliver(server.not_run_reply(request), client)
    event = client.next_event()
    assert isinstance(event, ws.NotRun) and event.seq == request.seq and client.outstanding == 0
    deliver(client.call_request("obj", "add", (1,), {}, wire.FLAG_ONEWAY), server)
    assert server.not_run_reply(server.next_event()) == []


def test_stream_result() -> None:
    client, server = pair()
    deliver(client.call_request("obj", "gen", (), {}), server)
    request = server.next_event()
    deliver(server.stream_reply(request, "stream-1"), client)
    value = client.reply_value(client.next_event())
    assert isinstance(value, ws.StreamStarted) and value.stream_id == "stream-1"
    client.call_request("obj", "gen", (), {})
    _reply(client, wire.Frame(wire.MSG_RESULT, 1, client.last_seq, by_name("serpent").dumps(None),
                              wire.FLAG_EXCEPTION | wire.FLAG_ITEMSTREAMRESULT))
    with pytest.raises(errors.ProtocolError, match="stream id"):
        client.reply_value(client.next_event())


def test_batch() -> None:
    client, server = pair()
    calls = [("add", (1, 2), {}), ("add", (3,), {}), ("fail", (), {})]
    deliver(client.batch_request("obj", calls), server)
    request = server.next_event()
    assert request.flags & wire.FLAG_BATCH
    object_id, method, vargs, _ = server.decode_call(request)
    assert (object_id, method) == ("obj", constants.BATCH_METHOD) and [tuple(c[:1]) for c in vargs] == [("add",), ("add",), ("fail",)]
    results = [3, 3, ExceptionWrapper(ValueError("no"))]
    deliver(server.result_reply(request, results, flags=wire.FLAG_BATCH), client)
    reply = client.next_event()
    assert reply.flags & wire.FLAG_BATCH
    value = client.reply_value(reply)
    assert value[:2] == [3, 3] and isinstance(value[2], ExceptionWrapper)


def test_oneway_calls_expect_no_reply() -> None:
    client, server = pair()
    deliver(client.call_request("obj", "note", (1,), {}, wire.FLAG_ONEWAY), server)
    assert client.outstanding == 0
    request = server.next_event()
    assert request.flags & wire.FLAG_ONEWAY and server.decode_call(request)[1] == "note"
    assert client.reply_value(call(client, server, "add", 2, 2)) == 4   # the next call is fine


def test_bytes_travel_out_of_band_both_ways() -> None:
    client, server = pair("serpent")
    data = bytes(range(256)) * 10
    parts = client.call_request("obj", "echo", (data,), {})
    [invoke] = frames_of(parts)
    assert constants.OOB_ANNOTATION in invoke.annotations and data not in invoke.payload
    deliver(parts, server)
    request = server.next_event()
    assert server.decode_call(request)[2] == (data,)
    deliver(server.result_reply(request, {"blob": data}), client)
    reply = client.next_event()
    blobs = client.take_blobs(reply)
    assert blobs is not None and constants.OOB_ANNOTATION not in reply.annotations
    assert client.reply_value(reply, blobs) == {"blob": data}


def test_blob_calls() -> None:
    client, server = pair("serpent", pipelining=True)
    blob = SerializedBlob("info", [{"x": 1}, 2])
    deliver(client.call_request("obj", "take", (blob,), {}), server)
    request = server.next_event()
    assert request.flags & wire.FLAG_KEEPSERIALIZED
    object_id, method, vargs, _ = server.decode_call(request)
    assert (object_id, method, vargs[0].info) == ("obj", "take", "info")
    assert list(vargs[0].deserialized()) == [{"x": 1}, 2]
    with pytest.raises(errors.SerializeError, match="only argument"):
        client.call_request("obj", "take", (blob, 2), {})
    assert client.outstanding == 1  # the refused call recorded nothing
    bad = wire.Frame(wire.MSG_INVOKE, 1, 9, b"x", wire.FLAG_KEEPSERIALIZED, {constants.BLOB_ANNOTATION: b"\xff"})
    with pytest.raises(errors.SerializeError, match="BLBI"):
        server.decode_call(bad)


def test_undecodable_call_data_raises_serialize_error() -> None:
    client, server = pair("json")
    server.receive_data(wire.encode(wire.Frame(wire.MSG_INVOKE, by_name("json").id, 4, b"{not json")))
    with pytest.raises(errors.SerializeError):
        server.decode_call(server.next_event())


# ---------------------------------------------------------------- pipelining and abandoned calls

def test_pipelined_replies_out_of_order_are_matched_by_seq() -> None:
    client, server = pair(pipelining=True)
    seqs = []
    for n in range(5):
        deliver(client.call_request("obj", "add", (n,), {}), server)
        seqs.append(client.last_seq)
    assert client.outstanding == 5
    requests = [server.next_event() for _ in range(5)]
    for request in reversed(requests):
        deliver(server.result_reply(request, server.decode_call(request)[2][0] * 10), client)
    got = {}
    for _ in range(5):
        reply = client.next_event()
        got[reply.seq] = client.reply_value(reply)
    assert got == {seq: n * 10 for n, seq in enumerate(seqs)} and client.outstanding == 0
    assert client.next_event() is ws.NEED_DATA


def test_pipelined_abandoned_call_late_reply_is_dropped() -> None:
    client, server = pair(pipelining=True)
    deliver(client.call_request("obj", "slow", (1,), {}), server)
    slow = client.last_seq
    deliver(client.call_request("obj", "fast", (2,), {}), server)
    assert client.abandon(slow) is True and client.outstanding == 1
    first, second = server.next_event(), server.next_event()
    deliver(server.result_reply(first, "late"), client)
    deliver(server.result_reply(second, "fast"), client)
    reply = client.next_event()
    assert client.reply_value(reply) == "fast" and client.next_event() is ws.NEED_DATA


def test_abandoned_call_without_pipelining_puts_the_session_out_of_step() -> None:
    client, server = pair()
    client.call_request("obj", "slow", (1,), {})
    assert client.abandon(client.last_seq) is False and client.out_of_step
    with pytest.raises(errors.ProtocolError, match="out of step"):
        client.call_request("obj", "next", (), {})


def test_seq_numbers_wrap_and_skip_outstanding_ones() -> None:
    client, _ = pair(pipelining=True)
    client.call_request("obj", "a", (), {})
    held = client.last_seq
    client._seq = (held - 1) & 0xFFFF  # the counter comes round to a seq still outstanding
    client.call_request("obj", "b", (), {})
    assert client.last_seq == (held + 1) & 0xFFFF
    client._seq = 0xFFFF
    client.call_request("obj", "c", (), {})
    assert client.last_seq == 0


# ---------------------------------------------------------------- bad frames

def test_oversized_frames_are_refused_both_ways() -> None:
    small = Settings(MAX_MESSAGE_SIZE=1000)
    client, server = pair(client_settings=small, server_settings=small)
    with pytest.raises(errors.MessageTooLargeError):
        client.call_request("obj", "big", ("x" * 5000,), {})
    assert client.outstanding == 0
    header = wire.HEADER.pack(wire.TAG, wire.PROTOCOL_VERSION, wire.MSG_INVOKE, 1, 0, 1, 5000, 0,
                              bytes(16), 0, wire.MAGIC)
    server.receive_data(header)
    with pytest.raises(errors.MessageTooLargeError):
        server.next_event()


def test_malformed_bytes_are_a_protocol_error() -> None:
    server = ws.ServerSession(Settings())
    with pytest.raises(errors.ProtocolError, match="not a Pyro"):
        server.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    client, _ = pair()
    bad_magic = wire.HEADER.pack(wire.TAG, wire.PROTOCOL_VERSION, wire.MSG_RESULT, 1, 0, 1, 0, 0,
                                 bytes(16), 0, 0x1234)
    client.receive_data(bad_magic)
    with pytest.raises(errors.ProtocolError, match="magic"):
        client.next_event()


def test_eof_mid_message_is_reported() -> None:
    client, server = pair()
    parts = client.call_request("obj", "add", (1,), {})
    server.receive_data(bytes(parts[0])[:20])
    assert server.next_event() is ws.NEED_DATA
    server.receive_data(b"")
    with pytest.raises(errors.ConnectionClosedError, match="middle of a message"):
        server.next_event()


def test_refusal_for_stray_bytes_answers_in_their_serializer() -> None:
    client = ws.ClientSession(by_name("json"), Settings())
    first = bytes(client.connect_request("obj")[0])
    [fail] = frames_of([ws.refusal_for(first, "TLS only")])
    assert fail.type == wire.MSG_CONNECTFAIL and fail.serializer_id == by_name("json").id
    assert by_name("json").loads(fail.payload) == "TLS only"
    [fallback] = frames_of([ws.refusal_for(b"\x16\x03", "TLS only")])
    assert fallback.serializer_id == 1


def test_no_clock_read_in_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    keyed = Settings(KEY=KEY)

    def forbidden() -> float:
        raise AssertionError("the session read the clock")

    monkeypatch.setattr(time, "time", forbidden)
    monkeypatch.setattr(time, "time_ns", forbidden)
    monkeypatch.setattr(time, "monotonic", forbidden)
    client, server = pair(client_settings=keyed, server_settings=keyed)
    assert client.reply_value(call(client, server, "add", 1, 1)) == 2


# ---------------------------------------------------------------- compressed messages inflated later

def test_inflate_later_gives_a_large_compressed_message_as_compressed_and_keeps_the_order() -> None:
    """A driver on an event loop inflates large compressed messages elsewhere: next_event gives them as
    Compressed; inflated() then gives their event. Small ones come inflated, as without inflate_later."""
    settings = Settings(COMPRESSION=True, COMPRESSION_MIN_SIZE=100)
    client = ws.ClientSession(by_name("marshal"), settings, pipelining=True)
    server = ws.ServerSession(Settings(), keyproof.ReplayCache(), inflate_later=True)
    hello = "".join(random.Random(3).choices("abcdefghij", k=20_000))  # compresses to about 9 KB
    connect = client.connect_request("obj", hello, now=NOW)  # a compressed CONNECT, large
    deliver(connect, server)
    event = server.next_event(now=NOW)
    assert isinstance(event, ws.Compressed) and event.frame.flags & wire.FLAG_COMPRESSED
    assert len(event.frame.payload) > ws.INFLATE_ON_LOOP_MAX
    request = server.inflated(wire.inflate(event.frame, server.max_size), now=NOW)
    assert isinstance(request, ws.ConnectRequest) and request.handshake == hello
    deliver(server.accept_connect(request, "ok", {}), client)
    assert isinstance(client.next_event(), ws.Connected)

    large = bytes(range(256)) * 4000  # compresses to more than INFLATE_ON_LOOP_MAX
    deliver(client.call_request("obj", "add", (large,), {}), server)
    deliver(client.call_request("obj", "add", (b"y" * 500,), {}), server)  # small once compressed
    first = server.next_event()
    assert isinstance(first, ws.Compressed)
    frame = server.inflated(wire.inflate(first.frame, server.max_size))
    assert server.decode_call(frame)[2] == (large,)
    second = server.next_event()  # inflated by the reader: a Frame, after the first
    assert isinstance(second, wire.Frame) and server.decode_call(second)[2] == (b"y" * 500,)


def test_inflate_refuses_a_corrupt_or_oversized_payload() -> None:
    frame = wire.Frame(wire.MSG_INVOKE, 1, 1, b"not zlib at all" * 100, wire.FLAG_COMPRESSED)
    with pytest.raises(errors.ProtocolError, match="corrupt"):
        wire.inflate(frame, 1 << 20)
    bomb = wire.Frame(wire.MSG_INVOKE, 1, 1, zlib.compress(bytes(2 << 20)), wire.FLAG_COMPRESSED)
    with pytest.raises(errors.MessageTooLargeError, match="beyond MAX_MESSAGE_SIZE"):
        wire.inflate(bomb, 1 << 20)


def test_a_client_session_with_inflate_later_leaves_a_large_compressed_reply_compressed() -> None:
    """The reply Frame keeps FLAG_COMPRESSED (the aio proxy inflates it off its loop); a handshake reply
    comes inflated all the same."""
    client = ws.ClientSession(by_name("marshal"), Settings(), pipelining=True, inflate_later=True)
    server = ws.ServerSession(Settings(COMPRESSION=True, COMPRESSION_MIN_SIZE=100), keyproof.ReplayCache())
    deliver(client.connect_request("obj", "hi", now=NOW), server)
    request = server.next_event(now=NOW)
    metadata = {"methods": {"m%05d" % n for n in range(3000)}}  # compresses to more than INFLATE_ON_LOOP_MAX
    deliver(server.accept_connect(request, "hello back", metadata), client)
    connected = client.next_event()
    assert isinstance(connected, ws.Connected) and len(connected.metadata["methods"]) == 3000
    large = "".join(random.Random(4).choices("abcdef", k=20_000)).encode()  # about 9 KB compressed
    deliver(client.call_request("obj", "get", (), {}), server)
    deliver(server.result_reply(server.next_event(), large), client)
    reply = client.next_event()
    assert reply.flags & wire.FLAG_COMPRESSED and len(reply.payload) > ws.INFLATE_ON_LOOP_MAX
    assert client.reply_value(wire.inflate(reply, client.max_size), None) == large
