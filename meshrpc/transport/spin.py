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

After SLOW_LIMIT slow spins in a row the gate closes; it then spins on one wait in RECHECK_EVERY,
to notice when messages get fast again (one fast spin reopens it).
"""

from __future__ import annotations

from typing import Callable

SLOW_LIMIT = 4
RECHECK_EVERY = 64
# data that arrives after this share of the budget has cost more CPU than the wake-up it saved
LATE_SHARE = 0.5


class SpinGate:
    """One connection's spin decisions (one reader at a time, like the connection's receiving side)."""

    def __init__(self, spin_wait: float) -> None:
        self.spin_wait = spin_wait
        self.slow_streak = 0
        self._skipped = 0

    @property
    def open(self) -> bool:
        """Spinning is on for this connection (recent spins saw fast messages)."""
        return bool(self.spin_wait) and self.slow_streak < SLOW_LIMIT

    def should_spin(self) -> bool:
        """Whether the next wait spins; while closed, True for one wait in RECHECK_EVERY."""
        if not self.spin_wait:
            return False
        if self.slow_streak < SLOW_LIMIT:
            return True
        self._skipped += 1
        if self._skipped >= RECHECK_EVERY:
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
                self._judge(clock() - start <= self.spin_wait * LATE_SHARE)
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
        elif self.slow_streak < SLOW_LIMIT:
            self.slow_streak += 1
