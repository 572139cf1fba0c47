"""Mesh discovery between hosts of the network lab (tools/netlab.py): the issue's acceptance points.

Every daemon and client runs INSIDE a lab namespace (``host.popen`` of a ``sys.executable -c``
helper), where binding 0.0.0.0 is safe: a lab host has only loopback and its veth into the lab
switch. The test process itself never opens an mDNS socket, so no discovery packet can reach the
machine's real interfaces (run under ``/work/shared/tools/lan-leak-check`` to check).

Helpers speak JSON lines: commands on stdin, replies and registry events on stdout, each with a
``time.monotonic()`` stamp. CLOCK_MONOTONIC is one clock for the whole machine (namespaces share
it), so stamps taken in different hosts and in this process compare directly.

Timings are printed as ``[mesh-lab] ...`` lines (run with -s) and stored with ``record_property``;
they are asserted against the issue's bounds, never tighter. Nothing is retried.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_netlab import lab_or_skip

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(120)]

# The bounds (seconds).
VISIBLE_BOUND = 0.5          # register returned -> visible on another host
CRASH_BOUND = 5.0            # kill -9 -> gone from another host's registry
REPLACE_BOUND = 1.0          # restart elsewhere: "as soon as the announcement arrives" (+ a probe)
LINK_BOUND = 5.0             # link down -> dropped; link up -> back
CHECK_INTERVAL = 0.5         # MESH_INTERFACE_CHECK_INTERVAL given to the daemon that moves
MOVE_BOUND = CHECK_INTERVAL + 2.5   # one check, the zeroconf socket update and one announcement

# ---------------------------------------------------------------------------------------------
# helper programs (run inside lab hosts)

# A meshrpc daemon bound to 0.0.0.0 serving Greeter objects; registers on command.
SERVER = r"""
import json, logging, os, sys, threading, time
logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")   # the test reads stderr
logging.getLogger("meshrpc").setLevel(os.environ.get("MESHRPC_LOGLEVEL") or "WARNING")
import meshrpc

cfg = json.loads(sys.argv[1])
out_lock = threading.Lock()

def emit(**msg):
    with out_lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

@meshrpc.expose
class Greeter:
    def greet(self, who):
        return "hello %s from %s" % (who, cfg["host"])

daemons = {}

def daemon_for(realm):
    if realm not in daemons:
        settings = meshrpc.config.copy(REALM=realm) if realm else meshrpc.config
        daemon = meshrpc.Daemon(host="0.0.0.0", settings=settings)
        threading.Thread(target=daemon.requestLoop, daemon=True).start()
        daemons[realm] = daemon
    return daemons[realm]

emit(op="ready", pid=os.getpid(), port=daemon_for(None).sock.getsockname()[1], t=time.monotonic())
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        if cmd["op"] == "register":
            daemon = daemon_for(cmd.get("realm"))
            before = time.monotonic()
            uri = daemon.register(Greeter(), name=cmd["name"], metadata=set(cmd["tags"]))
            reply = {"uri": str(uri), "object": uri.object, "port": uri.port, "before": before,
                     "after": time.monotonic()}
        elif cmd["op"] == "unregister":
            daemon_for(None).unregister(cmd["object"])
            reply = {"unregistered": cmd["object"]}
        elif cmd["op"] == "register_many":
            daemon = daemon_for(None)
            for i in range(cmd["count"]):
                daemon.register(Greeter(), name="%s.obj%03d" % (cmd["prefix"], i), metadata=set(cmd["tags"]))
            reply = {"registered": cmd["count"]}
        elif cmd["op"] == "publish_as_loopback":
            # what a daemon that found no LAN address would announce: its URI on 127.0.0.1
            from meshrpc.mesh import MeshPublisher
            daemon = daemon_for(None)
            uri = daemon.register(Greeter())
            publisher = MeshPublisher("0.0.0.0", meshrpc.config)
            loopback = "PYRO:%s@127.0.0.1:%d" % (uri.object, uri.port)
            publisher.publish(cmd["name"], loopback, set(cmd["tags"]))
            reply = {"uri": loopback, "object": uri.object, "port": uri.port}
        else:
            reply = {"error": "unknown op %r" % cmd["op"]}
    except Exception as exc:
        reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
    emit(op="reply", id=cmd["id"], **reply)
for daemon in daemons.values():
    daemon.shutdown()
