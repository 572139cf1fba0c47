"""Mesh discovery with real zeroconf between real processes, on loopback only (127.0.0.1).

Every test has its own realm, so parallel runs and other meshes on this machine do not interfere.
Publishers run in `sys.executable -c` subprocesses (one Zeroconf per process, as in production).
Timings are printed (run with -s to see them) and asserted against the design targets.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshrpc.config import Settings
from meshrpc.mesh import ADDED, REMOVED, MeshPublisher, Registry, reset_for_tests
from meshrpc.mesh import discovery as discovery_module
from meshrpc.mesh.records import Entry

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"

# A daemon stand-in: a listening socket (so probes see a live endpoint) plus a MeshPublisher,
# driven by JSON lines on stdin.
AGENT = r"""
import json, socket, sys, time
from meshrpc.config import Settings
from meshrpc.mesh import MeshPublisher
cfg = json.loads(sys.argv[1])
settings = Settings().copy(REALM=cfg["realm"], INTERFACES="127.0.0.1", **cfg.get("settings", {}))
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
port = server.getsockname()[1]
pub = MeshPublisher("127.0.0.1", settings)
uri = lambda obj: "PYRO:%s@127.0.0.1:%d" % (obj, port)
started = time.monotonic()
for name, obj, tags in cfg.get("objects", []):
    pub.publish(name, uri(obj), set(tags))
