#!/usr/bin/env python3
"""meshrpc.aio across hosts of the namespace lab (tools/netlab.py, needs root): the processes.

tests/netlab/test_aio_lab.py loads this file by path. Every daemon and client is a process of its
own inside a lab host, started through tools/resilience_bench.py's `Run` (stdout lines collected
with arrival times, stderr to a log file, mesh realm of the run's own, bound to 0.0.0.0 inside the
host) with PYTHONPATH set to this tree, so the lab runs the code the tests live next to and not
whatever meshrpc is installed.

The service (SERVER_CODE) is the same object for both drivers: `--kind aio` serves it from a
meshrpc.aio.Daemon (`async def` methods awaited on the loop, a `nonblocking` one on the loop, a
plain one in the executor), `--kind threaded` from a meshrpc.Daemon (plain methods). Every run of
a non-idempotent method prints "RAN <call id> <tag>" before it answers, so the lines of all the
replicas of a run count how often each call ran, also for a replica killed with SIGKILL (what it
wrote before it died is still in its pipe).

The client (CLIENT_CODE) has two modes:

- burst: for each URI (PYRONAME:, PYROMETA:), one call that finds the service, then --seq
  sequential calls, then --pipe calls at once (asyncio.gather on one aio proxy: pipelined, or
  taking turns with a daemon that does not pipeline; with `--driver threaded`, one threaded proxy
  shared by --threads threads). Prints "PHASE {json}" per phase and "RESULT {json}".
- stream (aio): --tasks tasks on one proxy call bump (not idempotent) and whoami (idempotent) in
  turn until "stop" on stdin; "EVENT {json}" for a change of the answering replica ("switch"), a
  failed call ("error") and a success after more than --gap s without one ("gap"); "PROGRESS <ok>"
  every --progress successes. "call PROXY METHOD ID SECONDS [COUNT]" on stdin starts a long call
  (or COUNT at once, ids ID0, ID1 ...) of work (not idempotent) or hold (idempotent) on the proxy
  "main" or "retry" (a twin bound to the same replica with `_pyroMaxRetries = 1`, Pyro5's
  re-send-anything opt-in: the one way a call may run twice), each answered by "CALL {json}"
  ("STARTED <ids>" once they are sent or wait for their turn); the service prints "RUNNING <id>
  <tag>" when it starts one.
  "RESULT {json}" at the end has every non-idempotent call's outcome by id.

An outcome is "ok", "not" (a NotDeliveredError: certainly not run), "maybe" (a
MaybeDeliveredError: ran at most once), "cancelled" (still in flight at "stop"; at most once) or
"other:<class>" (none of the documented outcomes of docs/resilience.md).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEP = 30.0  # one step (a process starting, a client switching over) never takes longer


def _load(filename: str) -> Any:
    """A module of tools/ by path, once per process (the same module objects as the tests')."""
    name = "meshrpc_tools_" + Path(filename).stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / filename)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look the module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


bench = _load("resilience_bench.py")
netlab = _load("netlab.py")

NAME = "aiolab.svc"
TAG = "aiolab"

