#!/usr/bin/env python3
"""A home-automation program living a while on a bad network: a soak in the namespace lab (needs root).

    python3 tools/soak_home.py --minutes 20 --seed 1            # a summary; --json for the figures
    python3 tools/soak_home.py --minutes 1 --seed 3 --logs /tmp/soak   # keep every process's log

The lab (tools/netlab.py) has five hosts: four devices and a hub. Devices d1 and d3 serve on a
meshrpc.aio.Daemon, d2 and d4 on a threaded meshrpc.Daemon; each registers one object under the name
`home.<id>` with the tags `home.<role>` and `home.dev.<id>` (mesh, mDNS), and offers an idempotent
state(), a non-idempotent toggle(call_id) (every run prints "RAN <call id>", so the devices count how
often each call ran, also one killed with -9), a remote iterator history(n), watch(hub, listener)
(the device calls listener.changed(...) back every CALLBACK_EVERY s, oneway) and events (brokerless,
docs/events.md: `home.<id>.state` every EVENT_EVERY s, numbered).

The hub (h5) is an asyncio program as a Home Assistant integration would be: aio proxies to the
devices by PYRONAME (d1, d3) and PYROMETA (d2, d4); a callback object on its own aio.Daemon that it
registers with each device (again when a device restarted, or when its callbacks stopped); an
events.aio.EventBus subscription to `home.*.state`; a poll of state() per device every POLL_EVERY s,
a toggle every TOGGLE_EVERY s, the iterator now and then. It measures the lateness of a periodic task
(loop lag; a watchdog thread takes the loop thread's stack when the loop is late by more than
STALL_AT, so a finding comes with its cause), its view of the mesh registry (`home.*`), its fds,
threads, tasks, RSS and registry entries, and prints all of it as lines.

Churn follows a schedule drawn from --seed (the same seed, the same schedule): loss of 10-30 % with
5-50 ms delay on a host for a while, a device's link down for 5-20 s, a device killed (-9) and
restarted on its port, a device's address moved, a device stopped (SIGTERM) and restarted on a new
port, the hub's own link flapping. After each change the summary says how long the hub took to see
the truth (its registry view: the device's one URI, with its current address and port), to call it
again, and to get its callbacks and events again.

With --trace-memory the hub traces its allocations (tracemalloc) and, at the end, after full
collections, says what grew since its second minute (by allocation traceback) and who holds it, how many
aio proxy connections it made and still has (by state: current, closed, calls waiting; and by the chain
of referrers that keeps each one that is not a proxy's current connection), and per sample its RSS
beside Python's traced memory and malloc's bytes in use, free and mmapped. Connections a proxy let go
of are cyclic garbage until the next full collection: counted live without one, they come and go.

Mesh and event traffic stays inside the lab: the root namespace gets no interface, and every process
binds to 0.0.0.0 inside its host (loopback and the lab's veth). The lab is torn down at the end, also
on failure (tests/netlab/test_soak_home_lab.py runs a short one).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# the lab's processes and helpers, as tests/netlab loads them (one module object per tool and process)
aio_lab = sys.modules.get("meshrpc_tools_aio_lab")
if aio_lab is None:
    _spec = importlib.util.spec_from_file_location("meshrpc_tools_aio_lab", ROOT / "tools" / "aio_lab.py")
    aio_lab = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = aio_lab
    _spec.loader.exec_module(aio_lab)  # type: ignore[union-attr]
bench, netlab = aio_lab.bench, aio_lab.netlab

STEP = 30.0              # one step (a process starting or stopping) never takes longer
EVENT_EVERY = 0.5        # a device's state event
CALLBACK_EVERY = 1.0     # a device's callback to each watcher
POLL_EVERY = 1.0         # the hub's state() poll per device
TOGGLE_EVERY = 2.0       # the hub's toggle() per device
CALL_TIMEOUT = 3.0       # the hub's proxies' _pyroTimeout
STALL_AT = 0.1           # loop lag above this is a finding (the watchdog takes the loop's stack)
CONVERGE_BOUND = 20.0    # after a change, the hub sees the truth and works again within this

DEVICES = (  # id, driver, role, how the hub finds it
    ("d1", "aio", "light", "PYRONAME:home.d1"),
    ("d2", "threaded", "light", "PYROMETA:home.dev.d2"),
    ("d3", "aio", "sensor", "PYRONAME:home.d3"),
    ("d4", "threaded", "sensor", "PYROMETA:home.dev.d4"),
)

DEVICE_CODE = r"""
import argparse, asyncio, json, logging, os, signal, sys, threading, time
import meshrpc, meshrpc.aio, meshrpc.events
from meshrpc.events.aio import EventBus as AioBus

p = argparse.ArgumentParser()
p.add_argument("--id", required=True)
p.add_argument("--kind", choices=["aio", "threaded"], required=True)
p.add_argument("--role", required=True)
p.add_argument("--port", type=int, default=0)
p.add_argument("--event-every", type=float, required=True)
p.add_argument("--callback-every", type=float, required=True)
args = p.parse_args()
logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format="%(created).3f device " + args.id + " %(threadName)s %(name)s %(levelname)s %(message)s")
BOOT = "%s-%d" % (args.id, os.getpid())
lock = threading.Lock()
state = {"toggles": 0, "on": False}
watchers = {}            # hub id -> listener URI (a re-registration replaces)

def out(*parts):
    with lock:
        sys.stdout.write(" ".join(str(x) for x in parts) + "\n")
        sys.stdout.flush()

def toggle_once(call_id):
    with lock:
        state["toggles"] += 1
        state["on"] = not state["on"]
        sys.stdout.write("RAN " + call_id + "\n")
        sys.stdout.flush()
        return {"id": args.id, "boot": BOOT, "toggles": state["toggles"], "on": state["on"]}

def snapshot():
    return {"id": args.id, "boot": BOOT, "toggles": state["toggles"], "on": state["on"]}

@meshrpc.expose
class Device:
    @meshrpc.idempotent
    def state(self):
        return snapshot()

    def toggle(self, call_id):
        return toggle_once(call_id)

    def history(self, n):
        for i in range(n):
            yield {"id": args.id, "i": i}

    def watch(self, hub, listener):
        watchers[hub] = str(listener._pyroUri)
        return BOOT

ROLE_TAGS = {"home." + args.role, "home.dev." + args.id}
known = [None]

def subscribers(bus):
    # the subscribers this publisher knows (the hub's inbox): a line when their number changes
    n = len(bus.subscribers("home." + args.id + ".state"))
    if n != known[0]:
        known[0] = n
        out("SUBS", json.dumps({"n": n, "t": time.monotonic()}))

def ready(uri):
    out("READY", json.dumps({"id": args.id, "uri": str(uri), "boot": BOOT, "pid": os.getpid(), "t": time.monotonic()}))