"""

# A client: the process-wide registry (browsing the lab interface: MESHRPC_HOST=0.0.0.0), its
# events as they happen, and lookups and proxy calls on command.
CLIENT = r"""
import json, logging, os, sys, threading, time
logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")   # the test reads stderr
logging.getLogger("meshrpc").setLevel(os.environ.get("MESHRPC_LOGLEVEL") or "WARNING")
import meshrpc
from meshrpc.mesh import get_registry

out_lock = threading.Lock()

def emit(**msg):
    with out_lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

def describe(entry):
    return {"name": entry.name, "uri": entry.uri, "host": entry.host, "tags": sorted(entry.metadata),
            "node": entry.node, "incarnation": entry.incarnation, "version": entry.version,
            "other_hosts": list(entry.other_hosts)}

def on_event(event, entry):
    emit(op="event", event=event, t=time.monotonic(), **describe(entry))

started = time.monotonic()
registry = get_registry()
registry.subscribe(on_event)          # starts browsing
emit(op="ready", pid=os.getpid(), started=started, t=time.monotonic())

def call(uri, who):
    started = time.monotonic()
    with meshrpc.Proxy(uri) as proxy:
        answer = proxy.greet(who)
        return {"answer": answer, "resolved": str(proxy._pyroUri), "seconds": time.monotonic() - started}

for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    try:
        if op == "lookup":
            reply = {"entries": [describe(e) for e in registry.lookup(cmd["name"])]}
        elif op == "yplookup":
            reply = {"entries": [describe(e) for e in registry.yplookup(meta_all=cmd["tags"])]}
        elif op == "list":
            reply = {"entries": [describe(e) for e in registry.list()]}
        elif op == "stats":
            reply = {"stats": registry.stats()}
        elif op == "call":
            reply = call(cmd["uri"], cmd.get("who", "h3"))
        elif op == "spread":
            answers = [call(cmd["uri"], "spread")["answer"] for _ in range(cmd["count"])]
            reply = {"answers": answers}
        else:
            reply = {"error": "unknown op %r" % op}
    except Exception as exc:
        reply = {"error": type(exc).__name__, "message": str(exc)}
    emit(op="reply", id=cmd["id"], **reply)