SERVER_CODE = r"""
import argparse, asyncio, json, logging, os, signal, sys, threading, time
import meshrpc, meshrpc.aio

p = argparse.ArgumentParser()
p.add_argument("--tag", required=True)
p.add_argument("--name", required=True)
p.add_argument("--meta", required=True)
p.add_argument("--kind", choices=["aio", "threaded"], required=True)
args = p.parse_args()
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(created).3f server " + args.tag + " %(name)s %(levelname)s %(message)s")
lock = threading.Lock()

def out(*parts):
    with lock:
        sys.stdout.write(" ".join(str(x) for x in parts) + "\n")
        sys.stdout.flush()

@meshrpc.expose
class AsyncService:
    @meshrpc.idempotent
    @meshrpc.aio.nonblocking
    def whoami(self, n):                        # on the loop
        return [args.tag, n]

    async def bump(self, call_id):              # not idempotent; awaited on the loop
        out("RAN", call_id, args.tag)
        if call_id[-1] in "13579":              # half of them wait: answers leave out of order
            await asyncio.sleep(0.001)
        return [args.tag, call_id]

    def tally(self, call_id):                   # not idempotent; plain: the executor
        out("RAN", call_id, args.tag)
        return [args.tag, call_id]

    async def work(self, call_id, seconds):     # not idempotent; long
        out("RAN", call_id, args.tag)
        out("RUNNING", call_id, args.tag)
        await asyncio.sleep(seconds)
        return [args.tag, call_id]

    @meshrpc.idempotent
    async def hold(self, call_id, seconds):     # idempotent; long
        out("RUNNING", call_id, args.tag)
        await asyncio.sleep(seconds)
        return [args.tag, call_id]

@meshrpc.expose
class PlainService:
    @meshrpc.idempotent
    def whoami(self, n):
        return [args.tag, n]

    def bump(self, call_id):
        out("RAN", call_id, args.tag)
        return [args.tag, call_id]

    tally = bump

    def work(self, call_id, seconds):
        out("RAN", call_id, args.tag)
        out("RUNNING", call_id, args.tag)
        time.sleep(seconds)
        return [args.tag, call_id]

    @meshrpc.idempotent
    def hold(self, call_id, seconds):
        out("RUNNING", call_id, args.tag)
        time.sleep(seconds)
        return [args.tag, call_id]

def ready(uri):
    out("READY", json.dumps({"tag": args.tag, "uri": str(uri), "t": time.monotonic(), "pid": os.getpid()}))

async def serve_aio():
    daemon = meshrpc.aio.Daemon()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, daemon.shutdown)
    uri = daemon.register(AsyncService(), "svc", name=args.name, metadata={args.meta})
    await daemon.start()
    ready(uri)
    await daemon.serve_forever()

if args.kind == "aio":
    asyncio.run(serve_aio())
else:
    daemon = meshrpc.Daemon()
    signal.signal(signal.SIGTERM, lambda *_: daemon.shutdown())
    uri = daemon.register(PlainService(), "svc", name=args.name, metadata={args.meta})
    ready(uri)
    daemon.requestLoop()
    daemon.close()
out("CLOSED", json.dumps({"tag": args.tag, "t": time.monotonic()}))
"""

