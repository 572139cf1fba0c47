"""The proxy's timeout bounds the attempts to a provider that accepts and never answers the handshake
(meshrpc.client.recovery, the one policy both drivers carry out), without I/O."""

from __future__ import annotations

import pytest

from meshrpc import errors
from meshrpc.client.recovery import NotDelivered, Recovery, connect_timeouts
from meshrpc.config import Settings
from meshrpc.uri import URI

SETTINGS = Settings().copy(REBIND_TIMEOUT=10.0, REBIND_BACKOFF_MIN=0.05, REBIND_BACKOFF_MAX=1.0, CONNECT_TIMEOUT=10.0,
                           CONNECT_ATTEMPT_TIMEOUT=0.2, CONNECT_ATTEMPT_GROWTH=1.5, CONNECT_ATTEMPT_TIMEOUT_MAX=1.0,
                           HANDSHAKE_ATTEMPT_TIMEOUT=2.0)
TARGET = URI("PYRO:obj@127.0.0.1:9999")
NAME = URI("PYRONAME:svc")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


HANDSHAKE_STALL = f"handshake with {TARGET} failed: receiving: timeout"   # both drivers' words
CONNECT_STALL = f"connecting to {TARGET.location} timed out"


def stall_until_given_up(proxy_timeout: float | None, message: str = HANDSHAKE_STALL) -> tuple[Recovery, Clock, BaseException]:
    clock = Clock()
    r = Recovery(SETTINGS, "m", locator=NAME, idempotent=False, max_retries=0, clock=clock, connect_cap=proxy_timeout)
    while True:
        connect, handshake = connect_timeouts(SETTINGS, TARGET, by_name=True, proxy_timeout=proxy_timeout,
                                              rebind=r.rebind)
        clock.now += handshake if message == HANDSHAKE_STALL else connect
        step = r.after(NotDelivered(message, TARGET, timed_out=True, in_handshake=message == HANDSHAKE_STALL), TARGET)
        if not step.retry:
            assert step.error is not None
            return r, clock, step.error


def test_the_proxys_timeout_bounds_the_stalled_attempts() -> None:
    _, clock, error = stall_until_given_up(1.0)
    assert clock.now - 1000.0 == pytest.approx(1.0, abs=0.06)     # not REBIND_TIMEOUT's 10 s
    assert type(error) is errors.ProviderTimeoutError and isinstance(error, TimeoutError)
    assert "the proxy's timeout 1 s" in str(error)


def test_connects_that_time_out_keep_rebind_timeout_a_partition_heals() -> None:
    """No SYN-ACK may be a partition (tests/netlab/test_resilience_lab.py: an idempotent caller with
    _pyroTimeout 1 s rides out a 10 s partition): connecting goes on for REBIND_TIMEOUT."""
    _, clock, error = stall_until_given_up(1.0, CONNECT_STALL)
    assert clock.now - 1000.0 == pytest.approx(10.0, abs=0.06)
    assert type(error) is errors.ProviderTimeoutError and "REBIND_TIMEOUT 10 s" in str(error)


def test_without_a_proxy_timeout_rebind_timeout_bounds_them_as_before() -> None:
    _, clock, error = stall_until_given_up(None)
    assert clock.now - 1000.0 == pytest.approx(10.0, abs=0.06)
    assert type(error) is errors.ProviderTimeoutError and "REBIND_TIMEOUT 10 s" in str(error)


def test_refusals_still_wait_for_a_provider_until_rebind_timeout() -> None:
    """A provider that is down (refused) may come back: that wait is REBIND_TIMEOUT's, timeout or not."""
    clock = Clock()
    r = Recovery(SETTINGS, "m", locator=NAME, idempotent=False, max_retries=0, clock=clock, connect_cap=1.0)
    clock.now += 5.0
    step = r.after(NotDelivered("refused", TARGET), TARGET)
    assert step.retry
    clock.now += 5.1
    step = r.after(NotDelivered("refused", TARGET), TARGET)
    assert not step.retry and type(step.error) is errors.NoProviderError and "REBIND_TIMEOUT" in str(step.error)
