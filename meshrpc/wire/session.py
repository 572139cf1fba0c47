"""The session protocol of one connection, sans-I/O, for both sides (as h11's Connection).

Bytes in (`receive_data`), events out (`next_event`), and methods that return the buffers to send
(a list: send them in order; an empty list means there is nothing to send). No sockets, threads,
clock reads or logging here: drivers (the threaded Proxy and Daemon, the asyncio ones) do the I/O,
the waiting and the recovery policy, and pass `now` where the mesh-key proof needs the time.

A session owns: CONNECT/CONNECTOK/CONNECTFAIL, capability agreement (constants.CAP_*), the
mesh-key proof both ways (wire.keyproof), sequence numbers and matching replies to requests, the
checks of every reply (type, seq, serializer), the "not run" answer, stream results, batches,
oneway calls, blob (SerializedBlob) calls and PING. Sessions are not thread-safe: the driver
serializes access. docs/design-session.md describes the API and the events.

Per call the hot path allocates what the protocol needs anyway: an INVOKE/RESULT travels as its
`frame.Frame`, which is the event; rare outcomes (NotRun, Pong, StreamStarted) get objects of
their own.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any

from ..blob import SerializedBlob
from ..errors import ConnectionClosedError, DaemonError, ProtocolError, SecurityError, SerializeError
from ..limits import INFLATE_ON_LOOP_MAX
from . import keyproof, marshal_check, plain
from .constants import (BATCH_METHOD, BLOB_ANNOTATION, CAP_BINARY, CAP_OOB, CAP_PIPELINE, CAPABILITIES, KEY_ANNOTATION,
                        NOT_RUN_ANNOTATION, OOB_ANNOTATION, STREAM_ANNOTATION, UNKNOWN_OBJECT_REASON)
from .frame import (FLAG_BATCH, FLAG_COMPRESSED, FLAG_EXCEPTION, FLAG_ITEMSTREAMRESULT, FLAG_KEEPSERIALIZED,
                    FLAG_ONEWAY, HEADER, HEADER_SIZE, MAGIC, MSG_CONNECT, MSG_CONNECTFAIL, MSG_CONNECTOK, MSG_INVOKE,
                    MSG_PING, MSG_RESULT, PROTOCOL_VERSION, TAG, ZERO_ID, Frame, FrameReader, capabilities, encode_message,
                    encode_parts, inflate, pack_oob, unpack_oob)
from .frame import _BARE as _BARE_HEAD  # a header as FrameReader.bare_head reads it (receive_results: many)
from .plain import SCALARS
from .serializers import BY_ID, Serializer, by_id

SEQ_MASK = 0xFFFF  # sequence numbers are 16 bits on the wire and wrap


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()  # next_event(): no whole message yet, feed more bytes


class _TakeEvent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "TAKE_EVENT"


TAKE_EVENT = _TakeEvent()  # receive_result(): not the usual reply; the bytes are buffered, take next_event()


# ---------------------------------------------------------------- events

class Connected:
    """Client: the daemon accepted the CONNECT (CONNECTOK checked: type, seq, serializer, key proof)."""

    __slots__ = ("handshake", "metadata", "capabilities", "annotations")
    type = MSG_CONNECTOK

    def __init__(self, handshake: Any, metadata: dict, capabilities: bytes, annotations: dict) -> None:
        self.handshake = handshake        # the daemon's answer (Proxy._pyroValidateHandshake checks it)
        self.metadata = metadata          # methods, oneway, attrs, idempotent of the object
        self.capabilities = capabilities  # the agreed letters (constants.CAP_*)
        self.annotations = annotations

    def __repr__(self) -> str:
        return f"<Connected capabilities={self.capabilities!r}>"


class ConnectRefused:
    """Client: the daemon answered CONNECTFAIL. `kind`: "unknown-object" (the object is not served
    there: the call was not delivered), "mesh-key" (the key is missing or wrong) or "refused"."""

    __slots__ = ("reason", "kind", "annotations")
    type = MSG_CONNECTFAIL

    def __init__(self, reason: Any, kind: str, annotations: dict) -> None:
        self.reason = reason
        self.kind = kind
        self.annotations = annotations

    def __repr__(self) -> str:
        return f"<ConnectRefused {self.kind}: {self.reason!r}>"


class NotRun:
    """Client: the daemon is shutting down and answered the call with seq `seq` without running it:
    it certainly did not run, so it may be sent elsewhere."""

    __slots__ = ("seq", "annotations")
    type = MSG_RESULT

    def __init__(self, seq: int, annotations: dict) -> None:
        self.seq = seq
        self.annotations = annotations

    def __repr__(self) -> str:
        return f"<NotRun seq={self.seq}>"


class Pong:
    """Client: the answer to ping_request()."""

    __slots__ = ("seq",)
    type = MSG_PING

    def __init__(self, seq: int) -> None:
        self.seq = seq


class StreamStarted:
    """Client, from reply_value: the call returned an iterator; pull its items from the daemon object
    (get_next_stream_item(stream_id), close_stream(stream_id))."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id

    def __repr__(self) -> str:
        return f"<StreamStarted {self.stream_id}>"


class Compressed:
    """Server, with `inflate_later`: a message whose compressed payload is larger than
    INFLATE_ON_LOOP_MAX, not inflated yet. Inflate it (`wire.inflate(event.frame, session.max_size)`,
    on another thread if you like; it raises as a corrupt or oversized message does), then take its
    event with `session.inflated(frame, now)`; take no other event before that (messages are taken
    in order)."""

    __slots__ = ("frame",)

    def __init__(self, frame: Frame) -> None:
        self.frame = frame


