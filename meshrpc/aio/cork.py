"""Cork: the writes of one turn of an asyncio loop share system calls (used by the aio proxy and daemon)."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable

_writev = os.writev
_WRITEV_PARTS = 64  # at most this many buffers in one writev (IOV_MAX is 1024; more go through the transport)


class Cork:
    """Gathers messages so that many written side by side cost a few system calls, not one each.

    - `write_alone(parts)`: nothing else is on its way (a lone call, the last reply due): it goes out
      at once with anything gathered, and costs no extra turn of the loop.
    - `write(parts)`: the first message of a turn of the loop goes out at once; the ones after it in
      the same turn are gathered and go out together at the end of the turn.
    - `gather(parts)` ... `flush()`: the caller says when the batch ends (the daemon, while it works
      through the requests of one read).
    Gathered messages also go out whenever `flush_bytes` of them are waiting, so the peer starts on
    the first ones while this side still writes the rest (the two processes then work at the same
    time); `between()` is called then (the proxy takes in the replies that came meanwhile).
    `owner.transport` is the asyncio transport."""

    __slots__ = ("_loop", "_owner", "_parts", "_size", "_turn", "_flush_bytes", "_fd", "_queued", "_between")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: Any, flush_bytes: int,
                 between: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._owner = owner
        self._parts: list = []
        self._size = 0
        self._turn = False  # something was written in this turn already (and the end is scheduled)
        self._flush_bytes = flush_bytes
        self._fd = -1  # the socket's, once known
        self._queued = False  # something was handed to the transport (ask it whether that is still waiting)
        self._between = between  # called after a full batch went out while more are being written

    def write_alone(self, parts: list, open_: bool = False) -> bool:
        """True: all of it went to the socket at once, nothing is left for the loop to write.
        `open_`: the caller saw the transport open just now."""
        if self._parts or self._queued or not open_ or self._fd < 0 or len(parts) > _WRITEV_PARTS:
            if self._parts:  # what was gathered goes first, in the same write
                parts, self._parts, self._size = self._parts + parts, [], 0
            return self._send(parts, open_)
        # nothing waits to go on an open transport (a sequential caller's every call): _send's own
        # writev, without its checks (a Python call less per call)
        try:
            sent = _writev(self._fd, parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # nothing went: _send meets the same failure and hands it to the transport
            return self._send(parts, open_)
        if sent == (len(parts[0]) if len(parts) == 1 else sum(map(len, parts))):  # (one part: most writes)
            return True
        return self._queue_rest(parts, sent)

    def write(self, parts: list) -> None:
        if self._turn:
            self.gather(parts)
            return
        self._turn = True
        self._loop.call_soon(self._end_of_turn)
        self._send(parts)

    def gather(self, parts: list) -> None:
        self._parts += parts
        self._size += len(parts[0]) if len(parts) == 1 else sum(map(len, parts))  # (one part: most messages)
        if self._size >= self._flush_bytes:
            self.flush()
            if self._between is not None:
                self._between()

    def flush(self) -> bool:
        """Send what was gathered. True: it went to the socket whole, and nothing waits in the transport."""
        if self._parts:
            parts, self._parts, self._size = self._parts, [], 0
            return self._send(parts)
        return not self._queued

    def _send(self, parts: list, open_: bool = False) -> bool:
        """True: all of `parts` went straight to the socket. `open_`: the transport was just seen open."""
        transport = self._owner.transport
        if not open_ and (transport is None or transport.is_closing()):
            return False
        if len(parts) > _WRITEV_PARTS or (self._queued and transport.get_write_buffer_size()):
            self._queued = True
            transport.writelines(parts)  # queued behind what waits already (or too many parts at once)
            return False
        self._queued = False
        # nothing queued: straight to the socket in one writev (what the transport would do, less its
        # per-write Python and join); whatever does not fit goes to the transport, which queues it
        fd = self._fd
        if fd < 0:
            sock = transport.get_extra_info("socket")
            fd = self._fd = sock.fileno() if sock is not None else -1
        try:
            sent = _writev(fd, parts) if fd >= 0 else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the transport's own write meets the same failure and closes the connection
            transport.writelines(parts)
            return False
        if sent < (len(parts[0]) if len(parts) == 1 else sum(map(len, parts))):  # (one part: most writes)
            return self._queue_rest(parts, sent)
        return True

    def _queue_rest(self, parts: list, sent: int) -> bool:
        """The socket took only `sent` bytes of `parts`: the rest goes to the transport, which writes it
        when the socket can take more. False (something waits in the transport now)."""
        self._queued = True
        self._owner.transport.write(b"".join(parts)[sent:])
        return False

    def _end_of_turn(self) -> None:
        self._turn = False
        self.flush()
