"""Events at a site without multicast: RESOLVE names only an etcd cluster (a real one, on loopback
ports), so subscribers announce their inboxes in etcd (under a lease) and publishers follow the etcd
mirror's changes. Real processes: `meshrpc events sub` subscribers and events_publisher.py."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import pytest
from subprocs import Runner, assert_clean_exit, runner_for
from test_events import PUBLISHER, events_of, kill_mid_stream, losses_of, stats_of, subscriber, wait_for_msg

import meshrpc
from meshrpc import etcd

from etcd_support import EtcdCluster, available
from support import wait_until

ok, why = available()
pytestmark = [pytest.mark.skipif(not ok, reason=why), pytest.mark.timeout(120)]
pytest.importorskip("etcd3gw")

TTL = 2   # the subscribers' lease TTL (the default is 3 s)
COUNT = 3000
RATE = 250


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as running:
        yield running


@pytest.fixture
def runner(realm: str, cluster: EtcdCluster) -> Iterator[Runner]:
    for r in runner_for(realm):
        r.env.update(MESHRPC_RESOLVE=cluster.resolve, MESHRPC_ETCD_LEASE_TTL=str(TTL),
                     MESHRPC_ETCD_KEEPALIVE_INTERVAL="0.5")
        yield r
    etcd.reset_for_tests()


def inboxes_in_etcd(realm: str, cluster: EtcdCluster) -> list:
    """The inbox announcements etcd holds now (this process's own mirror of the realm)."""
    settings = meshrpc.config.copy(REALM=realm, RESOLVE=cluster.resolve, LOOKUP_TIMEOUT=10.0)
    return etcd.get_mirror(settings).list(prefix="meshrpc.events.inbox")


def test_subscribers_announce_in_etcd_and_publishers_follow_it(runner: Runner, realm: str,
                                                               cluster: EtcdCluster) -> None:
    victim = subscriber(runner, "site.>")
    survivor = subscriber(runner, "site.*")
    assert wait_until(lambda: len(inboxes_in_etcd(realm, cluster)) == 2, 10)
    assert all("ev:site.>" in e.metadata or "ev:site.*" in e.metadata for e in inboxes_in_etcd(realm, cluster))
    pub = runner.python(PUBLISHER, "--subjects", "site.a,site.b", "--count", str(COUNT), "--rate", str(RATE),
                        "--subscribers", "2", "--linger", "1")
    pub.expect(r"^ready: 2 subscribers")

    # kill -9: no goodbye; the publisher drops it when its lease expires in etcd (TTL, checked every 0.5 s)
    noticed = kill_mid_stream(victim, pub)
    assert noticed < TTL + 3.0, f"the dead subscriber was dropped after {noticed:.1f} s"
    assert len(inboxes_in_etcd(realm, cluster)) == 1

    # a late subscriber: the publisher learns of it from etcd's watch and delivers the rest of the stream
    late = subscriber(runner, "site.>")
    pub.expect(r"^subscribers 2 ", timeout=30)
    stats = stats_of(pub)
    assert stats["published"] == COUNT, stats
    # the killed one's missed events are counted (it is "away"); the two live ones lost nothing
    assert len(stats["subscribers"]) == 2 and all(s["dropped"] == 0 for s in stats["subscribers"]), stats

    wait_for_msg(survivor, COUNT - 1)
    assert [e["msg"] for e in events_of(survivor)] == list(range(COUNT))      # every one, in order
    assert losses_of(survivor) == 0
    got = [e["msg"] for e in events_of(late)]
    assert got, "the late subscriber received nothing: it joined after the stream ended"
    assert got == list(range(got[0], COUNT)), "from joining on: every event, in order"
    assert losses_of(late) == 0
    for proc in (survivor, late):
        proc.stop(signal.SIGINT)
        assert_clean_exit(proc)
    # graceful exits revoke their leases: etcd forgets them at once
    assert wait_until(lambda: not inboxes_in_etcd(realm, cluster), 5)


def test_a_subscriber_on_the_mesh_and_in_etcd_is_one_subscriber(realm: str, cluster: EtcdCluster) -> None:
    from meshrpc.events import EventBus
    from meshrpc.mesh import get_registry, reset_for_tests
    settings = meshrpc.config.copy(REALM=realm, RESOLVE="mesh," + cluster.resolve, INTERFACES="127.0.0.1",
                                   HOST="127.0.0.1", ETCD_LEASE_TTL=TTL, LOOKUP_TIMEOUT=10.0)
    sub, pub = EventBus(settings), EventBus(settings)
    got: list = []
    try:
        sub.subscribe("both.>", got.append)
        # announced on both registries ...
        mirror, registry = etcd.get_mirror(settings), get_registry(settings)
        assert wait_until(lambda: mirror.list(prefix="meshrpc.events.inbox")
                          and registry.list(prefix="meshrpc.events.inbox"), 10)
        assert pub.wait_for_subscribers("both.x", 1, 10) == 1
        # ... known to the publisher from both, delivered to once
        assert wait_until(lambda: len(pub._subscriber_entries) == 2, 10)
        assert pub.subscribers() == [sub.stats()["inbox"]]
        for i in range(200):
            pub.publish("both.x", i)
        assert pub.flush(20)
        assert wait_until(lambda: len(got) >= 200, 20)
        assert [e.msg for e in got] == list(range(200)) and sub.stats()["duplicates"] == 0
        # closing withdraws from both: the publisher forgets it
        sub.close()
        assert wait_until(lambda: not pub.subscribers(), 10)
    finally:
        sub.close()
        pub.close()
        reset_for_tests()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
