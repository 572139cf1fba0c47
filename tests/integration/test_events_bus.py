"""EventBus in one process over real sockets and real zeroconf (loopback): the mesh key, unsubscribe,
many patterns in few announcements, a slow handler that holds up nobody else."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support import wait_until

from meshrpc.config import Settings
from meshrpc.events import INBOX_NAME, EventBus
from meshrpc.mesh import get_registry, reset_for_tests

pytestmark = pytest.mark.timeout(60)
KEY = "events-" + uuid.uuid4().hex


def settings_for(realm: str, key: str = "", **changes: Any) -> Settings:
    return Settings().copy(REALM=realm, INTERFACES="127.0.0.1", HOST="127.0.0.1", KEY=key, **changes)


@pytest.fixture
def buses() -> Iterator[list[EventBus]]:
    made: list[EventBus] = []
    yield made
    for bus in made:
        bus.close()
    reset_for_tests()


class Collector:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.changed = threading.Condition()

    def __call__(self, event: Any) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 20.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.events) >= count, timeout)


def test_under_a_mesh_key_only_key_holders_publish_and_subscribe(realm: str, buses: list[EventBus]) -> None:
    keyed_sub = EventBus(settings_for(realm, KEY))
    keyless_sub = EventBus(settings_for(realm))
    keyed_pub = EventBus(settings_for(realm, KEY))
    keyless_pub = EventBus(settings_for(realm))
    wrong_pub = EventBus(settings_for(realm, "not-" + KEY))
    buses.extend([keyed_sub, keyless_sub, keyed_pub, keyless_pub, wrong_pub])
    holder, outsider = Collector(), Collector()
    keyed_sub.subscribe("k.>", holder)
    keyless_sub.subscribe("k.>", outsider)
    assert keyed_pub.wait_for_subscribers("k.x", 1, 10) == 1
    assert keyless_pub.wait_for_subscribers("k.x", 2, 10) == 2   # a keyless registry believes anyone
    # a keyed registry ignores unsigned announcements; one with another key ignores ours too
    assert keyed_pub.subscribers("k.x") == [keyed_sub.stats()["inbox"]]
    assert wrong_pub.wait_for_subscribers("k.x", 1, 2) == 0
    keyless_pub.publish("k.x", "forged")
    wrong_pub.publish("k.x", "forged too")
    keyed_pub.publish("k.x", "genuine")
    assert holder.wait_for(1)
    assert keyed_pub.flush(10)
    # the keyed inbox refuses keyless connections: delivery keeps failing, nothing arrives
    # ... so the keyless publisher gives that subscriber up (a key mismatch does not heal by retrying)
    keyed_inbox = keyed_sub.stats()["inbox"]
    wait_until(lambda: keyed_inbox not in keyless_pub.subscribers(), 20, message="the refused subscriber dropped")
    assert keyless_pub.stats()["delivered"] <= 1          # only to the keyless subscriber
    assert [e.msg for e in holder.events] == ["genuine"]
    assert "genuine" not in [e.msg for e in outsider.events]


def test_unsubscribe_withdraws_and_many_patterns_share_announcements(realm: str, buses: list[EventBus]) -> None:
    settings = settings_for(realm)
    sub_bus, pub = EventBus(settings), EventBus(settings)
    buses.extend([sub_bus, pub])
    rooms = Collector()
    subscriptions = [sub_bus.subscribe(f"home.room{i:03}.>", rooms) for i in range(60)]
    registry = get_registry(settings)
    names = {e.name for e in registry.wait_for(lambda e: e.name.startswith(INBOX_NAME), 10)}
    announced = [e for e in registry.list(prefix=INBOX_NAME) if e.uri == sub_bus.stats()["inbox"]]
    assert 1 < len(announced) <= 3, names          # 60 patterns: a few announcements, not 60
    assert sorted(t for e in announced for t in e.metadata) == sorted(f"ev:home.room{i:03}.>" for i in range(60))
    assert pub.wait_for_subscribers("home.room059.x", 1, 10) == 1
    pub.publish("home.room059.x", 1)
    assert rooms.wait_for(1)
    for s in subscriptions:
        s.unsubscribe()
    with pub._publishing()._changed:                 # the publisher hears the goodbyes
        assert pub._publishing()._changed.wait_for(lambda: not pub._publishing()._outboxes, 10)
    assert pub.publish("home.room059.x", 2) == 0


def test_a_slow_handler_holds_up_no_other_subscriber(realm: str, buses: list[EventBus]) -> None:
    settings = settings_for(realm, EVENTS_QUEUE_MAX=150)
    slow_bus, fast_bus, pub = EventBus(settings), EventBus(settings), EventBus(settings)
    buses.extend([slow_bus, fast_bus, pub])
    release = threading.Event()
    slow_bus.subscribe("s.>", lambda ev: release.wait(20))
    fast = Collector()
    fast_bus.subscribe("s.>", fast)
    assert pub.wait_for_subscribers("s.x", 2, 10) == 2
    for chunk in range(10):             # publish() never blocks, although one subscriber takes nothing
        for i in range(100):
            pub.publish("s.x", chunk * 100 + i)
        assert fast.wait_for((chunk + 1) * 100)
    assert [e.msg for e in fast.events] == list(range(1000))
    slow = next(s for s in pub.stats()["subscribers"] if s["uri"] == slow_bus.stats()["inbox"])
    assert slow["dropped"] >= 1000 - 150 - 150 and slow["queued"] == 150   # the batch in its handler, a full backlog
    release.set()


def test_asyncio_handlers_run_on_the_loop_in_order(realm: str, buses: list[EventBus]) -> None:
    import asyncio

    from meshrpc.events import aio

    settings = settings_for(realm)
    pub = EventBus(settings)
    buses.append(pub)

    async def main() -> tuple[list[int], list[int], bool]:
        loop = asyncio.get_running_loop()
        seen: list[int] = []
        on_loop = True

        async def handler(event: Any) -> None:
            nonlocal on_loop
            on_loop = on_loop and asyncio.get_running_loop() is loop
            await asyncio.sleep(0)              # a coroutine that yields: the next event waits for it
            seen.append(event.msg)

        async with aio.EventBus(settings) as bus:
            await bus.subscribe("a.*", handler)
            iterated: list[int] = []
            stream = bus.events("a.>")
            first = asyncio.ensure_future(stream.__anext__())
            assert await asyncio.to_thread(pub.wait_for_subscribers, "a.b", 1, 10) == 1
            await asyncio.to_thread(_until, lambda: len(pub.subscribers("a.b")) == 1
                                    and len(pub.stats()["subscribers"][0]["patterns"]) == 2)
            for i in range(50):
                pub.publish("a.b", i)
            iterated.append((await first).msg)
            async for event in stream:
                iterated.append(event.msg)
                if len(iterated) == 50:
                    break
            await stream.aclose()
            assert await asyncio.to_thread(pub.flush, 10)
        return seen, iterated, on_loop

    seen, iterated, on_loop = asyncio.run(asyncio.wait_for(main(), 60))
    assert seen == list(range(50)) and iterated == list(range(50)) and on_loop


def _until(condition: Any) -> None:
    wait_until(condition, 20, message="the publisher to know both patterns")


def test_events_missed_while_a_subscriber_was_away_are_counted_when_it_returns(realm: str,
                                                                              buses: list[EventBus]) -> None:
    settings = settings_for(realm)
    sub_bus, pub = EventBus(settings), EventBus(settings)
    buses.extend([sub_bus, pub])
    got = Collector()
    sub_bus.subscribe("w.>", got)
    assert pub.wait_for_subscribers("w.x", 1, 10) == 1
    router, inbox = pub._publishing(), sub_bus.stats()["inbox"]
    pub.publish("w.x", 0)
    assert got.wait_for(1)
    patterns = router._outboxes[inbox].patterns
    router.remove_subscriber(inbox)              # as when its heartbeats were lost for a while
    for i in range(1, 6):
        pub.publish("w.x", i)                    # it misses these
    pub.publish("v.x", "not for it")
    router.set_subscriber(inbox, patterns)       # heard again
    pub.publish("w.x", 6)
    assert got.wait_for(2)
    assert [(e.msg, e.seq) for e in got.events] == [(0, 0), (6, 6)]
    assert sub_bus.stats()["lost"] == 5