"""


# ---------------------------------------------------------------------------------------------
# harness

def _agent_env(realm: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHRPC_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({
        "PYTHONUNBUFFERED": "1",
        "MESHRPC_REALM": realm,
        "MESHRPC_HOST": "0.0.0.0",        # inside a lab host: loopback and the lab veth only
        "MESHRPC_RESOLVE": "mesh",        # no name-server fallback: the mesh alone must answer
        "MESHRPC_LOOKUP_TIMEOUT": "3",
        "MESHRPC_REBIND_TIMEOUT": "0",    # a failed call raises; nothing is retried silently
        "MESHRPC_CONNECT_TIMEOUT": "5",
        "MESHRPC_COMMTIMEOUT": "10",
    })
    if os.environ.get("MESH_LAB_LOGLEVEL"):   # debugging: the helpers' meshrpc log on their stderr
        env["MESHRPC_LOGLEVEL"] = os.environ["MESH_LAB_LOGLEVEL"]
    env.update(extra)
    return env


class Agent:
    """A helper process inside a lab host. Keeps every JSON line it printed, in order."""

    def __init__(self, host: Any, code: str, realm: str, cfg: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.host = host
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = host.popen([sys.executable, "-c", code, json.dumps(cfg or {"host": host.name})],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                               text=True, env=_agent_env(realm, env or {}), cwd=str(ROOT))
        self.history: list[dict[str, Any]] = []
        self.stderr_text = ""
        self.killed = False
        self._cond = threading.Condition()
        self._ids = iter(range(1, 1 << 30))
        self._reader = threading.Thread(target=self._read, name=f"agent-{host.name}", daemon=True)
        self._reader.start()
        self.ready = self.wait_for(lambda m: m["op"] == "ready", 60, "ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                message = {"op": "garbage", "line": line}
            with self._cond:
                self.history.append(message)
                self._cond.notify_all()
        with self._cond:
            self.history.append({"op": "eof"})
            self._cond.notify_all()

    def mark(self) -> int:
        """Position in the history: wait_for(since=mark) sees only what came after."""
        with self._cond:
            return len(self.history)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str,
                 since: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        position = since
        with self._cond:
            while True:
                for message in self.history[position:]:
                    if predicate(message):
                        return message
                    if message["op"] == "eof":
                        raise AssertionError(f"{self.host.name} helper exited while waiting for {what}: "
                                             f"{self.stderr_tail()}")
                position = len(self.history)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.host.name}: no {what} within {timeout} s; "
                                         f"stderr: {self.stderr_tail()}")
                self._cond.wait(remaining)

    def event(self, kind: str, timeout: float, since: int = 0, **match: Any) -> dict[str, Any]:
        """The first registry event of that kind matching every field of match."""
        def wanted(m: dict[str, Any]) -> bool:
            return m["op"] == "event" and m["event"] == kind and all(m.get(k) == v for k, v in match.items())
        return self.wait_for(wanted, timeout, f"{kind} event {match}", since)

    def added(self, prefix: str, count: int, timeout: float) -> dict[str, dict[str, Any]]:
        """First `added` event per uri of names starting with prefix, once there are count of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found: dict[str, dict[str, Any]] = {}
                for m in self.history:
                    if m["op"] == "event" and m["event"] == "added" and m["name"].startswith(prefix):
                        found.setdefault(m["uri"], m)
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.history[-1]["op"] == "eof":
                    raise AssertionError(f"{self.host.name}: {len(found)} of {count} {prefix}* added "
                                         f"within {timeout} s; stderr: {self.stderr_tail()}")
                self._cond.wait(remaining)

    def events(self, since: int = 0, **match: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [m for m in self.history[since:]
                    if m["op"] == "event" and all(m.get(k) == v for k, v in match.items())]

    def request(self, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        request_id = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "id": request_id, **fields}) + "\n")
        self.proc.stdin.flush()
        return self.wait_for(lambda m: m["op"] == "reply" and m["id"] == request_id, timeout,
                             f"reply to {op}")

    def kill9(self) -> float:
        """SIGKILL (no goodbyes); returns the monotonic time just before the signal."""
        self.killed = True
        started = time.monotonic()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return started

    def stderr_tail(self, size: int = 3000) -> str:
        # pread, not seek + read: the helper writes its stderr through this very file (one shared offset), so
        # a seek to 0 sent a line it wrote meanwhile over the start of the log ("ARNING mesh: ...")
        fd = self.stderr.fileno()
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        return data.decode("utf-8", "replace")[-size:]

    def trouble(self) -> str:
        """After close(): what went wrong in the helper (errors logged, exceptions, exit status)."""
        if not self.killed and self.proc.returncode != 0:
            return f"exit status {self.proc.returncode}"
        for line in self.stderr_text.splitlines():
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Exception in thread"):
                return line
        return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()         # the helper leaves its loop and exits normally
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        self.stderr_text = self.stderr_tail(1 << 20)
        self.stderr.close()


def _entry_uris(reply: dict[str, Any]) -> list[str]:
    assert "error" not in reply, reply
    return sorted(e["uri"] for e in reply["entries"])


def _figure(record_property: Callable[[str, Any], None], label: str, seconds: float) -> None:
    record_property(label, round(seconds, 4))
    print(f"\n[mesh-lab] {label}: {seconds * 1000:.1f} ms", flush=True)


@pytest.fixture
def lab() -> Iterator[Any]:
    with lab_or_skip(3) as built:
        yield built


@pytest.fixture
def spawn(lab: Any, realm: str) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(host: Any, code: str, *, realm_: str | None = None, **kwargs: Any) -> Agent:
        agent = Agent(host, code, realm_ or realm, **kwargs)
        agents.append(agent)
        return agent

    yield start
    problems = []
    for agent in reversed(agents):
        agent.close()
        trouble = agent.trouble()
        if trouble:
            problems.append(f"{agent.host.name} pid {agent.pid}: {trouble}\n{agent.stderr_text[-3000:]}")
        if os.environ.get("MESH_LAB_SHOW_STDERR") and agent.stderr_text:
            print(f"\n--- stderr of {agent.host.name} pid {agent.pid}\n{agent.stderr_text[-3000:]}")
    assert not problems, "a helper process raised:\n" + "\n".join(problems)


def _expected_uri(registered: dict[str, Any], host: Any) -> str:
    """The URI a daemon bound to 0.0.0.0 on host must be advertised under: host's lab address."""
    return f"PYRO:{registered['object']}@{host.address}:{registered['port']}"


