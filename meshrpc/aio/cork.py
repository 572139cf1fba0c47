"""Cork: the writes of one turn of an asyncio loop share system calls (used by the aio proxy and daemon)."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable

from ..limits import LARGE_FRAME
from .tlsio import raw_socket

_write, _writev = os.write, os.writev
_WRITEV_PARTS = 64  # at most this many buffers in one writev (IOV_MAX is 1024; more wait for the next)


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

    __slots__ = ("_loop", "_owner", "_parts", "_size", "_turn", "_flush_bytes", "_fd", "_queued", "_between",
                 "_pending", "_pending_size", "_paused", "_closing")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: Any, flush_bytes: int,
                 between: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._owner = owner
        self._parts: list = []
        self._size = 0
        self._turn = False  # something was written in this turn already (and the end is scheduled)
        self._flush_bytes = flush_bytes
        self._fd = -1  # the socket's, once known (-2: none the cork may write to directly)
        self._queued = False  # something was handed to the transport (ask it whether that is still waiting)
        self._between = between  # called after a full batch went out while more are being written
        # what did not fit into the socket, uncopied, sent by _write_more (selector event loops)
        self._pending: list = []
        self._pending_size = 0
        self._paused = False  # the owner's pause_writing() was called (resume_writing() follows)
        self._closing = False  # close() came while something waited: the transport closes once it is sent

    def write_alone(self, parts: list, open_: bool = False) -> bool:
        """True: all of it went to the socket at once, nothing is left for the loop to write.
        `open_`: the caller saw the transport open just now."""
        if self._parts or self._queued or not open_ or self._fd < 0 or len(parts) != 1:
            if self._parts:  # what was gathered goes first, in the same write
                parts, self._parts, self._size = self._parts + parts, [], 0
            return self._send(parts, open_)
        # one message, nothing waits to go, the transport open (a sequential caller's every call):
        # _send's system call, without its checks (a Python call less per call)
        message = parts[0]
        try:
            sent = _write(self._fd, message)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # nothing went: _send meets the same failure and hands it to the transport
            return self._send(parts, open_)
        if sent == len(message):
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
            transport = self._owner.transport  # (one message, the usual flush: write_alone's one system call)
            return self.write_alone(parts, transport is not None and not transport.is_closing())
        return not self._queued

    def _send(self, parts: list, open_: bool = False) -> bool:
        """True: all of `parts` went straight to the socket. `open_`: the transport was just seen open."""
        transport = self._owner.transport
        if not open_ and (transport is None or transport.is_closing()):
            return False
        if self._queued and (self._pending or transport.get_write_buffer_size()):
            return self._queue_rest(parts, 0)  # behind what waits already
        self._queued = False
        # nothing queued: straight to the socket in one writev (what the transport would do, less its
        # per-write Python and join); whatever does not fit waits (_queue_rest)
        fd = self._fd
        if fd == -1:
            sock = raw_socket(transport)
            fd = self._fd = sock.fileno() if sock is not None else -2  # -2: none to write to (TLS): the transport
        try:
            sent = (_writev(fd, parts if len(parts) <= _WRITEV_PARTS else parts[:_WRITEV_PARTS])
                    if fd >= 0 else 0)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the transport's own write meets the same failure and closes the connection
            transport.writelines(parts)
            return False
        if sent < (len(parts[0]) if len(parts) == 1 else sum(map(len, parts))):  # (one part: most writes)
            return self._queue_rest(parts, sent)
        return True

    def _queue_rest(self, parts: list, sent: int) -> bool:
        """The socket took only `sent` bytes of `parts` (0: it was not asked, something waits already):
        the rest waits, and False is returned (something waits now). On a selector event
        loop it waits here, uncopied (a read-only buffer cannot change meanwhile; others are copied
        once), and `_write_more` sends it when the socket has room: Python 3.11's transport would copy
        it into its own buffer (and the join before that copied the whole message once more). The
        owner's pause_writing/resume_writing are called around a queue above the transport's
        high-water mark, as the transport would. Elsewhere the transport queues it (a piece at a time,
        not joined)."""
        self._queued = True
        transport = self._owner.transport
        rest = _after(parts, sent)
        if (self._fd < 0 or not isinstance(self._loop, asyncio.selector_events.BaseSelectorEventLoop)
                or transport.get_write_buffer_size()):
            # in one call: a TLS transport makes a record (and a socket write) of each call's data
            if len(rest) > 1:
                transport.writelines(rest)
            else:
                transport.write(rest[0])
            return False
        if not self._pending and sum(map(len, rest)) < LARGE_FRAME:
            # small (a burst of calls or replies): the transport's buffer, joined, which it sends whole
            # when the socket has room; many small pieces waiting here went out one writev of 64 per
            # turn of the loop, and the owner paused its writers far more often (pipelined calls made
            # half the rate)
            transport.write(rest[0] if len(rest) == 1 else b"".join(rest))
            return False
        pending = self._pending
        if not pending:
            self._loop._add_writer(self._fd, self._write_more)  # type: ignore[attr-defined]
        for piece in rest:
            view = memoryview(piece)
            if not view.readonly:  # (a bytearray the caller may change once its call returns)
                view = memoryview(view.tobytes())
            pending.append(view)
            self._pending_size += view.nbytes
        if not self._paused and self._pending_size > transport.get_write_buffer_limits()[1]:
            self._paused = True
            self._owner.pause_writing()
        return False

    def _write_more(self) -> None:
        """The socket has room: send what waits (the loop calls this while something does)."""
        pending = self._pending
        if not pending:
            return
        try:
            sent = os.writev(self._fd, pending if len(pending) <= _WRITEV_PARTS else pending[:_WRITEV_PARTS])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # handed to the transport, whose own write meets the failure and closes the connection
            rest = list(pending)
            self._discard()
            transport = self._owner.transport
            if transport is not None and not transport.is_closing():
                transport.writelines(rest)
            return
        self._pending_size -= sent
        while sent:
            size = pending[0].nbytes
            if sent < size:
                pending[0] = pending[0][sent:]
                break
            sent -= size
            del pending[0]
        if not pending:
            self._discard()
            transport = self._owner.transport
            if self._closing and transport is not None:
                transport.close()

    def _discard(self) -> None:
        """Nothing waits here any more (sent, or the connection failed)."""
        if self._pending:
            self._pending.clear()
        self._pending_size = 0
        self._queued = False
        if self._fd >= 0 and not self._loop.is_closed():
            self._loop._remove_writer(self._fd)  # type: ignore[attr-defined]
        if self._paused:
            self._paused = False
            self._owner.resume_writing()

    @property
    def closing(self) -> bool:
        """close() was called and waits for what is queued here to be sent."""
        return self._closing

    @property
    def waiting(self) -> int:
        """Bytes that wait here to be sent (not those the transport holds)."""
        return self._pending_size

    def close(self) -> None:
        """Close the transport once what waits here is sent (as the transport's own close() does with
        what it holds); reading stops at once."""
        transport = self._owner.transport
        if transport is None:
            return
        self.flush()  # what this turn gathered goes first (a oneway call written just before a release)
        if self._pending and not transport.is_closing():
            self._closing = True
            if transport.is_reading():
                transport.pause_reading()
            return
        transport.close()

    def lost(self) -> None:
        """The connection is gone (its protocol's connection_lost, before the socket closes): drop what
        waits, and the loop's writer (the transport removes it only when it held something itself)."""
        self._closing = False
        if self._pending:
            self._discard()

    def _end_of_turn(self) -> None:
        self._turn = False
        self.flush()


def _after(parts: list, sent: int) -> list:
    """`parts` without their first `sent` bytes, as they are (a part sent in part: a view of its rest)."""
    if not sent:
        return parts
    for index, part in enumerate(parts):
        size = len(part)
        if sent < size:
            return [memoryview(part)[sent:], *parts[index + 1:]]
        sent -= size
    return []
