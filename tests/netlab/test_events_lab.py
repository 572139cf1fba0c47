"""Events between hosts of the network lab (tools/netlab.py) under 20% packet loss.

A publisher on h1 streams numbered events; subscribers on h2, h3 and h4 (`meshrpc events sub --json`)
lose 20% of the frames they send and 20% of those they receive (the lab's userspace impairment).
TCP hides most of that. Midway, h2's cable is unplugged for longer than the mesh's liveness window:
the publisher drops it, and when it is heard again the events it missed show as a counted gap (or,
when its connection outlived the cut and the queue held them, arrive late and in order).
Whatever happens, no event is missing silently, none arrives twice or out of order. Every process runs inside a lab namespace, so binding 0.0.0.0 is safe.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_netlab import lab_or_skip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from subprocs import Proc, Runner, base_env  # noqa: E402 - the helpers of the integration tests

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(180)]

PUBLISHER = Path(__file__).resolve().parents[1] / "integration" / "events_publisher.py"
# long enough that the publisher is still sending when the partitioned subscriber is declared gone:
# under 20% loss the mesh waits up to ~15 s before a silent daemon counts as gone (docs/mesh.md)
EVENTS = 5000  # 25 s at RATE; measured: h2 dropped ~3.5 s after its link went down, back 0.3 s after link up
RATE = 200


@pytest.fixture
def lab() -> Iterator[object]:
    with lab_or_skip(4) as lab:
        yield lab


def test_subscribers_on_three_hosts_under_20_percent_loss_get_every_event_in_order_or_count_it(lab, realm) -> None:
    runner = Runner(base_env(realm, MESHRPC_HOST="0.0.0.0"))
    try:
        publisher_host, *subscriber_hosts = lab.hosts
        subscribers: list[Proc] = []
        for host in subscriber_hosts:
            host.set_loss(20)
            proc = runner.start(host.command([sys.executable, "-m", "meshrpc", "events", "sub", "--json", "lab.>"]))
            proc.expect(r"^ready: ", stderr=True, timeout=60)
            subscribers.append(proc)
        pub = runner.start(publisher_host.command([
            sys.executable, str(PUBLISHER), "--subjects", "lab.a,lab.b", "--count", str(EVENTS),
            "--rate", str(RATE), "--subscribers", "3"]))
        pub.expect(r"^ready: 3 subscribers", timeout=60)
        partitioned = subscriber_hosts[0]
        subscribers[0].expect(lambda line: line.startswith('{"msg"') and json.loads(line)["msg"] >= 300, timeout=60)
        # (from here on: a live host under loss may have been dropped and taken back before the partition)
        partitioned.link_down()
        pub.expect(r"^subscribers 2 ", timeout=30, start=len(pub.out))
        partitioned.link_up()
        pub.expect(r"^subscribers 3 ", timeout=30, start=len(pub.out))
        stats = json.loads(pub.expect(r'^\{"stats"', timeout=120))["stats"]
        print(f"[events-lab] publisher: {json.dumps(stats)}")
        print("[events-lab] " + " | ".join(line for line in pub.out if line.startswith("subscribers")))
        for host, proc in zip(subscriber_hosts, subscribers):
            proc.expect(lambda line: line.startswith('{"msg"') and json.loads(line)["msg"] == EVENTS - 1, timeout=60)
            lines = [json.loads(line) for line in proc.out]
            events = [e for e in lines if "subject" in e]
            lost = sum(e["lost"] for e in lines if "lost" in e)
            numbers = [e["msg"] for e in events]
            print(f"[events-lab] {host.name}: {len(events)} received, {lost} lost")
            assert numbers == sorted(set(numbers)), f"{host.name}: out of order or twice"
            assert [e["seq"] for e in events] == numbers, f"{host.name}: numbers and events disagree"
            # every event is there, or its absence was counted (nothing missing silently)
            assert len(events) + lost == EVENTS, (host.name, len(events), lost)
            # Losses are allowed, silent ones are not. The partitioned host usually loses events; a live host
            # under 20% loss may too, when a delivery stalls long enough for the publisher to count it away
            # (seen in about one run in four: the gap is counted on both sides, as asserted above).
            proc.stop(signal.SIGINT)
    finally:
        for host in lab.hosts:
            host.clear_loss()
        runner.close()