# ---------------------------------------------------------------------------------------------
# 1. publish on h1, resolve from h3 by name and by tags, call

def test_publish_on_h1_resolve_from_h3_by_name_and_tags(lab: Any, spawn: Callable[..., Agent],
                                                        record_property: Callable[[str, Any], None]) -> None:
    h1, _, h3 = lab.hosts
    client = spawn(h3, CLIENT)
    server = spawn(h1, SERVER)
    since = client.mark()
    registered = server.request("register", name="lab.greeting", tags=["lab", "greeting"])
    assert "error" not in registered, registered
    added = client.event("added", 10, since, name="lab.greeting")
    visible = added["t"] - registered["after"]
    _figure(record_property, "register_to_visible_on_h3", visible)

    uri = _expected_uri(registered, h1)
    assert added["uri"] == uri and added["host"] == h1.address
    assert added["tags"] == ["greeting", "lab"]
    assert _entry_uris(client.request("lookup", name="lab.greeting")) == [uri]
    assert _entry_uris(client.request("yplookup", tags=["lab", "greeting"])) == [uri]

    by_name = client.request("call", uri="PYRONAME:lab.greeting")
    assert by_name.get("answer") == "hello h3 from h1", by_name
    assert by_name["resolved"] == uri
    by_tags = client.request("call", uri="PYROMETA:lab,greeting")
    assert by_tags.get("answer") == "hello h3 from h1", by_tags
    assert by_tags["resolved"] == uri
    assert visible < VISIBLE_BOUND, f"visible on h3 {visible:.3f} s after register returned"


# ---------------------------------------------------------------------------------------------
# 2. replicas on h1 and h2

def test_replicas_on_h1_and_h2_are_both_found_and_used(lab: Any, spawn: Callable[..., Agent]) -> None:
    h1, h2, h3 = lab.hosts
    client = spawn(h3, CLIENT)
    servers = {h.name: spawn(h, SERVER) for h in (h1, h2)}
    since = client.mark()
    uris = {}
    for host in (h1, h2):
        registered = servers[host.name].request("register", name="lab.replica", tags=["lab", "replica"])
        assert "error" not in registered, registered
        uris[host.name] = _expected_uri(registered, host)
    for uri in uris.values():
        client.event("added", 10, since, name="lab.replica", uri=uri)

    assert _entry_uris(client.request("lookup", name="lab.replica")) == sorted(uris.values())
    assert _entry_uris(client.request("yplookup", tags=["replica"])) == sorted(uris.values())
    for name, uri in uris.items():               # each replica answers at its own address
        direct = client.request("call", uri=uri)
        assert direct.get("answer") == f"hello h3 from {name}", direct

    # The policy: no replica is on h3, so each new PYRONAME proxy picks one uniformly at random.
    # 40 proxies all picking the same one has probability 2**-39.
    spread = client.request("spread", uri="PYRONAME:lab.replica", count=40)
    assert "error" not in spread, spread
    counts = Counter(spread["answers"])
    assert set(counts) == {"hello spread from h1", "hello spread from h2"}, counts
    assert sum(counts.values()) == 40
    # h2's replica is newer, so h3 probed h1's (restart elsewhere?): it answered, both stay.
    assert client.events(since, event="removed") == []
    assert _entry_uris(client.request("lookup", name="lab.replica")) == sorted(uris.values())


# ---------------------------------------------------------------------------------------------
# 3. kill -9 the publisher on h1

def test_kill_9_on_h1_is_noticed_on_h3_within_5_s(lab: Any, spawn: Callable[..., Agent],
                                                   record_property: Callable[[str, Any], None]) -> None:
    h1, _, h3 = lab.hosts
    client = spawn(h3, CLIENT)
    server = spawn(h1, SERVER)
    since = client.mark()
    registered = server.request("register", name="lab.crash", tags=["lab"])
    uri = _expected_uri(registered, h1)
    client.event("added", 10, since, name="lab.crash", uri=uri)

    since = client.mark()
    killed = server.kill9()
    removed = client.event("removed", 3 * CRASH_BOUND, since, name="lab.crash", uri=uri)
    detection = removed["t"] - killed
    _figure(record_property, "kill9_to_gone_on_h3", detection)
    assert client.request("lookup", name="lab.crash")["entries"] == []
    assert detection < CRASH_BOUND, f"noticed {detection:.2f} s after kill -9"