CLIENT_CODE = r"""
import argparse, asyncio, concurrent.futures, itertools, json, logging, sys, threading, time
import meshrpc, meshrpc.aio
from meshrpc import errors

p = argparse.ArgumentParser()
p.add_argument("--mode", choices=["burst", "stream"], required=True)
p.add_argument("--driver", choices=["aio", "threaded"], default="aio")
p.add_argument("--uris", required=True)                 # comma-separated; stream: the first
p.add_argument("--label", default="c")                  # prefix of the call ids
p.add_argument("--seq", type=int, default=20)
p.add_argument("--pipe", type=int, default=200)
p.add_argument("--threads", type=int, default=8)
p.add_argument("--tasks", type=int, default=2)
p.add_argument("--pace", type=float, default=0.01)
p.add_argument("--timeout", type=float, default=0.0)    # the main proxy's _pyroTimeout; 0: none
p.add_argument("--gap", type=float, default=0.5)
p.add_argument("--progress", type=int, default=25)
p.add_argument("--providers", type=int, default=0)      # first wait until the registry lists them
p.add_argument("--retry-proxy", action="store_true")
args = p.parse_args()
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(created).3f client-" + args.driver + " %(name)s %(levelname)s %(message)s")

def out(kind, data):
    sys.stdout.write(kind + " " + (data if isinstance(data, str) else json.dumps(data)) + "\n")
    sys.stdout.flush()

def outcome_of(exc):
    if isinstance(exc, errors.NotDeliveredError):       # first: NotSentTimeoutError is both
        return "not"
    if isinstance(exc, errors.MaybeDeliveredError):
        return "maybe"
    return "other:" + type(exc).__name__

class Phase:
    def __init__(self, uri, name, calls):
        self.data = {"uri": uri, "phase": name, "calls": calls, "ok": 0, "wrong": 0, "errors": {},
                     "tags": [], "outcomes": {}}
        self.started = time.monotonic()

    def took(self, call_id, result=None, exc=None):
        d = self.data
        if exc is not None:
            name = type(exc).__name__
            d["errors"][name] = d["errors"].get(name, 0) + 1
            d["outcomes"][call_id] = outcome_of(exc)
            if len(d["errors"]) == 1 and d["errors"][name] == 1:
                logging.getLogger("lab").error("%s failed: %r", call_id, exc)
            return
        d["ok"] += 1
        d["outcomes"][call_id] = "ok"
        if result[1] != call_id:
            d["wrong"] += 1
        if result[0] not in d["tags"]:
            d["tags"].append(result[0])

    def end(self):
        self.data["seconds"] = time.monotonic() - self.started
        out("PHASE", self.data)
        return self.data

def method_for(i):
    return "bump" if i % 2 == 0 else "tally"

async def burst():
    if args.driver == "threaded":   # the threaded proxy's calls come from these threads
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(args.threads))
    phases = []
    for k, uri in enumerate(args.uris.split(",")):
        if args.driver == "aio":
            proxy = meshrpc.aio.Proxy(uri)
            def invoke(method, *call_args):
                return getattr(proxy, method)(*call_args)
        else:
            proxy = meshrpc.Proxy(uri)  # one proxy shared by the threads (its lock)
            def invoke(method, *call_args):
                # (getattr too: the proxy's first attribute lookup fetches its metadata, blocking)
                return asyncio.to_thread(lambda: getattr(proxy, method)(*call_args))
        found = Phase(uri, "find", 1)
        try:
            found.took(0, await invoke("whoami", 0))
        except Exception as exc:
            found.took(0, exc=exc)
        phases.append(found.end())
        seq = Phase(uri, "seq", args.seq)
        for i in range(args.seq):
            call_id = f"{args.label}{k}s{i}"
            try:
                seq.took(call_id, await invoke(method_for(i), call_id))
            except Exception as exc:
                seq.took(call_id, exc=exc)
        phases.append(seq.end())
        many = Phase(uri, "at-once", args.pipe)  # aio: pipelined on one connection, or taking turns
        ids = [f"{args.label}{k}p{i}" for i in range(args.pipe)]
        results = await asyncio.gather(*(invoke(method_for(i), call_id) for i, call_id in enumerate(ids)),
                                       return_exceptions=True)
        for call_id, result in zip(ids, results):
            if isinstance(result, BaseException):
                many.took(call_id, exc=result)
            else:
                many.took(call_id, result)
        phases.append(many.end())
        if args.driver == "aio":
            await proxy._pyroRelease()
        else:
            await asyncio.to_thread(proxy._pyroRelease)
    out("RESULT", {"phases": phases})

async def stream():
    loop = asyncio.get_running_loop()
    uri = args.uris.split(",")[0]
    lines = asyncio.Queue()
    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.split())
        loop.call_soon_threadsafe(lines.put_nowait, ["stop"])
    threading.Thread(target=read_stdin, daemon=True).start()
    if args.providers:
        from meshrpc.mesh import get_registry
        registry, name = get_registry(), uri.split(":", 1)[1]
        await loop.run_in_executor(None, registry.lookup, name)  # starts the browser off the loop
        deadline = time.monotonic() + 30
        while len(registry.lookup(name)) < args.providers and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        out("PROVIDERS", str(len(registry.lookup(name))))
    main = meshrpc.aio.Proxy(uri)
    if args.timeout:
        main._pyroTimeout = args.timeout
    await main._pyroBind()
    proxies = {"main": main}
    bound = {"main": str(main._pyroUri)}
    if args.retry_proxy:
        for tries in range(1, 41):   # a twin on the same replica (providers are chosen at random)
            retry = meshrpc.aio.Proxy(uri)
            retry._pyroMaxRetries = 1
            await retry._pyroBind()
            if retry._pyroUri == main._pyroUri:
                break
            await retry._pyroRelease()
        proxies["retry"] = retry
        bound["retry"] = str(retry._pyroUri)
        bound["tries"] = tries
    out("BOUND", bound)

    counts = {"calls": 0, "ok": 0, "failed": 0, "wrong": 0, "errors": {},
              "by_method": {m: {"calls": 0, "ok": 0, "failed": 0, "errors": {}}
                            for m in ("bump", "whoami", "work", "hold")}}
    outcomes = {}           # non-idempotent call id -> outcome
    tags = []               # the replicas that answered, in turn
    state = {"last_ok": None}
    numbers = itertools.count(1)
    stop = asyncio.Event()

    def failed(method, call_id, exc, t0):
        counts["failed"] += 1
        by = counts["by_method"][method]
        by["failed"] += 1
        name = type(exc).__name__
        counts["errors"][name] = counts["errors"].get(name, 0) + 1
        by["errors"][name] = by["errors"].get(name, 0) + 1
        out("EVENT", {"kind": "error", "t": time.monotonic(), "t0": t0, "id": call_id, "method": method,
                      "error": name, "outcome": outcome_of(exc), "message": str(exc)[:300]})

    def succeeded(method, expected, result, t0):
        t1 = time.monotonic()
        counts["ok"] += 1
        counts["by_method"][method]["ok"] += 1
        if result[1] != expected:
            counts["wrong"] += 1
        tag = result[0]
        if tag != (tags[-1] if tags else None):
            tags.append(tag)
            out("EVENT", {"kind": "switch", "tag": tag, "t": t1, "t0": t0, "method": method})
        last = state["last_ok"]
        if last is not None and t1 - last > args.gap:
            out("EVENT", {"kind": "gap", "tag": tag, "t": t1, "t0": t0, "since": last, "method": method})
        state["last_ok"] = t1
        if counts["ok"] % args.progress == 0:
            out("PROGRESS", str(counts["ok"]))

    async def worker():
        while not stop.is_set():
            n = next(numbers)
            method = "bump" if n % 2 == 0 else "whoami"
            expected = f"{args.label}{n}" if method == "bump" else n
            counts["calls"] += 1
            counts["by_method"][method]["calls"] += 1
            if method == "bump":
                outcomes[expected] = "cancelled"
            t0 = time.monotonic()
            try:
                result = await getattr(main, method)(expected)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed(method, expected, exc, t0)
                if method == "bump":
                    outcomes[expected] = outcome_of(exc)
            else:
                succeeded(method, expected, result, t0)
                if method == "bump":
                    outcomes[expected] = "ok"
            if args.pace:
                await asyncio.sleep(args.pace)

    async def call(proxy_name, method, call_id, seconds):   # a long call: work (not idempotent) or hold
        counted = method == "work"
        if counted:
            outcomes[call_id] = "cancelled"
        counts["by_method"][method]["calls"] += 1
        t0 = time.monotonic()
        try:
            result = await getattr(proxies[proxy_name], method)(call_id, seconds)
        except Exception as exc:
            if counted:
                outcomes[call_id] = outcome_of(exc)
            counts["by_method"][method]["failed"] += 1
            out("CALL", {"id": call_id, "ok": False, "error": type(exc).__name__, "outcome": outcome_of(exc),
                         "message": str(exc)[:300], "t0": t0, "t": time.monotonic()})
        else:
            if counted:
                outcomes[call_id] = "ok"
            counts["by_method"][method]["ok"] += 1
            out("CALL", {"id": call_id, "ok": True, "result": result, "t0": t0, "t": time.monotonic()})

    workers = [asyncio.create_task(worker()) for _ in range(args.tasks)]
    works = []
    while True:
        words = await lines.get()
        if not words:
            continue
        if words[0] == "stop":
            break
        if words[0] == "call":   # call PROXY METHOD ID SECONDS [COUNT]: COUNT calls at once, ids ID0, ID1 ...
            proxy_name, method, call_id, seconds = words[1], words[2], words[3], float(words[4])
            ids = [call_id] if len(words) < 6 else [f"{call_id}{i}" for i in range(int(words[5]))]
            works += [asyncio.create_task(call(proxy_name, method, one, seconds)) for one in ids]
            await asyncio.sleep(0)  # their first steps: written, or waiting for their turn
            out("STARTED", " ".join(ids))
    stop.set()
    done, pending = await asyncio.wait(workers, timeout=15)
    for task in [*pending, *works]:
        task.cancel()
    await asyncio.gather(*workers, *works, return_exceptions=True)
    counts["tags"] = tags
    counts["outcomes"] = outcomes
    counts["stuck"] = len(pending)
    out("RESULT", counts)

asyncio.run(burst() if args.mode == "burst" else stream())
"""


