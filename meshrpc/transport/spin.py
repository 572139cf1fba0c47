"""The spin gate: whether a connection's next wait for a message polls without sleeping, and the spin.

Spinning saves the scheduler wake-up a sleeping thread pays per message, but burns a core for as long
as it polls. It pays only while messages come within a small part of SPIN_WAIT; when they come
later, or only after the thread gave up and slept, every spin is CPU thrown away. The gate learns
from what its own spins saw, and nothing else:

- data that came while spinning, early in the budget: fast, keep spinning;
- nothing within the budget, or data only late in it: slow;
- data already there before the first poll: no evidence either way (it came while the thread was
  busy or asleep, e.g. after a daemon worker's linger), so it changes nothing. Counting it as fast
  kept the gate from ever closing: after each missed spin and linger, a second attempt found the
  request waiting and wiped the streak of slow ones (issue 15).

After `slow_limit` slow spins in a row the gate closes; it then spins on one wait in `recheck_every`,
to notice when messages get fast again (one fast spin reopens it). A new connection's first
`start_after` waits (its handshake and first calls) never spin: their answers come after a thread
hand-off and parsing a handshake, and when the peer shares this core a spin holds it off (the
scheduler often puts a fresh connection's two ends on one core: connect plus first call took twice
as long as without spinning). The constants are Settings (SPIN_SLOW_LIMIT, SPIN_RECHECK_EVERY,
SPIN_LATE_SHARE, SPIN_START_AFTER), documented in meshrpc/config.py.

Both drivers spin through it: the threaded connections (transport/sockets.py) and the asyncio
proxy (aio/spin.py); `waiters` counts the waits of either, so at most one of them spins at a time.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

from ..config import Settings


class SpinGate:
    """One connection's spin decisions (one reader at a time, like the connection's receiving side)."""

    def __init__(self, spin_wait: float, slow_limit: int = Settings.SPIN_SLOW_LIMIT,
                 recheck_every: int = Settings.SPIN_RECHECK_EVERY,
                 late_share: float = Settings.SPIN_LATE_SHARE,
                 start_after: int = Settings.SPIN_START_AFTER) -> None:
        self.spin_wait = spin_wait
        self.slow_limit = slow_limit
        self.recheck_every = recheck_every
        # data that arrives after this share of the budget has cost more CPU than the wake-up it saved
        self.late_share = late_share
        self.slow_streak = 0
        self._skipped = 0
        # a new connection's first waits (handshake, first call) say nothing about its steady pace
        self._unproven = max(0, start_after)

    @classmethod
    def from_settings(cls, settings: Any) -> "SpinGate":
        """A gate with the SPIN_* settings of `settings` (a meshrpc.config.Settings)."""
        return cls(settings.SPIN_WAIT, settings.SPIN_SLOW_LIMIT, settings.SPIN_RECHECK_EVERY,
                   settings.SPIN_LATE_SHARE, settings.SPIN_START_AFTER)

    @property
    def open(self) -> bool:
        """Spinning is on for this connection (recent spins saw fast messages)."""
        return bool(self.spin_wait) and self.slow_streak < self.slow_limit

    def should_spin(self) -> bool:
        """Whether the next wait spins; while closed, True for one wait in recheck_every."""
        if not self.spin_wait:
            return False
        if self._unproven:
            self._unproven -= 1
            return False
        if self.slow_streak < self.slow_limit:
            return True
        self._skipped += 1
        if self._skipped >= self.recheck_every:
            self._skipped = 0
            return True
        return False

    def spin(self, ready: Callable[[], bool], clock: Callable[[], float],
             give_way: Callable[[], bool]) -> bool:
        """Poll `ready` without sleeping for up to spin_wait: True when data is ready. Stops early,
        without judging, when `give_way()` says another thread needs the cores."""
        if ready():
            return True  # already there: says nothing about how fast messages come
        start = clock()
        deadline = start + self.spin_wait
        while True:
            if ready():
                self._judge(clock() - start <= self.spin_wait * self.late_share)
                return True
            if clock() > deadline:
                self._judge(False)
                return False
            if give_way():
                return False

    def _judge(self, fast: bool) -> None:
        if fast:
            self.slow_streak = 0
            self._skipped = 0
        elif self.slow_streak < self.slow_limit:
            self.slow_streak += 1


class Waiters:
    """How many threads of this process wait for a message right now. Spinning pays only when one
    does: with several, a spinning thread takes the GIL and the cores from the others' work."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> int:
        with self._lock:
            self.count += 1
            return self.count

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.count -= 1


# one per process on purpose: the cores and the GIL it rations are the process's
waiters = Waiters()


def others_waiting() -> bool:
    """Another thread started waiting: a spinning thread leaves the cores to it."""
    return waiters.count > 1


def single_core() -> bool:
    """No spinning on one core: the peer that would answer needs it."""
    return (os.cpu_count() or 1) < 2