print(json.dumps({"port": port, "node": pub.node, "wall": time.time(),
                  "publish_s": time.monotonic() - started}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "withdraw":
        pub.withdraw(cmd["name"], uri(cmd["obj"]))
    elif cmd["op"] == "publish":
        pub.publish(cmd["name"], uri(cmd["obj"]), set(cmd["tags"]))
    elif cmd["op"] == "close":
        pub.close()
    print(json.dumps({"op": cmd["op"], "wall": time.time()}), flush=True)
"""

# Raw zeroconf (not meshrpc) announcing malformed records under our service type and realm.
GARBAGE = r"""
import json, sys
from zeroconf import ServiceInfo, Zeroconf
realm = sys.argv[1]
def txt(*items):
    return b"".join(bytes([len(i)]) + i for i in items)
r = b"r=" + realm.encode()
bad = {
    "garbage-junk": b"\xff\x00\x13binary junk \x00\x01",
    "garbage-missing": txt(b"v=1", r, b"o=abc", b"i=1", b"s=1"),
    "garbage-version": txt(b"v=99", r, b"n=x"),
    "garbage-chunks": txt(b"v=1", r, b"o=abc", b"i=1", b"s=1", b"n*=5", b"n0=x", b"u=PYRO:o@127.0.0.1:1"),
    "garbage-label": txt(b"v=1", r, b"o=abc", b"i=1", b"s=1", b"n=x", b"u=PYRO:o@127.0.0.1:1"),
    "garbage-uri": txt(b"v=1", r, b"o=abc", b"i=1", b"s=1", b"n=x", b"u=PYRONAME:x"),
}
zc = Zeroconf(interfaces=["127.0.0.1"])
for label, text in bad.items():
    zc.register_service(ServiceInfo("_meshrpc._tcp.local.", label + "._meshrpc._tcp.local.", port=1,
                                    properties=text, server="garbage.local.",
                                    parsed_addresses=["127.0.0.1"]), cooperating_responders=True)
print(json.dumps(sorted(bad)), flush=True)
sys.stdin.read()
zc.close()
"""

COLD = r"""
import json, sys, time
t0 = time.monotonic()
from meshrpc.config import Settings
from meshrpc.mesh import Registry
t1 = time.monotonic()
reg = Registry(Settings().copy(REALM=sys.argv[1], INTERFACES="127.0.0.1", HOST="127.0.0.1"))
found = reg.resolve(sys.argv[2], timeout=5.0)
t2 = time.monotonic()
print(json.dumps({"import_s": t1 - t0, "resolve_s": t2 - t1, "found": [e.uri for e in found]}), flush=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MESHRPC_INTERFACES"] = LOOPBACK            # belt and braces: never off the machine
    return env


class Proc:
    """A subprocess speaking JSON lines."""

    def __init__(self, code: str, *args: str) -> None:
        self.popen = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=_env(), cwd=str(ROOT))

    def read(self, timeout: float = 15.0) -> Any:
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        assert ready, "subprocess did not answer in time"
        line = self.popen.stdout.readline()
        assert line, f"subprocess ended (exit code {self.popen.poll()})"
        return json.loads(line)

    def send(self, **command: Any) -> Any:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()
        return self.read()

    def kill9(self) -> float:
        self.popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        self.popen.wait(10)
        return killed

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                assert self.popen.stdin is not None
                self.popen.stdin.close()
                self.popen.wait(10)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                self.popen.kill()
                self.popen.wait(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def agent(realm: str, objects: list[tuple[str, str, list[str]]], **settings: Any) -> tuple[Proc, dict]:
    proc = Proc(AGENT, json.dumps({"realm": realm, "objects": objects, "settings": settings}))
    return proc, proc.read()


class Recorder:
    """Subscribes to a registry; lets a test wait for an event instead of sleeping."""

    def __init__(self, registry: Registry) -> None:
        self.events: list[tuple[float, float, str, Entry]] = []    # (wall, monotonic, event, entry)
        self._cond = threading.Condition()
        registry.subscribe(self._on_event)

    def _on_event(self, event: str, entry: Entry) -> None:
        with self._cond:
            self.events.append((time.time(), time.monotonic(), event, entry))
            self._cond.notify_all()

    def wait(self, predicate: Callable[[str, Entry], bool], timeout: float = 10.0) -> tuple[float, float]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for wall, mono, event, entry in self.events:
                    if predicate(event, entry):
                        return wall, mono
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"event not seen within {timeout} s; events: {self.events}"
                self._cond.wait(remaining)

    def count(self, event: str) -> int:
        with self._cond:
            return sum(1 for _, _, ev, _ in self.events if ev == event)


@pytest.fixture
def realm() -> str:
    return "test-" + uuid.uuid4().hex[:12]


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def settings_for(realm: str, **changes: Any) -> Settings:
    return Settings().copy(REALM=realm, INTERFACES=LOOPBACK, HOST=LOOPBACK, **changes)


@pytest.fixture
def make_registry(realm: str) -> Iterator[Callable[..., Registry]]:
    made: list[Registry] = []

    def make(**changes: Any) -> Registry:
        registry = Registry(settings_for(realm, **changes))
        made.append(registry)
        return registry
    yield make
    for registry in made:
        registry.close()
    instance = discovery_module._instance
    if instance is not None:                      # the one process Zeroconf stayed on loopback
        assert instance._interfaces == [LOOPBACK]
    reset_for_tests()


@pytest.fixture
def reg(make_registry: Callable[..., Registry]) -> Registry:
    return make_registry()


# ---------------------------------------------------------------- tests

@pytest.mark.timeout(60)
def test_publish_is_visible_in_another_process_fast(reg: Registry, realm: str, procs: list[Proc]) -> None:
    recorder = Recorder(reg)
    reg.lookup("warmup")                                  # browsing runs before the publisher starts
    proc, hello = agent(realm, [("example.greeting", "obj_1", ["greeter"])])
    procs.append(proc)
    wall, _ = recorder.wait(lambda ev, e: ev == ADDED and e.name == "example.greeting")
    latency = wall - hello["wall"]
    print(f"\n[mesh] first publish() call incl. zeroconf start: {hello['publish_s'] * 1000:.1f} ms; "
          f"publish returned -> visible in another process: {latency * 1000:.1f} ms")
    assert hello["publish_s"] < 1.0
    assert latency < 0.5

    found = reg.lookup("example.greeting")
    assert [e.uri for e in found] == [f"PYRO:obj_1@127.0.0.1:{hello['port']}"]
    assert found[0].metadata == {"greeter"} and found[0].node == hello["node"]
    assert found[0].host == LOOPBACK

    rounds = 20000
    started = time.perf_counter()
    for _ in range(rounds):
        reg.lookup("example.greeting")
    warm_us = (time.perf_counter() - started) / rounds * 1e6
    print(f"[mesh] warm lookup: {warm_us:.2f} us")
    assert warm_us < 200

    republish = proc.send(op="publish", name="second.object", obj="obj_2", tags=["x"])
    wall, _ = recorder.wait(lambda ev, e: ev == ADDED and e.name == "second.object")
    print(f"[mesh] warm publish -> visible: {(wall - republish['wall']) * 1000:.1f} ms")
    assert wall - republish["wall"] < 0.5


@pytest.mark.timeout(60)
def test_withdraw_and_close_send_goodbyes(reg: Registry, realm: str, procs: list[Proc]) -> None:
    recorder = Recorder(reg)
    proc, _hello = agent(realm, [("a.one", "obj_1", []), ("a.two", "obj_2", [])])
    procs.append(proc)
    assert len(reg.resolve("a.one", 10)) == 1 and len(reg.resolve("a.two", 10)) == 1
    withdrawn = proc.send(op="withdraw", name="a.one", obj="obj_1")
    wall, _ = recorder.wait(lambda ev, e: ev == REMOVED and e.name == "a.one", timeout=3)
    print(f"\n[mesh] withdraw -> removed event: {(wall - withdrawn['wall']) * 1000:.1f} ms")
    assert reg.lookup("a.one") == [] and len(reg.lookup("a.two")) == 1
    proc.send(op="close")
    recorder.wait(lambda ev, e: ev == REMOVED and e.name == "a.two", timeout=3)
    assert reg.list(prefix="a.") == []


@pytest.mark.timeout(60)
def test_kill_9_is_noticed_within_5_seconds(reg: Registry, realm: str, procs: list[Proc]) -> None:
    recorder = Recorder(reg)
    proc, _ = agent(realm, [("doomed.service", "obj_1", [])])
    procs.append(proc)
    assert reg.resolve("doomed.service", 10)
    killed = proc.kill9()
    _, removed = recorder.wait(lambda ev, e: ev == REMOVED and e.name == "doomed.service", timeout=10)
    detection = removed - killed
    print(f"\n[mesh] kill -9 -> removed from another registry: {detection:.2f} s "
          f"(liveness window {reg.settings.MESH_LIVENESS_WINDOW} s)")
    assert detection < 5.0
    assert reg.lookup("doomed.service") == []


@pytest.mark.timeout(60)
def test_heartbeats_keep_a_quiet_publisher_alive(make_registry: Callable[..., Registry], realm: str,
                                                 procs: list[Proc]) -> None:
    reg = make_registry(MESH_LIVENESS_WINDOW=1.0)
    recorder = Recorder(reg)
    proc, _ = agent(realm, [("quiet.service", "obj_1", [])], MESH_HEARTBEAT_INTERVAL=0.25)
    procs.append(proc)
    assert reg.resolve("quiet.service", 10)
    with pytest.raises(AssertionError):                   # nothing to await: a removal must NOT happen
        recorder.wait(lambda ev, e: ev == REMOVED, timeout=3.0)
    assert len(reg.lookup("quiet.service")) == 1


@pytest.mark.timeout(60)
def test_restart_on_another_port_replaces_the_old_entry(make_registry: Callable[..., Registry],
                                                        realm: str, procs: list[Proc]) -> None:
    # a long liveness window: only the replacement rule (probe of the contested entry) can explain it
    reg = make_registry(MESH_LIVENESS_WINDOW=60.0)
    recorder = Recorder(reg)
    first, hello1 = agent(realm, [("restarting.service", "obj", [])])
    procs.append(first)
    old_uri = f"PYRO:obj@127.0.0.1:{hello1['port']}"
    assert [e.uri for e in reg.resolve("restarting.service", 10)] == [old_uri]
    first.kill9()
    second, hello2 = agent(realm, [("restarting.service", "obj", [])])
    procs.append(second)
    new_uri = f"PYRO:obj@127.0.0.1:{hello2['port']}"
    assert new_uri != old_uri
    _, added = recorder.wait(lambda ev, e: ev == ADDED and e.uri == new_uri)
    _, removed = recorder.wait(lambda ev, e: ev == REMOVED and e.uri == old_uri, timeout=5)
    print(f"\n[mesh] restart elsewhere: old entry replaced {max(0.0, removed - added) * 1000:.1f} ms "
          f"after the new announcement")
    assert removed - added < 1.0
    assert [e.uri for e in reg.lookup("restarting.service")] == [new_uri]
    assert reg.choose("restarting.service").uri == new_uri


@pytest.mark.timeout(60)
def test_restart_with_a_stable_node_id_replaces_at_once(make_registry: Callable[..., Registry],
                                                        realm: str, procs: list[Proc]) -> None:
    reg = make_registry(MESH_LIVENESS_WINDOW=60.0, MESH_PROBE_CONTESTED=False)
    recorder = Recorder(reg)
    node_id = "stable-" + uuid.uuid4().hex[:8]
    first, hello1 = agent(realm, [("pinned.service", "obj", [])], MESH_NODE_ID=node_id)
    procs.append(first)
    assert hello1["node"] == node_id and reg.resolve("pinned.service", 10)
    first.kill9()
    second, hello2 = agent(realm, [("pinned.service", "obj", [])], MESH_NODE_ID=node_id)
    procs.append(second)
    new_uri = f"PYRO:obj@127.0.0.1:{hello2['port']}"
    recorder.wait(lambda ev, e: ev == ADDED and e.uri == new_uri)
    assert [e.uri for e in reg.lookup("pinned.service")] == [new_uri]
    assert recorder.count(REMOVED) == 1


@pytest.mark.timeout(60)
def test_dotted_long_names_and_large_tag_sets_roundtrip(reg: Registry, realm: str, procs: list[Proc]) -> None:
    long_name = "deep." + ".".join(f"level{i}" for i in range(60))            # ~480 bytes, dotted
    unicode_name = "haus.küche.licht.名前"
    tags = sorted({f"tag,{i:02d}%" for i in range(40)} | {"ünïcode"})
    objects = [("home.kitchen.light", "o1", ["lamp"]), (long_name, "o2", tags), (unicode_name, "o3", [])]
    proc, hello = agent(realm, objects)
    procs.append(proc)
    for name, obj, obj_tags in objects:
        found = reg.resolve(name, 10)
        assert [e.uri for e in found] == [f"PYRO:{obj}@127.0.0.1:{hello['port']}"]
        assert found[0].metadata == set(obj_tags) and found[0].name == name
    assert [e.name for e in reg.yplookup(meta_all={"tag,07%", "ünïcode"})] == [long_name]
    assert [e.name for e in reg.list(prefix="haus.")] == [unicode_name]


@pytest.mark.timeout(60)
def test_too_much_metadata_is_refused_at_publish(realm: str) -> None:
    pub = MeshPublisher(LOOPBACK, settings_for(realm))
    try:
        with pytest.raises(Exception, match="MESH_TXT_MAX"):
            pub.publish("huge", "PYRO:obj@127.0.0.1:1", {f"tag-{i}" for i in range(5000)})
    finally:
        pub.close()
        reset_for_tests()


@pytest.mark.timeout(60)
def test_garbage_records_are_ignored_and_logged_once(reg: Registry, realm: str, procs: list[Proc],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="meshrpc.mesh")
    reg.lookup("warmup")
    garbage = Proc(GARBAGE, realm)
    procs.append(garbage)
    labels = garbage.read()                              # all announced (3 times each) by now
    proc, _hello = agent(realm, [("valid.after.garbage", "obj", [])])   # queued behind the garbage
    procs.append(proc)
    assert [e.name for e in reg.resolve("valid.after.garbage", 10)] == ["valid.after.garbage"]
    assert [e.name for e in reg.list()] == ["valid.after.garbage"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "meshrpc.mesh"]
    for label in labels:
        mentions = [w for w in warnings if f"{label}._meshrpc._tcp.local." in w]
        assert len(mentions) == 1, (label, warnings)
    worker = discovery_module._instance._worker
    assert worker is not None and worker.is_alive()


@pytest.mark.timeout(60)
def test_cold_lookup_in_a_new_process(realm: str, procs: list[Proc]) -> None:
    proc, hello = agent(realm, [("cold.service", "obj", [])])
    procs.append(proc)
    cold = Proc(COLD, realm, "cold.service")
    procs.append(cold)
    result = cold.read(timeout=20)
    print(f"\n[mesh] cold lookup in a new process: {result['resolve_s'] * 1000:.1f} ms "
          f"(+ {result['import_s'] * 1000:.0f} ms imports)")
    assert result["found"] == [f"PYRO:obj@127.0.0.1:{hello['port']}"]
    assert result["resolve_s"] < 2.0


@pytest.mark.timeout(60)
def test_many_registrations_do_not_serialize(reg: Registry, realm: str, procs: list[Proc]) -> None:
    recorder = Recorder(reg)
    reg.lookup("warmup")
    count = 50
    proc, hello = agent(realm, [(f"bulk.{i}", f"o{i}", ["bulk"]) for i in range(count)])
    procs.append(proc)
    print(f"\n[mesh] {count} publish() calls: {hello['publish_s'] * 1000:.0f} ms")
    assert hello["publish_s"] < count * 0.1            # probing would take 1.6 s each
    recorder.wait(lambda ev, e: recorder.count(ADDED) >= count, timeout=10)
    assert len(reg.yplookup(meta_all={"bulk"})) == count


@pytest.mark.timeout(60)
def test_realms_are_isolated(make_registry: Callable[..., Registry], realm: str, procs: list[Proc]) -> None:
    other = Registry(settings_for("other-" + uuid.uuid4().hex[:8]))
    try:
        mine = make_registry()
        proc, _ = agent(realm, [("realm.service", "obj", [])])
        procs.append(proc)
        assert mine.resolve("realm.service", 10)
        assert other.resolve("realm.service", 0.5) == []
    finally:
        other.close()


@pytest.mark.timeout(60)
def test_same_process_publish_is_visible_at_once(reg: Registry, realm: str) -> None:
    recorder = Recorder(reg)
    pub = MeshPublisher(LOOPBACK, settings_for(realm))
    try:
        pub.publish("local.service", "PYRO:obj@127.0.0.1:5555", {"here"})
        assert [e.uri for e in reg.lookup("local.service")] == ["PYRO:obj@127.0.0.1:5555"]
        pub.publish("local.service", "PYRO:obj@127.0.0.1:5555", {"here", "updated"})
        assert reg.lookup("local.service")[0].metadata == {"here", "updated"}
        pub.withdraw("local.service", "PYRO:obj@127.0.0.1:5555")
        assert reg.lookup("local.service") == []
        pub.publish("local.again", "PYRO:obj@127.0.0.1:5556", set())
    finally:
        pub.close()
    assert reg.lookup("local.again") == []
    assert [ev for _, _, ev, _ in recorder.events] == ["added", "updated", "removed", "added", "removed"]


@pytest.mark.timeout(60)
def test_publish_from_many_threads_and_from_callbacks(reg: Registry, realm: str) -> None:
    pub = MeshPublisher(LOOPBACK, settings_for(realm))
    echoed = threading.Event()

    def echo(event: str, entry: Entry) -> None:       # a callback that publishes: must not deadlock
        if event == ADDED and entry.name == "threads.7":
            pub.publish("echo.of.7", "PYRO:echo@127.0.0.1:7000", set())
        if event == ADDED and entry.name == "echo.of.7":
            echoed.set()

    reg.subscribe(echo)
    threads = [threading.Thread(target=pub.publish, args=(f"threads.{i}", f"PYRO:o{i}@127.0.0.1:{6000 + i}",
                                                          {"t"})) for i in range(20)]
    try:
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        elapsed = time.monotonic() - started
        print(f"\n[mesh] 20 concurrent publish() calls: {elapsed * 1000:.0f} ms")
        assert elapsed < 5.0
        assert echoed.wait(5)
        assert len(reg.yplookup(meta_all={"t"})) == 20
    finally:
        pub.close()
    assert reg.list() == []