def threaded_main():
    daemon = meshrpc.Daemon(port=args.port)
    uri = daemon.register(Device(), "device", name="home." + args.id, metadata=ROLE_TAGS)
    bus = meshrpc.events.EventBus()
    stop = threading.Event()

    def publisher():
        n = 0
        while not stop.wait(args.event_every):
            bus.publish("home." + args.id + ".state", {"boot": BOOT, "n": n, **snapshot()})
            subscribers(bus)
            n += 1

    def caller():
        proxies = {}
        n = 0
        while not stop.wait(args.callback_every):
            for hub, listener in list(watchers.items()):
                proxy = proxies.get(hub)
                if proxy is None or str(proxy._pyroUri) != listener:
                    proxy = proxies[hub] = meshrpc.Proxy(listener)
                    proxy._pyroTimeout = 2.0
                try:
                    proxy.changed(args.id, BOOT, n)
                except meshrpc.errors.CommunicationError as exc:
                    logging.getLogger("device").info("callback to %s: %s", hub, exc)
            n += 1
        for proxy in proxies.values():
            proxy._pyroRelease()

    signal.signal(signal.SIGTERM, lambda *_: daemon.shutdown())
    threads = [threading.Thread(target=f, daemon=True) for f in (publisher, caller)]
    for t in threads:
        t.start()
    ready(uri)
    daemon.requestLoop()
    stop.set()
    for t in threads:
        t.join(5)
    daemon.close()
    bus.close()

async def aio_main():
    daemon = meshrpc.aio.Daemon(port=args.port)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.shutdown)
    uri = daemon.register(Device(), "device", name="home." + args.id, metadata=ROLE_TAGS)
    bus = AioBus()
    await bus.start()

    async def publisher():
        n = 0
        while True:
            await asyncio.sleep(args.event_every)
            bus.publish("home." + args.id + ".state", {"boot": BOOT, "n": n, **snapshot()})
            subscribers(bus.sync)
            n += 1

    async def caller():
        proxies = {}
        n = 0
        try:
            while True:
                await asyncio.sleep(args.callback_every)
                for hub, listener in list(watchers.items()):
                    proxy = proxies.get(hub)
                    if proxy is None or str(proxy._pyroUri) != listener:
                        proxy = proxies[hub] = meshrpc.aio.Proxy(listener)
                        proxy._pyroTimeout = 2.0
                    try:
                        await proxy.changed(args.id, BOOT, n)
                    except meshrpc.errors.CommunicationError as exc:
                        logging.getLogger("device").info("callback to %s: %s", hub, exc)
                n += 1
        finally:
            for proxy in proxies.values():
                await proxy._pyroRelease()

    tasks = [loop.create_task(publisher()), loop.create_task(caller())]
    async with daemon:
        ready(uri)
        await daemon.serve_forever()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await bus.aclose()

t0 = time.monotonic()
if args.kind == "aio":
    asyncio.run(aio_main())
else:
    threaded_main()
out("CLOSED", json.dumps({"id": args.id, "t": time.monotonic()}))
"""

HUB_CODE = r"""
import argparse, asyncio, collections, json, logging, os, sys, threading, time, traceback, tracemalloc
import meshrpc, meshrpc.aio
from meshrpc import errors
from meshrpc.events.aio import EventBus
from meshrpc.mesh import get_registry

p = argparse.ArgumentParser()
p.add_argument("--devices", required=True)           # json: [[id, uri], ...]
p.add_argument("--poll", type=float, required=True)
p.add_argument("--toggle", type=float, required=True)
p.add_argument("--timeout", type=float, required=True)
p.add_argument("--callback-every", type=float, required=True)
p.add_argument("--stall", type=float, required=True)
p.add_argument("--tick", type=float, default=0.02)
p.add_argument("--sample", type=float, default=2.0)
p.add_argument("--trace-memory", action="store_true")
args = p.parse_args()
logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                    format="%(created).3f hub %(threadName)s %(name)s %(levelname)s %(message)s")
DEVICES = json.loads(args.devices)
HUB = "hub-%d" % os.getpid()
tracing = None
out_lock = threading.Lock()

def out(kind, data):
    with out_lock:
        sys.stdout.write(kind + " " + json.dumps(data) + "\n")
        sys.stdout.flush()

def now():
    return time.monotonic()

def outcome_of(exc):
    if isinstance(exc, errors.NotDeliveredError):
        return "not"
    if isinstance(exc, errors.MaybeDeliveredError):
        return "maybe"
    return "other"

# ---- loop lag: a periodic task's lateness; a watchdog thread takes the loop's stack when it is late
beat = [now()]
LAG_BIN = 0.0001                     # lateness histogram: 0.1 ms bins up to 2 s (constant memory for any run)
lag_bins = [0] * 20001
lag_max = [0.0]

def lag_stats():
    n = sum(lag_bins)
    def q(f):
        k, seen = f * n, 0
        for i, c in enumerate(lag_bins):
            seen += c
            if seen >= k and c:
                return i * LAG_BIN
        return 0.0
    return {"n": n, "max": lag_max[0], "p99": q(0.99), "p50": q(0.5)}

async def lag_task(loop):
    while True:
        t0 = loop.time()
        await asyncio.sleep(args.tick)
        late = max(0.0, loop.time() - t0 - args.tick)
        beat[0] = now()
        lag_bins[min(len(lag_bins) - 1, int(late / LAG_BIN))] += 1
        lag_max[0] = max(lag_max[0], late)
        if late > args.stall:
            out("LAG", {"t": now(), "late": late})

gc_started = [0.0]

def gc_timing(phase, info):
    # a collection of the oldest generation long enough to be felt by the loop (it holds the GIL)
    if phase == "start":
        gc_started[0] = time.perf_counter()
    elif info.get("generation") == 2 and time.perf_counter() - gc_started[0] > 0.02:
        out("GC", {"t": now(), "seconds": time.perf_counter() - gc_started[0], "collected": info.get("collected")})

def thread_cpu(tid):
    # utime + stime of one thread of this process, in seconds (did the loop run, or wait for the CPU or the GIL?)
    try:
        with open("/proc/self/task/%d/stat" % tid) as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0

def watchdog(loop_thread, loop_tid, stop):
    stalled_at = cpu0 = None
    while not stop.wait(0.02):
        silent = now() - beat[0]
        if silent > args.stall + args.tick and stalled_at is None:
            stalled_at, cpu0 = beat[0], thread_cpu(loop_tid)
            frame = sys._current_frames().get(loop_thread)
            stack = traceback.format_stack(frame)[-14:] if frame is not None else []
            names = {t.ident: t.name for t in threading.enumerate()}
            others = {names.get(ident, str(ident)): traceback.format_stack(f)[-1].strip()
                      for ident, f in sys._current_frames().items() if ident not in (loop_thread, threading.get_ident())}
            out("STALL", {"t": now(), "since": stalled_at, "stack": [s.strip() for s in stack],
                          "load": os.getloadavg()[0], "others": others})
        elif silent <= args.stall and stalled_at is not None:
            out("STALLEND", {"t": now(), "since": stalled_at, "loop_cpu": thread_cpu(loop_tid) - cpu0,
                             "load": os.getloadavg()[0]})
            stalled_at = None

# ---- with --trace-memory: every aio proxy connection made, weakly (who holds the ones that stay?)
import ctypes, gc, weakref
import meshrpc.aio.proxy as aio_proxy
conns = weakref.WeakSet()
conns_made = [0]
if args.trace_memory:
    _conn_init = aio_proxy._Connection.__init__

    def _counted_init(self, *a, **k):
        _conn_init(self, *a, **k)
        conns.add(self)
        conns_made[0] += 1
    aio_proxy._Connection.__init__ = _counted_init

