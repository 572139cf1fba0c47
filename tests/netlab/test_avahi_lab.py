"""meshrpc next to another mDNS stack: real avahi-daemon processes inside lab hosts (tools/netlab.py).

Each Avahi runs with its own dbus-daemon inside a lab host's private mount namespace (``ip netns
exec`` gives one; /run and /etc/avahi/services are tmpfs there), bound to the lab interface only, so
nothing it sends reaches the machine's own network (run under /work/shared/tools/lan-leak-check).
meshrpc processes are the helpers of test_mesh_lab.py (JSON lines on stdin/stdout); every Avahi, its
dbus-daemon and the tools it runs are stopped by the `avahi` fixture, and the lab kills whatever is
left in its namespaces.

Both directions: Avahi browses and resolves what meshrpc publishes and follows its changes; Avahi
publishes records in meshrpc's shape that registries resolve, call, keep (no heartbeats: TCP checks)
and drop at Avahi's goodbye; garbage Avahi publishes is logged and ignored; both stacks share a host.
Two findings of w11-avahi are guarded here (and in tests/unit/test_mesh_registry.py): a record of a
node without heartbeats stayed hidden after a partition healed, and a copy of a refused record (Avahi
answering a question for it) brought it back until the next check.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_mesh_lab import CLIENT, SERVER, Agent, _expected_uri, _figure, lab, spawn  # noqa: F401 - fixtures
from test_netlab import netlab

from meshrpc.mesh import records

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(90)]

AVAHI_TOOLS = ("avahi-daemon", "avahi-browse", "avahi-publish", "dbus-daemon")

DBUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""

AVAHI_CONFIG = """[server]
host-name={hostname}
use-ipv4=yes
use-ipv6=no
allow-interfaces={interface}
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
disable-publishing={no_publishing}
publish-addresses=yes
publish-hinfo=no
publish-workstation=no
publish-aaaa-on-ipv4=no
[reflector]
[rlimits]
"""

# Runs inside the host. `ip netns exec` gives it a private mount namespace, so the tmpfs on /run
# (avahi's pid file and socket) and on /etc/avahi/services (the machine's static services) are seen by
# this process tree only; the machine's own are untouched.
AVAHI_SCRIPT = """set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/avahi-daemon
if [ -d /etc/avahi/services ]; then mount -t tmpfs tmpfs /etc/avahi/services; fi
dbus-daemon --config-file="$1/dbus.conf" --nofork --nopidfile &
echo "dbus-pid $!"
i=0
while [ ! -S "$1/bus" ]; do i=$((i+1)); [ $i -lt 400 ] || exit 3; sleep 0.025; done
exec avahi-daemon -f "$1/avahi.conf" --no-drop-root --no-chroot --no-rlimits --no-proc-title
"""


class Lines:
    """A process's output lines, read on a thread; waits on them with a deadline."""

    def __init__(self, proc: subprocess.Popen, name: str) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._done = False
        self._reader = threading.Thread(target=self._read, name=f"lines-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait(self, predicate: Callable[[str], bool], timeout: float, what: str, since: int = 0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for stamp, line in self.lines[since:]:
                    if predicate(line):
                        return stamp, line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._done:
                    raise AssertionError(f"no {what} within {timeout} s:\n{self.text()}")
                self._cond.wait(remaining)

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines[-60:])

    def stop(self, join: bool = True) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if join:
            self._reader.join(5)


