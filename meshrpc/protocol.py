"""Pyro5's `protocol` module under meshrpc: message types, flags, and `SendingMessage` /
`ReceivingMessage` for programs that read or write protocol 502 messages themselves (proxies with
raw wire responses, test tools, gateways). meshrpc's own connections use meshrpc.wire.frame, the
sans-I/O codec these classes are built on.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any, Iterable

from .config import config
from .context import current_context
from .errors import ProtocolError
from .wire import frame as _frame
from .wire.constants import PING_SERIALIZER_ID

MSG_CONNECT = _frame.MSG_CONNECT
MSG_CONNECTOK = _frame.MSG_CONNECTOK
MSG_CONNECTFAIL = _frame.MSG_CONNECTFAIL
MSG_INVOKE = _frame.MSG_INVOKE
MSG_RESULT = _frame.MSG_RESULT
MSG_PING = _frame.MSG_PING
FLAGS_EXCEPTION = _frame.FLAG_EXCEPTION
FLAGS_COMPRESSED = _frame.FLAG_COMPRESSED
FLAGS_ONEWAY = _frame.FLAG_ONEWAY
FLAGS_BATCH = _frame.FLAG_BATCH
FLAGS_ITEMSTREAMRESULT = _frame.FLAG_ITEMSTREAMRESULT
FLAGS_KEEPSERIALIZED = _frame.FLAG_KEEPSERIALIZED
FLAGS_CORR_ID = _frame.FLAG_CORR_ID
PROTOCOL_VERSION = _frame.PROTOCOL_VERSION
HEADER_SIZE = _frame.HEADER_SIZE
_header_size = HEADER_SIZE  # Pyro5's (private) name, which programs reading raw frames use
COMPRESSION_MIN_SIZE = 100  # with COMPRESSION on, payloads above this size are compressed (as Pyro5)

log = logging.getLogger("meshrpc.protocol")


class SendingMessage:
    """A message to send: `.data` holds its bytes. The correlation id of the current context goes
    along when set; with COMPRESSION on, payloads worth it are compressed (flag FLAGS_COMPRESSED)."""

    def __init__(self, msgtype: int, flags: int, seq: int, serializer_id: int, payload: bytes,
                 annotations: dict[str, bytes] | None = None) -> None:
        self.type = msgtype
        self.seq = seq
        self.serializer_id = serializer_id
        annotations = dict(annotations or {})
        for key, value in annotations.items():
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ProtocolError(f"annotation {key!r} must be bytes, not {type(value).__name__}")
            if len(key) != 4:
                raise ProtocolError(f"annotation id must be 4 characters, not {key!r}")
        self.annotations = annotations
        corr = current_context.correlation_bytes
        self.corr_id = corr or bytes(16)
        payload = bytes(payload)
        self.payload = payload  # uncompressed, for SerializedBlob(info, message, is_blob=True)
        flags &= ~FLAGS_COMPRESSED  # the flag says what this message does, not what the caller asked
        if config.COMPRESSION and len(payload) > COMPRESSION_MIN_SIZE:
            payload, flags = zlib.compress(payload), flags | FLAGS_COMPRESSED
        frame = _frame.Frame(msgtype, serializer_id, seq, payload, flags, annotations, corr)
        self.data = _frame.encode(frame, max_size=config.MAX_MESSAGE_SIZE)
        self.flags = flags | (FLAGS_CORR_ID if corr else 0)
        self.data_size = len(payload)
        self.annotations_size = len(self.data) - HEADER_SIZE - len(payload)

    def __repr__(self) -> str:
        return (f"<meshrpc.protocol.SendingMessage type={self.type} flags={self.flags} seq={self.seq} "
                f"size={len(self.data)}>")

    @staticmethod
    def ping(connection: Any) -> None:
        """Send a PING on a connection (a meshrpc proxy's `_pyroConnection`, or anything with send/recv
        of bytes) and wait for its answer; ConnectionClosedError when the connection is gone."""
        message = SendingMessage(MSG_PING, 0, 0, PING_SERIALIZER_ID, b"ping")
        if hasattr(connection, "send_parts"):  # a meshrpc connection: whole frames in, bytes out
            connection.send_parts([message.data])
            answer = connection.recv()
            if answer.type != MSG_PING:
                raise ProtocolError(f"invalid message type {answer.type} received (expected {MSG_PING})")
            return
        connection.send(message.data)
        recv_stub(connection, [MSG_PING])


class ReceivingMessage:
    """A message read from the wire: build it from the 40 header bytes, then `add_payload` (or pass
    the rest at once). `.data` is the payload, decompressed; `.annotations` a dict."""

    def __init__(self, header: bytes, payload: bytes | None = None) -> None:
        if not isinstance(header, (bytes, bytearray, memoryview)):
            raise TypeError(f"a message header is bytes, not {type(header).__name__}")
        header = bytes(header)
        self.validate(header)
        if len(header) != HEADER_SIZE:
            raise ProtocolError(f"a message header is {HEADER_SIZE} bytes, not {len(header)}")
        (_, _, self.type, self.serializer_id, self.flags, self.seq, self.data_size, self.annotations_size,
         corr, _, _) = _frame.HEADER.unpack(header)
        self.corr_id = corr
        self.data: Any = None
        self.annotations: dict[str, bytes] = {}
        if payload is not None:
            self.add_payload(payload)

    def __repr__(self) -> str:
        return f"<meshrpc.protocol.ReceivingMessage type={self.type} flags={self.flags} seq={self.seq}>"

    @staticmethod
    def validate(data: bytes) -> None:
        """Check the start of a message: the tag (from 4 bytes), the version (6), the magic (40).
        ValueError when there are fewer than 4 bytes, ProtocolError when something is wrong."""
        if len(data) < 4:
            raise ValueError("need at least 4 bytes of a message to check it")
        if bytes(data[:4]) != _frame.TAG:
            raise ProtocolError("invalid data or unsupported protocol version (no PYRO tag)")
        if len(data) >= 6:
            version = int.from_bytes(bytes(data[4:6]), "big")
            if version != PROTOCOL_VERSION:
                raise ProtocolError(f"invalid protocol version: {version} (this side speaks {PROTOCOL_VERSION})")
        if len(data) >= HEADER_SIZE:
            magic = int.from_bytes(bytes(data[38:40]), "big")
            if magic != _frame.MAGIC:
                raise ProtocolError("invalid magic number in message header")

    def add_payload(self, payload: bytes) -> None:
        """The bytes after the header: annotations, then the payload (decompressed when flagged)."""
        view = memoryview(payload)
        if len(view) != self.annotations_size + self.data_size:
            raise ProtocolError(f"message body is {len(view)} bytes, the header says "
                                f"{self.annotations_size + self.data_size}")
        position = 0
        while position < self.annotations_size:
            if position + 8 > self.annotations_size:
                raise ProtocolError("truncated annotation in message")
            key = bytes(view[position:position + 4]).decode("ascii", "replace")
            length = int.from_bytes(bytes(view[position + 4:position + 8]), "big")
            position += 8
            if position + length > self.annotations_size:
                raise ProtocolError(f"annotation {key!r} runs past the annotations")
            self.annotations[key] = bytes(view[position:position + length])
            position += length
        self.data = view[self.annotations_size:]
        if self.flags & FLAGS_COMPRESSED:
            self.data = zlib.decompress(self.data)
            self.flags &= ~FLAGS_COMPRESSED
            self.data_size = len(self.data)


def log_wiredata(logger: logging.Logger, text: str, msg: Any) -> None:
    """Log a message's header fields and payload at DEBUG level (LOGWIRE's format)."""
    corr = getattr(msg, "corr_id", b"")
    logger.debug("%s: msgtype=%d flags=0x%x ser=%d seq=%d corr=%s\nannotations=%r\ndata=%r", text, msg.type,
                 msg.flags, msg.serializer_id, msg.seq, bytes(corr).hex(), msg.annotations, bytes(msg.data or b""))


def recv_stub(connection: Any, accepted_msgtypes: Iterable[int] | None = None) -> ReceivingMessage:
    """Read one whole message from a connection (anything with recv(size) returning exactly size
    bytes). ProtocolError when its type is not among `accepted_msgtypes`."""
    header = connection.recv(6)
    ReceivingMessage.validate(header)
    header += connection.recv(HEADER_SIZE - 6)
    message = ReceivingMessage(header)
    if accepted_msgtypes is not None and message.type not in accepted_msgtypes:
        raise ProtocolError(f"invalid message type {message.type} received (expected one of "
                            f"{sorted(accepted_msgtypes)})")
    size = message.annotations_size + message.data_size
    if config.MAX_MESSAGE_SIZE and size > config.MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message of {size} bytes exceeds MAX_MESSAGE_SIZE ({config.MAX_MESSAGE_SIZE})")
    body = connection.recv(size)
    message.add_payload(body)
    return message


__all__ = [
    "FLAGS_BATCH", "FLAGS_COMPRESSED", "FLAGS_CORR_ID", "FLAGS_EXCEPTION", "FLAGS_ITEMSTREAMRESULT",
    "FLAGS_KEEPSERIALIZED", "FLAGS_ONEWAY", "HEADER_SIZE", "MSG_CONNECT", "MSG_CONNECTFAIL", "MSG_CONNECTOK",
    "MSG_INVOKE", "MSG_PING", "MSG_RESULT", "PROTOCOL_VERSION", "ReceivingMessage", "SendingMessage",
    "log_wiredata", "recv_stub",
]