def run(lab: Any, workdir: Path, extra_env: dict[str, str] | None = None) -> Any:
    """A resilience_bench.Run whose processes import meshrpc from this tree."""
    return bench.Run(lab, workdir, extra_env={"PYTHONPATH": str(ROOT), **(extra_env or {})})


def server(lab_run: Any, host: Any, tag: str, kind: str = "aio", name: str = NAME,
           meta: str = TAG) -> tuple[Any, dict]:
    """Start the service (`tag` in its answers; announced as `name` with the metadata tag `meta`) and
    wait for READY."""
    child = lab_run.start(host, SERVER_CODE, ["--tag", tag, "--name", name, "--meta", meta, "--kind", kind],
                          f"server-{kind}-{tag}")
    _, ready = child.wait_json("READY ", STEP)
    return child, ready


def client(lab_run: Any, host: Any, mode: str, *more: str, uris: str = f"PYRONAME:{NAME}",
           label: str = "c", env: dict[str, str] | None = None) -> Any:
    """Start a client; `label` prefixes its call ids (unique per client of a run)."""
    return lab_run.start(host, CLIENT_CODE, ["--mode", mode, "--uris", uris, "--label", label, *more],
                         f"client-{mode}-{label}", env)


def two_replicas(lab_run: Any, lab: Any, *more: str, kind: str = "aio") -> tuple[dict, Any, dict, str, str]:
    """Replicas "A" (h1) and "B" (h3) of the service (`kind` daemons), a stream client on h2 (3 tasks,
    more options: `more`) that knows both before it binds, calling: (servers, client, its BOUND data,
    the replica its main proxy uses, the other one)."""
    h1, h2, h3 = lab.hosts[:3]
    servers = {"A": server(lab_run, h1, "A", kind)[0], "B": server(lab_run, h3, "B", kind)[0]}
    child = client(lab_run, h2, "stream", "--tasks", "3", "--providers", "2", *more)
    _, known = child.wait_line("PROVIDERS ", STEP)
    if known != "PROVIDERS 2":
        raise bench.ChildError(f"the client's registry found {known.split()[1]} of 2 replicas")
    _, bound = child.wait_json("BOUND ", STEP)
    used = {h1.address: "A", h3.address: "B"}[bound["main"].rsplit("@", 1)[1].split(":")[0]]
    child.wait_line("PROGRESS ", STEP)
    return servers, child, bound, used, "B" if used == "A" else "A"