class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

try:
    _mallinfo2 = ctypes.CDLL(None).mallinfo2
    _mallinfo2.restype = _MallInfo2
except (OSError, AttributeError):  # (not glibc 2.33+)
    _mallinfo2 = None

def heap():
    # where the RSS goes: Python's traced blocks (tracemalloc) and blocks, and malloc's own view (all
    # arenas: in use, free but kept, mmapped); pymalloc's arenas are mmapped apart from these
    info = {"traced": tracemalloc.get_traced_memory()[0], "blocks": sys.getallocatedblocks()}
    if _mallinfo2 is not None:
        m = _mallinfo2()
        info.update(malloc_used=m.uordblks, malloc_free=m.fordblks, malloc_mmapped=m.hblkhd)
    return info

def conn_state(c, current):
    t = c.transport
    reason = c.close_reason
    why = "" if reason is None else type(reason).__name__ + ": " + " ".join(
        w for w in str(reason).split() if not any(ch.isdigit() for ch in w))[:90]
    return " ".join([
        "current" if id(c) in current else "not-current",
        "closed" if c.closed else "open",
        "transport=" + ("none" if t is None else "closing" if t.is_closing() else "open"),
        "waiting=%d" % len(c.waiting), "turn=%s/%d" % (c.turn.taken, len(c.turn.queue)),
        "handshake=" + ("pending" if not c.handshake.done() else "done"),
        why])

def describe(obj):
    if isinstance(obj, dict):
        return "dict(%s)" % ",".join(sorted(str(k) for k in list(obj)[:6]))
    if isinstance(obj, (list, tuple, set, collections.deque)):
        return "%s[%d]" % (type(obj).__name__, len(obj))
    if type(obj).__name__ == "frame":
        return "frame %s:%s" % (obj.f_code.co_name, obj.f_lineno)
    if type(obj).__name__ == "coroutine":
        return "coroutine %s" % obj.__qualname__
    if type(obj).__name__ in ("function", "method", "builtin_function_or_method"):
        return "%s %s" % (type(obj).__name__, getattr(obj, "__qualname__", "?"))
    return type(obj).__module__ + "." + type(obj).__qualname__

def holders(obj, ignore, depth=6):
    # one chain of referrers, nearest first: at each step the first referrer that is not the census's
    # own (its frames and the lists get_referrers gives); the others at that step by kind
    mine = set(ignore)
    frame = sys._getframe()
    while frame is not None:
        mine.add(id(frame))
        frame = frame.f_back
    chain = []
    for _ in range(depth):
        mine.add(id(obj))
        found = gc.get_referrers(obj)
        mine.add(id(found))
        refs = [r for r in found if id(r) not in mine]
        mine.add(id(refs))
        if not refs:
            chain.append("(nothing more)")
            break
        others = collections.Counter(describe(r) for r in refs[1:])
        obj = refs[0]
        chain.append(describe(obj) + (" (also: %s)" % ", ".join("%dx %s" % (n, d) for d, n in others.most_common(3))
                                      if others else ""))
        mine.update(id(r) for r in refs[1:])
        del found, refs
    return " <- ".join(chain)

def grown_holders(stats, top=8):
    # who holds the blocks that grew most (by allocation traceback): every container's referents are
    # looked up (tracemalloc.get_object_traceback); per traceback, the containers by kind, a few
    # values, and the chain of referrers of the first container
    sites = {tuple((f.filename, f.lineno) for f in st.traceback): i for i, st in enumerate(stats[:top])}
    kinds = [collections.Counter() for _ in sites]
    values = [[] for _ in sites]
    firsts = [None for _ in sites]
    for container in gc.get_objects():
        for ref in gc.get_referents(container):
            tb = tracemalloc.get_object_traceback(ref)
            if tb is None:
                continue
            i = sites.get(tuple((f.filename, f.lineno) for f in tb))
            if i is None:
                continue
            kinds[i][describe(container)] += 1
            if len(values[i]) < 4:
                values[i].append(repr(ref)[:60])
            if firsts[i] is None:
                firsts[i] = container
    result = []
    for i in range(len(sites)):
        chain = holders(firsts[i], {id(firsts), id(kinds), id(values)}) if firsts[i] is not None else ""
        result.append({"site": str(stats[i]), "held_in": dict(kinds[i].most_common(4)), "values": values[i],
                       "first_container_held_by": chain})
    firsts.clear()
    return result

def conn_census(watches, referrers):
    # (gc.collect() first: a connection that only waits for the cycle collector is not retained)
    gc.collect()
    current = {id(w.proxy._conn) for w in watches if w.proxy._conn is not None}
    live = list(conns)
    states = collections.Counter(conn_state(c, current) for c in live)
    held = collections.Counter()
    if referrers:
        frame = sys._getframe()
        for c in live:
            if id(c) not in current:
                held[holders(c, {id(live), id(frame)})] += 1
    del live
    return {"made": conns_made[0], "live": len(conns), "states": dict(states.most_common()),
            "held_by": dict(held.most_common(12))}

# ---- the callback object, on the hub's own aio.Daemon
callbacks = collections.defaultdict(lambda: {"n": 0, "last": 0.0, "boot": None})

@meshrpc.expose
class Hub:
    @meshrpc.oneway
    async def changed(self, device, boot, n):
        c = callbacks[device]
        c["n"] += 1
        if now() - c["last"] > 3 * args.callback_every or c["boot"] != boot:
            out("CB", {"t": now(), "dev": device, "boot": boot, "n": n, "after": now() - c["last"] if c["last"] else None})
        c["last"] = now()
        c["boot"] = boot

# ---- events
events = collections.defaultdict(lambda: {"n": 0, "last": 0.0, "boot": None, "seq": None, "gaps": 0, "dups": 0})
lost = collections.Counter()

def on_event(event):
    msg = event.msg
    dev = msg["id"]
    e = events[dev]
    e["n"] += 1
    if e["boot"] == msg["boot"] and e["seq"] is not None:
        if msg["n"] <= e["seq"]:
            e["dups"] += 1
        elif msg["n"] > e["seq"] + 1:
            e["gaps"] += msg["n"] - e["seq"] - 1
    if now() - e["last"] > 3 * 0.5 or e["boot"] != msg["boot"]:
        out("EV", {"t": now(), "dev": dev, "boot": msg["boot"], "n": msg["n"], "after": now() - e["last"] if e["last"] else None})
    e["boot"], e["seq"], e["last"] = msg["boot"], msg["n"], now()

def on_loss(publisher, count):
    lost[publisher] += count

