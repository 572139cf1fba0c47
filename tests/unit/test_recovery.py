"""The recovery rules of docs/resilience.md as decisions (meshrpc.client.recovery), without I/O."""

from __future__ import annotations

import threading
import time

import pytest

from meshrpc import errors
from meshrpc.client.recovery import NotDelivered, Recovery, connect_timeouts
from meshrpc.limits import MIN_ATTEMPT
from meshrpc.config import Settings
from meshrpc.uri import URI

SETTINGS = Settings().copy(REBIND_TIMEOUT=10.0, REBIND_BACKOFF_MIN=0.05, REBIND_BACKOFF_MAX=1.0)
TARGET = URI("PYRO:obj@127.0.0.1:9999")
NAME = URI("PYRONAME:svc")


def recovery(method: str = "m", *, locator: URI | None = NAME, idempotent: bool = False, retries: int = 0,
             settings: Settings = SETTINGS, known: bool = False) -> Recovery:
    return Recovery(settings, method, locator=locator, idempotent=idempotent, max_retries=retries, known=known)


def test_not_delivered_is_retried_and_the_provider_reported() -> None:
    r = recovery()
    step = r.after(NotDelivered("refused", TARGET), TARGET)
    assert step.retry and step.pause == 0 and step.suspect == TARGET and step.drop
    step = r.after(NotDelivered("refused", TARGET), TARGET)
    assert step.retry and 0 < step.pause <= 0.075  # then backoff with jitter


def test_a_broken_connection_reconnects_to_the_same_provider_once_without_reporting_it() -> None:
    r = recovery()
    step = r.after(NotDelivered("closed", TARGET, suspect=False), TARGET)
    assert step.retry and step.retarget == TARGET and step.suspect is None
    step = r.after(NotDelivered("closed", TARGET, suspect=False), TARGET)
    assert step.retry and step.retarget is None  # the second time: re-resolve


def test_a_pyro_uri_reconnects_once_then_raises() -> None:
    r = recovery(locator=None)
    assert r.after(NotDelivered("refused", TARGET), TARGET).retry
    step = r.after(NotDelivered("refused", TARGET), TARGET)
    assert not step.retry and type(step.error) is errors.NotDeliveredError and step.suspect is None


def test_maybe_delivered_is_never_resent_unless_idempotent_or_max_retries() -> None:
    step = recovery().after(errors.ConnectionClosedError("lost"), TARGET)
    assert not step.retry and type(step.error) is errors.ReplyLostError and step.suspect == TARGET
    assert isinstance(step.error, errors.MaybeDeliveredError) and "may have run" in str(step.error)
    step = recovery().after(errors.TimeoutError("slow"), TARGET)
    assert not step.retry and step.error is None and step.suspect == TARGET  # raised as it is: maybe delivered
    assert recovery(idempotent=True).after(errors.ConnectionClosedError("lost"), TARGET).retry
    assert recovery(idempotent=True).after(errors.TimeoutError("slow"), TARGET).retry
    assert not recovery("<batch>", idempotent=True).after(errors.ConnectionClosedError("lost"), TARGET).retry
    r = recovery(retries=1)
    assert r.after(errors.ConnectionClosedError("lost"), TARGET).retry
    assert not r.after(errors.ConnectionClosedError("lost"), TARGET).retry
    assert not recovery(retries=1).after(errors.TimeoutError("slow"), TARGET).retry  # it may still run


def test_naming_errors_depend_on_what_the_proxy_knew_not_on_timing() -> None:
    for failed_before in (False, True):
        r = recovery()
        if failed_before:
            r.after(NotDelivered("refused", TARGET), TARGET)  # also after a failure: never resolved is unknown
        step = r.after(errors.UnknownNameError("unknown"), None)
        assert not step.retry and not step.drop and step.error is None
    r = recovery(known=True)  # resolved before: its providers are gone, wait for one until REBIND_TIMEOUT
    assert r.after(errors.UnknownNameError("gone"), None).retry
    r = recovery(known=True, settings=SETTINGS.copy(REBIND_TIMEOUT=0.0))
    r.after(NotDelivered("refused", TARGET), TARGET)
    assert type(r.after(errors.UnknownNameError("gone"), None).error) is errors.NoProviderError


def test_the_rebind_budget_ends_with_a_clear_error() -> None:
    r = recovery(settings=SETTINGS.copy(REBIND_TIMEOUT=0.0))
    step = r.after(NotDelivered("refused", TARGET), TARGET)
    assert not step.retry and "REBIND_TIMEOUT" in str(step.error) and "PYRONAME:svc" in str(step.error)
    assert type(step.error) is errors.NoProviderError


def test_other_exceptions_are_the_calls_own_answer() -> None:
    step = recovery().after(ValueError("remote"), TARGET)
    assert not step.retry and not step.drop and step.error is None