# ---------------------------------------------------------------------------------------------
# 4. restart on h2 under the same name

def test_restart_on_h2_replaces_the_dead_h1_provider(lab: Any, spawn: Callable[..., Agent],
                                                     record_property: Callable[[str, Any], None]) -> None:
    h1, h2, h3 = lab.hosts
    client = spawn(h3, CLIENT)
    old_server = spawn(h1, SERVER)
    new_server = spawn(h2, SERVER)               # started (imports done) but publishing nothing yet
    since = client.mark()
    old = _expected_uri(old_server.request("register", name="lab.restart", tags=["lab"]), h1)
    client.event("added", 10, since, name="lab.restart", uri=old)

    since = client.mark()
    killed = old_server.kill9()
    registered = new_server.request("register", name="lab.restart", tags=["lab"])
    new = _expected_uri(registered, h2)
    added = client.event("added", 10, since, name="lab.restart", uri=new)
    removed = client.event("removed", 10, since, name="lab.restart", uri=old)
    replaced = max(added["t"], removed["t"]) - registered["after"]
    _figure(record_property, "restart_register_to_visible_on_h3", added["t"] - registered["after"])
    _figure(record_property, "restart_register_to_old_replaced_on_h3", replaced)
    _figure(record_property, "restart_kill_to_old_replaced_on_h3", removed["t"] - killed)

    assert new != old
    assert _entry_uris(client.request("lookup", name="lab.restart")) == [new]
    call = client.request("call", uri="PYRONAME:lab.restart")
    assert call.get("answer") == "hello h3 from h2" and call["resolved"] == new, call
    # Replaced by the announcement (and one refused probe of the old endpoint), not by liveness
    # expiry, which cannot come sooner than MESH_LIVENESS_WINDOW - MESH_HEARTBEAT_INTERVAL = 2.5 s.
    assert replaced < REPLACE_BOUND, f"old provider replaced {replaced:.3f} s after the new one registered"


# ---------------------------------------------------------------------------------------------
# 5. link down, then up

def test_link_down_drops_h1_entries_and_link_up_brings_them_back(
        lab: Any, spawn: Callable[..., Agent], record_property: Callable[[str, Any], None]) -> None:
    h1, h2, h3 = lab.hosts
    client = spawn(h3, CLIENT)
    since = client.mark()
    uris = {}
    for host in (h1, h2):
        server = spawn(host, SERVER)
        uris[host.name] = _expected_uri(server.request("register", name=f"lab.link.{host.name}", tags=["lab"]),
                                        host)
        client.event("added", 10, since, uri=uris[host.name])

    since = client.mark()
    down = time.monotonic()
    h1.link_down()
    removed = client.event("removed", 3 * LINK_BOUND, since, name="lab.link.h1", uri=uris["h1"])
    gone = removed["t"] - down
    _figure(record_property, "link_down_to_gone_on_h3", gone)
    assert client.request("lookup", name="lab.link.h1")["entries"] == []
    assert _entry_uris(client.request("lookup", name="lab.link.h2")) == [uris["h2"]]   # h2 unaffected
    assert client.events(since, name="lab.link.h2") == []

    since = client.mark()
    up = time.monotonic()
    h1.link_up()
    added = client.event("added", 3 * LINK_BOUND, since, name="lab.link.h1", uri=uris["h1"])
    back = added["t"] - up
    _figure(record_property, "link_up_to_back_on_h3", back)
    assert _entry_uris(client.request("lookup", name="lab.link.h1")) == [uris["h1"]]
    call = client.request("call", uri="PYRONAME:lab.link.h1")
    assert call.get("answer") == "hello h3 from h1", call
    assert gone < LINK_BOUND, f"h1 dropped {gone:.2f} s after its link went down"
    assert back < LINK_BOUND, f"h1 back {back:.2f} s after its link came up"


# ---------------------------------------------------------------------------------------------
# 6. interface change at runtime

