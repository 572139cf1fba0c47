#!/usr/bin/env python3
"""Resilience benchmark: how fast do meshrpc proxies recover, and do they lose calls?

Runs failure scenarios in a network-namespace lab (tools/netlab.py, needs root): every service and
every client is its own process inside a lab host, bound to 0.0.0.0 there (a lab host has only
loopback and its veth into the lab switch, so mDNS never leaves the machine), with a mesh realm of
its own. The client reports what it saw as JSON on stdout; all processes stamp events with
CLOCK_MONOTONIC, which is one clock for the whole machine, so times compare across processes.

Scenarios (numbered as in the resilience acceptance list):

1. restart elsewhere: ``kill -9`` the service of ``PYRONAME:svc`` and start it on another host while
   a client loops over an idempotent call. Figure: time from the new service's announcement
   ("READY", printed when ``register(name=...)`` returned) to the client's first successful call.
2. failover: two replicas, the one the client uses is killed (``kill -9``). Figure: gap between the
   last success on the dead replica and the first success on the other.
5. graceful move: SIGTERM (the service calls ``daemon.shutdown()``; goodbyes are sent), then the
   service starts on another host; the client alternates an idempotent and a non-idempotent call
   (runs alternate which of them the SIGTERM follows). Figures as for 1.

Every scenario also reports the calls lost (failed calls seen by the client; must be 0).

    sudo python3 tools/resilience_bench.py                 # 3 runs of 1, 2 and 5, a table
    sudo python3 tools/resilience_bench.py --runs 5 --json
    sudo python3 tools/resilience_bench.py --scenarios 2 --runs 10

tests/netlab/test_resilience_lab.py loads this file by path and uses the same scenarios.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
NETLAB_PATH = ROOT / "tools" / "netlab.py"


def load_netlab() -> Any:
    """tools/netlab.py as a module (tools/ is not a package); the same module object as the tests'."""
    name = "meshrpc_tools_netlab"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, NETLAB_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look the module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


# --------------------------------------------------------------------------------------------------
# the processes that run inside the lab hosts

# A service. Prints "READY {json}" once its object is registered (and announced, when named),
# "RUNNING <count>" when work() has counted a run, "CLOSED {json}" after a clean shutdown.
# SIGTERM -> daemon.shutdown(): the request loop ends and the daemon closes (goodbyes sent).
SERVER_CODE = r"""
import argparse, json, logging, os, signal, sys, time
import meshrpc

p = argparse.ArgumentParser()
p.add_argument("--tag", required=True)          # which process answered: part of every result
p.add_argument("--name", default="")            # mesh name (PYRONAME); empty: not announced
p.add_argument("--object-id", default=None)
p.add_argument("--port", type=int, default=0)
p.add_argument("--counter", default="")         # file counting runs of work(), fsynced
args = p.parse_args()
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(created).3f server " + args.tag + " %(name)s %(levelname)s %(message)s")

def out(*parts):
    sys.stdout.write(" ".join(str(x) for x in parts) + "\n")
    sys.stdout.flush()

@meshrpc.expose
@meshrpc.behavior(instance_mode="single")
class Service:
    def __init__(self):
        self.bumps = 0

    @meshrpc.idempotent
    def whoami(self, n):
        return [args.tag, n]

    def bump(self, n):                          # not idempotent: each run counts
        self.bumps += 1
        logging.getLogger("service").info("bump %s ran (run %d of this process)", n, self.bumps)
        return [args.tag, n, self.bumps]

    def work(self, seconds):                    # not idempotent; the run is on disk before the sleep
        fd = os.open(args.counter, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            count = int(os.read(fd, 64) or b"0") + 1
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, str(count).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        out("RUNNING", count)
        time.sleep(seconds)
        return count

    def numbers(self, n):                       # a remote iterator
        for i in range(n):
            yield [args.tag, i]

daemon = meshrpc.Daemon(port=args.port)
def on_term(*_):
    logging.getLogger("service").info("SIGTERM: daemon.shutdown()")
    daemon.shutdown()
signal.signal(signal.SIGTERM, on_term)
uri = daemon.register(Service(), args.object_id, name=args.name or None)
out("READY", json.dumps({"tag": args.tag, "uri": str(uri), "t": time.monotonic(), "pid": os.getpid()}))
daemon.requestLoop()
daemon.close()
out("CLOSED", json.dumps({"tag": args.tag, "t": time.monotonic()}))
"""