class ConnectRequest:
    """Server: a CONNECT. `refusal` is None, or the reason the session refuses it already (invalid
    handshake data, mesh key missing or wrong): answer with refuse_connect(request, request.refusal).
    Otherwise the driver looks the object up and answers accept_connect or refuse_connect."""

    __slots__ = ("frame", "handshake", "object_id", "refusal")
    type = MSG_CONNECT

    def __init__(self, frame: Frame, handshake: Any, object_id: Any, refusal: str | None) -> None:
        self.frame = frame  # the CONNECT itself (seq, flags, annotations, correlation id)
        self.handshake = handshake
        self.object_id = object_id
        self.refusal = refusal

    @property
    def seq(self) -> int:
        return self.frame.seq

    @property
    def annotations(self) -> dict:
        return self.frame.annotations

    @property
    def correlation_id(self) -> bytes | None:
        return self.frame.correlation_id

    def __repr__(self) -> str:
        return f"<ConnectRequest object={self.object_id!r} refusal={self.refusal!r}>"


def as_exception(data: Any) -> BaseException:
    """The exception of an error reply (ProtocolError when the daemon flagged one but sent none)."""
    if isinstance(data, BaseException):
        return data
    return ProtocolError(f"the daemon flagged an exception but sent {type(data).__name__}: {data!r}")


def refusal_kind(reason: Any) -> str:
    if reason == UNKNOWN_OBJECT_REASON:
        return "unknown-object"
    if isinstance(reason, str) and reason.startswith(keyproof.KEY_REASON_PREFIXES):
        return "mesh-key"
    return "refused"


def _safe_loads(serializer: Serializer, payload: bytes) -> Any:
    try:
        return serializer.loads(payload)
    except Exception:
        return "<unreadable reason>"


# ---------------------------------------------------------------- common

