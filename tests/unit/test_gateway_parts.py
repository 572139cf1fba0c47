"""The gateway's pure parts: the rate limiter and how a request maps to a remote call."""

from __future__ import annotations

import pytest

from meshrpc.gateway.backend import META, Call, plan
from meshrpc.gateway.errors import BadRequest, NoSuchMember
from meshrpc.gateway.limits import RateLimiter
from meshrpc.limits import GATEWAY_MAX_TRACKED_CLIENTS
from meshrpc.wire.frame import FLAG_ONEWAY


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.allow("a")
    assert wait == pytest.approx(0.5)
    assert limiter.allow("b") == 0.0                 # another address has its own bucket
    clock.now += 0.5
    assert limiter.allow("a") == 0.0                 # one token back after 1/rate seconds
    assert limiter.allow("a") > 0


def test_rate_limiter_off_and_bounded() -> None:
    assert RateLimiter(rate=0, burst=1).allow("a") == 0.0
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    for i in range(GATEWAY_MAX_TRACKED_CLIENTS + 10):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == GATEWAY_MAX_TRACKED_CLIENTS


METHODS, ATTRS, ONEWAY = frozenset({"echo", "note"}), frozenset({"level"}), frozenset({"note"})


def test_plan_meta_attribute_method_oneway() -> None:
    assert plan(Call("PYRONAME:x", "r", META), METHODS, ATTRS, ONEWAY) == \
        {"methods": ["echo", "note"], "attributes": ["level"], "oneway": ["note"]}
    assert plan(Call("PYRONAME:x", "r", "level"), METHODS, ATTRS, ONEWAY) == ("__getattr__", ("level",), None, 0)
    assert plan(Call("PYRONAME:x", "r", "echo", (1,), {"a": 2}), METHODS, ATTRS, ONEWAY) == ("echo", (1,), {"a": 2}, 0)
    assert plan(Call("PYRONAME:x", "r", "echo", oneway=True), METHODS, ATTRS, ONEWAY)[3] == FLAG_ONEWAY
    assert plan(Call("PYRONAME:x", "r", "note"), METHODS, ATTRS, ONEWAY)[3] == FLAG_ONEWAY


def test_plan_refusals() -> None:
    with pytest.raises(BadRequest, match="attribute"):
        plan(Call("PYRONAME:x", "r", "level", (1,)), METHODS, ATTRS, ONEWAY)
    with pytest.raises(NoSuchMember, match="nosuch"):
        plan(Call("PYRONAME:x", "r", "nosuch"), METHODS, ATTRS, ONEWAY)
    assert NoSuchMember.status == 404 and BadRequest.status == 400


def test_event_subscriber_that_falls_behind_is_marked_and_gets_nothing_more() -> None:
    import asyncio

    from meshrpc.gateway.meshwatch import Subscriber

    async def main() -> None:
        subscriber = Subscriber(2)
        for i in range(3):
            subscriber.put("added", {"n": i})
        assert subscriber.overflowed
        subscriber.put("added", {"n": 3})
        assert [subscriber.queue.get_nowait()[1]["n"] for _ in range(2)] == [0, 1]
        assert subscriber.queue.empty()
    asyncio.run(main())