class Avahi:
    """avahi-daemon (and its dbus-daemon) in one lab host; publishes and browses through it."""

    def __init__(self, host: Any, work: Path, publishing: bool) -> None:
        self.host = host
        work.mkdir(parents=True, exist_ok=True)
        (work / "dbus.conf").write_text(DBUS_CONFIG.format(socket=work / "bus"))
        (work / "avahi.conf").write_text(AVAHI_CONFIG.format(
            hostname=f"avahi-{host.name}", interface=host.interface, no_publishing="no" if publishing else "yes"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "MESHRPC_"))}
        self.env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={work / 'bus'}"
        self.children: list[Lines] = []
        self.daemon = Lines(host.popen(["sh", "-c", AVAHI_SCRIPT, "avahi", str(work)], env=self.env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                            f"avahi-{host.name}")

    def wait_started(self, timeout: float = 30) -> None:
        self.daemon.wait(lambda line: "Server startup complete" in line, timeout, "avahi-daemon startup")

    def run(self, argv: list[str]) -> Lines:
        lines = Lines(self.host.popen(argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True), f"{argv[0]}-{self.host.name}")
        self.children.append(lines)
        return lines

    def publish(self, label: str, port: int, txt: list[str]) -> Lines:
        """avahi-publish -s: the service stays published until the process ends (Avahi sends goodbyes)."""
        return self.run(["avahi-publish", "-s", label, records.MESH_SERVICE_TYPE.removesuffix(".local."),
                         str(port), *txt])

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.daemon.stop(join=False)
        for _, line in self.daemon.lines:    # our dbus-daemon went on in the background (and holds stdout)
            if line.startswith("dbus-pid "):
                pid = int(line.split()[1])
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "dbus-daemon":
                        os.kill(pid, signal.SIGTERM)
        self.daemon.stop()


@pytest.fixture
def avahi(lab: Any, tmp_path: Path) -> Iterator[Callable[..., Avahi]]:
    missing = [tool for tool in AVAHI_TOOLS if netlab._find_tool(tool) is None]
    if missing:
        pytest.skip(f"Avahi interop needs {', '.join(missing)} (Debian: apt-get install avahi-daemon "
                    f"avahi-utils); not installed here")
    started: list[Avahi] = []

    def start(host: Any, publishing: bool = True) -> Avahi:
        instance = Avahi(host, tmp_path / f"avahi-{host.name}", publishing)
        started.append(instance)
        instance.wait_started()
        return instance

    yield start
    for instance in reversed(started):
        instance.stop()


def meshrpc_txt(realm: str, name: str, uri: str, tags: list[str], node: str, incarnation: int = 1,
                version: int = 1) -> tuple[str, list[str]]:
    """The instance label and TXT strings meshrpc itself would announce for this entry (records.py)."""
    entry = records.make_entry(realm=realm, name=name, uri=uri, metadata=tags, node=node,
                               incarnation=incarnation, version=version)
    txt = records.encode_entry(entry)
    strings, pos = [], 0
    while pos < len(txt):
        strings.append(txt[pos + 1: pos + 1 + txt[pos]].decode())
        pos += 1 + txt[pos]
    return records.instance_label(entry), strings


PLAIN_SERVER = r"""
import json, logging, os, sys, threading, time
logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("meshrpc").setLevel(os.environ.get("MESHRPC_LOGLEVEL") or "WARNING")
import meshrpc

@meshrpc.expose
class Greeter:
    def greet(self, who):
        return "hello %s from %s" % (who, json.loads(sys.argv[1])["host"])

daemon = meshrpc.Daemon(host="0.0.0.0")
uri = daemon.register(Greeter())                 # no name: nothing is announced by meshrpc
threading.Thread(target=daemon.requestLoop, daemon=True).start()
print(json.dumps({"op": "ready", "object": uri.object, "port": uri.port, "t": time.monotonic()}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    print(json.dumps({"op": "reply", "id": cmd["id"]}), flush=True)
daemon.shutdown()
"""



# A multicast (QM) question from port 5353 for one TXT record: a responder answers it by multicast, so
# every host on the link hears the record again (what any browser's question can make Avahi do). Exits 0
# once the answer was heard here (a multicast answer reaches every host of the lab switch at once).
ASK_TXT = r"""
import select, socket, struct, sys, time
name, address = sys.argv[1], sys.argv[2]
question = b"".join(bytes([len(part)]) + part for part in name.encode().split(b".")) + b"\0"
packet = struct.pack("!6H", 0, 0, 1, 0, 0, 0) + question + struct.pack("!2H", 16, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("224.0.0.251") + socket.inet_aton(address))
sock.bind(("0.0.0.0", 5353))
sock.sendto(packet, ("224.0.0.251", 5353))
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    if select.select([sock], [], [], deadline - time.monotonic())[0]:
        data, _ = sock.recvfrom(9000)
        if data[2] & 0x80 and question[:-1] in data:       # a response that names the record
            sys.exit(0)
sys.exit(2)
"""

LOG_BOUND = 10.0             # a bad record -> its warning in the receiver's log


def _no_event(agent: Agent, seconds: float, since: int, **match: Any) -> None:
    """No registry event matching `match` comes within `seconds` (the absence is what is asserted)."""
    with contextlib.suppress(AssertionError):
        found = agent.wait_for(lambda m: m["op"] == "event" and all(m.get(k) == v for k, v in match.items()),
                               seconds, f"event {match}", since)
        raise AssertionError(f"{agent.host.name}: unexpected event {found}")


def _logged(agent: Agent, text: str, timeout: float = LOG_BOUND) -> str:
    """The first line of the helper's log containing text (waited for, with a deadline)."""
    def line() -> str | None:
        return next((x for x in agent.stderr_tail(1 << 20).splitlines() if text in x), None)
    if not netlab.wait_for(line, timeout):
        raise AssertionError(f"{agent.host.name}: no log line with {text!r} within {timeout} s:\n"
                             f"{agent.stderr_tail()}")
    return line() or ""


def _parse_avahi(output: str) -> list[dict[str, Any]]:
    """Resolved ('=') lines of `avahi-browse -p`: interface;protocol;name;type;domain;host;address;port;txt."""
    found = []
    for line in output.splitlines():
        fields = line.split(";")
        if fields[0] != "=" or len(fields) < 10:
            continue
        txt = {}
        for item in ";".join(fields[9:]).strip()[1:-1].split('" "'):   # "k=v" "k=v" ...
            key, _, value = item.partition("=")
            txt[key] = value
        found.append({"name": fields[3], "type": fields[4], "host": fields[6], "address": fields[7],
                      "port": int(fields[8]), "txt": txt})
    return found


def _browse_once(instance: Avahi) -> list[dict[str, Any]]:
    """`avahi-browse -rtp _meshrpc._tcp`: what the host's Avahi knows now, resolved."""
    listed = instance.host.run(["avahi-browse", "-rtp", "_meshrpc._tcp"], env=instance.env, capture_output=True,
                               text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    return _parse_avahi(listed.stdout)


# ---------------------------------------------------------------------------------------------
# Avahi browses what meshrpc publishes (was section 8 of test_mesh_lab.py)

def test_avahi_browse_lists_our_objects(lab: Any, spawn: Callable[..., Agent], avahi: Callable[..., Avahi],
                                        realm: str) -> None:
    h1, h2, _ = lab.hosts
    browsing = avahi(h2, publishing=False)
    server = spawn(h1, SERVER)
    registered = server.request("register", name="lab.greeting", tags=["lab", "greeting"])
    uri = _expected_uri(registered, h1)

    # Wait (event, with a deadline) until avahi has resolved it, then ask as the issue does.
    follow = browsing.run(["avahi-browse", "-rp", "_meshrpc._tcp"])
    follow.wait(lambda line: line.startswith("=") and '"n=lab.greeting"' in line, 15, "lab.greeting resolved")
    entries = _browse_once(browsing)
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["type"] == "_meshrpc._tcp"
    assert entry["name"].startswith("lab-greeting-") and len(entry["name"]) == len("lab-greeting-") + 12
    assert entry["address"] == h1.address and entry["port"] == registered["port"]
    assert entry["host"].startswith("mr-") and entry["host"].endswith(".local")
    assert entry["txt"]["n"] == "lab.greeting"              # the full dotted name
    assert entry["txt"]["t"] == "greeting,lab"              # the tags
    assert entry["txt"]["u"] == uri
    assert entry["txt"]["r"] == realm and entry["txt"]["v"] == "1"


# ---------------------------------------------------------------------------------------------
# 1. Avahi as the responder for a meshrpc-shaped record

def test_a_record_avahi_publishes_is_resolved_called_and_dropped_at_its_goodbye(
        lab: Any, spawn: Callable[..., Agent], avahi: Callable[..., Avahi], realm: str,
        record_property: Callable[[str, Any], None]) -> None:
    """avahi-publish on h2 announces, in meshrpc's shape, an object of a daemon on h2 that announces
    nothing itself. Avahi probes first (about 0.75 s), sends no heartbeats (its node is vouched for by the
    registry's TCP checks), withdraws with goodbyes when avahi-publish ends, and may publish the very
    same record again."""
    h1, h2, _ = lab.hosts
    client = spawn(h1, CLIENT)
    server = spawn(h2, PLAIN_SERVER)
    uri = _expected_uri(server.ready, h2)
    label, txt = meshrpc_txt(realm, "avahi.greeting", uri, ["avahi", "greeting"], node="avahi-h2")
    responder = avahi(h2)
    since = client.mark()
    started = time.monotonic()
    published = responder.publish(label, server.ready["port"], txt)
    published.wait(lambda line: f"Established under name '{label}'" in line, 15, "avahi-publish established")
    added = client.event("added", 10, since, name="avahi.greeting", uri=uri)
    _figure(record_property, "avahi_publish_to_visible_on_h1", added["t"] - started)
    assert added["tags"] == ["avahi", "greeting"] and added["node"] == "avahi-h2"
    for target in ("PYRONAME:avahi.greeting", "PYROMETA:avahi,greeting"):
        call = client.request("call", uri=target, who="h1")
        assert call.get("answer") == "hello h1 from h2" and call["resolved"] == uri, call

    # No heartbeat ever comes from Avahi: checks of the open port keep the entry for longer than the
    # liveness window (3.5 s) and the first check (after 2.2 s of silence).
    _no_event(client, 5.0, since, event="removed")
    assert [e["uri"] for e in client.request("lookup", name="avahi.greeting")["entries"]] == [uri]

    since = client.mark()
    stopped = time.monotonic()
    published.stop()                             # avahi-daemon sends goodbyes for its records
    removed = client.event("removed", 10, since, name="avahi.greeting", uri=uri)
    _figure(record_property, "avahi_withdraw_to_gone_on_h1", removed["t"] - stopped)
    assert removed["t"] - stopped < 5.0, "the goodbye did not remove it at once"
    assert client.request("lookup", name="avahi.greeting")["entries"] == []

    # Published again, unchanged (a service file whose Avahi restarted, avahi-publish run again): the
    # same version as the record withdrawn, and no late copy of it. Found by w11-avahi: before the fix
    # the withdrawn record's tombstone hid it for a minute, and nothing sent it again for about an hour.
    since = client.mark()
    again = time.monotonic()
    responder.publish(label, server.ready["port"], txt)
    back = client.event("added", 10, since, name="avahi.greeting", uri=uri)
    _figure(record_property, "avahi_publish_again_to_visible_on_h1", back["t"] - again)
    call = client.request("call", uri="PYRONAME:avahi.greeting", who="h1")
    assert call.get("answer") == "hello h1 from h2", call


def test_a_record_avahi_publishes_comes_back_after_a_partition(
        lab: Any, spawn: Callable[..., Agent], avahi: Callable[..., Avahi], realm: str,
        record_property: Callable[[str, Any], None]) -> None:
    """h1's link goes down long enough for its registry to give up on h2, then up again. meshrpc's own
    daemon on h2 is back with its next heartbeat; Avahi announces nothing when a partition heals (its
    records have 75-minute TTLs), so only a check can tell that its record's endpoint is back.
    Found by w11-avahi: before the fix the Avahi record stayed hidden until its TTL ran out."""
    h1, h2, _ = lab.hosts
    client = spawn(h1, CLIENT)
    server = spawn(h2, PLAIN_SERVER)
    control = spawn(h2, SERVER)
    uri = _expected_uri(server.ready, h2)
    label, txt = meshrpc_txt(realm, "avahi.partition", uri, ["avahi"], node="avahi-h2")
    responder = avahi(h2)
    since = client.mark()
    responder.publish(label, server.ready["port"], txt)
    control_uri = _expected_uri(control.request("register", name="lab.control", tags=["lab"]), h2)
    client.event("added", 10, since, name="avahi.partition", uri=uri)
    client.event("added", 10, since, name="lab.control", uri=control_uri)

    since = client.mark()
    h1.link_down()
    client.event("removed", 15, since, name="avahi.partition", uri=uri)
    client.event("removed", 15, since, name="lab.control", uri=control_uri)
    since = client.mark()
    healed = time.monotonic()
    h1.link_up()
    client.event("added", 10, since, name="lab.control", uri=control_uri)
    back = client.event("added", 20, since, name="avahi.partition", uri=uri)
    _figure(record_property, "avahi_record_back_after_partition", back["t"] - healed)
    call = client.request("call", uri="PYRONAME:avahi.partition", who="h1")
    assert call.get("answer") == "hello h1 from h2", call


# ---------------------------------------------------------------------------------------------
# 2. Garbage from a foreign stack

def test_garbage_avahi_publishes_is_logged_and_ignored_while_good_records_serve(
        lab: Any, spawn: Callable[..., Agent], avahi: Callable[..., Avahi], realm: str) -> None:
    """Avahi on h2 publishes _meshrpc._tcp services meshrpc cannot use: no TXT, a missing key, a bad
    number, an unknown format version, a label that does not match the content, a TXT over
    MESH_TXT_MAX, a value that is not UTF-8, a dotted instance name, a record whose port nobody serves;
    Avahi on h3 publishes copies of names h2's Avahi and h1's meshrpc hold. The registry on h1 logs one
    clear line for each and keeps resolving and calling the good ones."""
    h1, h2, h3 = lab.hosts
    client = spawn(h1, CLIENT, env={"MESHRPC_LOGLEVEL": "INFO", "MESHRPC_LOOKUP_TIMEOUT": "1"})
    meshd = spawn(h1, SERVER)
    server = spawn(h2, PLAIN_SERVER)
    port = server.ready["port"]
    good_uri = _expected_uri(server.ready, h2)
    since = client.mark()
    real = meshd.request("register", name="lab.real", tags=["lab"])
    real_uri = _expected_uri(real, h1)
    a2, a3 = avahi(h2), avahi(h3)

    good_label, good = meshrpc_txt(realm, "avahi.good", good_uri, ["avahi"], node="avahi-h2")
    dead_uri = f"PYRO:obj_nobody@{h2.address}:9"           # the discard port: nothing listens there
    # under the good record's node id: its checks must not vouch for this one (they take endpoints in turn)
    dead_label, dead = meshrpc_txt(realm, "avahi.dead", dead_uri, ["avahi"], node="avahi-h2")
    bad = {
        "junk-empty": ([], "no format version (not a meshrpc record)"),
        "junk-v2": ([("v=2" if s.startswith("v=") else s) for s in good], "unsupported format version b'2'"),
        "junk-nouri": ([s for s in good if not s.startswith("u=")], "missing key 'u'"),
        "junk-badnum": ([("s=x1" if s.startswith("s=") else s) for s in good], "key 's' is not a number"),
        "avahi-good-000000000000": (good, "instance label does not match"),
        "junk-huge": (good + [f"z{i}=" + "z" * 242 for i in range(5)], "exceeds 1300"),   # Avahi sends no more
        "junk-latin1": ([("n=caf\udce9" if s.startswith("n=") else s) for s in good], "key 'n' is not UTF-8"),
        "junk.dotted": (good, "its instance name has a dot"),
    }
    published = a2.publish(good_label, port, good)
    a2.publish(dead_label, 9, dead)
    for label, (txt, _) in bad.items():
        a2.publish(label, port, txt)
    client.event("added", 10, since, name="avahi.good", uri=good_uri)
    seen = client.event("added", 10, since, name="lab.real", uri=real_uri)
    published.wait(lambda line: "Established" in line, 10, "avahi.good established")

    # Copies of names that h2's Avahi and h1's meshrpc hold, published by another host's Avahi: Avahi
    # finds the conflict when it probes and renames its copy; the renamed label does not match the content.
    real_label, real_txt = meshrpc_txt(realm, "lab.real", real_uri, ["lab"], node=seen["node"],
                                       incarnation=seen["incarnation"], version=seen["version"])
    copies = {good_label: a3.publish(good_label, port, good), real_label: a3.publish(real_label, real["port"], real_txt)}
    for label, copy in copies.items():
        line = copy.wait(lambda line: "Established under name" in line, 15, "the copy established")[1]
        print(copy.text())
        assert f"'{label} #2'" in line, line

    for label, (_, why) in bad.items():
        line = _logged(client, f"ignoring record {label}._meshrpc._tcp.local.: ")
        assert why in line, line
        assert " WARNING " in line
    for label in copies:
        _logged(client, f"ignoring record {label} #2._meshrpc._tcp.local.: instance label does not match")

    # The record whose port nobody serves: listed at first, then gone at the first check (refused).
    client.event("added", 10, since, name="avahi.dead", uri=dead_uri)
    client.event("removed", 10, since, name="avahi.dead", uri=dead_uri)
    assert "refused a connection to " + dead_uri in _logged(client, "node avahi-h2 refused")
    failed = client.request("call", uri="PYRONAME:avahi.dead")
    assert failed.get("error") == "UnknownNameError", failed

    # Avahi answers a question for it as long as it is published: that copy does not bring it back.
    since = client.mark()
    asked = h3.python(ASK_TXT, records.service_name(dead_label).rstrip("."), h3.address, capture_output=True,
                      text=True, timeout=30)
    assert asked.returncode == 0, f"Avahi did not answer the question by multicast: {asked.stderr}"
    marker_uri = f"PYRO:obj_marker@{h2.address}:{port}"
    marker_label, marker = meshrpc_txt(realm, "avahi.marker", marker_uri, ["avahi"], node="avahi-h2")
    a2.publish(marker_label, port, marker)       # announced after Avahi's answer (it probes first)
    client.event("added", 10, since, name="avahi.marker")   # records are fed in the order they came
    assert client.events(since, name="avahi.dead") == []

    listed = client.request("list")["entries"]
    assert sorted((e["name"], e["uri"]) for e in listed) == sorted(
        [("avahi.good", good_uri), ("lab.real", real_uri), ("avahi.marker", marker_uri)]), listed
    for target, answer in (("PYRONAME:avahi.good", "hello h1 from h2"), ("PYRONAME:lab.real", "hello h1 from h1"),
                           ("PYROMETA:lab", "hello h1 from h1")):
        call = client.request("call", uri=target, who="h1")
        assert call.get("answer") == answer, call
    assert [e for e in client.events() if e["event"] == "removed" and e["name"] != "avahi.dead"] == []


# ---------------------------------------------------------------------------------------------
# 3. Both stacks on one host

COLD_BOUND = 3.0             # a fresh registry sees what is already published (the mesh's cold-start goal)


def test_avahi_and_meshrpc_on_one_host_each_see_the_other_hosts_records(
        lab: Any, spawn: Callable[..., Agent], avahi: Callable[..., Avahi], realm: str,
        record_property: Callable[[str, Any], None]) -> None:
    """h1 and h2 each run avahi-daemon (publishing a meshrpc-shaped record) and a meshrpc daemon, all
    on UDP 5353. A registry started afterwards on each host finds both of the other host's records (its
    first question asks for unicast answers to port 5353, which the kernel may hand to Avahi: the
    one-shot query from an ephemeral port is what makes this fast), and each Avahi resolves both."""
    h1, h2, _ = lab.hosts
    records_of: dict[str, dict[str, str]] = {}
    stacks: dict[str, Avahi] = {}
    for host in (h1, h2):
        stacks[host.name] = avahi(host)
        plain = spawn(host, PLAIN_SERVER)
        plain_uri = _expected_uri(plain.ready, host)
        label, txt = meshrpc_txt(realm, f"avahi.{host.name}", plain_uri, ["avahi"], node=f"avahi-{host.name}")
        stacks[host.name].publish(label, plain.ready["port"], txt).wait(
            lambda line: "Established under name" in line, 15, "avahi-publish established")
        server = spawn(host, SERVER)
        registered = server.request("register", name=f"lab.{host.name}", tags=["lab"])
        records_of[host.name] = {f"avahi.{host.name}": plain_uri, f"lab.{host.name}": _expected_uri(registered, host)}

    for host, other in ((h1, h2), (h2, h1)):
        client = spawn(host, CLIENT)
        for name, uri in records_of[other.name].items():
            seen = client.event("added", 10, 0, name=name, uri=uri)
            _figure(record_property, f"cold_registry_on_{host.name}_sees_{name}", seen["t"] - client.ready["started"])
            assert seen["t"] - client.ready["started"] < COLD_BOUND
            call = client.request("call", uri=f"PYRONAME:{name}", who=host.name)
            assert call.get("answer") == f"hello {host.name} from {other.name}" and call["resolved"] == uri, call
        resolved = {entry["txt"]["n"]: entry for entry in _browse_once(stacks[host.name])}
        for name, uri in records_of[other.name].items():
            assert resolved[name]["txt"]["u"] == uri and resolved[name]["address"] == other.address, resolved
        assert set(resolved) == {name for names in records_of.values() for name in names}   # its own host's too


# ---------------------------------------------------------------------------------------------
# 4. A foreign cache follows meshrpc's changes

def test_avahi_browse_follows_unregister_register_and_the_goodbye_at_shutdown(
        lab: Any, spawn: Callable[..., Agent], avahi: Callable[..., Avahi],
        record_property: Callable[[str, Any], None]) -> None:
    h1, h2, _ = lab.hosts
    browsing = avahi(h2, publishing=False)
    follow = browsing.run(["avahi-browse", "-rp", "_meshrpc._tcp"])
    server = spawn(h1, SERVER)
    first = server.request("register", name="lab.first", tags=["lab"])
    follow.wait(lambda line: line.startswith("=") and '"n=lab.first"' in line, 10, "lab.first resolved")
    first_label = follow.wait(lambda line: line.startswith("=") and '"n=lab.first"' in line, 0, "")[1].split(";")[3]

    mark = follow.mark()
    changed = time.monotonic()
    assert server.request("unregister", object=first["object"]).get("unregistered") == first["object"]
    second = server.request("register", name="lab.second", tags=["lab", "second"])
    # Avahi keeps a record that said goodbye for one second (RFC 6762 10.1), then reports it gone.
    gone_at, _ = follow.wait(lambda line: line.startswith("-;") and f";{first_label};" in line, 10,
                             "lab.first removed", mark)
    seen_at, line = follow.wait(lambda line: line.startswith("=") and '"n=lab.second"' in line, 10,
                                "lab.second resolved", mark)
    _figure(record_property, "unregister_to_gone_in_avahi", gone_at - changed)
    _figure(record_property, "register_to_resolved_in_avahi", seen_at - changed)
    assert f'"u={_expected_uri(second, h1)}"' in line and '"t=lab,second"' in line, line
    entries = _browse_once(browsing)             # a fresh browser: Avahi's cache, as it is now
    assert [e["txt"]["n"] for e in entries] == ["lab.second"], entries
    second_label = entries[0]["name"]

    mark = follow.mark()
    stopped = time.monotonic()
    assert server.proc.stdin is not None
    server.proc.stdin.close()                    # the helper shuts its daemon down and exits: goodbyes
    server.proc.wait(10)
    gone_at, _ = follow.wait(lambda line: line.startswith("-;") and f";{second_label};" in line, 10,
                             "lab.second removed", mark)
    _figure(record_property, "shutdown_to_gone_in_avahi", gone_at - stopped)
    assert _browse_once(browsing) == []