# --- connecting by name: short attempts that grow, stalls within the budget, news ends the pause


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def timed(clock: FakeClock, **changes: float) -> Recovery:
    settings = SETTINGS.copy(**{"CONNECT_TIMEOUT": 10.0, "CONNECT_ATTEMPT_TIMEOUT": 0.2, "CONNECT_ATTEMPT_GROWTH": 1.5,
                                "CONNECT_ATTEMPT_TIMEOUT_MAX": 1.0, "HANDSHAKE_ATTEMPT_TIMEOUT": 2.0, **changes})
    return Recovery(settings, "m", locator=NAME, idempotent=False, max_retries=0, clock=clock)


def test_a_stalled_connect_is_retried_at_once_with_a_longer_attempt_until_the_budget_ends() -> None:
    clock = FakeClock()
    r = timed(clock)
    other = URI("PYRO:obj@127.0.0.2:9999")
    attempts, handshakes = [], []
    while True:
        connect, handshake = connect_timeouts(SETTINGS, TARGET, by_name=True,
                                              proxy_timeout=None, rebind=r.rebind)
        attempts.append(round(connect, 3))
        handshakes.append(round(handshake, 3))
        clock.now += connect  # the SYN (or SYN-ACK) was lost: the attempt times out
        step = r.after(NotDelivered("connecting timed out", TARGET, timed_out=True), TARGET)
        if not step.retry:
            break
        assert step.pause == 0.0 and step.suspect == TARGET  # the timeout was the wait; reported
    # the first attempts are short and grow, never past CONNECT_ATTEMPT_TIMEOUT_MAX; the call went on
    # for the whole REBIND_TIMEOUT (a stalled connect used to take all of it: CONNECT_TIMEOUT 10 s)
    assert attempts[:5] == [0.2, 0.3, 0.45, 0.675, 1.0] and max(attempts) == 1.0
    assert len(attempts) >= 12 and clock.now - 1000.0 == pytest.approx(10.0, abs=0.06)
    # the handshake (once TCP is connected) starts at 2 s and grows likewise, within the budget
    assert handshakes[:3] == [2.0, 3.0, 4.5] and all(h <= 10.0 for h in handshakes)
    assert type(step.error) is errors.ProviderTimeoutError and "REBIND_TIMEOUT" in str(step.error)
    # a provider not tried yet starts short again; the budget bounds every attempt
    assert connect_timeouts(SETTINGS, other, by_name=True, proxy_timeout=None, rebind=r.rebind)[0] == MIN_ATTEMPT
    fresh = timed(FakeClock())
    assert connect_timeouts(SETTINGS, other, by_name=True, proxy_timeout=None, rebind=fresh.rebind)[0] == 0.2


def test_refusals_pause_with_backoff_but_news_of_the_name_ends_the_pause() -> None:
    clock = FakeClock()
    r = timed(clock)
    assert r.after(NotDelivered("refused", TARGET), TARGET).pause == 0.0  # first retry at once
    assert r.after(NotDelivered("refused", TARGET), TARGET).pause > 0     # then backoff
    r.rebind.heard()  # the registry heard a provider of the name (re)announced during the attempt
    assert r.after(NotDelivered("refused", TARGET), TARGET).pause == 0.0
    assert r.after(NotDelivered("refused", TARGET), TARGET).pause > 0     # news is used once
    woken = []
    r.rebind.woken = lambda: woken.append(True)  # a driver pausing: news wakes it
    r.rebind.heard()
    assert woken == [True]


def test_a_pausing_thread_is_woken_by_news() -> None:
    r = timed(FakeClock())
    threading.Timer(0.05, r.rebind.heard).start()
    started = time.monotonic()
    r.rebind.sleep(30.0)
    assert time.monotonic() - started < 20.0 and not r.rebind.news


def test_a_pyro_uri_and_the_first_attempt_get_their_timeouts() -> None:
    settings = SETTINGS.copy(CONNECT_TIMEOUT=7.0, CONNECT_ATTEMPT_TIMEOUT=0.2)
    assert connect_timeouts(settings, TARGET, by_name=False, proxy_timeout=None, rebind=None) == (7.0, 7.0)
    assert connect_timeouts(settings, TARGET, by_name=False, proxy_timeout=2.0, rebind=None) == (2.0, 2.0)
    assert connect_timeouts(settings, TARGET, by_name=True, proxy_timeout=None, rebind=None) == (0.2, 2.0)
    assert connect_timeouts(settings, TARGET, by_name=True, proxy_timeout=0.1, rebind=None) == (0.1, 0.1)


