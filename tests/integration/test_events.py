"""Events with real processes on loopback: `meshrpc events sub` subscribers, a publisher script
(events_publisher.py), each test in a mesh realm of its own. Tests wait for printed lines."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from subprocs import Proc, Runner, assert_clean_exit, runner_for

pytestmark = pytest.mark.timeout(120)

PUBLISHER = Path(__file__).with_name("events_publisher.py")


@pytest.fixture
def runner(realm: str) -> Iterator[Runner]:
    yield from runner_for(realm)


def subscriber(runner: Runner, *patterns: str, **env: str) -> Proc:
    proc = runner.meshrpc("events", "sub", "--json", *patterns, **env)
    proc.expect(r"^ready: ", stderr=True)
    return proc


def publisher(runner: Runner, *args: str, **env: str) -> Proc:
    proc = runner.python(PUBLISHER, *args, **env)
    proc.expect(r"^ready: ")
    return proc


def events_of(proc: Proc) -> list[dict]:
    return [e for e in map(json.loads, proc.out) if "subject" in e]


def losses_of(proc: Proc) -> int:
    return sum(e["lost"] for e in map(json.loads, proc.out) if "lost" in e)


def stats_of(proc: Proc) -> dict:
    return json.loads(proc.expect(r'^\{"stats"', timeout=60))["stats"]


def finish(proc: Proc) -> None:
    proc.wait(60)
    assert_clean_exit(proc)


def wait_for_events(proc: Proc, count: int, timeout: float = 60.0) -> None:
    """Until the subscriber printed count events (one line each)."""
    proc.expect(lambda _line: len(proc.out) >= count and len(events_of(proc)) >= count, timeout=timeout)


def wait_for_msg(proc: Proc, msg: object, timeout: float = 60.0) -> None:
    proc.expect(lambda line: line.startswith('{"msg"') and json.loads(line)["msg"] == msg, timeout=timeout)


def kill_mid_stream(victim: Proc, pub: Proc) -> float:
    """kill -9 the victim once it has 100 events; seconds until the publisher knows one fewer subscriber."""
    wait_for_events(victim, 100)
    seen = len(pub.out)  # a count the publisher printed before the kill says nothing about it
    victim.proc.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()
    pub.expect(r"^subscribers 1 ", timeout=30, start=seen)
    return time.monotonic() - killed


def test_order_and_wildcards(runner: Runner) -> None:
    doors = subscriber(runner, "home.*.door")
    tail = subscriber(runner, "home.>")
    exact = subscriber(runner, "home.hall.light.level")
    regex = runner.meshrpc("events", "sub", "--json", "--regex", r"HOME\.HALL")   # Pyro3's: any case
    regex.expect(r"^ready: ", stderr=True)
    subjects = ["home.hall.door", "home.kitchen.door", "home.hall.light.level", "garden.door", "home"]
    pub = publisher(runner, "--subjects", ",".join(subjects), "--count", "1000", "--subscribers", "4")
    stats = stats_of(pub)
    assert stats["dropped"] == 0 and stats["published"] == 1000, stats

    def expected(match) -> list[int]:
        return [i for i in range(1000) if match(subjects[i % len(subjects)])]
    wanted = {doors: expected(lambda s: s.endswith(".door") and s.startswith("home.")),
              tail: expected(lambda s: s.startswith("home.")),
              exact: expected(lambda s: s == "home.hall.light.level"),
              regex: expected(lambda s: s.startswith("home.hall"))}
    for proc, numbers in wanted.items():
        wait_for_msg(proc, numbers[-1])
        got = events_of(proc)
        assert [e["msg"] for e in got] == numbers, proc.describe()       # all of them, in order
        seqs = [e["seq"] for e in got]
        assert seqs == list(range(len(numbers))), "numbered without gaps"
        assert losses_of(proc) == 0
        proc.stop(signal.SIGINT)
        assert_clean_exit(proc)
    finish(pub)


def test_overflow_drops_the_oldest_and_counts_every_drop(runner: Runner) -> None:
    slow = subscriber(runner, "t.>", "--delay", "0.02")
    fast = subscriber(runner, "t.>")
    pub = publisher(runner, "--subjects", "t.a", "--count", "2000", "--rate", "500", "--subscribers", "2",
                    MESHRPC_EVENTS_QUEUE_MAX="200", MESHRPC_EVENTS_BATCH_MAX="10")
    pub.expect(r"^published 2000 in ")
    stats = stats_of(pub)
    per = {s["uri"]: s for s in stats["subscribers"]}
    assert len(per) == 2
    # the fast one got everything, in order, although the slow one was overflowing meanwhile
    wait_for_msg(fast, 1999)
    assert [e["msg"] for e in events_of(fast)] == list(range(2000))
    # the slow one: the newest event always arrives (drop-oldest); what it lacks was counted on
    # both sides, exactly
    wait_for_msg(slow, 1999)
    got = [e["msg"] for e in events_of(slow)]
    assert got == sorted(got) and got[-1] == 1999
    dropped = max(s["dropped"] for s in per.values())
    assert dropped > 0 and min(s["dropped"] for s in per.values()) == 0, stats
    assert losses_of(slow) == dropped == 2000 - len(got), slow.describe()
    assert [e["seq"] for e in events_of(slow)] == got   # numbers name the events: the gaps are the drops
    for proc in (slow, fast):
        proc.stop(signal.SIGINT)
        assert_clean_exit(proc)


def test_a_subscriber_killed_mid_stream_is_dropped_and_the_others_go_on(runner: Runner) -> None:
    victim = subscriber(runner, "k.>")
    survivor = subscriber(runner, "k.>")
    pub = publisher(runner, "--subjects", "k.x", "--count", "1500", "--rate", "250", "--subscribers", "2",
                    "--linger", "6")
    noticed = kill_mid_stream(victim, pub)
    assert noticed < 3.5 + 2.0, f"the dead subscriber was dropped after {noticed:.1f} s"   # liveness window + slack
    stats = stats_of(pub)
    wait_for_msg(survivor, 1499)
    assert [e["msg"] for e in events_of(survivor)] == list(range(1500))
    assert losses_of(survivor) == 0
    assert len(stats["subscribers"]) == 1 and stats["subscribers"][0]["dropped"] == 0
    survivor.stop(signal.SIGINT)
    assert_clean_exit(survivor)


def test_a_late_joiner_gets_the_last_value_then_the_stream(runner: Runner) -> None:
    early = subscriber(runner, "room.temp")
    pub = runner.python(PUBLISHER, "--subjects", "room.temp", "--count", "600", "--rate", "100", "--retain",
                        "--subscribers", "1")
    pub.expect(r"^ready: ")
    wait_for_events(early, 150)
    late = subscriber(runner, "room.temp")
    wait_for_events(late, 5)
    first, *rest = events_of(late)
    assert first["retained"] is True and first["seq"] == 0, late.describe()
    stats_of(pub)
    wait_for_msg(early, 599)
    wait_for_msg(late, 599)
    got = events_of(late)
    numbers = [e["msg"] for e in got]
    assert numbers[-1] == 599 and numbers == sorted(numbers)
    assert all(not e["retained"] for e in got[1:])
    assert numbers[1:] == list(range(numbers[1], 600)), "nothing lost after joining"
    assert losses_of(late) == 0
    for proc in (early, late):
        proc.stop(signal.SIGINT)
        assert_clean_exit(proc)


def test_cli_pub_reaches_a_subscriber(runner: Runner) -> None:
    sub = subscriber(runner, "home.*.door")
    done = runner.run("events", "pub", "home.hall.door", '{"open": true}', "--json", "--wait", "10")
    assert_clean_exit(done)
    assert json.loads(done.out[-1])["subscribers"] == 1, done.describe()
    wait_for_events(sub, 1)
    assert events_of(sub)[0]["msg"] == {"open": True}
    nobody = runner.run("events", "pub", "garden.gate", "1", "--wait", "0.2")
    assert_clean_exit(nobody)
    assert re.search(r"to 0 subscribers", nobody.stdout)
    sub.stop(signal.SIGINT)
    assert_clean_exit(sub)


def test_event_server_relays_between_buses(runner: Runner) -> None:
    server = runner.meshrpc("events", "serve", "--no-mesh", "--json")
    uri = json.loads(server.expect(r'^\{"'))["uri"]
    env = {"MESHRPC_EVENTS_SERVER": uri, "MESHRPC_EVENTS_LEASE": "3"}
    sub = subscriber(runner, "s.>", **env)
    pub = publisher(runner, "--subjects", "s.a,s.b", "--count", "500", **env)
    finish(pub)
    wait_for_msg(sub, 499)
    assert [e["msg"] for e in events_of(sub)] == list(range(500))
    sub.stop(signal.SIGINT)
    assert_clean_exit(sub)
    server.stop(signal.SIGTERM)
    assert_clean_exit(server)


def test_event_server_speaks_pyro3s_api_to_a_pyro5_subscriber(runner: Runner) -> None:
    Pyro5 = pytest.importorskip("Pyro5.api")
    server = runner.meshrpc("events", "serve", "--no-mesh", "--json")
    uri = json.loads(server.expect(r'^\{"'))["uri"]
    import threading
    got: list[tuple] = []
    arrived = threading.Condition()

    Pyro5.register_dict_to_class("meshrpc.events.Event", lambda _c, d: (d["subject"], d["msg"], d["time"]))

    @Pyro5.expose
    class Listener:
        @Pyro5.oneway
        def event(self, ev):
            with arrived:
                got.append(ev)
                arrived.notify_all()

    daemon = Pyro5.Daemon(host="127.0.0.1")
    listener_uri = daemon.register(Listener())
    threading.Thread(target=daemon.requestLoop, daemon=True).start()
    try:
        with Pyro5.Proxy(uri) as es:
            es.subscribeMatch([r"stock\..*"], Pyro5.Proxy(listener_uri))
            es.subscribe("weather", Pyro5.Proxy(listener_uri))
            es.publish(["stock.nyse", "other"], 42)
            es.publish("WEATHER", "rain")          # Pyro3 compared subjects ignoring case
        with arrived:
            assert arrived.wait_for(lambda: len(got) >= 2, 30), got
        assert [(s, m) for s, m, _t in got] == [("stock.nyse", 42), ("WEATHER", "rain")]
        assert abs(got[0][2] - time.time()) < 60
    finally:
        daemon.shutdown()
        Pyro5.unregister_dict_to_class("meshrpc.events.Event")
    server.stop(signal.SIGTERM)
    assert_clean_exit(server)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