def test_address_change_on_h1_is_re_advertised(lab: Any, spawn: Callable[..., Agent],
                                               record_property: Callable[[str, Any], None]) -> None:
    h1, _, h3 = lab.hosts
    client = spawn(h3, CLIENT)
    server = spawn(h1, SERVER, env={"MESHRPC_MESH_INTERFACE_CHECK_INTERVAL": str(CHECK_INTERVAL)})
    since = client.mark()
    registered = server.request("register", name="lab.moving", tags=["lab"])
    old = _expected_uri(registered, h1)
    client.event("added", 10, since, name="lab.moving", uri=old)

    since = client.mark()
    moved = time.monotonic()
    new_address = h1.move_address()
    assert h1.addresses() == [new_address]
    new = _expected_uri(registered, h1)           # same object and port, new host
    assert new != old
    added = client.event("added", 5 * MOVE_BOUND, since, name="lab.moving", uri=new)
    client.event("removed", 5 * MOVE_BOUND, since, name="lab.moving", uri=old)
    readvertised = added["t"] - moved
    _figure(record_property, "address_move_to_new_uri_on_h3", readvertised)

    assert _entry_uris(client.request("lookup", name="lab.moving")) == [new]
    call = client.request("call", uri="PYRONAME:lab.moving")
    assert call.get("answer") == "hello h3 from h1" and call["resolved"] == new, call
    assert readvertised < MOVE_BOUND, f"new address advertised {readvertised:.2f} s after the move"


def test_a_multi_homed_daemon_is_reached_on_the_network_a_client_shares_with_it(
        lab: Any, spawn: Callable[..., Agent]) -> None:
    """h1 has a second network (a second subnet on its wire, as a host with two NICs would); h3 is
    only on that one and has no route to h1's first address. The daemon, bound to 0.0.0.0, names its
    first address in its URI and announces the other as well: h3 connects to the one it can reach."""
    h1, _, h3 = lab.hosts
    second = h1.add_address("192.0.2.1/24")          # TEST-NET-1: never one of the lab's subnets
    h3.move_address("192.0.2.3/24")
    assert h3.ping(second) and not h3.ping(h1.address), "h3 must reach h1 on the second network only"
    client = spawn(h3, CLIENT)
    server = spawn(h1, SERVER)
    since = client.mark()
    registered = server.request("register", name="lab.multihomed", tags=["lab"])
    assert "error" not in registered, registered
    announced = _expected_uri(registered, h1)
    client.event("added", 10, since, name="lab.multihomed", uri=announced)
    reachable = f"PYRO:{registered['object']}@{second}:{registered['port']}"
    for uri in ("PYRONAME:lab.multihomed", "PYROMETA:lab"):
        call = client.request("call", uri=uri)
        assert call.get("answer") == "hello h3 from h1" and call["resolved"] == reachable, call


def test_a_second_network_added_later_is_announced(lab: Any, spawn: Callable[..., Agent]) -> None:
    """The same, with h1's second address added while the daemon runs: the announcement gets it
    (a newer version of the same entry) and h3, on that network only, can call."""
    h1, h2, h3 = lab.hosts
    client = spawn(h2, CLIENT)                        # on the first network: sees every version
    server = spawn(h1, SERVER, env={"MESHRPC_MESH_INTERFACE_CHECK_INTERVAL": str(CHECK_INTERVAL)})
    since = client.mark()
    registered = server.request("register", name="lab.grows", tags=["lab"])
    announced = _expected_uri(registered, h1)
    first = client.event("added", 10, since, name="lab.grows", uri=announced)
    assert first["other_hosts"] == []
    since = client.mark()
    second = h1.add_address("192.0.2.1/24")
    update = client.event("updated", 5 * MOVE_BOUND, since, name="lab.grows", uri=announced)
    assert update["other_hosts"] == [second] and update["version"] > first["version"], update
    h3.move_address("192.0.2.3/24")
    far = spawn(h3, CLIENT)
    far.event("added", 10, 0, name="lab.grows", uri=announced)
    call = far.request("call", uri="PYRONAME:lab.grows")
    assert call.get("answer") == "hello h3 from h1", call
    assert call["resolved"] == f"PYRO:{registered['object']}@{second}:{registered['port']}", call


# ---------------------------------------------------------------------------------------------
# 7. realms

