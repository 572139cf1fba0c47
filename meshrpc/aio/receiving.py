"""The receive buffer of the asyncio driver's connections: one per event loop, shared by them.

asyncio's plain Protocol receives with `sock.recv(256 KiB)`, which allocates (and with glibc maps
and unmaps) a fresh 256 KiB buffer for every read: about 17 µs of a small call's round trip. The
aio proxy and daemon are BufferedProtocols instead: asyncio reads into this buffer, and the
session copies the bytes out at once (FrameReader.feed), so the connections of one loop, which
read one at a time, can share it, and 10,000 idle connections hold none.
"""

from __future__ import annotations

import asyncio
import weakref

# a cache per loop, not shared state: a loop runs in one thread, and only its connections use it
_BUFFERS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview]" = weakref.WeakKeyDictionary()


def receive_buffer(loop: asyncio.AbstractEventLoop, size: int) -> memoryview:
    """The loop's receive buffer, at least `size` bytes."""
    buffer = _BUFFERS.get(loop)
    if buffer is None or len(buffer) < size:
        buffer = _BUFFERS[loop] = memoryview(bytearray(size))
    return buffer
