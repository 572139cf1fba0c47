"""The registry on etcd, against a real 3-member etcd cluster on loopback ports (docs/etcd.md)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import meshrpc
from meshrpc import etcd
from meshrpc.etcd import entries as _entries, gateway as _gateway  # noqa: F401 - etcd.gateway below
from meshrpc.errors import NamingError

from etcd_support import EtcdCluster, Relay, available, daemon_process
from support import wait_until

ok, why = available()
pytestmark = [pytest.mark.skipif(not ok, reason=why), pytest.mark.timeout(120)]
pytest.importorskip("etcd3gw")

TTL = 2   # lease TTL of these tests' daemons (the default is 3 s)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_mirrors() -> Iterator[None]:
    yield
    etcd.reset_for_tests()


def settings_for(realm: str, resolve: str, **extra: Any) -> meshrpc.Settings:
    values: dict[str, Any] = {"REALM": realm, "RESOLVE": resolve, "ETCD_LEASE_TTL": TTL, "ETCD_KEEPALIVE_INTERVAL": 0.5,
                              "HOST": "127.0.0.1", "LOOKUP_TIMEOUT": 5.0}
    values.update(extra)
    return meshrpc.config.copy(**values)


def env_for(realm: str, resolve: str, **extra: str) -> dict[str, str]:
    env = {"MESHRPC_REALM": realm, "MESHRPC_RESOLVE": resolve, "MESHRPC_ETCD_LEASE_TTL": str(TTL),
           "MESHRPC_ETCD_KEEPALIVE_INTERVAL": "0.5", "MESHRPC_HOST": "127.0.0.1"}
    env.update(extra)
    return env


def own_mirror(settings: meshrpc.Settings) -> tuple[Any, Any]:
    """A mirror with a watcher of its own (not the process-wide one): one more independent reader."""
    from meshrpc.etcd.mirror import Mirror
    from meshrpc.etcd.watcher import Watcher
    def start(mirror: Mirror) -> None:
        mirror.feeder = Watcher(mirror, mirror.settings)
        mirror.feeder.start()
    mirror = Mirror(settings, start=start)
    mirror.ensure_synced(10)
    return mirror, mirror.feeder


def test_names_resolve_and_a_crashed_daemon_leaves_every_mirror_within_ttl(cluster: EtcdCluster, realm: str) -> None:
    settings = settings_for(realm, cluster.resolve)
    crashed = daemon_process(env_for(realm, cluster.resolve), "svc.crash=blue,x")
    stopped = daemon_process(env_for(realm, cluster.resolve), "svc.stop=red")
    mirrors = [own_mirror(settings) for _ in range(2)]
    try:
        for mirror, _ in mirrors:
            assert wait_until(lambda: mirror.lookup("svc.crash") and mirror.lookup("svc.stop"), 10)
        with meshrpc.Proxy("PYRONAME:svc.crash", settings=settings) as p:
            assert p.where() == "svc.crash=blue,x"
        with meshrpc.Proxy("PYROMETA:red", settings=settings) as p:
            assert p.echo(5) == 5
        # kill -9: no goodbye; the lease expires within TTL (etcd checks expiry every 0.5 s)
        crashed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        crashed.wait(10)
        for mirror, _ in mirrors:
            assert wait_until(lambda: not mirror.lookup("svc.crash"), TTL + 1 + 1)
            assert time.monotonic() - killed_at <= TTL + 1, "crashed daemon's names outlived TTL + 1 s"
        # graceful stop: the lease is revoked, the names go at once
        stopped.stdin.close()
        assert wait_until(lambda: all(not m.lookup("svc.stop") for m, _ in mirrors), 5)
        stop_seen = time.monotonic()
        stopped.wait(10)
        assert "STOPPED" in stopped.stdout.read()
        assert time.monotonic() - stop_seen < TTL
    finally:
        for proc in (crashed, stopped):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for _, watcher in mirrors:
            watcher.close()


def test_leader_crash_loses_no_call_registration_or_watch_event(cluster: EtcdCluster, realm: str) -> None:
    settings = settings_for(realm, cluster.resolve, COMMTIMEOUT=5.0)
    first = daemon_process(env_for(realm, cluster.resolve), "svc.loop")
    mirror, watcher = own_mirror(settings)
    events: list[tuple[str, str]] = []
    mirror.subscribe(lambda event, entry: events.append((event, entry.name)))
    later = None
    leader: int | None = None
    failures: list[BaseException] = []
    calls = 0
    stop = threading.Event()

    def call_in_a_loop() -> None:
        nonlocal calls
        while not stop.is_set():
            try:             # resolved through the process's mirror and connected afresh every time
                with meshrpc.Proxy("PYRONAME:svc.loop", settings=settings) as proxy:
                    assert proxy.echo(calls) == calls
                calls += 1
            except Exception as exc:  # noqa: BLE001 - counted: the acceptance wants none
                failures.append(exc)
    caller = threading.Thread(target=call_in_a_loop)
    try:
        assert wait_until(lambda: mirror.lookup("svc.loop"), 10)
        caller.start()
        assert wait_until(lambda: calls > 20, 10)
        leader = cluster.leader()
        cluster.kill(leader)
        # registration goes on: a new daemon's name reaches the watching mirror and a new resolver
        later = daemon_process(env_for(realm, cluster.resolve), "svc.after")
        assert wait_until(lambda: mirror.lookup("svc.after"), 15)
        assert ("added", "svc.after") in events
        with meshrpc.Proxy("PYRONAME:svc.after", settings=settings) as p:
            assert p.where() == "svc.after"
        # and the first daemon's lease survived the election (its keep-alives went to another member)
        before = calls
        assert wait_until(lambda: calls > before + 20, 10)
        assert mirror.lookup("svc.loop") and ("removed", "svc.loop") not in events
        assert not failures, failures[:3]
    finally:
        stop.set()
        if caller.is_alive():
            caller.join(10)
        for proc in (first, later):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        watcher.close()
        if leader is not None:
            cluster.restart(leader)


def test_client_cut_off_keeps_serving_then_converges_missing_nothing(cluster: EtcdCluster, realm: str) -> None:
    relays = [Relay(("127.0.0.1", int(ep.rsplit(":", 1)[1]))) for ep in cluster.endpoints]
    via_relays = "etcd://" + ",".join(r.endpoint for r in relays)
    settings = settings_for(realm, via_relays, ETCD_WATCH_IDLE=1.0, ETCD_TIMEOUT=0.5, ETCD_RETRY_INTERVAL=0.2)
    staying = daemon_process(env_for(realm, cluster.resolve), "svc.stay")
    leaving = daemon_process(env_for(realm, cluster.resolve), "svc.leave")
    coming = None
    mirror = etcd.get_mirror(settings)         # the process's own: proxies resolve through it
    mirror.ensure_synced(10)
    watcher = mirror.feeder
    events: list[tuple[str, str]] = []
    mirror.subscribe(lambda event, entry: events.append((event, entry.name)))
    try:
        assert wait_until(lambda: mirror.lookup("svc.stay") and mirror.lookup("svc.leave"), 10)
        for relay in relays:
            relay.cut()
        assert wait_until(lambda: mirror.stale, 15), "the mirror did not notice it lost etcd"
        # cut off: it still resolves from the mirror and calls what it can reach
        with meshrpc.Proxy("PYRONAME:svc.stay", settings=settings) as p:
            assert p.where() == "svc.stay"
        # meanwhile etcd changes: one daemon goes, another comes, and the history is compacted
        leaving.stdin.close()
        leaving.wait(10)
        coming = daemon_process(env_for(realm, cluster.resolve), "svc.come")
        gateway = etcd.gateway.Gateway(settings_for(realm, cluster.resolve))
        prefix = etcd.entries.realm_prefix(settings)
        assert wait_until(lambda: len(gateway.range_prefix(prefix)[1]) == 2, 10)
        gateway.compact(gateway.range_prefix(prefix)[0])
        gateway.close()
        assert mirror.lookup("svc.leave"), "a stale mirror keeps its last-known entries"
        for relay in relays:
            relay.heal()
        assert wait_until(lambda: not mirror.stale and mirror.lookup("svc.come") and not mirror.lookup("svc.leave"), 15)
        assert watcher.relists == 2, "the compacted revision should have made it list again"
        assert events.count(("added", "svc.come")) == 1 and events.count(("removed", "svc.leave")) == 1
        assert sorted(e.name for e in mirror.list()) == ["svc.come", "svc.stay"]
    finally:
        for proc in (staying, leaving, coming):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        watcher.close()
        for relay in relays:
            relay.close()


def test_watch_resumes_without_duplicates_after_a_member_dies(cluster: EtcdCluster, realm: str) -> None:
    settings = settings_for(realm, cluster.resolve)
    mirror, watcher = own_mirror(settings)
    events: list[tuple[str, str]] = []
    mirror.subscribe(lambda event, entry: events.append((event, entry.name)))
    from meshrpc.etcd.registrar import EtcdRegistrar
    writer = EtcdRegistrar(settings)
    try:
        writer.register("svc.a", "PYRO:a@127.0.0.1:1", set())
        assert wait_until(lambda: mirror.lookup("svc.a"), 10)
        cluster.kill(watcher.gateway._current)        # the member the watch is on
        for n in range(5):
            writer.register(f"svc.n{n}", f"PYRO:n{n}@127.0.0.1:1", {"n"})
        assert wait_until(lambda: len(mirror.yplookup({"n"})) == 5, 15)
        assert sorted(events) == sorted([("added", "svc.a")] + [("added", f"svc.n{n}") for n in range(5)])
    finally:
        writer.close()
        watcher.close()
        for i in range(3):
            if cluster.procs[i] is None or cluster.procs[i].poll() is not None:
                cluster.restart(i)


def test_mesh_and_etcd_together_are_one_provider_set(cluster: EtcdCluster, realm: str, start_daemon: Any) -> None:
    settings = settings_for(realm, "mesh," + cluster.resolve, INTERFACES="127.0.0.1")
    running = start_daemon(host="127.0.0.1", settings=settings)

    class Echo:
        @meshrpc.expose
        def echo(self, v: Any) -> Any:
            return v
    running.register(Echo(), name="svc.both", metadata={"both"})
    mirror = etcd.get_mirror(settings)
    from meshrpc.mesh import get_registry
    from meshrpc import providers
    registry = get_registry(settings)
    assert wait_until(lambda: mirror.lookup("svc.both") and registry.lookup("svc.both"), 10)
    views = [("mesh", registry), ("etcd", mirror)]
    found = providers.merged(views, lambda view: view.lookup("svc.both"))
    assert len(found) == 1
    with meshrpc.Proxy("PYROMETA:both", settings=settings) as p:
        assert p.echo(1) == 1


def test_unreachable_and_misconfigured_etcd_say_what_to_check(realm: str) -> None:
    from subprocs import free_port
    settings = settings_for(realm, f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}", LOOKUP_TIMEOUT=2.0)
    from meshrpc.resolve import resolve
    with pytest.raises(NamingError) as info:
        resolve(meshrpc.URI("PYRONAME:nothing"), settings)
    text = str(info.value)
    assert "etcd unreachable" in text and "check that its members run" in text and "\n" not in text
    with pytest.raises(NamingError, match="etcds://"):
        etcd.get_mirror(settings.copy(ETCD_CACERT="/nonexistent.pem")).ensure_synced()
    with pytest.raises(NamingError, match="RESOLVE"):
        etcd.get_mirror(settings.copy(RESOLVE="etcd://nohost")).ensure_synced()


def test_cli_lookup_list_browse_with_source_etcd(cluster: EtcdCluster, realm: str) -> None:
    import json
    import subprocess
    import sys
    from etcd_support import REPO
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MESHRPC_", "PYRO_"))}
    env.update(env_for(realm, cluster.resolve), PYTHONPATH=str(REPO))
    proc = daemon_process(env_for(realm, cluster.resolve), "cli.one=alpha", "cli.two=alpha,beta")
    try:
        def run(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "meshrpc", *argv], env=env, capture_output=True,
                                  text=True, timeout=60)
        assert wait_until(lambda: len(json.loads(run("list", "--source", "etcd", "--json").stdout)) == 2, 15)
        found = json.loads(run("lookup", "cli.one", "--source", "etcd", "--json").stdout)
        assert [(r["name"], r["source"]) for r in found] == [("cli.one", "etcd")]
        rows = json.loads(run("yplookup", "--all", "beta", "--source", "etcd", "--json").stdout)
        assert [r["name"] for r in rows] == ["cli.two"]
        rows = json.loads(run("browse", "--source", "etcd", "--json").stdout)
        assert sorted(r["name"] for r in rows) == ["cli.one", "cli.two"] and not any(r["stale"] for r in rows)
        missing = run("lookup", "cli.none", "--source", "etcd")
        assert missing.returncode == 1 and "in etcd" in missing.stderr
    finally:
        proc.kill()
        proc.wait()


def test_asyncio_resolver_asks_etcd_too(cluster: EtcdCluster, realm: str) -> None:
    import asyncio
    import importlib
    aio_resolve = importlib.import_module("meshrpc.aio.resolve")   # meshrpc.aio.resolve is also a function
    from meshrpc.etcd.registrar import EtcdRegistrar
    settings = settings_for(realm, "mesh," + cluster.resolve, LOOKUP_TIMEOUT=3.0, INTERFACES="127.0.0.1")
    writer = EtcdRegistrar(settings)
    try:
        writer.register("aio.only.in.etcd", "PYRO:x@127.0.0.1:9", {"aio"})
        found = asyncio.run(aio_resolve.resolve_with_source(meshrpc.URI("PYROMETA:aio"), settings))
        assert found == (meshrpc.URI("PYRO:x@127.0.0.1:9"), "etcd")
    finally:
        writer.close()
