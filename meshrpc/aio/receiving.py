"""The receive buffers of the asyncio driver's connections: one per event loop, shared by them, and a
large frame's own.

asyncio's plain Protocol receives with `sock.recv(256 KiB)`, which allocates (and with glibc maps
and unmaps) a fresh 256 KiB buffer for every read: about 17 µs of a small call's round trip. The
aio proxy and daemon are BufferedProtocols instead: asyncio reads into this buffer, and the
session copies the bytes out at once (FrameReader.feed), so the connections of one loop, which
read one at a time, can share it, and 10,000 idle connections hold none. The rest of a large frame
(wire/frame.py, LARGE_FRAME) is read straight into the reader's own page-aligned buffer instead, as
the threaded driver reads it: no copy through the loop's buffer and feed() (10 MiB of memmove and
fresh pages per frame), and the kernel writes at a page boundary.
"""

from __future__ import annotations

import asyncio
import weakref

from ..wire.frame import FrameReader

# a cache per loop, not shared state: a loop runs in one thread, and only its connections use it
_BUFFERS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview]" = weakref.WeakKeyDictionary()


def receive_buffer(loop: asyncio.AbstractEventLoop, size: int) -> memoryview:
    """The loop's receive buffer, at least `size` bytes."""
    buffer = _BUFFERS.get(loop)
    if buffer is None or len(buffer) < size:
        buffer = _BUFFERS[loop] = memoryview(bytearray(size))
    return buffer


class Receiving(asyncio.BufferedProtocol):
    """get_buffer of the aio proxy's and daemon's connections: the loop's buffer, or while the rest of
    a large frame comes, the reader's own buffer for it. The connection sets `_received` (the loop's
    buffer) and `_reader` (its session's FrameReader), and `_large` whenever its pump stops with part of a
    message buffered; after a read, `_into` says where it went (then `_reader.received(count)`)."""

    _received: memoryview
    _reader: FrameReader
    _large = False  # part of a message is buffered: ask the reader for a large frame's buffer
    _into = False  # the last get_buffer gave the reader's buffer

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large:
            try:
                into = self._reader.receive_buffer()
            except Exception:  # a header the reader refuses: the next read's pump says so, and closes
                into = None
            self._into = into is not None  # (reset too: the last one's read may have found nothing)
            if into is not None:
                return into
        return self._received

    def _release_reader(self) -> None:
        """The connection is gone: the reader lets go of a large frame's buffer (half read, or kept for
        the next frame)."""
        self._large = self._into = False
        self._reader.release()