# A client. Modes:
#   loop      calls --methods in turn (argument: the call number, echoed back) every --pace seconds
#             until "stop" on stdin (or --max-seconds); prints "EVENT {json}" when the answering
#             service changes ("switch"), for every failed call ("error"), and for a success after
#             more than --gap seconds without one ("gap"); "PROGRESS <ok>" every --progress successes.
#   commands  one call per stdin line, "METHOD [JSON-ARG...]" (e.g. "work 60") -> "CALL {json}";
#             "quit" ends.
#   stream    pulls --items items of numbers(); after item i in --cut it shuts its own connection
#             down (a broken link); "ITEM {json}" per item.
# --providers N: first wait (30 s at most) until the mesh registry lists N providers of the name;
# prints "PROVIDERS <count>".
# All modes end with "RESULT {json}": the counts.
CLIENT_CODE = r"""
import argparse, json, logging, socket, sys, threading, time
import meshrpc

p = argparse.ArgumentParser()
p.add_argument("--uri", required=True)
p.add_argument("--mode", default="loop", choices=["loop", "commands", "stream"])
p.add_argument("--methods", default="whoami")
p.add_argument("--pace", type=float, default=0.005)
p.add_argument("--timeout", type=float, default=0.0)       # proxy._pyroTimeout; 0: none
p.add_argument("--max-seconds", type=float, default=120.0)
p.add_argument("--gap", type=float, default=0.3)
p.add_argument("--progress", type=int, default=25)
p.add_argument("--items", type=int, default=10)
p.add_argument("--cut", default="")
p.add_argument("--providers", type=int, default=0)   # wait until the mesh shows this many first
args = p.parse_args()
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(created).3f client %(name)s %(levelname)s %(message)s")

def out(kind, data):
    sys.stdout.write(kind + " " + (data if isinstance(data, str) else json.dumps(data)) + "\n")
    sys.stdout.flush()

proxy = meshrpc.Proxy(args.uri)
if args.timeout:
    proxy._pyroTimeout = args.timeout
if args.providers:
    from meshrpc.mesh import get_registry
    registry, name = get_registry(), args.uri.split(":", 1)[1]
    deadline = time.monotonic() + 30
    while len(registry.lookup(name)) < args.providers and time.monotonic() < deadline:
        time.sleep(0.01)
    out("PROVIDERS", str(len(registry.lookup(name))))

def loop():
    stop = threading.Event()
    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()
    threading.Thread(target=watch_stdin, daemon=True).start()
    methods = args.methods.split(",")
    counts = {"calls": 0, "ok": 0, "failed": 0, "wrong": 0, "errors": {},
              "by_method": {m: {"calls": 0, "ok": 0, "failed": 0} for m in methods}}
    segments = []            # [tag, first ok (end time), last ok (end time), count]
    last_ok = None
    deadline = time.monotonic() + args.max_seconds
    n = 0
    while not stop.is_set() and time.monotonic() < deadline:
        n += 1
        method = methods[(n - 1) % len(methods)]
        counts["calls"] += 1
        counts["by_method"][method]["calls"] += 1
        t0 = time.monotonic()
        try:
            result = getattr(proxy, method)(n)
        except Exception as exc:
            t1 = time.monotonic()
            counts["failed"] += 1
            counts["by_method"][method]["failed"] += 1
            name = type(exc).__name__
            counts["errors"][name] = counts["errors"].get(name, 0) + 1
            out("EVENT", {"kind": "error", "t": t1, "t0": t0, "n": n, "method": method,
                          "error": name, "message": str(exc)[:300]})
        else:
            t1 = time.monotonic()
            tag = result[0]
            if result[1] != n:
                counts["wrong"] += 1
            counts["ok"] += 1
            counts["by_method"][method]["ok"] += 1
            if not segments or segments[-1][0] != tag:
                segments.append([tag, t1, t1, 1])
                out("EVENT", {"kind": "switch", "tag": tag, "t": t1, "t0": t0, "n": n, "method": method})
            else:
                segments[-1][2] = t1
                segments[-1][3] += 1
            if last_ok is not None and t1 - last_ok > args.gap:
                out("EVENT", {"kind": "gap", "tag": tag, "t": t1, "t0": t0, "since": last_ok,
                              "n": n, "method": method})
            last_ok = t1
            if counts["ok"] % args.progress == 0:
                out("PROGRESS", str(counts["ok"]))
        stop.wait(args.pace)
    counts["segments"] = segments
    counts["timed_out"] = not stop.is_set()
    out("RESULT", counts)

def commands():
    counts = {"calls": 0, "returned": 0, "errors": {}}
    for line in sys.stdin:
        words = line.split()            # METHOD [JSON-ARG...], or quit
        if not words:
            continue
        if words[0] == "quit":
            break
        counts["calls"] += 1
        try:
            value = getattr(proxy, words[0])(*map(json.loads, words[1:]))
        except Exception as exc:
            name = type(exc).__name__
            counts["errors"][name] = counts["errors"].get(name, 0) + 1
            out("CALL", {"ok": False, "error": name, "message": str(exc)[:300], "t": time.monotonic()})
        else:
            counts["returned"] += 1
            out("CALL", {"ok": True, "result": value, "t": time.monotonic()})
    out("RESULT", counts)

def stream():
    cuts = {int(c) for c in args.cut.split(",") if c}
    items, reconnects = [], 0
    it = proxy.numbers(args.items)
    for i, item in enumerate(it):
        items.append(item)
        out("ITEM", {"i": i, "item": item, "t": time.monotonic()})
        if i in cuts:
            # a broken connection, seen from this side: the daemon reads EOF, the proxy finds it dead
            proxy._pyroConnection.sock.shutdown(socket.SHUT_RDWR)
            reconnects += 1
    out("RESULT", {"items": items, "cuts": reconnects})

{"loop": loop, "commands": commands, "stream": stream}[args.mode]()
"""