def finish_on(other: str, servers: dict, stream_client: Any, mark: int) -> tuple[dict, dict, collections.Counter]:
    """After the replica in use went away: wait for the stream's first success on `other` (after line
    `mark`) and one more PROGRESS, stop the client, then `other`: (the switch EVENT, the client's
    RESULT, the runs over both replicas)."""
    _, switched = stream_client.wait_json("EVENT ", STEP, mark, lambda e: e["kind"] == "switch" and e["tag"] == other)
    stream_client.wait_line("PROGRESS ", STEP, stream_client.count())
    result = finish_stream(stream_client)
    for tag, child in servers.items():
        if tag == other:
            stop_server(child)
        else:
            ended(child)
    return switched, result, runs(*servers.values())


def partition(host: Any, seconds: float) -> tuple[float, float]:
    """Cut the host's link for `seconds` (the scenario, not a synchronisation); (down, up) times."""
    host.link_down()
    down_at = time.monotonic()
    time.sleep(seconds)
    host.link_up()
    return down_at, time.monotonic()


def stop_server(child: Any) -> None:
    """SIGTERM (a graceful shutdown), then its last lines: everything it ran is counted."""
    child.terminate()
    child.wait_json("CLOSED ", STEP)
    child.wait_exit(STEP)
    ended(child)


def ended(child: Any) -> None:
    """Wait until every line of an exited (or killed) process has been read."""
    child.proc.wait(STEP)
    if not netlab.wait_for(lambda: child.eof, STEP, interval=0.01):
        raise bench.ChildError(f"{child.label}: its output did not end")


def runs(*servers: Any) -> collections.Counter:
    """How often each non-idempotent call ran, over the RAN lines of the given servers."""
    counted: collections.Counter = collections.Counter()
    for child in servers:
        for _, line in list(child.lines):
            if line.startswith("RAN "):
                counted[line.split()[1]] += 1
    return counted


def at_most_once_violations(outcomes: dict[str, str], ran: collections.Counter) -> list[str]:
    """Calls whose runs contradict their outcome: ok ran once, not-delivered never, the rest at most once."""
    wrong = []
    for call_id, outcome in outcomes.items():
        n = ran.get(call_id, 0)
        allowed = {"ok": (1,), "not": (0,), "maybe": (0, 1), "cancelled": (0, 1)}.get(outcome, ())
        if n not in allowed:
            wrong.append(f"{call_id}: {outcome}, ran {n}x")
    wrong += [f"{call_id}: ran {n}x, never called" for call_id, n in ran.items() if call_id not in outcomes]
    return wrong


def finish_stream(client_child: Any) -> dict:
    """Tell a stream client to stop; its RESULT and the EVENT lines it printed."""
    client_child.send("stop")
    _, result = client_child.wait_json("RESULT ", STEP)
    client_child.wait_exit(STEP)
    result["events"] = [json.loads(line[6:]) for _, line in client_child.lines if line.startswith("EVENT ")]
    return result