class _Session:
    __slots__ = ("reader", "max_size", "compress_min", "serpent_binary", "key", "handshaken", "oob", "binary",
                 "pipelined", "_eof")

    def __init__(self, settings: Any, inflate_later: bool = False) -> None:
        # inflate_later: a large compressed payload is left to the driver (an event loop's: it inflates it
        # on another thread); the server's next_event gives such a message as Compressed
        self.reader = FrameReader(settings.MAX_MESSAGE_SIZE, settings.PROTOCOL_ANNOTATIONS_MAX,
                                  INFLATE_ON_LOOP_MAX if inflate_later else -1)
        self.max_size = settings.MAX_MESSAGE_SIZE
        self.compress_min = settings.COMPRESSION_MIN_SIZE if settings.COMPRESSION else -1
        self.serpent_binary = bool(settings.SERPENT_BINARY)
        self.key = settings.KEY
        self.handshaken = False
        self.oob = False        # agreed: bytes-like values out of band (CAP_OOB)
        self.binary = False     # agreed: plain serpent values in binary form (CAP_BINARY, id 77)
        self.pipelined = False  # agreed: many requests outstanding, replies matched by seq (CAP_PIPELINE)
        self._eof = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the peer sent; empty: the peer closed the connection. A stream that is not protocol
        502 raises ProtocolError as soon as its first 6 bytes are in."""
        if data:
            self.reader.feed(data)
        else:
            self._eof = True

    def _next_frame(self) -> Frame | None:
        frame = self.reader.next_frame()
        if frame is None and self._eof:
            raise ConnectionClosedError("the peer closed the connection"
                                        + (" in the middle of a message" if self.reader.buffered else ""))
        return frame

    def _encode(self, frame: Frame) -> list:
        return encode_parts(frame, compress_min=self.compress_min, max_size=self.max_size)


# ---------------------------------------------------------------- client side

class ClientSession(_Session):
    """The proxy's side. `pipelining`: offer CAP_PIPELINE (many calls in flight); without it agreed
    (e.g. a Pyro5 daemon), one call at a time: call_request refuses a second outstanding call."""

    __slots__ = ("serializer", "offer", "last_seq", "out_of_step", "_seq", "_waiting", "_outstanding",
                 "_abandoned", "_connect_seq", "_key_token", "_oob_mode", "_pings", "_result_heads",
                 "_result_codec", "_scalar_form")

    def __init__(self, serializer: Serializer, settings: Any, *, pipelining: bool = False,
                 inflate_later: bool = False) -> None:
        super().__init__(settings, inflate_later)
        self.serializer = serializer
        self.offer = CAP_OOB + (CAP_BINARY if self.serpent_binary else b"") + (CAP_PIPELINE if pipelining else b"")
        self.last_seq = -1       # the seq the last ..._request used
        self.out_of_step = False  # an abandoned call's reply may still come: the connection is unusable
        self._seq = 0
        self._waiting = -1       # not pipelined: the seq whose reply is due (-1: none)
        self._outstanding: set[int] = set()  # pipelined: seqs whose replies are due
        self._abandoned: set[int] = set()    # pipelined: seqs whose late replies are dropped
        self._pings: set[int] = set()
        self._connect_seq = -1
        self._key_token = b""
        self._oob_mode = False   # oob agreed and the serializer has an out-of-band form
        # after the handshake, for receive_result: a RESULT's first 8 bytes (tag, version, type, serializer
        # id) for each serializer a result may come in (the call's, and its binary form), and its codec
        self._result_heads: dict[bytes | None, Serializer] = {}
        self._scalar_form: tuple[int, int] | None = None  # after the handshake: the serializer's scalar_call_form
        self._result_codec = serializer

    @property
    def outstanding(self) -> int:
        """Requests sent whose replies have not come (nor been abandoned)."""
        return len(self._outstanding) if self.pipelined else int(self._waiting >= 0)

    def _next_seq(self) -> int:
        seq = (self._seq + 1) & SEQ_MASK
        if self.pipelined:
            busy = self._outstanding, self._abandoned
            for _ in range(SEQ_MASK + 1):
                if seq not in busy[0] and seq not in busy[1]:
                    break
                seq = (seq + 1) & SEQ_MASK
            else:
                raise ProtocolError("65536 requests outstanding on one connection; wait for replies")
        self._seq = seq
        self.last_seq = seq
        return seq

    def _expect(self, seq: int) -> None:
        if self.pipelined:
            self._outstanding.add(seq)
        else:
            self._waiting = seq

    def _check_ready(self) -> None:
        if not self.handshaken:
            raise ProtocolError("no request before the handshake completed (connect_request first)")
        if self.out_of_step:
            raise ProtocolError("the connection is out of step (an abandoned reply may still come); close it")
        if not self.pipelined and self._waiting >= 0:
            raise ProtocolError("a request is outstanding and the peer does not pipeline: one call at a time")

    # --- requests
    def connect_request(self, object_id: str, handshake: Any = "hello", annotations: dict | None = None,
                        correlation_id: bytes | None = None, now: float | None = None) -> list:
        """CONNECT for `object_id`, offering meshrpc's capabilities (Pyro5 daemons ignore the offer).
        With a mesh key, `now` (time.time()) is required: the proof carries a timestamp."""
        if self.handshaken or self._connect_seq >= 0:
            raise ProtocolError("connect_request was already sent on this session")
        payload = self.serializer.dumps({"handshake": handshake, "object": object_id})
        annotations = {**annotations, CAPABILITIES: self.offer} if annotations else {CAPABILITIES: self.offer}
        if self.key:
            if now is None:
                raise ValueError("connect_request needs `now` (time.time()) for the mesh-key proof")
            self._key_token = keyproof.client_token(self.key, object_id, int(now * 1000))
            annotations[KEY_ANNOTATION] = self._key_token
        seq = self._connect_seq = self.last_seq = 0  # as Pyro5's: the first call then has seq 1
        return self._encode(Frame(MSG_CONNECT, self.serializer.id, seq, payload, 0, annotations, correlation_id))

    def call_request(self, object_id: str, method: str, vargs: Any, kwargs: dict | None, flags: int = 0,
                     annotations: dict | None = None, correlation_id: bytes | None = None) -> list:
        """INVOKE of `method` on `object_id`; the seq used is `last_seq`. A SerializedBlob as the only
        argument travels as it is (BLBI). FLAG_ONEWAY: no reply comes (the seq is not outstanding).
        SerializeError: nothing was recorded and nothing is to be sent."""
        form = self._scalar_form
        if (form is not None and not flags and not annotations and correlation_id is None and self._waiting < 0
                and not self.out_of_step and plain.scalar_call(object_id, method, vargs, kwargs)):
            # the lean lane (most calls): a two-way call of scalars with nothing to annotate, one at a time
            # or pipelined; the bytes the serializer and encode_message would give (scalar_call_form)
            payload = marshal.dumps((object_id, method, vargs, {}), form[1])
            size = len(payload)
            if size < 65536 and not 0 <= self.compress_min <= size and not (self.max_size and size > self.max_size):
                if self.pipelined:
                    seq = (self._seq + 1) & SEQ_MASK
                    if seq in self._outstanding or seq in self._abandoned:
                        seq = self._next_seq()  # (the counter came round to a seq in use: the next free one)
                    else:
                        self._seq = self.last_seq = seq
                    self._outstanding.add(seq)
                else:
                    seq = self._seq = self.last_seq = self._waiting = (self._seq + 1) & SEQ_MASK
                return [HEADER.pack(TAG, PROTOCOL_VERSION, MSG_INVOKE, form[0], 0, seq, size, 0, ZERO_ID, 0, MAGIC)
                        + payload]
        if not self.handshaken or self.out_of_step or (self._waiting >= 0 and not self.pipelined):
            self._check_ready()  # raises why not
        serializer = self.serializer
        if annotations is None:
            annotations = {}
        if vargs and isinstance(vargs[0], SerializedBlob):
            wire_id = serializer.id
            annotations = dict(annotations)  # the caller's dict (maybe current_context's) stays as it was
            payload = self._blob_payload(object_id, method, vargs, kwargs, annotations)
            flags |= FLAG_KEEPSERIALIZED
        elif self._oob_mode:
            oob: list = []
            wire_id, payload = serializer.encode_call(object_id, method, vargs, kwargs, oob, self.binary)
            if oob:
                annotations = {**annotations, OOB_ANNOTATION: pack_oob(oob)}
        else:
            wire_id, payload = serializer.encode_call(object_id, method, vargs, kwargs, None, self.binary)
        if self.pipelined:
            seq = self._next_seq()
        else:  # the hot path: one call at a time, no seq can be taken
            seq = self._seq = self.last_seq = (self._seq + 1) & SEQ_MASK
        parts = encode_message(MSG_INVOKE, wire_id, seq, payload, flags, annotations, correlation_id,
                               compress_min=self.compress_min, max_size=self.max_size)
        if not flags & FLAG_ONEWAY:
            if self.pipelined:
                self._outstanding.add(seq)
            else:
                self._waiting = seq
        return parts

    def _blob_payload(self, object_id: str, method: str, vargs: Any, kwargs: dict | None,
                      annotations: dict) -> bytes:
        if len(vargs) > 1 or kwargs:
            raise SerializeError("a SerializedBlob must be the only argument of the call")
        blob: SerializedBlob = vargs[0]
        if blob._contains_blob and blob._serializer_id != self.serializer.id:
            raise SerializeError("a forwarded blob must use the same serializer as the proxy")
        annotations[BLOB_ANNOTATION] = marshal.dumps((blob.info, object_id, method))
        if blob._contains_blob:
            return blob._data
        return self.serializer.dumps_call(object_id, method, blob._data, kwargs)

    def batch_request(self, object_id: str, calls: list, oneway: bool = False, annotations: dict | None = None,
                      correlation_id: bytes | None = None) -> list:
        """One INVOKE carrying `calls` ([(method, vargs, kwargs), ...]); the reply's value is the list of
        results, stopping at the first failure (an ExceptionWrapper)."""
        flags = FLAG_BATCH | (FLAG_ONEWAY if oneway else 0)
        return self.call_request(object_id, BATCH_METHOD, calls, None, flags, annotations, correlation_id)

    def ping_request(self) -> list:
        """PING (after the handshake); the answer is a Pong event."""
        self._check_ready()
        seq = self._next_seq()
        self._expect(seq)
        self._pings.add(seq)
        return self._encode(Frame(MSG_PING, self.serializer.id, seq, b"ping"))

    def abandon(self, seq: int) -> bool:
        """The driver stops waiting for the reply to `seq` (a timeout, a cancellation). Pipelined: True,
        its late reply will be dropped. Otherwise False, and the session is `out_of_step`: close the
        connection, or the late reply would be taken for the next call's."""
        if self.pipelined:
            if seq in self._outstanding:
                self._outstanding.discard(seq)
                self._abandoned.add(seq)
            return True
        if seq == self._waiting:
            self._waiting = -1
            self.out_of_step = True
            return False
        return not self.out_of_step

    # --- replies
    def next_event(self) -> Any:
        """The next event, or NEED_DATA. Raises ProtocolError (and SecurityError, for a wrong key proof)
        when the peer broke the protocol: the connection is unusable then."""
        while True:
            frame = self.reader.next_frame()
            if frame is None:
                if self._eof:
                    self._next_frame()  # raises ConnectionClosedError
                return NEED_DATA
            if not self.handshaken:
                return self._connect_reply(inflate(frame, self.max_size))  # (with inflate_later: one, at the start)
            seq = frame.seq
            if seq == self._waiting and frame.type == MSG_RESULT and not self._pings:
                self._waiting = -1  # the hot path: the reply to the one call outstanding
            else:
                if frame.type != MSG_RESULT and frame.type != MSG_PING:
                    raise ProtocolError(f"invalid reply (message type {frame.type}, seq {frame.seq})")
                if seq == self._waiting:
                    self._waiting = -1
                elif seq in self._outstanding:
                    self._outstanding.discard(seq)
                elif seq in self._abandoned:
                    self._abandoned.discard(seq)  # the late reply of an abandoned call
                    self._pings.discard(seq)
                    continue
                else:
                    expected = self._waiting if not self.pipelined else sorted(self._outstanding)
                    raise ProtocolError(f"invalid reply (type {frame.type}, seq {seq}, expected {expected})")
                if self._pings and seq in self._pings:
                    self._pings.discard(seq)
                    if frame.type != MSG_PING:
                        raise ProtocolError(f"invalid reply to a ping (message type {frame.type}, seq {seq})")
                    return Pong(seq)
                if frame.type != MSG_RESULT:
                    raise ProtocolError(f"invalid reply (message type {frame.type}, seq {seq})")
            if frame.serializer_id != self.serializer.id:
                codec = BY_ID.get(frame.serializer_id) if self.binary else None
                if codec is None or codec.values is not self.serializer:
                    raise ProtocolError(f"reply in serializer {frame.serializer_id}, expected {self.serializer.name}")
            if frame.flags & FLAG_EXCEPTION and NOT_RUN_ANNOTATION in frame.annotations:
                return NotRun(seq, frame.annotations)
            return frame  # (with inflate_later, maybe still FLAG_COMPRESSED: wire.inflate it before its value)

    def receive_result(self, data: bytes) -> Any:
        """receive_data(data) for bytes (not empty) read while the one call outstanding waits for its
        reply, the usual reply taken first: when `data` is exactly a RESULT to that call with no
        annotations, no flags (no error, no correlation id, no compression), in the call's serializer,
        its payload (bytes: result_value() gives the value) and the call is answered. Otherwise
        TAKE_EVENT: `data` was buffered, take the reply with next_event()."""
        codec = self._result_heads.get(self.reader.bare_head(data, self._waiting))
        if codec is None or self._pings or self.pipelined:
            self.reader.feed(data)
            return TAKE_EVENT
        self._waiting = -1
        self._result_codec = codec
        return data[HEADER_SIZE:]

    def receive_results(self, data: bytes) -> list:
        """receive_data(data) for bytes (not empty) on a pipelined session, the usual replies taken first:
        the RESULTs that `data` starts with, while each is whole, has no annotations and no flags (no
        error, no correlation id, no compression), is in the calls' serializer and answers a call
        outstanding, come as [(seq, payload, codec), ...] (result_value(payload, codec) decodes one) and
        their calls are answered; late replies to abandoned calls among them are dropped. The rest
        (from the first other message, or part of one, on) is buffered: take it with next_event(). All
        of `data` is buffered (and [] returned) when bytes were buffered before it, a ping is
        outstanding or the session does not pipeline: the general path sorts those out."""
        reader = self.reader
        if reader.buffered or self._pings or not self.pipelined or data.__class__ is not bytes:
            reader.feed(data)
            return []
        heads, outstanding, abandoned = self._result_heads, self._outstanding, self._abandoned
        most = reader.max_size
        end = len(data)
        start = 0
        taken = []
        while end - start >= HEADER_SIZE:
            # flags_seq: flags << 16 | seq, so it matches an outstanding seq only when there are no flags
            head, flags_seq, size, annotations_size, magic = _BARE_HEAD.unpack_from(data, start)
            stop = start + HEADER_SIZE + size
            codec = heads.get(head)
            if codec is None or annotations_size or magic != MAGIC or stop > end or size > most:
                break
            if flags_seq in outstanding:
                outstanding.discard(flags_seq)
                taken.append((flags_seq, data[start + HEADER_SIZE:stop], codec))
            elif flags_seq in abandoned:
                abandoned.discard(flags_seq)  # the late reply of an abandoned call
            else:
                break  # nobody asked for it: next_event says so
            start = stop
        if start < end:
            reader.feed(data[start:] if start else data)
        return taken

    def result_value(self, payload: bytes, codec: Serializer | None = None) -> Any:
        """The value of the payload receive_result() returned (reply_value's decoding); `codec`: the one
        receive_results gave with it."""
        if codec is None:
            codec = self._result_codec
        if self._oob_mode and codec.oob:
            return codec.loads(payload, [])
        return codec.loads(payload)

    def _connect_reply(self, frame: Frame) -> Any:
        if self._connect_seq < 0:
            raise ProtocolError(f"message type {frame.type} before the CONNECT was sent")
        if frame.type == MSG_CONNECTFAIL:
            self._connect_seq = -1  # another CONNECT may follow on this connection
            reason = _safe_loads(self.serializer, frame.payload)
            return ConnectRefused(reason, refusal_kind(reason), frame.annotations)
        if frame.type != MSG_CONNECTOK:
            raise ProtocolError(f"expected CONNECTOK, got message type {frame.type}")
        if frame.seq != self._connect_seq:
            raise ProtocolError(f"CONNECTOK with seq {frame.seq}, expected {self._connect_seq}")
        if frame.serializer_id != self.serializer.id:
            raise ProtocolError(f"answered in serializer {frame.serializer_id}, not {self.serializer.name}")
        if self.key:
            why = keyproof.check_server_token(self.key, self._key_token, frame.annotations.get(KEY_ANNOTATION))
            if why:
                raise SecurityError(f"{why}; not connecting to a daemon outside the mesh key")
        answer = self.serializer.loads(frame.payload)
        if not isinstance(answer, dict):
            raise ProtocolError(f"CONNECTOK carries {type(answer).__name__}, not the handshake dict")
        agreed = capabilities(frame.annotations)
        # only what was offered counts: a peer cannot switch on what this side does not speak
        self.oob = CAP_OOB in agreed
        self.binary = CAP_BINARY in agreed and self.serpent_binary
        self.pipelined = CAP_PIPELINE in agreed and CAP_PIPELINE in self.offer
        self._oob_mode = self.oob and self.serializer.oob
        self._scalar_form = self.serializer.scalar_call_form(self.binary)
        codecs = [self.serializer]
        if self.binary:
            codecs += [c for c in BY_ID.values() if c.values is self.serializer and c is not self.serializer]
        self._result_heads = {TAG + PROTOCOL_VERSION.to_bytes(2, "big") + bytes((MSG_RESULT, c.id)): c for c in codecs}
        self.handshaken = True
        return Connected(answer.get("handshake"), answer.get("meta") or {}, agreed, frame.annotations)

    def take_blobs(self, frame: Frame) -> Any:
        """The out-of-band blobs of a RESULT, taken out of its annotations (None when there are none).
        Call it before the annotations go to hooks; not for raw wire replies (they keep them)."""
        return frame.annotations.pop(OOB_ANNOTATION, None) if self._oob_mode else None

    def reply_value(self, frame: Frame, blobs: Any = None) -> Any:
        """The value of a RESULT: the result (a batch: the list of results), a StreamStarted for an
        iterator; raises the remote exception (its remote traceback attached) for an error reply."""
        serializer = self.serializer
        codec = serializer if frame.serializer_id == serializer.id else BY_ID[frame.serializer_id]
        if self._oob_mode and codec.oob:
            data = codec.loads(frame.payload, unpack_oob(blobs) if blobs is not None else [])
        else:
            data = codec.loads(frame.payload)
        flags = frame.flags
        if flags & FLAG_ITEMSTREAMRESULT:
            stream_id = frame.annotations.get(STREAM_ANNOTATION)
            if not stream_id:
                raise ProtocolError("stream result without a stream id")
            return StreamStarted(stream_id.decode("ascii"))
        if flags & FLAG_EXCEPTION:
            raise as_exception(data)
        return data


