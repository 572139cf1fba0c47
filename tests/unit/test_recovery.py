"""The recovery rules of docs/resilience.md as decisions (meshrpc.client.recovery), without I/O."""

from __future__ import annotations

from meshrpc import errors
from meshrpc.client.recovery import NotDelivered, Recovery
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
