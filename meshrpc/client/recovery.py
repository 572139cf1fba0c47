"""The recovery rules of docs/resilience.md as decisions, without I/O or sleeping.

Both drivers (the threaded Proxy and meshrpc.aio.Proxy) ask `Recovery.after(exc)` what to do when an
attempt failed, and carry the answer out themselves: drop the connection, report the target to the
mesh, pause (time.sleep or asyncio.sleep), retry or raise. So the at-most-once rule lives once.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .. import errors
from ..config import Settings
from ..errors import CommunicationError, ConnectionClosedError
from ..limits import MIN_ATTEMPT
from ..uri import URI
from ..wire.constants import BATCH_METHOD  # a batch is never re-sent as a whole


class NotDelivered(ConnectionClosedError):
    """A call that certainly did not reach a daemon: connecting, the handshake or sending failed."""

    def __init__(self, message: str, target: URI | None, suspect: bool = True, timed_out: bool = False,
                 timeout_text: str = "", in_handshake: bool = False) -> None:
        super().__init__(message)
        self.target = target
        self.suspect = suspect  # False: an established connection broke (the provider may well be fine)
        self.timed_out = timed_out  # no answer in time (connecting or the handshake): a stall
        self.timeout_text = timeout_text  # the transport's words for it, when not the message itself
        self.in_handshake = in_handshake  # connected, and the handshake failed


def silent_text(target: URI | None, timeout: float) -> str:
    """The words of the NotDelivered that keeps a oneway call out of a silent connection (the peer
    acknowledged nothing for the proxy's timeout: transport.sockets.silent_peer_check), both drivers."""
    return (f"{target} acknowledged nothing sent to it for {timeout:g} s (the proxy's timeout): its host is gone, "
            f"the network is cut, or this host's address changed; the oneway call is sent on a new connection")


def handshake_stall(exc: BaseException) -> bool:
    """The attempt connected and the handshake timed out: a provider that does not answer (a
    connect that times out may as well be a partition)."""
    return isinstance(exc, NotDelivered) and exc.timed_out and exc.in_handshake


def not_delivered_error(exc: NotDelivered, text: str, lost: bool = False) -> errors.NotDeliveredError:
    """What a PYRO: proxy raises when it gives up on a call that did not run: after a timeout,
    NotSentTimeoutError with the transport's text (as Pyro5's TimeoutError) and `text` as a note;
    when the daemon had closed the proxy's connection (`lost`), ConnectionLostError(text) (Pyro5's
    ConnectionClosedError too); otherwise NotDeliveredError(text)."""
    if not exc.timed_out:
        return (errors.ConnectionLostError if lost else errors.NotDeliveredError)(text)
    error = errors.NotSentTimeoutError(exc.timeout_text or str(exc))
    error.add_note(text)
    return error


class Rebind:
    """Backoff with jitter between attempts, bounded by REBIND_TIMEOUT; the timeouts of connect
    attempts (short ones that grow per provider, docs/resilience.md); news of the name (an
    announcement heard by the registry) ends the pause."""

    def __init__(self, settings: Settings, started: float | None = None,
                 clock: Callable[[], float] = time.monotonic, connect_cap: float | None = None) -> None:
        self.timeout = settings.REBIND_TIMEOUT
        # connecting may go on (in short attempts) as long as one connect could take, also when the
        # rebind budget is shorter (REBIND_TIMEOUT 0: no rebinding, but a connect still gets its time);
        # a connect that times out may be a partition, which heals: REBIND_TIMEOUT's time is given
        self.connect_cap = connect_cap
        self.connect_budget = max(self.timeout, connect_cap or settings.CONNECT_TIMEOUT)
        # a provider that accepts and never answers the handshake is given the proxy's timeout when it
        # has one (_pyroTimeout or COMMTIMEOUT: what the handshake may take in Pyro5, whose programs
        # expect their `except TimeoutError` after it), else the same as connecting
        self.handshake_budget = min(connect_cap, self.connect_budget) if connect_cap else self.connect_budget
        self.pause = settings.REBIND_BACKOFF_MIN
        self.pause_max = settings.REBIND_BACKOFF_MAX
        self.attempt_first = settings.CONNECT_ATTEMPT_TIMEOUT
        self.attempt_growth = settings.CONNECT_ATTEMPT_GROWTH
        self.attempt_max = settings.CONNECT_ATTEMPT_TIMEOUT_MAX
        self.handshake_first = settings.HANDSHAKE_ATTEMPT_TIMEOUT
        self.clock = clock
        self.started = clock() if started is None else started
        self.attempts = 1
        self.first = True
        self.stalls: dict[str, int] = {}  # provider -> connect attempts to it that timed out
        self.news = False  # a provider of the name was (re)announced since the last attempt began
        self.woken: Callable[[], None] | None = None  # the driver's way to end its pause early

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        return self.timeout - self.elapsed()

    def connect_remaining(self) -> float:
        return self.connect_budget - self.elapsed()

    def handshake_remaining(self) -> float:
        return self.handshake_budget - self.elapsed()

    def heard(self) -> None:
        """The registry heard a provider of the name announced (called on the registry's thread)."""
        self.news = True
        woken = self.woken
        if woken is not None:
            woken()

    def next_pause(self, stalled: bool = False, handshake: bool = False) -> float | None:
        """Seconds to pause before the next attempt; None when the time is up. stalled: the failed
        attempt timed out, which was its wait: the next one goes at once; handshake: it was the
        handshake that timed out (connected, no answer)."""
        if stalled:
            remaining = self.handshake_remaining() if handshake else self.connect_remaining()
        else:
            remaining = self.remaining()
        if remaining <= 0:
            return None
        self.attempts += 1
        if self.first or stalled or self.news:  # the first retry goes at once: a stale connection is common
            self.first = self.news = False
            return 0.0
        pause = min(remaining, self.pause * random.uniform(0.5, 1.5))
        self.pause = min(self.pause * 2, self.pause_max)
        return pause

    def connect_timeout(self, target: URI, cap: float) -> float:
        """Seconds the TCP connect to target may take in this attempt: CONNECT_ATTEMPT_TIMEOUT, times
        CONNECT_ATTEMPT_GROWTH per earlier stall of this target, within the cap and the budget."""
        grown = self.attempt_first * self.attempt_growth ** self.stalls.get(str(target), 0)
        return _at_least(min(grown, self.attempt_max, cap, self.connect_remaining()))

    def handshake_timeout(self, target: URI, cap: float) -> float:
        """Seconds the handshake with target may take in this attempt: HANDSHAKE_ATTEMPT_TIMEOUT (TCP
        retransmits lost data within it; a slow daemon gets longer the next time), within the cap and
        the budget."""
        grown = self.handshake_first * self.attempt_growth ** self.stalls.get(str(target), 0)
        return _at_least(min(grown, cap, self.connect_remaining()))

    def stalled(self, target: URI | None) -> None:
        if target is not None:
            key = str(target)
            self.stalls[key] = self.stalls.get(key, 0) + 1

    def sleep(self, seconds: float) -> None:
        """Pause (the threaded proxy), ended early by news of the name."""
        woken = threading.Event()
        self.woken = woken.set
        try:
            if not self.news:
                woken.wait(seconds)
        finally:
            self.woken = None
            self.news = False


def _at_least(seconds: float) -> float:
    return max(MIN_ATTEMPT, seconds)


def connect_timeouts(settings: Settings, target: URI, *, by_name: bool, proxy_timeout: float | None,
                     rebind: Rebind | None) -> tuple[float, float]:
    """(TCP connect, handshake) timeouts of one attempt to target (docs/resilience.md). A PYRO URI
    gets the proxy's timeout, else CONNECT_TIMEOUT, for each (as Pyro5); by name: short attempts."""
    cap = proxy_timeout or settings.CONNECT_TIMEOUT
    if not by_name:
        return cap, cap
    if rebind is None:  # a first attempt: no recovery state yet
        return (_at_least(min(settings.CONNECT_ATTEMPT_TIMEOUT, settings.CONNECT_ATTEMPT_TIMEOUT_MAX, cap)),
                _at_least(min(settings.HANDSHAKE_ATTEMPT_TIMEOUT, cap)))
    return rebind.connect_timeout(target, cap), rebind.handshake_timeout(target, cap)


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
                 max_retries: int, started: float | None = None, known: bool = False,
                 clock: Callable[[], float] = time.monotonic, connect_cap: float | None = None,
                 lost: bool = False) -> None:
        # started: when the call began (clock; default now); connect_cap: the proxy's connect timeout;
        # lost: the daemon had closed the proxy's connection (in an earlier call) and it has not connected since
        self.rebind = Rebind(settings, started, clock, connect_cap)
        self.methodname = methodname
        self.locator = locator
        self.idempotent = idempotent and methodname != BATCH_METHOD
        self.retries_left = max_retries
        self.reconnected = False
        self.lost = lost  # the daemon closed the proxy's connection (in this call or before)
        self.target: URI | None = None
        self.known = known  # the proxy resolved its locator before: a failing resolution is "providers gone"

    def after(self, exc: BaseException, target: URI | None) -> Step:
        rebind = self.rebind
        self.target = target
        if isinstance(exc, NotDelivered):
            self.lost = self.lost or not exc.suspect
            suspect = exc.target if exc.suspect and self.locator is not None else None
            if not exc.suspect and not self.reconnected and self.locator is not None and exc.target is not None:
                self.reconnected = True  # the connection broke, the daemon may be fine: reconnect to it at once
                return Step(True, retarget=exc.target)
            if self.locator is None and not rebind.first:
                # nowhere else to go
                return Step(False, error=not_delivered_error(exc, f"{exc}; the call did not run", self.lost),
                            suspect=suspect)
            if exc.timed_out:  # a stall: the next attempt to that provider may take longer
                rebind.stalled(exc.target)
            return self._again(exc, suspect, stalled=exc.timed_out, handshake=handshake_stall(exc))
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

    def _again(self, exc: BaseException, suspect: URI | None, drop: bool = True, stalled: bool = False,
               handshake: bool = False) -> Step:
        pause = self.rebind.next_pause(stalled, handshake)
        if pause is None:
            return Step(False, error=self.gave_up(exc), drop=drop, suspect=suspect)
        return Step(True, pause, drop=drop, suspect=suspect)

    def gave_up(self, exc: BaseException) -> CommunicationError:
        rebind = self.rebind
        timed_out = isinstance(exc, NotDelivered) and exc.timed_out
        if handshake_stall(exc) and rebind.connect_cap:
            bound = f"the proxy's timeout {rebind.connect_cap:g} s"
        else:
            bound = f"REBIND_TIMEOUT {rebind.timeout:g} s"
        text = (f"cannot reach {self.locator or self.target} after {rebind.attempts} attempts in "
                f"{rebind.elapsed():.1f} s ({bound}); the call did not run; last error: {exc}")
        if self.locator is not None:
            if self.lost:
                return errors.ProviderLostError(text)
            return (errors.ProviderTimeoutError if timed_out else errors.NoProviderError)(text)
        if isinstance(exc, NotDelivered):
            return not_delivered_error(exc, text, self.lost)
        return (errors.ConnectionLostError if self.lost else errors.NotDeliveredError)(text)