# ---------------------------------------------------------------- server side

class ServerSession(_Session):
    """The daemon's side of one connection. Requests are answered by seq, so pipelined requests
    (CAP_PIPELINE) may be answered in any order. `pipelining=False`: never agree to it (a driver that
    answers a connection's requests one after the other: a slow call would hold up the calls behind
    it, and a proxy that gave up on it could not get a fresh connection's worth of service)."""

    __slots__ = ("key_window", "replay_cache", "object_id", "serializer", "accepts_pipelining", "_key_proof",
                 "rehandshake", "request_seq", "request_serializer_id", "_lane", "_request", "_prefixes",
                 "_request_heads", "held", "_held_at", "takes_not_run")

    def __init__(self, settings: Any, replay_cache: keyproof.ReplayCache | None = None, *,
                 pipelining: bool = True, rehandshake: bool = False, inflate_later: bool = False) -> None:
        super().__init__(settings, inflate_later)
        self.accepts_pipelining = pipelining
        self.takes_not_run = False  # the proxy knows the "not run" answer (not_run_reply); set by accept_connect
        # rehandshake: a CONNECT after the handshake starts over (proxies taking turns on one connected
        # socket, as Pyro5 allows for daemons on a socketpair)
        self.rehandshake = rehandshake
        self.key_window = settings.KEY_WINDOW
        self.replay_cache = replay_cache
        self.object_id: Any = None                 # the object named in the accepted CONNECT
        self.serializer: Serializer | None = None  # the serializer of the CONNECT (values form)
        self._key_proof: bytes | None = None
        # receive_request's lane, after the handshake: per serializer id of a request, _LaneEntry
        self._lane: dict[int, _LaneEntry] = {}
        # receive_requests: the lane entries by an INVOKE's first 8 bytes (tag, version, type, serializer
        # id), and the bytes it holds (their requests are taken one by one with next_request) and where
        # the next one starts
        self._request_heads: dict[bytes, _LaneEntry] = {}
        self.held: bytes | None = None  # the bytes receive_requests took, while requests are left in them
        self._held_at = 0
        self._request: _LaneEntry | None = None  # the lane entry of the request receive_request took
        self.request_seq = 0                     # ...its seq
        self.request_serializer_id = 0           # ...and its values' serializer id (current_context's)
        self._prefixes = marshal_check.Prefixes()  # the marshal guard's memory for this connection's requests

    def next_event(self, now: float | None = None) -> Any:
        """The next event, or NEED_DATA: a ConnectRequest, or a Frame (MSG_INVOKE: a request, MSG_PING).
        `now` (time.time()) is needed while not handshaken when the daemon has a mesh key.
        ProtocolError: the client broke the protocol; close the connection."""
        frame = self.reader.next_frame()
        if frame is None:
            if self._eof:
                self._next_frame()  # raises ConnectionClosedError
            return NEED_DATA
        if frame.flags & FLAG_COMPRESSED:  # (left compressed: inflate_later)
            return Compressed(frame)
        return self.inflated(frame, now)

    def inflated(self, frame: Frame, now: float | None = None) -> Any:
        """The event of a Compressed message's frame once it was inflated (as next_event would give it)."""
        msg_type = frame.type
        if self.handshaken:
            if msg_type == MSG_INVOKE or msg_type == MSG_PING:
                return frame
            if msg_type == MSG_CONNECT and self.rehandshake:
                self.handshaken = False
                return self._connect_request(frame, now)
            raise ProtocolError(f"unexpected message type {msg_type} after the handshake")
        if msg_type == MSG_PING:
            return frame
        if msg_type != MSG_CONNECT:
            raise ProtocolError(f"expected CONNECT as the first message, got type {msg_type}")
        return self._connect_request(frame, now)

    def _connect_request(self, frame: Frame, now: float | None) -> ConnectRequest:
        try:
            codec = by_id(frame.serializer_id)
        except SerializeError:
            raise ProtocolError(f"client asked for unknown serializer id {frame.serializer_id}") from None
        self.serializer = codec.values
        try:
            data = codec.loads(frame.payload)
            handshake, object_id = data["handshake"], data["object"]
        except (SerializeError, SecurityError, KeyError, TypeError) as exc:
            return ConnectRequest(frame, None, None, f"invalid handshake data: {exc}")
        if self.key:
            # the proxy proves it holds the mesh key; accept_connect proves it back
            if now is None:
                raise ValueError("next_event needs `now` (time.time()) for the mesh-key check")
            self._key_proof, why = keyproof.check_client_token(
                self.key, frame.annotations.get(KEY_ANNOTATION), object_id, self.key_window,
                self.replay_cache, int(now * 1000))
            if self._key_proof is None:
                return ConnectRequest(frame, handshake, object_id, why)
        return ConnectRequest(frame, handshake, object_id, None)

    def accept_connect(self, request: ConnectRequest, answer: Any, metadata: dict) -> list:
        """CONNECTOK with the handshake answer and the object's metadata, agreeing to the capabilities
        the proxy offered (a Pyro5 proxy offers none and gets the plain answer). SerializeError when
        the answer does not serialize (refuse the connection then)."""
        if request.refusal is not None:
            raise ProtocolError(f"cannot accept a refused CONNECT ({request.refusal})")
        serializer = self.serializer
        assert serializer is not None
        payload = serializer.dumps({"handshake": answer, "meta": metadata})
        offered = capabilities(request.annotations)
        self.oob = CAP_OOB in offered
        self.binary = CAP_BINARY in offered and self.serpent_binary
        self.pipelined = CAP_PIPELINE in offered and self.accepts_pipelining
        self.takes_not_run = bool(offered)  # a meshrpc proxy (it offers capabilities): not_run_reply's reader
        agreed = ((CAP_OOB if self.oob else b"") + (CAP_BINARY if self.binary else b"")
                  + (CAP_PIPELINE if self.pipelined else b""))
        annotations = {CAPABILITIES: agreed} if agreed else {}
        if self._key_proof is not None:
            annotations[KEY_ANNOTATION] = self._key_proof
        self._lane = _lane_entries(self.oob, self.binary)
        self._request_heads = {TAG + PROTOCOL_VERSION.to_bytes(2, "big") + bytes((MSG_INVOKE, ser_id)): entry
                               for ser_id, entry in self._lane.items()}
        self.handshaken, self.object_id = True, request.object_id
        return self._encode(Frame(MSG_CONNECTOK, serializer.id, request.seq, payload, 0, annotations,
                                  request.correlation_id))

    def refuse_connect(self, request: ConnectRequest, reason: str) -> list:
        """CONNECTFAIL with `reason` (the proxy shows it); the client may send another CONNECT."""
        serializer = self.serializer
        assert serializer is not None
        self._key_proof = None
        return self._encode(Frame(MSG_CONNECTFAIL, serializer.id, request.seq, serializer.dumps(reason)))

    # --- requests
    def receive_request(self, data: bytes) -> Any:
        """receive_data(data) for bytes (not empty) read while nothing is buffered, the usual request
        taken first: when `data` is exactly one INVOKE after the handshake, with no annotations and no
        flags (not oneway, no batch, blob, compression or correlation id), in a serializer this side
        knows, its call (object id, method, vargs, kwargs) as decode_call gives it; its seq is
        `request_seq`. Answer it with bare_result, or with the general replies given bare_frame(),
        before the next request. SerializeError/SecurityError: the call does not decode (answer with
        error_reply(bare_frame(), exc)). Otherwise TAKE_EVENT: `data` was buffered, take next_event()."""
        header = self.reader.bare_header(data)
        if header is None or header[0] != MSG_INVOKE or header[2] or not self.handshaken:
            self.reader.feed(data)
            return TAKE_EVENT
        entry = self._lane.get(header[1])
        if entry is None:
            self.reader.feed(data)
            return TAKE_EVENT
        self._request = entry
        self.request_seq = header[3]
        self.request_serializer_id = entry.values_id
        return entry.loads_call(data[HEADER_SIZE:], [] if entry.oob else None, self._prefixes)

    def receive_requests(self, data: bytes) -> Any:
        """receive_request for bytes (not empty) that may hold many requests (a pipelined client's,
        read while nothing is buffered): the call of the first when it is the usual request (as
        receive_request takes it: one whole INVOKE with no annotations and no flags, in a serializer
        this side knows), its seq `request_seq`; then next_request() gives the next one's, until it
        says TAKE_EVENT. Answer each with bare_result (or the general replies given bare_frame())
        before asking for the next. SerializeError/SecurityError: that call does not decode (answer
        with error_reply(bare_frame(), exc)); next_request() goes on after it. TAKE_EVENT: from that
        request on, the bytes were buffered: take next_event(). `held` is None once every byte was
        taken (then nothing is buffered either, and next_request() would say TAKE_EVENT)."""
        if self.reader.buffered or not self.handshaken or data.__class__ is not bytes:
            self.reader.feed(data)
            return TAKE_EVENT
        self.held, self._held_at = data, 0
        return self.next_request()

    def next_request(self) -> Any:
        """The next usual request of the bytes receive_requests took (its call), or TAKE_EVENT: none is
        left, or the next message is not one (it and the rest were buffered: take next_event())."""
        data = self.held
        if data is None:
            return TAKE_EVENT
        start, end = self._held_at, len(data)
        if end - start >= HEADER_SIZE:
            # flags_seq: flags << 16 | seq, so at most SEQ_MASK only when there are no flags
            head, flags_seq, size, annotations_size, magic = _BARE_HEAD.unpack_from(data, start)
            stop = start + HEADER_SIZE + size
            entry = self._request_heads.get(head)
            if (entry is not None and flags_seq <= SEQ_MASK and not annotations_size and magic == MAGIC
                    and stop <= end and size <= self.reader.max_size):
                if stop == end:
                    self.held = None
                else:
                    self._held_at = stop
                self._request = entry
                self.request_seq = flags_seq
                self.request_serializer_id = entry.values_id
                return entry.loads_call(data[start + HEADER_SIZE:stop], [] if entry.oob else None, self._prefixes)
        self.held = None
        if start < end:
            self.reader.feed(data[start:] if start else data)
        return TAKE_EVENT

    def bare_frame(self) -> Frame:
        """The request receive_request took, as the general replies take it (its payload was decoded)."""
        entry = self._request
        if entry is None:
            raise ProtocolError("no request was taken by receive_request")
        return Frame(MSG_INVOKE, entry.serializer_id, self.request_seq, b"")

    def bare_result(self, result: Any) -> list:
        """result_reply(bare_frame(), result): the RESULT, with no annotations and no flags, answering
        the request receive_request took. A scalar (wire.plain.SCALARS) is built here when its
        serializer says how (Serializer.scalar_value_form): the bytes result_reply would give."""
        entry = self._request
        version = entry.scalar_version  # type: ignore[union-attr]
        if version >= 0 and type(result) in SCALARS:
            payload = marshal.dumps(result, version)
            size = len(payload)
            if size < 65536 and not 0 <= self.compress_min <= size and not (self.max_size and size > self.max_size):
                return [_BARE_REPLY.pack(entry.scalar_head, self.request_seq, size, _BARE_REPLY_TAIL)  # type: ignore
                        + payload]
        return self.result_reply(self.bare_frame(), result)

    def decode_call(self, frame: Frame) -> tuple:
        """(object id, method, vargs, kwargs) of an INVOKE. SerializeError/SecurityError: the data does
        not decode (answer with error_reply unless oneway); ProtocolError: unknown serializer id."""
        codec = BY_ID.get(frame.serializer_id)
        if codec is None:
            raise ProtocolError(f"unknown serializer id {frame.serializer_id}")
        if frame.flags & FLAG_KEEPSERIALIZED:
            return self._blob_call(frame)
        if self.oob and codec.oob:
            blobs = frame.annotations.pop(OOB_ANNOTATION, None)
            return codec.loads_call(frame.payload, unpack_oob(blobs) if blobs is not None else [], self._prefixes)
        return codec.loads_call(frame.payload, None, self._prefixes)

    @staticmethod
    def _blob_call(frame: Frame) -> tuple:
        try:
            annotation = frame.annotations[BLOB_ANNOTATION]
            # marshal trusts declared sizes: five bytes announcing a tuple of 2**31 items held the GIL
            # for a minute (found by tests/integration/test_fuzz_daemon.py)
            marshal_check.check(annotation)
            info, object_id, method = marshal.loads(annotation)
        except (KeyError, ValueError, EOFError, TypeError, SerializeError):
            raise SerializeError("blob call without a valid BLBI annotation") from None
        return object_id, method, (SerializedBlob(info, frame.payload, True, frame.serializer_id),), {}

    # --- replies (all in the request's serializer, with its seq and correlation id)
    @staticmethod
    def _values(frame: Frame) -> Serializer:
        codec = BY_ID.get(frame.serializer_id)
        if codec is None:
            raise ProtocolError(f"unknown serializer id {frame.serializer_id}")
        return codec.values

    def result_reply(self, frame: Frame, result: Any, annotations: dict | None = None, flags: int = 0) -> list:
        """RESULT carrying `result` (flags: FLAG_BATCH for a batch's list). A result that does not
        serialize becomes an error reply (SerializeError) instead."""
        codec = BY_ID.get(frame.serializer_id)  # inline _values: the hot path
        serializer = codec.values if codec is not None else self._values(frame)
        oob: list | None = [] if self.oob and serializer.oob else None
        try:
            reply_id, payload = serializer.encode(result, oob, self.binary)
        except (SerializeError, SecurityError) as exc:
            return self.error_reply(frame, SerializeError(f"cannot serialize the result: {exc}"), annotations)
        if oob:
            annotations = {**annotations, OOB_ANNOTATION: pack_oob(oob)} if annotations else {OOB_ANNOTATION: pack_oob(oob)}
        try:
            return encode_message(MSG_RESULT, reply_id, frame.seq, payload, flags, annotations, frame.correlation_id,
                                  compress_min=self.compress_min, max_size=self.max_size)
        except ProtocolError as exc:
            return self._unsendable_reply(frame, exc)

    def error_reply(self, frame: Frame, exc: BaseException, annotations: dict | None = None) -> list:
        """RESULT with FLAG_EXCEPTION carrying `exc` (a description when it does not serialize)."""
        serializer = self._values(frame)
        try:
            payload = serializer.dumps(exc)
        except Exception as inner:
            payload = serializer.dumps(SerializeError(f"{type(exc).__name__}: {exc} "
                                                      f"(the exception could not be serialized: {inner})"))
        try:
            return self._encode(Frame(MSG_RESULT, serializer.id, frame.seq, payload, FLAG_EXCEPTION,
                                      annotations or {}, frame.correlation_id))
        except ProtocolError as unsendable:
            return self._unsendable_reply(frame, unsendable)

    def stream_reply(self, frame: Frame, stream_id: str, annotations: dict | None = None) -> list:
        """The answer to a call that returned an iterator: the proxy pulls its items by `stream_id`."""
        serializer = self._values(frame)
        annotations = {**(annotations or {}), STREAM_ANNOTATION: stream_id.encode("ascii")}
        payload = serializer.dumps(ProtocolError("result of call is an iterator"))
        try:
            return self._encode(Frame(MSG_RESULT, serializer.id, frame.seq, payload,
                                      FLAG_EXCEPTION | FLAG_ITEMSTREAMRESULT, annotations, frame.correlation_id))
        except ProtocolError as exc:
            return self._unsendable_reply(frame, exc)

    def _unsendable_reply(self, frame: Frame, exc: ProtocolError) -> list:
        """The error reply that stands for a reply that cannot be sent (`exc`: larger than
        MAX_MESSAGE_SIZE, or an annotation the wire cannot carry): the call ran, so its caller learns
        why its answer is missing, on a connection that stays usable. Without the reply's annotations
        (they may be the cause)."""
        serializer = self._values(frame)
        told = exc.__class__(f"the daemon could not send its reply: {exc}")
        return self._encode(Frame(MSG_RESULT, serializer.id, frame.seq, serializer.dumps(told), FLAG_EXCEPTION, {},
                                  frame.correlation_id))

    def not_run_reply(self, frame: Frame) -> list:
        """Shutting down: the answer to a request that will not run (NOT_RUN_ANNOTATION), for a proxy that
        `takes_not_run` (meshrpc's: it takes the call as not delivered and goes elsewhere). Oneway:
        nothing. A Pyro5 proxy would raise the DaemonError as the call's own failure, which Pyro5
        programs do not expect: its connection is closed instead, as a Pyro5 daemon that stops closes
        it (ConnectionClosedError, on which those programs reconnect; the call did not run)."""
        if frame.flags & FLAG_ONEWAY:
            return []
        serializer = self._values(frame)
        error = DaemonError("the daemon is shutting down; the call was not run")
        return self._encode(Frame(MSG_RESULT, serializer.id, frame.seq, serializer.dumps(error), FLAG_EXCEPTION,
                                  {NOT_RUN_ANNOTATION: b"1"}, frame.correlation_id))

    def pong(self, frame: Frame) -> list:
        """The answer to a PING."""
        return self._encode(Frame(MSG_PING, frame.serializer_id, frame.seq, b"pong"))