# --------------------------------------------------------------------------------------------------
# running them


class ChildError(AssertionError):
    """A child process did not say what was expected in time (its stderr tail is in the message)."""


class Child:
    """A process in a lab host; its stdout lines are collected (with arrival times) for waiting."""

    def __init__(self, host: Any, argv: Sequence[str], env: dict[str, str], log_path: Path,
                 label: str) -> None:
        self.label = label
        self.host = host
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        # cwd: the run's directory, so that `-c` code imports meshrpc as installed (or from
        # PYTHONPATH), not from whatever directory the caller happens to be in
        self.proc = host.popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=self._log, env=env, cwd=log_path.parent)
        self.lines: list[tuple[float, str]] = []
        self.eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._pump, name=f"child-{label}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                self.lines.append((time.monotonic(), line))
                self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def wait_line(self, prefix: str, timeout: float, start: int = 0,
                  match: Callable[[str], bool] | None = None) -> tuple[int, str]:
        """The first line from index `start` on that starts with prefix (and matches); waits."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    line = self.lines[i][1]
                    if line.startswith(prefix) and (match is None or match(line)):
                        return i, line
                    i += 1
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    break
                self._cond.wait(left)
        why = "exited" if self.eof else f"said nothing like it within {timeout:g} s"
        raise ChildError(f"{self.label}: waited for {prefix!r}, but it {why} "
                         f"(exit {self.proc.poll()}); stdout tail: {self.tail_stdout()}; "
                         f"stderr tail:\n{self.tail_stderr()}")

    def wait_json(self, prefix: str, timeout: float, start: int = 0,
                  match: Callable[[dict], bool] | None = None) -> tuple[int, dict]:
        """Like wait_line for lines "PREFIX {json}"; returns (index, decoded json)."""
        def ok(line: str) -> bool:
            return match is None or match(json.loads(line[len(prefix):]))
        i, line = self.wait_line(prefix, timeout, start, ok)
        return i, json.loads(line[len(prefix):])

    def count(self) -> int:
        with self._cond:
            return len(self.lines)

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """kill -9 (the pid is the Python process itself: `ip netns exec` execs, it does not fork)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ChildError(f"{self.label}: still running after {timeout:g} s; stderr tail:\n"
                             f"{self.tail_stderr()}") from None

    def tail_stdout(self, n: int = 5) -> list[str]:
        with self._cond:
            return [line for _, line in self.lines[-n:]]

    def tail_stderr(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._reader.join(5)
        self._log.close()


class Run:
    """One scenario run: a lab, a realm, a working directory, and the children started in it."""

    def __init__(self, lab: Any, workdir: Path, realm: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.lab = lab
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.realm = realm or "rlab-" + uuid.uuid4().hex[:12]
        self.env = dict(os.environ)
        # Inside a lab host 0.0.0.0 means lo plus the veth into the lab switch: nothing else.
        self.env.update({"MESHRPC_HOST": "0.0.0.0", "MESHRPC_REALM": self.realm,
                         "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                         # the children run the code of this tree, not whatever meshrpc is installed
                         # (an editable install may point at another checkout)
                         "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        self.env.pop("MESHRPC_INTERFACES", None)
        self.env.update(extra_env or {})
        self.children: list[Child] = []
        self._n = 0

    def start(self, host: Any, code: str, args: Sequence[str], label: str,
              env: dict[str, str] | None = None) -> Child:
        self._n += 1
        log_path = self.workdir / f"{self._n:02d}-{label}-{host.name}.log"
        child = Child(host, [sys.executable, "-u", "-c", code, *args], {**self.env, **(env or {})},
                      log_path, f"{label}@{host.name}")
        self.children.append(child)
        return child

    def server(self, host: Any, tag: str, name: str = "svc", *more: str, timeout: float = 30.0,
               env: dict[str, str] | None = None) -> tuple[Child, dict]:
        """Start a service and wait until it is registered (and announced): (child, READY data)."""
        child = self.start(host, SERVER_CODE, ["--tag", tag, "--name", name, *more], f"server-{tag}", env)
        _, ready = child.wait_json("READY ", timeout)
        return child, ready

    def client(self, host: Any, uri: str, *more: str, env: dict[str, str] | None = None) -> Child:
        return self.start(host, CLIENT_CODE, ["--uri", uri, *more], "client", env)

    def close(self) -> None:
        for child in self.children:
            child.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def finish_loop(client: Child, timeout: float = 30.0) -> dict:
    """Tell a loop client to stop; its RESULT counts plus the EVENT lines it printed."""
    client.send("stop")
    _, result = client.wait_json("RESULT ", timeout)
    client.wait_exit(timeout)
    result["events"] = [json.loads(line[6:]) for _, line in client.lines if line.startswith("EVENT ")]
    return result


def first_switch_to(client: Child, tag: str, timeout: float, start: int = 0) -> dict:
    """Wait for the loop client's first success on service `tag`."""
    return client.wait_json("EVENT ", timeout, start,
                            lambda e: e["kind"] == "switch" and e["tag"] == tag)[1]


def wait_progress(client: Child, timeout: float, start: int = 0) -> int:
    """Wait for one more PROGRESS line after index start; returns its index."""
    return client.wait_line("PROGRESS ", timeout, start)[0]


def segment_gap(result: dict, old: str, new: str) -> float:
    """Seconds between the last success on `old` and the first success on `new` after it."""
    segments = result["segments"]
    for i, seg in enumerate(segments):
        if seg[0] == new and i > 0 and segments[i - 1][0] == old:
            return seg[1] - segments[i - 1][2]
    raise AssertionError(f"no switch from {old} to {new} in {segments}")


# --------------------------------------------------------------------------------------------------
# scenarios 1, 2 and 5 (also used by tests/netlab/test_resilience_lab.py)

STEP_TIMEOUT = 30.0  # one step (a process starting, a client switching) never takes longer


def scenario_restart_elsewhere(lab: Any, workdir: Path, restart_delay: float = 0.0) -> dict:
    """1: kill -9 the service, start it on another host; the client loops over an idempotent call.

    restart_delay: seconds the service stays away (a supervisor's restart delay; part of the
    scenario, not a synchronisation)."""
    h1, h2, h3 = lab.hosts[:3]
    with Run(lab, workdir) as run:
        a, _ = run.server(h1, "A")
        client = run.client(h3, "PYRONAME:svc", "--methods", "whoami")
        first_switch_to(client, "A", STEP_TIMEOUT)
        wait_progress(client, STEP_TIMEOUT)
        mark = client.count()
        killed_at = time.monotonic()
        a.kill()
        if restart_delay:
            time.sleep(restart_delay)
        _, ready = run.server(h2, "B")
        switched = first_switch_to(client, "B", STEP_TIMEOUT, mark)
        wait_progress(client, STEP_TIMEOUT, client.count())
        result = finish_loop(client)
    return {"scenario": "restart_elsewhere", "restart_delay": restart_delay, "calls": result["calls"],
            "failed": result["failed"],
            "wrong": result["wrong"], "errors": result["errors"],
            "resume_after_ready": switched["t"] - ready["t"],
            "outage": segment_gap(result, "A", "B"),
            "restart_took": ready["t"] - killed_at,
            "result": result}


def scenario_failover(lab: Any, workdir: Path) -> dict:
    """2: two replicas; kill -9 the one the client uses; the client loops over an idempotent call."""
    h1, h2, h3 = lab.hosts[:3]
    with Run(lab, workdir) as run:
        servers = {"A": run.server(h1, "A")[0], "B": run.server(h2, "B")[0]}
        # the client starts calling once its registry knows both replicas: the figure is the
        # failover itself, not how soon a fresh process hears of the second replica
        client = run.client(h3, "PYRONAME:svc", "--methods", "whoami", "--providers", "2")
        _, known = client.wait_line("PROVIDERS ", STEP_TIMEOUT)
        if known != "PROVIDERS 2":
            raise ChildError(f"the client's registry found {known.split()[1]} of 2 replicas")
        _, first = client.wait_json("EVENT ", STEP_TIMEOUT, 0, lambda e: e["kind"] == "switch")
        used = first["tag"]
        other = "B" if used == "A" else "A"
        wait_progress(client, STEP_TIMEOUT)
        mark = client.count()
        killed_at = time.monotonic()
        servers[used].kill()
        switched = first_switch_to(client, other, STEP_TIMEOUT, mark)
        wait_progress(client, STEP_TIMEOUT, client.count())
        result = finish_loop(client)
    return {"scenario": "failover", "calls": result["calls"], "failed": result["failed"],
            "wrong": result["wrong"], "errors": result["errors"],
            "failover": segment_gap(result, used, other),
            "after_kill": switched["t"] - killed_at,
            "result": result}


def scenario_graceful_move(lab: Any, workdir: Path, after: str = "whoami") -> dict:
    """5: SIGTERM (daemon.shutdown(), goodbyes), start on another host; idempotent and
    non-idempotent calls alternate (whoami on odd call numbers, bump on even ones).

    The SIGTERM goes right after a PROGRESS line (every 25 successes) for a call of `after`, so
    that the calls around the shutdown are of a known kind: the next call (the other method) may
    still be running when the SIGTERM arrives, the one after it is `after` again."""
    h1, h2, h3 = lab.hosts[:3]
    with Run(lab, workdir) as run:
        a, _ = run.server(h1, "A")
        client = run.client(h3, "PYRONAME:svc", "--methods", "whoami,bump", "--progress", "25")
        first_switch_to(client, "A", STEP_TIMEOUT)
        seen = wait_progress(client, STEP_TIMEOUT)           # 25 ok: call 25 (whoami) just returned
        if after == "bump":
            seen = wait_progress(client, STEP_TIMEOUT, seen + 1)  # 50 ok: call 50 (bump)
        mark = client.count()
        stopped_at = time.monotonic()
        a.terminate()
        a.wait_json("CLOSED ", STEP_TIMEOUT)
        a.wait_exit(STEP_TIMEOUT)
        _, ready = run.server(h2, "B")
        switched = first_switch_to(client, "B", STEP_TIMEOUT, mark)
        wait_progress(client, STEP_TIMEOUT, client.count())
        result = finish_loop(client)
    return {"scenario": "graceful_move", "after": after, "calls": result["calls"], "failed": result["failed"],
            "wrong": result["wrong"], "errors": result["errors"],
            "by_method": result["by_method"],
            "resume_after_ready": switched["t"] - ready["t"],
            "outage": segment_gap(result, "A", "B"),
            "restart_took": ready["t"] - stopped_at,
            "result": result}


SCENARIOS: dict[str, Callable[..., dict]] = {
    "1": scenario_restart_elsewhere,
    "2": scenario_failover,
    "5": scenario_graceful_move,
}
FIGURES = {  # scenario -> (figure key, what it is)
    "1": ("resume_after_ready", "service reappeared (READY) -> first successful call"),
    "2": ("failover", "last success on the killed replica -> first success on the other"),
    "5": ("resume_after_ready", "service reappeared (READY) -> first successful call"),
}


@contextlib.contextmanager
def lab_of(hosts: int = 3) -> Iterator[Any]:
    netlab = load_netlab()
    with netlab.Lab(hosts) as lab:
        yield lab


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "max": max(values)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="resilience_bench.py",
        description="Recovery times and lost calls of meshrpc proxies in a namespace lab (needs root).")
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario (default 3)")
    parser.add_argument("--scenarios", default="1,2,5", help="comma-separated: 1, 2, 5 (default all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep every process's stderr log here")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or args.runs < 1:
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}" if unknown
                     else "--runs must be at least 1")
    netlab = load_netlab()
    ok, reason = netlab.available()
    if not ok:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    logdir = Path(args.keep_logs) if args.keep_logs else Path(tempfile.mkdtemp(prefix="resbench-"))
    report: dict[str, Any] = {"runs": args.runs, "scenarios": {}}
    for scenario in chosen:
        runs = []
        for i in range(args.runs):
            with lab_of() as lab:
                try:
                    options = {"after": ("whoami", "bump")[i % 2]} if scenario == "5" else {}
                    outcome = SCENARIOS[scenario](lab, logdir / f"s{scenario}-run{i + 1}", **options)
                except ChildError as exc:
                    outcome = {"scenario": SCENARIOS[scenario].__name__, "error": str(exc)}
            outcome.pop("result", None)
            runs.append(outcome)
            if not args.json:
                _print_run(scenario, i + 1, outcome)
        key, what = FIGURES[scenario]
        done = [r for r in runs if "error" not in r]
        report["scenarios"][scenario] = {
            "name": SCENARIOS[scenario].__name__.removeprefix("scenario_"),
            "figure": key, "meaning": what,
            "seconds": _summary([r[key] for r in done]),
            "calls_lost": sum(r["failed"] for r in done),
            "lost_per_run": [r["failed"] for r in done],
            "wrong_results": sum(r["wrong"] for r in done),
            "runs_broken": len(runs) - len(done),
            "runs": runs,
        }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print()
        for scenario, s in report["scenarios"].items():
            sec = s["seconds"]
            figure = (f"{sec['median'] * 1000:.0f} ms median ({sec['min'] * 1000:.0f}-"
                      f"{sec['max'] * 1000:.0f} ms, n={sec['n']})") if sec else "n/a"
            print(f"scenario {scenario} {s['name']:<18} {s['meaning']}: {figure}; "
                  f"calls lost {s['calls_lost']} ({s['lost_per_run']}); wrong results "
                  f"{s['wrong_results']}; broken runs {s['runs_broken']}")
        print(f"logs: {logdir}")
    lost = sum(s["calls_lost"] + s["wrong_results"] + s["runs_broken"]
               for s in report["scenarios"].values())
    return 1 if lost else 0


def _print_run(scenario: str, i: int, r: dict) -> None:
    if "error" in r:
        print(f"scenario {scenario} run {i}: BROKEN: {r['error'][:2000]}", flush=True)
        return
    figures = ", ".join(f"{k} {r[k] * 1000:.0f} ms" for k in
                        ("resume_after_ready", "failover", "outage", "after_kill", "restart_took") if k in r)
    if "after" in r:
        figures += f" (SIGTERM after a {r['after']} call)"
    print(f"scenario {scenario} run {i}: {figures}; calls {r['calls']}, lost {r['failed']} "
          f"{r['errors'] or ''}, wrong {r['wrong']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
