"""Protocol 502 frames, sans-I/O: bytes in, frames out, and back. No sockets here.

A frame is a 40-byte big-endian header, then annotations (4-byte id, u32 length, data), then the
payload. `FrameReader` is an incremental decoder fed with whatever a socket returned; it checks the
tag and version as soon as 6 bytes are in, and the declared sizes before it buffers a body.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass, field

from ..errors import MessageTooLargeError, ProtocolError
from ..limits import LARGE_FRAME, LARGE_FRAME_PROOF, SPARE_MAX  # noqa: F401 (re-exported)
# protocol 502's values, meshrpc's annotations and capability letters live in wire/constants.py
# (re-exported here: modules and programs read them as frame.MSG_INVOKE, ...)
from .constants import CAP_BINARY, CAP_OOB, CAP_PIPELINE, CAPABILITIES, OOB_ANNOTATION  # noqa: F401
from .constants import MAGIC, MESSAGE_TYPES, PROTOCOL_VERSION, TAG  # noqa: F401
from .constants import MSG_CONNECT, MSG_CONNECTFAIL, MSG_CONNECTOK, MSG_INVOKE, MSG_PING, MSG_RESULT  # noqa: F401
from .constants import FLAG_BATCH, FLAG_COMPRESSED, FLAG_CORR_ID, FLAG_EXCEPTION, FLAG_ITEMSTREAMRESULT  # noqa: F401
from .constants import FLAG_KEEPSERIALIZED, FLAG_ONEWAY  # noqa: F401

HEADER = struct.Struct("!4sHBBHHII16sHH")
HEADER_SIZE = HEADER.size  # 40
_PREFIX = struct.Struct("!4sH")
_GOOD_PREFIX = _PREFIX.pack(TAG, PROTOCOL_VERSION)
# a payload up to this size is copied out of the reader's buffer by slicing (two small copies cost
# less than a memoryview); above it, through a memoryview (one copy)
_SLICE_COPY_MAX = 4096
_ANNOTATION = struct.Struct("!4sI")
# a header as FrameReader.bare_head reads it: (tag, version, type and serializer id as 8 bytes,
# flags << 16 | seq, payload size, annotations size, magic); the correlation id and checksum unread
_BARE = struct.Struct("!8sIII16x2xH")
# the header's fields but tag, version, correlation id and checksum (FrameReader.bare_header)
_BARE_FIELDS = struct.Struct("!6xBBHHII16x2xH")
ZERO_ID = bytes(16)
_U32 = struct.Struct("!I")
# a large frame's own buffer (LARGE_FRAME, LARGE_FRAME_PROOF, SPARE_MAX: limits.py) is an anonymous
# mapping (page-aligned), one page longer than the frame, so that the socket writes the frame's rest at
# a page boundary: the kernel's copy into a bytearray's malloc'd memory
# (16 bytes past a page) took about 2.5x the CPU (4.1-5.4 against 1.5-2.0 ms per 10 MiB on loopback;
# tools/recv_alignment.py, docs/performance.md)
PAGE = mmap.PAGESIZE
# private, not Python's default MAP_SHARED (shared memory, which a fork()ed child would share and keep)
_PRIVATE = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}


class OobBlobs(list):
    """An OOB_ANNOTATION value already split into its blobs (bytes): a large frame's reader copies
    them out of its buffer at once, so that the buffer serves the next frame."""


def capabilities(annotations: dict) -> bytes:
    """The capability letters of a CONNECT or CONNECTOK (empty from Pyro5 peers)."""
    value = annotations.get(CAPABILITIES)
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else b""


@dataclass(slots=True)
class Frame:
    type: int
    serializer_id: int
    seq: int
    payload: bytes
    flags: int = 0
    annotations: dict[str, bytes] = field(default_factory=dict)
    correlation_id: bytes | None = None

    def __repr__(self) -> str:
        return (f"<Frame type={self.type} ser={self.serializer_id} seq={self.seq} flags={self.flags:#x} "
                f"payload={len(self.payload)}B annotations={sorted(self.annotations)}>")


def encode(frame: Frame, *, compress_min: int = -1, max_size: int = 0) -> bytes:
    """The frame as bytes. `compress_min` >= 0 compresses payloads of at least that size."""
    return b"".join(encode_parts(frame, compress_min=compress_min, max_size=max_size))


def pack_oob(blobs: list) -> list:
    """The value of the OOB_ANNOTATION for these bytes-like blobs, as a list of buffers (not copied):
    u32 count, count u32 lengths, then the blobs one after the other."""
    views = []
    for blob in blobs:
        view = memoryview(blob)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        views.append(view.cast("B") if view.format != "B" or view.ndim != 1 else view)
    table = struct.pack(f"!I{len(views)}I", len(views), *(v.nbytes for v in views))
    return [table, *views]


def unpack_oob(value: bytes) -> list[bytes]:
    """The blobs of an OOB_ANNOTATION value; ProtocolError when it is malformed."""
    if isinstance(value, OobBlobs):
        return value
    if len(value) < 4:
        raise ProtocolError("truncated out-of-band annotation")
    count = _U32.unpack_from(value)[0]
    start = 4 + 4 * count
    if start > len(value):
        raise ProtocolError("out-of-band annotation: length table runs past its end")
    lengths = struct.unpack_from(f"!{count}I", value, 4)
    if start + sum(lengths) != len(value):
        raise ProtocolError("out-of-band annotation: blob lengths do not add up")
    blobs, pos = [], start
    for length in lengths:
        blobs.append(bytes(value[pos:pos + length]))  # `value` may be a view into a frame's buffer
        pos += length
    return blobs


def _encode_parts_chunked(frame: Frame, payload: bytes, flags: int, max_size: int) -> list:
    """encode_parts for frames with an annotation given as a list of buffers (pack_oob): those buffers
    are sent as they are, small pieces are joined."""
    pieces: list = []
    ann_len = 0
    for key, value in frame.annotations.items():
        key_bytes = key.encode("ascii", "replace")
        if len(key_bytes) != 4 or not key.isascii():
            raise ProtocolError(f"annotation id must be 4 ASCII characters, not {key!r}")
        chunks = value if isinstance(value, list) else [bytes(value)]
        size = sum(memoryview(c).nbytes for c in chunks)
        pieces.append(_ANNOTATION.pack(key_bytes, size))
        pieces.extend(chunks)
        ann_len += 8 + size
    header = _header(frame, flags, len(payload), ann_len, max_size)
    pieces.append(payload)
    parts: list = []
    small: list = [header]
    for piece in pieces:
        if memoryview(piece).nbytes < 65536:
            small.append(piece)
            continue
        parts.append(b"".join(small))
        parts.append(piece)
        small = []
    if small:
        parts.append(b"".join(small))
    return parts


def _header(frame: Frame, flags: int, payload_len: int, ann_len: int, max_size: int) -> bytes:
    """The 40-byte header, after the size limit and correlation id checks."""
    if max_size and ann_len + payload_len > max_size:
        raise MessageTooLargeError(f"message of {ann_len + payload_len} bytes exceeds "
                                   f"MAX_MESSAGE_SIZE ({max_size}); send less or raise the limit")
    corr = frame.correlation_id
    if corr:
        corr = getattr(corr, "bytes", corr)  # a uuid.UUID (Pyro5 programs set those) travels as its bytes
        if len(corr) != 16:
            raise ProtocolError(f"a correlation id is 16 bytes (a UUID), not {len(corr)}")
        flags |= FLAG_CORR_ID
    return HEADER.pack(TAG, PROTOCOL_VERSION, frame.type, frame.serializer_id, flags,
                       frame.seq & 0xFFFF, payload_len, ann_len, corr or ZERO_ID, 0, MAGIC)


def encode_message(msg_type: int, serializer_id: int, seq: int, payload: bytes, flags: int = 0,
                   annotations: dict | None = None, correlation_id: bytes | None = None, *,
                   compress_min: int = -1, max_size: int = 0) -> list[bytes]:
    """encode_parts of the frame these make. One without annotations and correlation id (most calls
    and replies) is packed without building a Frame: one buffer when the payload is small and stays
    uncompressed."""
    size = len(payload)
    if (annotations or correlation_id or size >= 65536 or 0 <= compress_min <= size
            or (max_size and size > max_size)):
        return encode_parts(Frame(msg_type, serializer_id, seq, payload, flags, annotations or {}, correlation_id),
                            compress_min=compress_min, max_size=max_size)
    return [HEADER.pack(TAG, PROTOCOL_VERSION, msg_type, serializer_id, flags, seq & 0xFFFF, size, 0, ZERO_ID, 0,
                        MAGIC) + payload]


def encode_parts(frame: Frame, *, compress_min: int = -1, max_size: int = 0) -> list[bytes]:
    """The frame as a list of buffers (header+annotations, payload): large payloads are not copied.
    An annotation value may be a list of buffers (out-of-band bytes): they are not copied either."""
    payload = frame.payload
    flags = frame.flags
    if 0 <= compress_min <= len(payload) and not flags & FLAG_COMPRESSED:
        if max_size and len(payload) > max_size:  # (a receiver's limit holds for the payload it inflates)
            raise MessageTooLargeError(f"message of {len(payload)} bytes before compression exceeds MAX_MESSAGE_SIZE "
                                       f"({max_size}), which a meshrpc peer applies to the inflated payload; send "
                                       "less or raise the limit on both sides")
        packed = zlib.compress(payload)
        if len(packed) < len(payload):
            payload, flags = packed, flags | FLAG_COMPRESSED
    if OOB_ANNOTATION in frame.annotations and isinstance(frame.annotations[OOB_ANNOTATION], list):
        return _encode_parts_chunked(frame, payload, flags, max_size)
    if frame.annotations:
        parts = []
        for key, value in frame.annotations.items():
            key_bytes = key.encode("ascii", "replace")
            if len(key_bytes) != 4 or not key.isascii():
                raise ProtocolError(f"annotation id must be 4 ASCII characters, not {key!r}")
            parts.append(_ANNOTATION.pack(key_bytes, len(value)))
            parts.append(bytes(value))
        annotations = b"".join(parts)
    else:
        annotations = b""
    header = _header(frame, flags, len(payload), len(annotations), max_size)
    if len(payload) < 65536:
        return [header + annotations + payload]
    return [header + annotations, payload]


def parse_annotations(data: bytes | memoryview, limit: int = 64, oob_split: bool = False) -> dict[str, bytes]:
    """The annotations block as {id: value bytes}; oob_split: the OOB_ANNOTATION's value comes as
    OobBlobs, its blobs copied straight out of `data` (one copy, not two)."""
    result: dict[str, bytes] = {}
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < _ANNOTATION.size:
            raise ProtocolError("truncated annotation header")
        key, length = _ANNOTATION.unpack_from(view, pos)
        pos += _ANNOTATION.size
        if length > end - pos:
            raise ProtocolError("annotation length runs past the annotations block")
        try:
            name = key.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(f"annotation id is not ASCII: {key!r}") from None
        value = view[pos:pos + length]
        if oob_split and name == OOB_ANNOTATION:
            try:
                result[name] = OobBlobs(unpack_oob(value))  # type: ignore[assignment]
            except ProtocolError:  # not blobs (a peer's own annotation of that name?): the session judges
                result[name] = bytes(value)
        else:
            result[name] = bytes(value)
        pos += length
        if len(result) > limit:
            raise ProtocolError(f"more than {limit} annotations in one message")
    return result


class FrameReader:
    """Incremental decoder: `feed(data)`, then take frames with `next_frame()` until it returns None.

    Errors (bad tag, version, magic, type, sizes) raise ProtocolError; the connection is unusable after.
    """

    __slots__ = ("max_size", "max_annotations", "inflate_max", "_buf", "_header", "_body", "_start", "_filled",
                 "_end", "_spare")

    def __init__(self, max_size: int = 1024 ** 3, max_annotations: int = 64, inflate_max: int = -1) -> None:
        self.max_size = max_size
        self.max_annotations = max_annotations
        # a compressed payload larger than this is left compressed (FLAG_COMPRESSED stays set: the caller
        # inflates it, e.g. on another thread); -1: every payload comes inflated
        self.inflate_max = inflate_max
        self._buf = bytearray()
        self._header: tuple | None = None
        # a large frame's own buffer (receive_buffer; longer than the frame), where in it the frame
        # starts, how far it is filled and where the frame ends; the last one, kept for the next large frame
        self._body: mmap.mmap | None = None
        self._start = self._filled = self._end = 0
        self._spare: mmap.mmap | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        body = self._body
        if body is not None:  # a large frame being read: into its buffer, the rest (next frames) after
            room = self._end - self._filled
            if len(data) <= room:
                body[self._filled:self._filled + len(data)] = data
                self._filled += len(data)
                return
            body[self._filled:self._end] = memoryview(data)[:room]
            self._filled = self._end
            data = memoryview(data)[room:]
        buf = self._buf
        buf += data
        # the tag and version, as soon as they are in (one C comparison; check_prefix says what is wrong)
        if self._header is None and buf[:6] != _GOOD_PREFIX and len(buf) >= 6:
            check_prefix(buf)

    def receive_buffer(self) -> memoryview | None:
        """Where to read the rest of a large frame (LARGE_FRAME or more) straight from a socket
        (recv_into), then say how much with received(); None: read as usual and feed()."""
        body = self._body
        if body is None:
            header = self._header
            if header is None:
                if len(self._buf) < HEADER_SIZE:
                    return None
                header = self._header = parse_header(self._buf, self.max_size)
            total = HEADER_SIZE + header[7] + header[6]
            have = len(self._buf)
            if total < LARGE_FRAME or have >= total:
                return None
            spare = self._spare
            if spare is not None and len(spare) >= total + PAGE:
                body = spare  # memory this reader holds already: no proof needed
            elif have * LARGE_FRAME_PROOF < total:
                return None
            else:
                body = mmap.mmap(-1, total + PAGE, **_PRIVATE)  # sizes checked against max_size by parse_header
            self._spare = None
            start = -have % PAGE  # what came already ends, and the socket's writes begin, at a page
            self._body, self._start, self._filled, self._end = body, start, start + have, start + total
            body[start:self._filled] = self._buf
            self._buf.clear()
        return memoryview(body)[self._filled:self._end]

    def release_spare(self) -> None:
        """Drop the buffer kept for the next large frame (the connection goes idle)."""
        self._spare = None

    def release(self) -> None:
        """Drop every buffer, a large frame's half-read body too: the connection is gone, though others
        (a worker's call context) may still hold this reader. New objects, not clear(): another thread
        may hold a view of the old ones, and reads nothing more from a closed connection."""
        self._buf = bytearray()
        self._header = self._body = self._spare = None
        self._start = self._filled = self._end = 0

    def received(self, count: int) -> None:
        """`count` bytes were written into the receive_buffer()."""
        self._filled += count

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._filled - self._start

    def wanted(self) -> int:
        """Bytes still needed to complete the frame being read (at least 1 when nothing is buffered)."""
        if self._body is not None:
            return self._end - self._filled
        if self._header is None:
            return max(1, HEADER_SIZE - len(self._buf))
        return max(0, HEADER_SIZE + self._header[6] + self._header[7] - len(self._buf))

    def bare_header(self, data: bytes) -> tuple | None:
        """(type, serializer id, flags, seq, payload size, 0, MAGIC) of `data` when it is exactly one whole
        frame without annotations, below LARGE_FRAME, with nothing buffered before it: its payload is
        data[HEADER_SIZE:] (the flags say whether it is compressed). None: it is not (or not valid); the
        reader took nothing either way: feed() it then, and next_frame() says what is wrong."""
        if (self._buf or self._body is not None or data.__class__ is not bytes
                or not HEADER_SIZE <= len(data) < LARGE_FRAME or not data.startswith(_GOOD_PREFIX)):
            return None
        header = _BARE_FIELDS.unpack_from(data)
        if (header[5] or HEADER_SIZE + header[4] != len(data) or header[6] != MAGIC
                or header[4] > self.max_size or header[0] not in MESSAGE_TYPES):
            return None
        return header

    def bare_head(self, data: bytes, seq: int) -> bytes | None:
        """data[:8] (tag, version, type, serializer id: the caller checks them) when `data` is exactly one
        whole frame with sequence number `seq`, no flags and no annotations, below LARGE_FRAME and within
        max_size, with nothing buffered before it: its payload is data[HEADER_SIZE:]. None: it is not; the
        reader took nothing either way: feed() it then, and next_frame() says what is wrong."""
        if self._buf or self._body is not None or data.__class__ is not bytes or not HEADER_SIZE <= len(data) < LARGE_FRAME:
            return None
        head, flags_seq, size, annotations_size, magic = _BARE.unpack_from(data)
        # flags_seq == seq: no flags (no error, no correlation id, no compression) and the seq asked for
        if (flags_seq != seq or annotations_size or magic != MAGIC or HEADER_SIZE + size != len(data)
                or size > self.max_size):
            return None
        return head

    def next_frame(self) -> Frame | None:
        buf = self._buf
        header = self._header
        if header is None:
            if len(buf) < HEADER_SIZE:
                return None
            header = HEADER.unpack_from(buf)  # parse_header's checks, inline: every message's path
            if (header[10] != MAGIC or header[2] not in MESSAGE_TYPES or header[6] + header[7] > self.max_size
                    or header[0] != TAG or header[1] != PROTOCOL_VERSION):
                parse_header(buf, self.max_size)  # raises, saying what is wrong
            self._header = header
        data_len, ann_len = header[6], header[7]
        end = HEADER_SIZE + ann_len + data_len
        body = self._body
        if body is not None:
            if self._filled < self._end:
                return None
            start = self._start
            with memoryview(body) as view:  # released before the buffer is kept for the next frame
                frame = view[start:self._end]
                annotations = parse_annotations(frame[HEADER_SIZE:HEADER_SIZE + ann_len], self.max_annotations,
                                                oob_split=True) if ann_len else {}
                payload = bytes(frame[HEADER_SIZE + ann_len:end])
                frame.release()
            self._body, self._start, self._filled, self._end = None, 0, 0, 0
            if len(body) <= SPARE_MAX + PAGE:
                self._spare = body
            if len(buf) >= 6:
                check_prefix(buf)
        else:
            if len(buf) < end:
                return None
            if ann_len:
                annotations = parse_annotations(memoryview(buf)[HEADER_SIZE:HEADER_SIZE + ann_len],
                                                self.max_annotations)
                start = HEADER_SIZE + ann_len
            else:
                annotations, start = {}, HEADER_SIZE
            if data_len <= _SLICE_COPY_MAX:
                payload = bytes(buf[start:end])
            else:
                payload = bytes(memoryview(buf)[start:end])  # one copy, not two
            if end == len(buf):
                buf.clear()
            else:
                del buf[:end]
                if buf[:6] != _GOOD_PREFIX and len(buf) >= 6:
                    check_prefix(buf)
        self._header = None
        return _frame(header, annotations, payload, self.max_size, self.inflate_max)


def _frame(header: tuple, annotations: dict, payload: bytes, max_size: int, inflate_max: int = -1) -> Frame:
    """The Frame of a checked header, its annotations and its payload (decompressed, unless it is
    larger than inflate_max: see FrameReader)."""
    flags = header[4]
    if flags & FLAG_COMPRESSED and (inflate_max < 0 or len(payload) <= inflate_max):
        payload = decompress(payload, max_size)
        flags &= ~FLAG_COMPRESSED
    return Frame(header[2], header[3], header[5], payload, flags, annotations,
                 header[8] if flags & FLAG_CORR_ID else None)


def inflate(frame: Frame, max_size: int) -> Frame:
    """`frame` (that a FrameReader left compressed) with its payload decompressed. ProtocolError: the
    payload is corrupt or truncated; MessageTooLargeError: it expands beyond max_size."""
    if frame.flags & FLAG_COMPRESSED:
        frame.payload = decompress(frame.payload, max_size)
        frame.flags &= ~FLAG_COMPRESSED
    return frame


def check_prefix(data: bytes | bytearray) -> None:
    tag, version = _PREFIX.unpack_from(data)
    if tag != TAG:
        raise ProtocolError(f"not a Pyro/meshrpc message (starts with {bytes(data[:4])!r}); "
                            "is the peer speaking another protocol?")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"peer speaks protocol version {version}, this side speaks {PROTOCOL_VERSION} (Pyro5)")


def parse_header(data: bytes | bytearray, max_size: int) -> tuple:
    header = HEADER.unpack_from(data)
    if header[0] != TAG or header[1] != PROTOCOL_VERSION:
        check_prefix(data)  # raises, saying which
    if header[10] != MAGIC:
        raise ProtocolError("bad magic number in message header")
    if header[2] not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {header[2]}")
    size = header[6] + header[7]
    if size > max_size:
        raise MessageTooLargeError(f"peer announced a message of {size} bytes, above MAX_MESSAGE_SIZE ({max_size})")
    return header


def decompress(payload: bytes, max_size: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(payload, max_size + 1)
    except zlib.error as exc:
        raise ProtocolError(f"compressed payload is corrupt: {exc}") from None
    if len(data) > max_size or inflater.unconsumed_tail:
        raise MessageTooLargeError(f"compressed payload expands beyond MAX_MESSAGE_SIZE ({max_size})")
    if not inflater.eof:
        raise ProtocolError("compressed payload is truncated")
    return data