class _LaneEntry:
    """How ServerSession.receive_request takes a request in one serializer, and how bare_result answers it."""

    __slots__ = ("serializer_id", "values_id", "loads_call", "oob", "scalar_version", "scalar_head")

    def __init__(self, codec: Serializer, oob: bool, binary: bool) -> None:
        self.serializer_id = codec.id
        self.values_id = codec.values.id
        self.loads_call = codec.loads_call
        self.oob = oob and codec.oob  # decode_call's rule: the frame's blobs (none here) are given to it
        form = codec.values.scalar_value_form(binary)
        # a scalar reply: marshal.dumps(value, scalar_version) (-1: no such form), after a header
        # that starts with scalar_head (_BARE_REPLY)
        self.scalar_version = form[1] if form is not None else -1
        self.scalar_head = HEADER.pack(TAG, PROTOCOL_VERSION, MSG_RESULT, form[0] if form else 0, 0, 0, 0, 0, ZERO_ID,
                                       0, MAGIC)[:10]


# the header of a RESULT with no flags, annotations or correlation id, as HEADER packs it: its first 10
# bytes (tag, version, type, serializer, flags), seq, payload size, 4 zero bytes (annotations' size) and
# the last 20 (no correlation id, no checksum, the magic number)
_BARE_REPLY = struct.Struct("!10sHI4x20s")
_BARE_REPLY_TAIL = HEADER.pack(TAG, PROTOCOL_VERSION, MSG_RESULT, 0, 0, 0, 0, 0, ZERO_ID, 0, MAGIC)[20:]


def _lane_entries(oob: bool, binary: bool) -> dict[int, _LaneEntry]:
    """receive_request's entries for a connection whose handshake agreed on `oob` and `binary`."""
    return {ser_id: _LaneEntry(codec, oob, binary) for ser_id, codec in BY_ID.items()}


def refusal_for(first_bytes: bytes, reason: str) -> bytes:
    """A CONNECTFAIL answering whatever message starts with `first_bytes` (its serializer and seq when a
    header is there): e.g. a TLS daemon's clear-text answer to a client that did not speak TLS."""
    ser_id, seq = 1, 0
    if len(first_bytes) >= HEADER_SIZE:
        header = HEADER.unpack_from(first_bytes)
        ser_id, seq = header[3], header[5]
    codec = BY_ID.get(ser_id) or BY_ID[1]
    serializer = codec.values
    return b"".join(encode_parts(Frame(MSG_CONNECTFAIL, serializer.id, seq, serializer.dumps(reason))))


__all__ = ["NEED_DATA", "TAKE_EVENT", "ClientSession", "ServerSession", "Connected", "ConnectRefused", "ConnectRequest",
           "NotRun", "Pong", "StreamStarted", "as_exception", "refusal_for"]