def test_realms_do_not_see_each_other(lab: Any, spawn: Callable[..., Agent], realm: str) -> None:
    h1, _, h3 = lab.hosts
    realm_a, realm_b = realm + "-a", realm + "-b"
    client_a = spawn(h3, CLIENT, realm_=realm_a)
    client_b = spawn(h3, CLIENT, realm_=realm_b, env={"MESHRPC_LOOKUP_TIMEOUT": "1"})
    server = spawn(h1, SERVER)                    # one process, one daemon per realm
    since_a, since_b = client_a.mark(), client_b.mark()
    secret = server.request("register", name="lab.secret", tags=["lab", "secret"], realm=realm_a)
    public = server.request("register", name="lab.public", tags=["lab", "public"], realm=realm_b)
    client_a.event("added", 10, since_a, name="lab.secret", uri=_expected_uri(secret, h1))
    client_b.event("added", 10, since_b, name="lab.public", uri=_expected_uri(public, h1))

    # Both realms' announcements and heartbeats reached h3 through the same sockets; each registry
    # holds its own realm only.
    assert [e["name"] for e in client_b.request("list")["entries"]] == ["lab.public"]
    assert client_b.request("lookup", name="lab.secret")["entries"] == []
    assert client_b.request("yplookup", tags=["secret"])["entries"] == []
    assert client_b.request("stats")["stats"]["nodes"] == 1
    assert [e["name"] for e in client_a.request("list")["entries"]] == ["lab.secret"]
    assert client_a.request("stats")["stats"]["nodes"] == 1
    refused = client_b.request("call", uri="PYRONAME:lab.secret")
    assert refused.get("error") == "UnknownNameError", refused  # a NamingError: nobody announces it here
    assert client_b.events(since_b, name="lab.secret") == []
    allowed = client_a.request("call", uri="PYRONAME:lab.secret")
    assert allowed.get("answer") == "hello h3 from h1", allowed


# ---------------------------------------------------------------------------------------------
# cold start: a new registry learns everything already published, each as an `added` event

FLEET_BOUND = 3.0            # the goal for a fresh browser (1000 objects from 20 hosts)


def test_a_fresh_registry_sees_every_object_already_published(
        lab: Any, spawn: Callable[..., Agent], record_property: Callable[[str, Any], None]) -> None:
    h1, h2, h3 = lab.hosts
    per_host = 60
    for host in (h1, h2):
        server = spawn(host, SERVER)
        assert server.request("register_many", prefix=f"lab.many.{host.name}", count=per_host,
                              tags=["lab", "many"]) == {"op": "reply", "id": 1, "registered": per_host}
    # Another mDNS process on h3 first: unicast answers to port 5353 would reach only one of them.
    neighbour = spawn(h3, CLIENT)
    neighbour.added("lab.many.", 2 * per_host, 10)

    fresh = spawn(h3, CLIENT)
    seen = fresh.added("lab.many.", 2 * per_host, 10)
    elapsed = max(m["t"] for m in seen.values()) - fresh.ready["started"]
    _figure(record_property, "fresh_registry_all_120_objects", elapsed)
    listed = fresh.request("list")["entries"]
    assert sorted(e["uri"] for e in listed) == sorted(seen)                       # nothing unannounced
    assert sorted(e["name"] for e in listed) == sorted(
        f"lab.many.{h}.obj{i:03d}" for h in ("h1", "h2") for i in range(per_host))
    assert elapsed < FLEET_BOUND, f"all objects seen {elapsed:.2f} s after the registry was created"


# ---------------------------------------------------------------------------------------------
# a daemon bound to 0.0.0.0 never advertises a loopback URI to the LAN

def test_loopback_uri_of_a_wildcard_daemon_is_advertised_under_its_lan_address(
        lab: Any, spawn: Callable[..., Agent]) -> None:
    h1, _, h3 = lab.hosts
    client = spawn(h3, CLIENT)
    server = spawn(h1, SERVER)
    since = client.mark()
    published = server.request("publish_as_loopback", name="lab.loopback", tags=["lab"])
    assert "error" not in published and "@127.0.0.1:" in published["uri"], published
    uri = _expected_uri(published, h1)
    client.event("added", 10, since, name="lab.loopback", uri=uri)
    assert _entry_uris(client.request("lookup", name="lab.loopback")) == [uri]
    call = client.request("call", uri="PYRONAME:lab.loopback")
    assert call.get("answer") == "hello h3 from h1" and call["resolved"] == uri, call


# ---------------------------------------------------------------------------------------------
# 8. Avahi interop: moved to test_avahi_lab.py (avahi-daemon in lab hosts, both directions)