# ---- one device, watched
class Watch:
    def __init__(self, dev, uri, hub_obj):
        self.dev, self.uri, self.hub_obj = dev, uri, hub_obj
        self.proxy = meshrpc.aio.Proxy(uri)
        self.proxy._pyroTimeout = args.timeout
        self.boot = None
        self.watched_at = 0.0
        self.failing_since = None
        self.toggles = 0
        self.ok_last = 0.0
        self.errors = collections.Counter()
        self.messages = {}

    def failed(self, what, exc):
        key = what + ":" + type(exc).__name__
        self.errors[key] += 1
        if key not in self.messages:
            self.messages[key] = str(exc)[:300]
        if self.failing_since is None:
            self.failing_since = now()
            out("DOWN", {"t": now(), "dev": self.dev, "what": what, "error": type(exc).__name__, "msg": str(exc)[:300]})

    def worked(self):
        self.ok_last = now()
        if self.failing_since is not None:
            out("UP", {"t": now(), "dev": self.dev, "down_for": now() - self.failing_since})
            self.failing_since = None

    async def watch(self, why):
        boot = await self.proxy.watch(HUB, self.hub_obj)
        self.watched_at = now()
        out("WATCH", {"t": now(), "dev": self.dev, "boot": boot, "why": why})

    async def poll_loop(self):
        while True:
            t0 = now()
            try:
                s = await self.proxy.state()
                self.worked()
                out("POLL", {"t": now(), "dev": self.dev, "boot": s["boot"], "took": now() - t0}) if now() - t0 > 1 else None
                if s["boot"] != self.boot:
                    out("BOOT", {"t": now(), "dev": self.dev, "boot": s["boot"], "was": self.boot})
                    self.boot = s["boot"]
                    await self.watch("boot")
                elif now() - callbacks[self.dev]["last"] > 4 * args.callback_every and now() - self.watched_at > 4 * args.callback_every:
                    await self.watch("silence")
            except errors.CommunicationError as exc:
                self.failed("state", exc)
            except Exception as exc:
                self.failed("state", exc)
                out("ODD", {"t": now(), "dev": self.dev, "what": "state", "error": repr(exc)[:300]})
            await asyncio.sleep(max(0.0, args.poll - (now() - t0)))

    async def toggle_loop(self):
        while True:
            await asyncio.sleep(args.toggle)
            self.toggles += 1
            call_id = "%s-%d" % (self.dev, self.toggles)
            t0 = now()
            try:
                r = await self.proxy.toggle(call_id)
                res = {"outcome": "ok"}
                self.worked()
            except Exception as exc:
                res = {"outcome": outcome_of(exc), "error": type(exc).__name__, "msg": str(exc)[:200]}
                self.failed("toggle", exc)
            out("CALL", {"t": now(), "id": call_id, "took": now() - t0, **res})

    async def iterate_loop(self):
        while True:
            await asyncio.sleep(7.0)
            try:
                items = [x["i"] async for x in await self.proxy.history(5)]
                if items != list(range(5)):
                    out("ODD", {"t": now(), "dev": self.dev, "what": "history", "items": items})
                else:
                    out("ITER", {"t": now(), "dev": self.dev})
            except Exception as exc:
                self.failed("history", exc)

def sample(reg, bus, loop, watches):
    try:
        rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = 0
    names = collections.Counter(t.name.rstrip("0123456789-_") for t in threading.enumerate())
    bs = bus.stats()
    return {"t": now(), "fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
            "thread_names": dict(names), "tasks": len(asyncio.all_tasks(loop)), "rss": rss,
            "registry": reg.stats(), "bus": {k: v for k, v in bs.items() if isinstance(v, (int, float))},
            "conns": {"made": conns_made[0], "live": len(conns)}, "heap": heap() if args.trace_memory else None,
            "devs": {w.dev: [w.ok_last, callbacks[w.dev]["last"], events[w.dev]["last"]] for w in watches}}

async def main():
    loop = asyncio.get_running_loop()
    stop_watchdog = threading.Event()
    import gc
    gc.callbacks.append(gc_timing)
    threading.Thread(target=watchdog, args=(threading.get_ident(), threading.get_native_id(), stop_watchdog),
                     daemon=True, name="watchdog").start()
    global tracing
    if args.trace_memory:
        tracemalloc.start(4)

        async def snapshot_later():  # after the start-up: what grows from then on
            global tracing
            await asyncio.sleep(120)
            out("CONNS", {"t": now(), "when": "snapshot", **conn_census(watches, False)})
            tracing = tracemalloc.take_snapshot()
        tasks_extra = [loop.create_task(snapshot_later())]
    else:
        tasks_extra = []
    lagger = loop.create_task(lag_task(loop))
    stopping = asyncio.Event()

    def read_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        loop.call_soon_threadsafe(stopping.set)
    threading.Thread(target=read_stdin, daemon=True, name="stdin").start()

    reg = get_registry()
    await asyncio.to_thread(reg.list)          # the first query starts browsing: off the loop
    daemon = meshrpc.aio.Daemon()
    hub_obj = Hub()
    daemon.register(hub_obj, "hub")
    await daemon.start()
    bus = EventBus(on_loss=on_loss)
    await bus.subscribe("home.*.state", on_event)
    watches = [Watch(dev, uri, hub_obj) for dev, uri in DEVICES]
    tasks = [loop.create_task(f()) for w in watches for f in (w.poll_loop, w.toggle_loop, w.iterate_loop)]
    out("STARTED", {"t": now(), "hub": HUB})

    async def view_loop():
        last = None
        while True:
            view = {}
            for e in reg.list(prefix="home."):
                view.setdefault(e.name, []).append(e.uri)
            view = {k: sorted(v) for k, v in view.items()}
            if view != last:
                out("VIEW", {"t": now(), "view": view})
                last = view
            await asyncio.sleep(0.1)

    async def sample_loop():
        while True:
            out("SAMPLE", sample(reg, bus, loop, watches))
            await asyncio.sleep(args.sample)

    tasks += [loop.create_task(view_loop()), loop.create_task(sample_loop()), *tasks_extra]
    await stopping.wait()
    out("SAMPLE", sample(reg, bus, loop, watches))
    tracing_took = 0.0  # seconds of the shutdown spent on --trace-memory's censuses (not the hub's own)
    if args.trace_memory:  # (a census holds the loop: not a stall of the hub's own)
        lagger.cancel()
        stop_watchdog.set()
        t1 = now()
        out("CONNS", {"t": now(), "when": "stop", **conn_census(watches, True)})
        tracing_took += now() - t1
    t0 = now()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in watches:
        await w.proxy._pyroRelease()
    if args.trace_memory:
        closed, t1 = now() - t0, now()
        await asyncio.sleep(0.2)  # (closes scheduled on the loop run)
        out("CONNS", {"t": now(), "when": "released", **conn_census(watches, True)})
        tracing_took += now() - t1
        t0 = now() - closed
    await bus.aclose()
    await daemon.aclose()
    closed = now() - t0
    lagger.cancel()
    await asyncio.gather(lagger, return_exceptions=True)
    stop_watchdog.set()
    grown = []
    if tracing is not None:
        t1 = now()
        gc.collect()
        end = tracemalloc.take_snapshot()
        grown = [str(d) for d in end.compare_to(tracing, "lineno") if d.size_diff > 0][:12]
        grown_stats = [d for d in end.compare_to(tracing, "traceback") if d.size_diff > 0][:10]
        grown_by = [[str(d)] + d.traceback.format()[-8:] for d in grown_stats]
        end = tracing = None  # (their traces would be found as holders)
        gc.collect()
        out("GROWN", {"t": now(), "by_traceback": grown_by, "holders": grown_holders(grown_stats)})
        tracing_took += now() - t1
    out("RESULT", {"t": now(), "close_seconds": closed, "tracing_seconds": tracing_took, "lag": lag_stats(), "memory_growth": grown,
                   "callbacks": {k: v["n"] for k, v in callbacks.items()},
                   "events": {k: dict(v) for k, v in events.items()}, "lost": dict(lost),
                   "errors": {w.dev: dict(w.errors) for w in watches},
                   "messages": {w.dev: w.messages for w in watches},
                   "left_tasks": len(asyncio.all_tasks(loop)) - 1,
                   "left_threads": sorted(t.name for t in threading.enumerate())})

