"""The asyncio proxy's spin: after a lone call is written, poll for its reply without sleeping, but
only while the event loop has nothing else to do.

A sequential call on an event loop costs a sleep in epoll and a scheduler wake-up when the reply
comes, then two turns of the loop (read it, resume the awaiting task). The threaded proxy saves the
wake-up by spinning for up to SPIN_WAIT; this does the same for the asyncio proxy, through the same
spin gate (transport/spin.py, the SPIN_* settings) and the same per-process rule (one waiter spins at
a time). When the reply comes within the spin it is read here and handed to the connection, so the
awaiting call finds it done and the loop is not entered at all.

The loop's other work always comes first. A spin starts only when the loop's ready queue is empty,
no timer is due and the transport has nothing left to write; every poll asks the loop's own selector
(level-triggered, so asking takes nothing away from the loop), and the spin stops the moment any
other file descriptor is ready, a callback is queued (also from another thread) or a timer falls due.
This needs a selector event loop's internals (`_selector`, `_ready`, `_scheduled`): on other loops
(uvloop, the Windows proactor) `LoopSpin.for_transport` gives None and calls never spin.
"""

from __future__ import annotations

import asyncio
import collections
import os
import select
import selectors
import time
from typing import Callable

from ..config import Settings
from ..limits import RECV_CHUNK
from ..transport.spin import SpinGate, others_waiting, single_core, waiters
from .tlsio import raw_socket


_READABLE = select.EPOLLIN if hasattr(select, "EPOLLIN") else 1  # an fd's events when it is only readable
_OTHER = 0  # (the selectors wrapper: anything but readable alone)
_read = os.read


