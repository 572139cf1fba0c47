"""The recovery rules of docs/resilience.md as decisions, without I/O or sleeping.

Both drivers (the threaded Proxy and meshrpc.aio.Proxy) ask `Recovery.after(exc)` what to do when an
attempt failed, and carry the answer out themselves: drop the connection, report the target to the
mesh, pause (time.sleep or asyncio.sleep), retry or raise. So the at-most-once rule lives once.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from .. import errors
from ..config import Settings
from ..errors import CommunicationError, ConnectionClosedError
from ..uri import URI
from ..wire.constants import BATCH_METHOD  # a batch is never re-sent as a whole


class NotDelivered(ConnectionClosedError):
    """A call that certainly did not reach a daemon: connecting, the handshake or sending failed."""

    def __init__(self, message: str, target: URI | None, suspect: bool = True, timed_out: bool = False) -> None:
        super().__init__(message)
        self.target = target
        self.suspect = suspect  # False: an established connection broke (the provider may well be fine)
        self.timed_out = timed_out  # no answer in time (the handshake): a TimeoutError when given up


class Rebind:
    """Backoff with jitter between attempts, bounded by REBIND_TIMEOUT."""

    def __init__(self, settings: Settings, started: float | None = None) -> None:
        self.timeout = settings.REBIND_TIMEOUT
        self.pause = settings.REBIND_BACKOFF_MIN
        self.pause_max = settings.REBIND_BACKOFF_MAX
        self.started = time.monotonic() if started is None else started
        self.attempts = 1
        self.first = True

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.timeout - self.elapsed()

    def next_pause(self) -> float | None:
        """Seconds to pause before the next attempt; None when the time is up."""
        if self.first:  # the first retry goes at once: a stale connection is the common case
            self.first = False
            self.attempts += 1
            return 0.0 if self.elapsed() < self.timeout else None
        remaining = self.remaining()
        if remaining <= 0:
            return None
        pause = min(remaining, self.pause * random.uniform(0.5, 1.5))
        self.pause = min(self.pause * 2, self.pause_max)
        self.attempts += 1
        return pause

    def wait(self) -> bool:
        """Pause (sleeping) before the next attempt; False when the time is up."""
        pause = self.next_pause()
        if pause is None:
            return False
        if pause:
            time.sleep(pause)
        return True


@dataclass
class Step:
    """What a driver does after a failed attempt."""
    retry: bool                       # False: raise `error` (or the original exception when None)
    pause: float = 0.0                # seconds to wait before retrying
    error: BaseException | None = None
    drop: bool = True                 # close the connection first
    suspect: URI | None = None        # report this provider to the mesh (it failed)
    retarget: URI | None = None       # reconnect to this provider once before re-resolving


class Recovery:
    """The recovery state of one call (or of connecting): `after(exc)` says what to do next.

    locator: the proxy has a PYRONAME/PYROMETA URI to re-resolve; target: its current PYRO URI."""

    def __init__(self, settings: Settings, methodname: str, *, locator: URI | None, idempotent: bool,
                 max_retries: int, started: float | None = None, known: bool = False) -> None:
        self.rebind = Rebind(settings, started)  # started: when the call began (monotonic; default now)
        self.methodname = methodname
        self.locator = locator
        self.idempotent = idempotent and methodname != BATCH_METHOD
        self.retries_left = max_retries
        self.reconnected = False
        self.target: URI | None = None
        self.known = known  # the proxy resolved its locator before: a failing resolution is "providers gone"

    def after(self, exc: BaseException, target: URI | None) -> Step:
        rebind = self.rebind
        self.target = target
        if isinstance(exc, NotDelivered):
            suspect = exc.target if exc.suspect and self.locator is not None else None
            if not exc.suspect and not self.reconnected and self.locator is not None and exc.target is not None:
                self.reconnected = True  # the connection broke, the daemon may be fine: reconnect to it at once
                return Step(True, retarget=exc.target)
            if self.locator is None and not rebind.first:
                # nowhere else to go
                return Step(False, error=errors.NotDeliveredError(f"{exc}; the call did not run"), suspect=suspect)
            return self._again(exc, suspect)
        if isinstance(exc, errors.NamingError):
            if not self.known:  # a name never resolved, that no source knows: UnknownNameError, at once
                return Step(False, drop=False)
            return self._again(exc, None, drop=False)
        if isinstance(exc, (errors.TimeoutError, ConnectionClosedError)):  # sent, no reply: it may have run
            suspect = target if self.locator is not None else None
            if self.idempotent:
                pause = rebind.next_pause()
                if pause is not None:
                    return Step(True, pause, suspect=suspect)
            if isinstance(exc, ConnectionClosedError) and self.retries_left > 0:  # timeouts: it may still run
                self.retries_left -= 1
                return Step(True, suspect=suspect)
            if isinstance(exc, errors.MaybeDeliveredError):
                return Step(False, suspect=suspect)
            lost = errors.ReplyLostError(f"{exc} after {self.methodname} was sent: it may have run")
            return Step(False, error=lost, suspect=suspect)
        return Step(False, drop=False)  # anything else is the call's own answer

    def _again(self, exc: BaseException, suspect: URI | None, drop: bool = True) -> Step:
        pause = self.rebind.next_pause()
        if pause is None:
            return Step(False, error=self.gave_up(exc), drop=drop, suspect=suspect)
        return Step(True, pause, drop=drop, suspect=suspect)

    def gave_up(self, exc: BaseException) -> CommunicationError:
        rebind = self.rebind
        cls = errors.NoProviderError if self.locator is not None else errors.NotDeliveredError
        return cls(f"cannot reach {self.locator or self.target} after {rebind.attempts} attempts in "
                   f"{rebind.elapsed():.1f} s (REBIND_TIMEOUT {rebind.timeout:g} s); the call did not run; "
                   f"last error: {exc}")