def test_a_stalled_handshake_is_not_delivered_and_retried_like_a_stalled_connect() -> None:
    clock = FakeClock()
    r = timed(clock)
    clock.now += 2.0  # a daemon that accepted and did not answer the handshake in its 2 s
    step = r.after(NotDelivered("handshake timed out", TARGET, timed_out=True, in_handshake=True), TARGET)
    assert step.retry and step.pause == 0.0
    timeouts = connect_timeouts(SETTINGS, TARGET, by_name=True, proxy_timeout=None, rebind=r.rebind)
    assert timeouts == pytest.approx((0.3, 3.0))
    clock.now += 7.0
    assert connect_timeouts(SETTINGS, TARGET, by_name=True, proxy_timeout=None, rebind=r.rebind)[1] \
        == pytest.approx(1.0)  # what is left of the budget


def test_without_a_rebind_budget_a_stalled_connect_still_gets_the_connect_timeout() -> None:
    clock = FakeClock()
    r = timed(clock, REBIND_TIMEOUT=0.0, CONNECT_TIMEOUT=5.0)  # no rebinding, but connecting gets 5 s
    tries = 0
    while True:
        connect = connect_timeouts(SETTINGS.copy(CONNECT_TIMEOUT=5.0), TARGET, by_name=True,
                                   proxy_timeout=None, rebind=r.rebind)[0]
        clock.now += connect
        tries += 1
        step = r.after(NotDelivered("connecting timed out", TARGET, timed_out=True), TARGET)
        if not step.retry:
            break
    assert tries >= 6 and clock.now - 1000.0 == pytest.approx(5.0, abs=0.06)
    assert type(step.error) is errors.ProviderTimeoutError  # the last attempt timed out
    r = timed(FakeClock(), REBIND_TIMEOUT=0.0)
    assert not r.after(NotDelivered("refused", TARGET), TARGET).retry  # a refusal: no rebinding


def test_a_pyro_uri_that_timed_out_before_sending_raises_not_sent_timeout() -> None:
    r = recovery(locator=None)
    timed_out = NotDelivered(f"handshake with {TARGET} failed: receiving: timeout", TARGET,
                             timed_out=True, timeout_text="receiving: timeout", in_handshake=True)
    assert r.after(timed_out, TARGET).retry
    step = r.after(timed_out, TARGET)
    error = step.error
    assert not step.retry and type(error) is errors.NotSentTimeoutError
    assert isinstance(error, errors.NotDeliveredError) and isinstance(error, TimeoutError)
    assert str(error) == "receiving: timeout"  # Pyro5's text; the note names the daemon
    assert any(str(TARGET) in note and "did not run" in note for note in error.__notes__)


def test_a_name_whose_providers_time_out_is_no_provider_and_pyro5s_timeout() -> None:
    """Pyro5's timeout example: a provider that accepts and never answers the handshake. The outcome is
    still NoProviderError (the call did not run); Pyro5 raises TimeoutError there, so it is one too."""
    stalled = NotDelivered("handshake timed out", TARGET, timed_out=True, timeout_text="receiving: timeout",
                           in_handshake=True)
    error = recovery().gave_up(stalled)
    assert type(error) is errors.ProviderTimeoutError
    assert isinstance(error, errors.NoProviderError) and isinstance(error, errors.NotDeliveredError)
    assert isinstance(error, errors.TimeoutError) and isinstance(error, TimeoutError)
    assert type(recovery(locator=None).gave_up(stalled)) is errors.NotSentTimeoutError
    assert type(recovery().gave_up(NotDelivered("refused", TARGET))) is errors.NoProviderError


def test_a_connection_the_daemon_closed_that_cannot_be_made_again_is_pyro5s_connection_closed_error() -> None:
    """Pyro5 programs catch ConnectionClosedError when their daemon went away (then _pyroReconnect()):
    a call that found its connection closed and could not connect again raises a NotDeliveredError that
    is also a ConnectionClosedError; one that never had a connection stays a plain NotDeliveredError."""
    r = recovery(locator=None)
    assert r.after(NotDelivered("closed by the daemon", TARGET, suspect=False), TARGET).retry
    step = r.after(NotDelivered("refused", TARGET), TARGET)
    assert not step.retry and type(step.error) is errors.ConnectionLostError
    assert isinstance(step.error, errors.NotDeliveredError) and isinstance(step.error, errors.ConnectionClosedError)
    assert not isinstance(step.error, errors.MaybeDeliveredError)
    by_name = recovery(settings=SETTINGS.copy(REBIND_TIMEOUT=0.0))
    by_name.after(NotDelivered("closed by the daemon", TARGET, suspect=False), TARGET)
    error = by_name.after(NotDelivered("refused", TARGET), TARGET).error
    assert type(error) is errors.ProviderLostError and isinstance(error, errors.ConnectionClosedError)
    assert type(recovery(locator=None).gave_up(NotDelivered("refused", TARGET))) is errors.NotDeliveredError
    later = Recovery(SETTINGS, "m", locator=None, idempotent=False, max_retries=0, lost=True)  # a later call
    later.after(NotDelivered("refused", TARGET), TARGET)
    assert type(later.after(NotDelivered("refused", TARGET), TARGET).error) is errors.ConnectionLostError