class LoopSpin:
    """One connection's wait (a sleep in the selector, or a spin) on its selector event loop (the
    loop's thread only). An aio daemon holds one per connection: slots keep 10,000 of them small."""

    __slots__ = ("loop", "transport", "fd", "gate", "wait", "poll", "_select", "_ready", "_other_ready", "_clock",
                 "_mine_only")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, fd: int,
                 gate: SpinGate | None, wait: float = 0.0) -> None:
        self.loop = loop
        self.transport = transport
        self.fd = fd
        self.gate = gate  # None: no spinning (SPIN_WAIT=0, one core)
        self.wait = wait  # AIO_REPLY_WAIT: the longest sleep in the selector for a lone call's reply
        # poll(timeout, most events) -> [(fd, events)]; at most 4 events: ours and others, enough to tell
        self._select: Callable[[float, int], list] = _poller(loop._selector)  # type: ignore[attr-defined]
        # poll(0, 4): what the loop's selector has ready now, without waiting (level-triggered: asking
        # takes nothing away from the loop)
        self.poll = self._select
        self._mine_only = [(fd, _READABLE)]  # what the poll gives when only this socket became readable
        self._ready: collections.deque = loop._ready  # type: ignore[attr-defined]
        self._other_ready = False  # the last poll saw another file descriptor ready
        # the loop's clock: time.monotonic itself unless the loop has a time() of its own
        self._clock: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time)

    @classmethod
    def for_transport(cls, loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport,
                      settings: Settings, spin: bool = True) -> "LoopSpin | None":
        """The wait for a connection's transport, or None: neither spinning (SPIN_WAIT, and `spin`:
        the daemon passes SERVER_SPIN) nor waiting in the selector (AIO_REPLY_WAIT) is on, or the loop
        is not one whose idleness can be seen (not a selector event loop)."""
        spinning = spin and bool(settings.SPIN_WAIT) and not single_core()
        if not (spinning or settings.AIO_REPLY_WAIT) or not hasattr(os, "readv"):
            return None
        if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            return None
        if not (isinstance(getattr(loop, "_selector", None), selectors.BaseSelector)
                and isinstance(getattr(loop, "_ready", None), collections.deque)
                and isinstance(getattr(loop, "_scheduled", None), list)):
            return None
        sock = raw_socket(transport)
        if sock is None:  # (none, or TLS: its bytes are records only the transport can read)
            return None
        return cls(loop, transport, sock.fileno(), SpinGate.from_settings(settings) if spinning else None,
                   settings.AIO_REPLY_WAIT)  # type: ignore[arg-type]

    def loop_idle(self) -> bool:
        """Nothing else for the loop to do right now, as far as can be seen without polling."""
        return self._idle_for(1.0) is not None

    def _idle_for(self, limit: float) -> float | None:
        """How long (at most `limit`) the loop has nothing else to do: None when it has something now
        (a ready callback, a due timer), else the time to its next timer."""
        if self._ready:
            return None
        scheduled = self.loop._scheduled  # type: ignore[attr-defined]  # read each time: the loop replaces the list
        if scheduled:
            left = scheduled[0]._when - self._clock()  # (TimerHandle.when(), without the call)
            if left <= 0:
                return None
            if left < limit:
                return left
        return limit

    def _mine_readable(self, timeout: float = 0) -> bool:
        mine = other = False
        for fd, _ in self._select(timeout, 4):  # on this socket: readable, or closed/failed (the read tells)
            if fd == self.fd:
                mine = True
            else:
                other = True
        self._other_ready = other
        return mine

    def _give_way(self) -> bool:
        return self._other_ready or not self.loop_idle() or others_waiting()

    def _quiet(self) -> bool:
        """The loop is idle and this connection's transport has nothing to write and is reading."""
        return self.loop_idle() and self._transport_quiet()

    def _transport_quiet(self) -> bool:
        transport = self.transport
        return not transport.is_closing() and transport.is_reading() and not transport.get_write_buffer_size()

    def read_reply(self, into: memoryview, timeout: float | None = None, written: bool = False) -> int:
        """wait_mine(), then read what came into `into`: the count read; 0 when nothing was read
        (nothing came in time, the loop has other work, or the peer closed: the transport then sees
        that itself). OSError when the read failed."""
        if self.wait_mine(timeout, written):
            return self._read(into)
        return 0

    def read_alone(self, written: bool = False) -> bytes:
        """wait_mine(), then what came, at most RECV_CHUNK, as bytes of their own (no copy out of a
        buffer of the loop's): b"" when nothing was read (nothing came in time, the loop has other
        work, or the peer closed: the transport then sees that itself). OSError when the read failed."""
        if self.wait_mine(None, written):
            try:
                return _read(self.fd, RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                pass
        return b""

    def wait_mine(self, timeout: float | None = None, written: bool = False) -> bool:
        """After a lone call was written (or a daemon answered all it had): spin (when the gate and the
        loop allow) until bytes came, else sleep in the loop's selector as the loop would
        (AIO_REPLY_WAIT). True: this socket is readable now (its bytes, or its EOF, wait to be read);
        False: nothing came in time, or the loop has other work. `timeout`: the call's own, if any;
        the sleep never outlasts it. `written`: the caller's write just went to the socket whole on an
        open transport (only the loop is left to check).

        The sleep is in the loop's own selector, as the loop itself would sleep now, but it wakes for
        this socket only: bounded by the loop's next timer and AIO_REPLY_WAIT, and any other file
        descriptor (another connection, the self-pipe that call_soon_threadsafe and signals write
        to) ends it; the loop then sees that event itself (epoll is level-triggered: asking takes
        nothing away)."""
        loop = self.loop
        if loop._debug:  # type: ignore[attr-defined]  # the loop's debug mode times every task step and
            return False  # callback: a wait inside one would read as blocking the loop (it goes through the loop)
        gate = self.gate
        if gate is not None and gate.should_spin() and self._quiet():
            with waiters as waiting:
                if waiting <= 1 and gate.spin(self._mine_readable, time.perf_counter, self._give_way):
                    return True
        wait = self.wait
        if not wait or self._ready:  # (_idle_for, inline: every lone call's path)
            return False
        if timeout is not None and timeout < wait:
            wait = timeout
        scheduled = loop._scheduled  # type: ignore[attr-defined]  # read each time: the loop replaces it
        if scheduled:
            left = scheduled[0]._when - self._clock()
            if left <= 0:
                return False
            if left < wait:
                wait = left
        if not (written or self._transport_quiet()):
            return False
        # this socket only, and only readable (anything else: the loop goes first and sees it itself)
        return self._select(wait, 4) == self._mine_only

    def _read(self, into: memoryview) -> int:
        try:
            return os.readv(self.fd, [into])
        except (BlockingIOError, InterruptedError):
            return 0


def _poller(selector: selectors.BaseSelector) -> Callable[[float, int], list]:
    """poll(timeout, most events) -> [(fd, events)] on the loop's selector, events as epoll's
    (_READABLE: readable, and nothing else); epoll's own poll where it is one (the selectors wrapper
    costs more than the system call; positional arguments: no keyword parsing per call)."""
    epoll = getattr(selector, "_selector", None)
    if isinstance(selector, selectors.EpollSelector) and hasattr(epoll, "poll"):
        return epoll.poll  # type: ignore[union-attr]

    def poll(timeout: float, most: int = -1) -> list:
        return [(key.fd, _READABLE if events == selectors.EVENT_READ else _OTHER)
                for key, events in selector.select(timeout)]
    return poll