asyncio.run(main())
out("EXIT", {"t": now()})
"""


# -------------------------------------------------------------------------------------------------
# the schedule


@dataclass
class Action:
    t: float
    kind: str         # loss, clear, down, up, kill, move, newport, hubdown, hubup
    target: str       # a device id or "hub"
    args: dict = field(default_factory=dict)


def schedule(seconds: float, seed: int, devices: list[str]) -> list[Action]:
    """Churn over `seconds` (after the start), drawn from `seed`: one change every 4-12 s, never two
    at once on one host, every kind at least once in a run of a minute or more."""
    rng = random.Random(seed)
    busy: dict[str, float] = {}
    kinds = ["loss", "flap", "kill", "move", "newport", "hubflap"]
    actions: list[Action] = []
    t = 3.0
    first = kinds[:]
    rng.shuffle(first)
    while t < seconds - 5:
        kind = first.pop() if first else rng.choice(kinds + ["loss", "flap"])
        target = "hub" if kind == "hubflap" else rng.choice(devices + ["hub"] if kind == "loss" else devices)
        if busy.get(target, 0) > t or busy.get("hub", 0) > t:
            first.append(kind)  # one change at a time per host, and none while the hub is cut off
            t += 1.0
            continue
        if kind == "loss":
            pct = rng.uniform(10, 30)
            low = rng.uniform(5, 25)
            dur = rng.uniform(5, 15) if target == "hub" else rng.uniform(10, 40)
            actions += [Action(t, "loss", target, {"percent": round(pct, 1), "delay": (round(low, 1), round(low + rng.uniform(5, 25), 1))}),
                        Action(t + dur, "clear", target)]
            busy[target] = t + dur
        elif kind == "flap":
            dur = rng.uniform(5, 20)
            actions += [Action(t, "down", target), Action(t + dur, "up", target)]
            busy[target] = t + dur + 2
        elif kind == "hubflap":
            dur = rng.uniform(3, 12)
            actions += [Action(t, "hubdown", "hub"), Action(t + dur, "hubup", "hub")]
            busy["hub"] = t + dur + 2
        else:
            actions.append(Action(t, kind, target, {"away": round(rng.uniform(0.5, 3), 2)} if kind == "kill" else {}))
            busy[target] = t + 5
        t += rng.uniform(4, 12)
    return sorted(actions, key=lambda a: a.t)


# -------------------------------------------------------------------------------------------------
# the run


class Soak:
    def __init__(self, lab: Any, workdir: Path, seed: int, trace_memory: bool = False) -> None:
        self.lab = lab
        self.trace_memory = trace_memory
        self._next_address = 241  # moves take addresses from .240 down (the lab hands out .254 down)
        self.run = bench.Run(lab, workdir)
        self.hosts = {dev[0]: lab.hosts[i] for i, dev in enumerate(DEVICES)}
        self.hub_host = lab.hosts[len(DEVICES)]
        self.kinds = {d[0]: d[1] for d in DEVICES}
        self.roles = {d[0]: d[2] for d in DEVICES}
        self.procs: dict[str, list[Any]] = {d[0]: [] for d in DEVICES}
        self.port: dict[str, int] = {}
        self.boot: dict[str, str] = {}
        self.changes: list[dict] = []   # {t, kind, dev(s)}: the moment a change is complete
        self.log: list[str] = []
        self.hub: Any = None
        self.seed = seed

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic():.3f} {text}")

    def start_device(self, dev: str, port: int = 0) -> dict:
        return self.ready(dev, self.launch(dev, port))

    def launch(self, dev: str, port: int = 0) -> Any:
        child = self.run.start(self.hosts[dev], DEVICE_CODE,
                               ["--id", dev, "--kind", self.kinds[dev], "--role", self.roles[dev], "--port", str(port),
                                "--event-every", str(EVENT_EVERY), "--callback-every", str(CALLBACK_EVERY)],
                               f"device-{dev}")
        self.procs[dev].append(child)
        return child

    def ready(self, dev: str, child: Any) -> dict:
        _, ready = child.wait_json("READY ", STEP)
        self.port[dev] = int(ready["uri"].rsplit(":", 1)[1])
        self.boot[dev] = ready["boot"]
        return ready

    def start(self) -> None:
        children = {dev: self.launch(dev) for dev, *_ in DEVICES}  # side by side: they start in a second or two
        for dev, child in children.items():
            self.ready(dev, child)
        self.hub = self.run.start(self.hub_host, HUB_CODE, [
            "--devices", json.dumps([[d[0], d[3]] for d in DEVICES]), "--poll", str(POLL_EVERY),
            "--toggle", str(TOGGLE_EVERY), "--timeout", str(CALL_TIMEOUT), "--callback-every", str(CALLBACK_EVERY),
            "--stall", str(STALL_AT), *(["--trace-memory"] if self.trace_memory else [])], "hub")
        self.hub.wait_json("STARTED ", STEP)
        self.started = time.monotonic()
        self.change("start", list(self.hosts))

    def change(self, kind: str, devs: list[str], **more: Any) -> None:
        self.changes.append({"t": time.monotonic(), "kind": kind, "devs": devs,
                             "truth": {d: (self.hosts[d].address, self.port[d], self.boot[d]) for d in devs}, **more})

    def apply(self, a: Action) -> None:
        self.note(f"{a.kind} {a.target} {a.args}")
        if a.kind == "loss":
            host = self.hub_host if a.target == "hub" else self.hosts[a.target]
            host.set_loss(a.args["percent"], delay_ms=a.args["delay"])
        elif a.kind == "clear":
            (self.hub_host if a.target == "hub" else self.hosts[a.target]).clear_loss()
            self.change("loss-over", list(self.hosts) if a.target == "hub" else [a.target])
        elif a.kind == "down":
            self.hosts[a.target].link_down()
        elif a.kind == "up":
            self.hosts[a.target].link_up()
            self.change("link-up", [a.target])
        elif a.kind == "hubdown":
            self.hub_host.link_down()
        elif a.kind == "hubup":
            self.hub_host.link_up()
            self.change("hub-link-up", list(self.hosts))
        elif a.kind == "kill":
            self.procs[a.target][-1].kill()
            time.sleep(a.args.get("away", 1.0))  # the time the device is away is the scenario
            self.start_device(a.target, self.port[a.target])
            self.change("kill-restart", [a.target])
        elif a.kind == "newport":
            old = self.procs[a.target][-1]
            old.terminate()
            old.wait_json("CLOSED ", STEP)
            old.wait_exit(STEP)
            self.start_device(a.target, 0)
            self.change("new-port", [a.target])
        elif a.kind == "move":
            self.hosts[a.target].move_address(self.fresh_address())
            self.change("move-address", [a.target])

    def fresh_address(self) -> str:
        """An address of the lab's subnet that no host had yet (a DHCP server does not hand a released
        address to another host at once; the lab would: the hub's ARP cache would still name the old
        host's interface for it, and its connects time out until the kernel asks again, ~8 s)."""
        while True:
            self._next_address -= 1
            if self._next_address < 10:
                self._next_address = 240
            address = str(self.lab.subnet.network_address + self._next_address)
            if address not in self.lab._used:
                return address

    def churn(self, actions: list[Action]) -> None:
        for a in actions:
            left = self.started + a.t - time.monotonic()
            if left > 0:
                time.sleep(left)  # the schedule is the scenario, not a synchronisation
            self.apply(a)

    def finish(self, settle: float) -> dict:
        for host in [*self.hosts.values(), self.hub_host]:
            host.clear_loss()
            if not host.link_is_up():
                host.link_up()
        self.change("settle", list(self.hosts))
        settled = self.settled(settle)
        # half the devices first, gracefully: the hub should see their goodbyes at once; then the hub: the
        # other half should hear its inbox's goodbye at once; then those devices
        devs = list(self.hosts)
        first, second = devs[: len(devs) // 2], devs[len(devs) // 2:]
        stops, device_close = {}, {}

        def stop(group: list[str]) -> None:
            for dev in group:
                self.procs[dev][-1].terminate()
                stops[dev] = time.monotonic()
            for dev in group:
                child = self.procs[dev][-1]
                _, closed = child.wait_json("CLOSED ", STEP)
                child.wait_exit(STEP)
                device_close[dev] = closed["t"] - stops[dev]
        stop(first)
        gone = {"home." + d for d in first}
        goodbye_seen = self.hub.wait_json("VIEW ", STEP, 0, lambda v: v["t"] > min(stops.values())
                                          and not gone & set(v["view"]))[1]["t"]
        marks = {dev: self.procs[dev][-1].count() for dev in second}
        t0 = time.monotonic()
        self.hub.send("stop")
        _, result = self.hub.wait_json("RESULT ", STEP)
        code = self.hub.wait_exit(STEP)
        hub_exit = time.monotonic() - t0
        hub_goodbye = {}
        for dev in second:
            try:
                _, subs = self.procs[dev][-1].wait_json("SUBS ", STEP, marks[dev], lambda d: d["n"] == 0)
                hub_goodbye[dev] = subs["t"] - t0
            except bench.ChildError:
                hub_goodbye[dev] = None
        stop(second)
        return {"settled_after": settled, "device_close": device_close, "hub_goodbye_heard_after": hub_goodbye,
                "goodbyes_seen_after": goodbye_seen - max(stops[d] for d in first),
                "hub_result": result, "hub_exit_code": code, "hub_exit_seconds": hub_exit}

    def settled(self, bound: float) -> float | None:
        """Seconds until the hub saw the truth after the last change: its view of every device right, and
        a poll, a callback and an event from each since; None if not within `bound`."""
        since = self.changes[-1]["t"]
        truth = {d: (self.hosts[d].address, self.port[d]) for d in self.hosts}

        def right(line: str) -> bool:
            sample = json.loads(line[len("SAMPLE "):])
            if not all(min(v) > since for v in sample["devs"].values()) or len(sample["devs"]) < len(truth):
                return False
            views = [json.loads(text[len("VIEW "):]) for _, text in self.hub.lines if text.startswith("VIEW ")]
            view = views[-1]["view"] if views else {}
            return all([_uri_parts(u) for u in view.get("home." + d, [])] == [truth[d]] for d in truth)
        try:
            _, sample = self.hub.wait_json("SAMPLE ", bound, 0, lambda s: right("SAMPLE " + json.dumps(s)))
        except bench.ChildError:
            return None
        return sample["t"] - since

    def close(self) -> None:
        self.run.close()
        for child in self.run.children:  # stdout beside each log, stamped with the arrival time
            child.log_path.with_suffix(".out").write_text("".join(f"{t:.3f} {line}\n" for t, line in child.lines))


def _uri_parts(uri: str) -> tuple[str, int]:
    m = re.match(r"PYRO:[^@]+@([^:]+):(\d+)$", uri)
    return (m.group(1), int(m.group(2))) if m else ("", 0)


def _resumed(lines: list[dict], samples: list[dict], dev: str, boot: str, t: float, column: int) -> float | None:
    """When `dev`'s callbacks (column 1 of the samples' "devs") or events (2) came again after a change at t.
    The hub prints a line when they come after a silence of 3 periods (with its length, "after") or from
    a new boot: the first such line whose silence began before t + 5 s says when; with none, they kept
    coming (t itself) if a sample after t + 5 s saw one after t, else they never came again (None)."""
    for line in lines:
        if line["t"] > t and line["dev"] == dev and (line["boot"] == boot or line["boot"] is None):
            if line["after"] is None or line["t"] - line["after"] <= t + 5 or line["boot"] == boot and line["t"] < t + 5:
                return line["t"]
            break
    if any(s["t"] > t + 5 and s.get("devs", {}).get(dev, [0, 0, 0])[column] > t for s in samples):
        return t
    return None


def analyse(soak: Soak, finish: dict, actions: list[Action], seconds: float) -> dict:
    hub_lines = [(line.split(" ", 1)[0], json.loads(line.split(" ", 1)[1])) for _, line in soak.hub.lines
                 if " " in line and line.split(" ", 1)[1].startswith("{")]
    by = collections.defaultdict(list)
    for kind, data in hub_lines:
        by[kind].append(data)
    findings: list[str] = []
    # ---- loop lag
    result = finish["hub_result"]
    lag = result["lag"]
    stalls = by["STALL"]
    causes = collections.Counter()
    for s in stalls:
        frames = [f for f in s["stack"] if "File" in f]
        mine = [f for f in frames if "meshrpc" in f or "zeroconf" in f or "asyncio" in f] or frames
        causes[mine[-1].split("\n")[0] if mine else "?"] += 1
    if lag["max"] > STALL_AT:
        findings.append(f"loop lag: max {lag['max'] * 1000:.0f} ms (p99 {lag['p99'] * 1000:.1f} ms); "
                        f"{len(by['LAG'])} ticks late by more than {STALL_AT * 1000:.0f} ms")
    # ---- view convergence and recovery after each change
    views = by["VIEW"]
    recoveries = []
    for ch in soak.changes:
        if ch["kind"] in ("start",):
            continue
        for dev in ch["devs"]:
            addr, port, boot = ch["truth"][dev]

            def right(view: dict, dev: str = dev, addr: str = addr, port: int = port) -> bool:
                uris = view.get("home." + dev, [])
                return len(uris) == 1 and _uri_parts(uris[0]) == (addr, port)

            before = [v for v in views if v["t"] <= ch["t"]]
            seen = None
            if before and right(before[-1]["view"]):
                seen = ch["t"]
            else:
                seen = next((v["t"] for v in views if v["t"] > ch["t"] and right(v["view"])), None)
            # later changes to the same device end this one's window
            nxt = min([c["t"] for c in soak.changes if c["t"] > ch["t"] and dev in c["devs"] and c is not ch] + [float("inf")])
            # the next disturbance of this device or the hub, also one that starts (down, loss, hub down)
            starts = [float(line.split()[0]) for line in soak.log
                      if line.split()[1] in ("down", "loss", "hubdown", "kill", "newport", "move")
                      and line.split()[2] in (dev, "hub")]
            nxt_any = min([t for t in starts if t > ch["t"]] + [nxt])
            cb = _resumed(by["CB"], by["SAMPLE"], dev, boot, ch["t"], 1)
            ev = _resumed(by["EV"], by["SAMPLE"], dev, boot, ch["t"], 2)
            # calls: 0 if the device's polls never failed around the change, else until they work again
            marks = sorted([(d["t"], "down") for d in by["DOWN"] if d["dev"] == dev]
                           + [(u["t"], "up") for u in by["UP"] if u["dev"] == dev])
            earlier = [m for m in marks if m[0] <= ch["t"]]
            failing = bool(earlier) and earlier[-1][1] == "down"
            soon = any(ch["t"] < m[0] <= ch["t"] + 5 and m[1] == "down" for m in marks)
            up = next((m[0] for m in marks if m[0] > ch["t"] and m[1] == "up"), None) if failing or soon else ch["t"]
            rec = {"change": ch["kind"], "dev": dev, "t": round(ch["t"] - soak.started, 1),
                   "view": None if seen is None else round(seen - ch["t"], 2),
                   "call": None if up is None else round(up - ch["t"], 2),
                   "callback": None if cb is None else round(cb - ch["t"], 2),
                   "event": None if ev is None else round(ev - ch["t"], 2)}
            # another change to this device (or the hub's link) before a value was reached: that value
            # measures both; kept in "recoveries", left out of the figures
            rec["overlapped"] = [w for w in ("view", "call", "callback", "event")
                                 if rec[w] is not None and ch["t"] + rec[w] > nxt_any]
            recoveries.append(rec)
            # a window cut short by the next change is judged only if the next change is far enough
            if nxt - ch["t"] < CONVERGE_BOUND and ch["kind"] != "settle":
                continue
            for what in ("view",):
                if rec[what] is None or rec[what] > CONVERGE_BOUND:
                    findings.append(f"{dev} after {ch['kind']} at +{rec['t']} s: the hub's view was not right "
                                    f"within {CONVERGE_BOUND:g} s ({rec[what]})")
    # ---- at most once
    ran = collections.Counter()
    for dev, children in soak.procs.items():
        for child in children:
            for _, line in child.lines:
                if line.startswith("RAN "):
                    ran[line.split()[1]] += 1
    outcomes = {c["id"]: c["outcome"] for c in by["CALL"]}
    wrong = []
    for call_id, outcome in outcomes.items():
        n = ran.get(call_id, 0)
        if n not in {"ok": (1,), "not": (0,), "maybe": (0, 1)}.get(outcome, ()):
            wrong.append(f"{call_id}: {outcome}, ran {n}x")
    wrong += [f"{c}: ran {n}x, outcome unknown (in flight at the end)" for c, n in ran.items() if c not in outcomes and n > 1]
    if wrong:
        findings.append(f"at most once: {wrong[:5]}")
    others = [c for c in by["CALL"] if c["outcome"] == "other"]
    if others:
        findings.append(f"{len(others)} calls failed with an undocumented exception: {others[:3]}")
    if by["ODD"]:
        findings.append(f"odd answers: {by['ODD'][:3]}")
    # ---- growth
    samples = by["SAMPLE"]
    warm = [s for s in samples if s["t"] > soak.started + min(60.0, seconds / 4)]
    growth = {}
    if len(warm) >= 4:
        q = max(1, len(warm) // 4)
        first, last = warm[:q], warm[-q:]
        for key, limit in (("fds", 6), ("threads", 4), ("tasks", 6), ("rss", 16 << 20)):
            a = statistics.median(s[key] for s in first)
            b = statistics.median(s[key] for s in last)
            growth[key] = [a, b]
            if b - a > limit:
                findings.append(f"growth of the hub's {key}: {a} -> {b} (median of the first and last quarter)")
        a = statistics.median(s["registry"]["entries"] for s in first)
        b = statistics.median(s["registry"]["entries"] for s in last)
        growth["registry_entries"] = [a, b]
        if b > a + 4:
            findings.append(f"growth of the hub registry's entries: {a} -> {b}")
    if finish["settled_after"] is None:
        findings.append("the hub did not see every device right (view, poll, callback, event) after the last change")
    # ---- shutdown
    if finish["hub_exit_code"] != 0 or finish["hub_exit_seconds"] - result.get("tracing_seconds", 0) > 5:
        findings.append(f"hub shutdown: exit {finish['hub_exit_code']} after {finish['hub_exit_seconds']:.1f} s")
    if result["left_tasks"] > 0:
        findings.append(f"hub shutdown left {result['left_tasks']} tasks")
    tracebacks, zeroconf_moves = {}, 0
    for child in soak.run.children:
        text = child.log_path.read_text(errors="replace") if child.log_path.exists() else ""
        # zeroconf's own warning, once per socket, when an address it sends from went away (an address
        # move, until the mesh's interface check moves mDNS over: MESH_INTERFACE_CHECK_INTERVAL): counted apart
        known = re.findall(r"zeroconf WARNING Error with socket \d+ \(\('[\d.]+', 5353\)\)\): \[Errno 101\] "
                           r"Network is unreachable\nTraceback \(most recent call last\):\n(?:  .*\n)+OSError: "
                           r"\[Errno 101\] Network is unreachable\n", text)
        zeroconf_moves += len(known)
        for block in known:
            text = text.replace(block, "")
        if "Traceback" in text:
            tracebacks[child.label] = text[text.index("Traceback"):][:1500]
    if tracebacks:
        findings.append(f"tracebacks in {sorted(tracebacks)}")
    if finish["goodbyes_seen_after"] > 2.0:
        findings.append(f"the hub saw the devices' goodbyes {finish['goodbyes_seen_after']:.1f} s after the last stop")
    late = {d: v for d, v in finish["hub_goodbye_heard_after"].items() if v is None or v > 2.0}
    if late:
        findings.append(f"devices heard the hub's inbox leave late (s after its stop; None: not in {STEP:g} s): {late}")
    def stat(values: list[float]) -> dict:
        v = sorted(x for x in values if x is not None)
        return {"n": len(v), "max": max(v) if v else None, "median": statistics.median(v) if v else None}
    by_kind = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in recoveries:
        for what in ("view", "call", "callback", "event"):
            if what not in r["overlapped"]:
                by_kind[r["change"]][what].append(r[what])
    return {
        "seconds": seconds, "seed": soak.seed, "findings": findings,
        "lag_ms": {k: (v * 1000 if k != "n" else v) for k, v in lag.items()},
        "stalls": len(stalls), "stall_causes": causes.most_common(8),
        "stall_stacks": [s["stack"] for s in stalls[:3]],
        # per stall: how long, the loop thread's own CPU meanwhile (near 0: it waited for the CPU or the GIL;
        # near the length: it ran something), the machine's load average
        "stall_details": [{"seconds": round(e["t"] - e["since"], 3), "loop_cpu": e["loop_cpu"], "load": e["load"]}
                          for e in by["STALLEND"]][:20],
        "memory_growth": result.get("memory_growth", []),
        # --trace-memory: the aio proxy connections the hub made and still has (after a full collection),
        # by state and by who holds them; what grew, by allocation traceback
        "connections": by["CONNS"], "memory_growth_by_traceback": by["GROWN"][-1]["by_traceback"] if by["GROWN"] else [],
        "memory_growth_holders": by["GROWN"][-1]["holders"] if by["GROWN"] else [],
        "connections_over_time": [[round(s["t"] - soak.started), s["conns"]["made"], s["conns"]["live"]]
                                  for s in samples[:: max(1, len(samples) // 24)] if "conns" in s],
        # --trace-memory: RSS beside Python's traced memory and malloc's in-use/free/mmapped bytes
        "heap_over_time": [{"t": round(s["t"] - soak.started), "rss": s["rss"], **s["heap"]}
                           for s in samples[:: max(1, len(samples) // 24)] if s.get("heap")],
        "gc_pauses": [round(g["seconds"], 3) for g in by["GC"]][:50],
        "stall_others": [s.get("others", {}) for s in stalls[:3]],
        "recovery": {k: {w: stat(d.get(w, [])) for w in ("view", "call", "callback", "event")} for k, d in by_kind.items()},
        "recoveries": recoveries,
        "calls": dict(collections.Counter(c["outcome"] for c in by["CALL"])),
        "errors": result["errors"], "messages": result["messages"],
        "callbacks": result["callbacks"], "events": result["events"], "events_lost": result["lost"],
        "growth": growth, "samples": [{k: s[k] for k in ("t", "fds", "threads", "tasks", "rss")} | {"entries": s["registry"]["entries"]}
                                      for s in samples[:: max(1, len(samples) // 12)]],
        "last_sample": samples[-1] if samples else None,
        "settled_after": finish["settled_after"],
        "shutdown": {k: finish[k] for k in ("device_close", "goodbyes_seen_after", "hub_goodbye_heard_after",
                                            "hub_exit_code", "hub_exit_seconds")}
        | {"hub_close": result["close_seconds"], "left_threads": result["left_threads"]},
        "tracebacks": tracebacks, "zeroconf_unreachable_warnings": zeroconf_moves, "schedule": [[round(a.t, 1), a.kind, a.target, a.args] for a in actions],
        "log": soak.log,
    }


def soak(seconds: float, seed: int, workdir: Path, settle: float = CONVERGE_BOUND,
         actions: list[Action] | None = None, trace_memory: bool = False) -> dict:
    """Build a lab, run the devices and the hub, churn for `seconds` as --seed says (or as `actions`
    say), wait up to `settle` for the hub to see the truth, stop everything, and analyse."""
    if actions is None:
        actions = schedule(seconds, seed, [d[0] for d in DEVICES])
    with netlab.Lab(len(DEVICES) + 1, seed=seed) as lab:
        s = Soak(lab, workdir, seed, trace_memory)
        try:
            s.start()
            s.churn(actions)
            left = s.started + seconds - time.monotonic()
            if left > 0:
                time.sleep(left)
            finish = s.finish(settle)
            return analyse(s, finish, actions, seconds)
        finally:
            s.close()


def summary(r: dict) -> str:
    lines = [f"soak: {r['seconds']:.0f} s of churn, seed {r['seed']}, {len(r['schedule'])} scheduled changes"]
    lag = r["lag_ms"]
    lines.append(f"hub loop lag: max {lag['max']:.1f} ms, p99 {lag['p99']:.2f} ms, p50 {lag['p50']:.2f} ms "
                 f"over {lag['n']} ticks; {r['stalls']} stalls over {STALL_AT * 1000:.0f} ms")
    for cause, n in r["stall_causes"]:
        lines.append(f"  stall x{n}: {cause}")
    for d in r.get("stall_details", []):
        lines.append(f"  stall of {d['seconds'] * 1000:.0f} ms: the loop thread used {d['loop_cpu'] * 1000:.0f} ms "
                     f"of CPU meanwhile; load average {d['load']:.1f}")
    if r.get("gc_pauses"):
        lines.append(f"  full collections over 20 ms in the hub: {len(r['gc_pauses'])}, longest {max(r['gc_pauses']) * 1000:.0f} ms")
    for g in r.get("memory_growth", [])[:8]:
        lines.append(f"  memory grown: {g}")
    for c in r.get("connections", []):
        lines.append(f"  aio proxy connections at {c['when']}: {c['live']} live of {c['made']} made")
        for state, n in c["states"].items():
            lines.append(f"    {n} x {state}")
        for chain, n in c["held_by"].items():
            lines.append(f"    {n} x held by {chain}")
    lines.append("recovery after a change (s; n, median, max; windows cut by the next disturbance of the device or "
                 "the hub left out) -- view / call / callback / event:")
    for kind, d in r["recovery"].items():
        lines.append(f"  {kind:13} " + " / ".join(
            f"{d[w]['n']}, {d[w]['median'] if d[w]['median'] is None else round(d[w]['median'], 2)}, {d[w]['max']}"
            for w in ("view", "call", "callback", "event")))
    lines.append(f"toggle outcomes: {r['calls']}")
    for dev, errs in r["errors"].items():
        if errs:
            lines.append(f"  {dev} errors: {errs}")
    for dev, msgs in r["messages"].items():
        for key, msg in msgs.items():
            lines.append(f"  {dev} {key}: {msg[:160]}")
    lines.append(f"callbacks: {r['callbacks']}; events lost (counted): {r['events_lost']}")
    lines.append(f"growth (first -> last quarter, medians): {r['growth']}")
    sd = r["shutdown"]
    lines.append(f"after the last change the hub saw the truth in {r['settled_after']} s")
    lines.append(f"shutdown: hub closed in {sd['hub_close']:.2f} s, exited in {sd['hub_exit_seconds']:.2f} s (code "
                 f"{sd['hub_exit_code']}); devices' goodbyes seen {sd['goodbyes_seen_after']:.2f} s after the last stop; the hub's "
                 f"inbox goodbye heard by the devices after {sd.get('hub_goodbye_heard_after')} s")
    lines.append("findings:" if r["findings"] else "findings: none")
    lines += [f"  - {f}" for f in r["findings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="minutes of churn (default 5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the churn schedule and the lab's loss draws")
    p.add_argument("--json", action="store_true", help="print the whole analysis as JSON")
    p.add_argument("--logs", help="keep the processes' logs in this directory")
    p.add_argument("--trace-memory", action="store_true",
                   help="the hub traces its allocations (tracemalloc) and reports what grew after its second "
                        "minute (after full collections), who holds it, and the aio proxy connections it still has")
    p.add_argument("--schedule", action="store_true", help="print the schedule and exit (no lab)")
    args = p.parse_args(argv)
    seconds = args.minutes * 60
    if args.schedule:
        for a in schedule(seconds, args.seed, [d[0] for d in DEVICES]):
            print(f"{a.t:7.1f} {a.kind:8} {a.target:4} {a.args}")
        return 0
    ok, reason = netlab.available()
    if not ok:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        workdir = Path(args.logs) if args.logs else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        workdir.mkdir(parents=True, exist_ok=True)
        r = soak(seconds, args.seed, workdir, trace_memory=args.trace_memory)
    print(json.dumps(r, indent=1, default=str) if args.json else summary(r))
    return 1 if r["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
