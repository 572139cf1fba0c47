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
import selectors
import time
from typing import Callable

from ..config import Settings
from ..transport.spin import SpinGate, others_waiting, single_core, waiters


class LoopSpin:
    """One connection's spin on its selector event loop (the loop's thread only)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, fd: int,
                 gate: SpinGate) -> None:
        self.loop = loop
        self.transport = transport
        self.fd = fd
        self.gate = gate
        self._select: Callable[[float], list] = loop._selector.select  # type: ignore[attr-defined]
        self._ready: collections.deque = loop._ready  # type: ignore[attr-defined]
        self._other_ready = False  # the last poll saw another file descriptor ready

    @classmethod
    def for_transport(cls, loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport,
                      settings: Settings) -> "LoopSpin | None":
        """The spin for a connection's transport, or None: spinning is off (SPIN_WAIT=0, one core) or
        the loop is not one whose idleness can be seen (not a selector event loop)."""
        if not settings.SPIN_WAIT or single_core() or not hasattr(os, "readv"):
            return None
        if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
            return None
        if not (isinstance(getattr(loop, "_selector", None), selectors.BaseSelector)
                and isinstance(getattr(loop, "_ready", None), collections.deque)
                and isinstance(getattr(loop, "_scheduled", None), list)):
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        return cls(loop, transport, sock.fileno(), SpinGate.from_settings(settings))  # type: ignore[arg-type]

    def loop_idle(self) -> bool:
        """Nothing else for the loop to do right now, as far as can be seen without polling."""
        if self._ready:
            return False
        loop = self.loop
        scheduled = loop._scheduled  # type: ignore[attr-defined]  # read each time: the loop replaces the list
        return not scheduled or scheduled[0].when() > loop.time()

    def _mine_readable(self) -> bool:
        mine = other = False
        for key, events in self._select(0):
            if key.fd == self.fd and events & selectors.EVENT_READ:
                mine = True
            else:
                other = True
        self._other_ready = other
        return mine

    def _give_way(self) -> bool:
        return self._other_ready or not self.loop_idle() or others_waiting()

    def read_reply(self, into: memoryview) -> int:
        """After a lone call was written: spin (when the gate and the loop allow) until bytes came,
        read them into `into`. The count read; 0 when nothing was read (no spin, nothing came in
        time, the loop has other work, or the peer closed: the transport then sees that itself).
        OSError when the read failed."""
        transport = self.transport
        if (not self.gate.should_spin() or not self.loop_idle() or transport.is_closing()
                or not transport.is_reading() or transport.get_write_buffer_size()):
            return 0
        with waiters as waiting:
            if waiting > 1:
                return 0
            if not self.gate.spin(self._mine_readable, time.perf_counter, self._give_way):
                return 0
        try:
            return os.readv(self.fd, [into])
        except (BlockingIOError, InterruptedError):
            return 0
