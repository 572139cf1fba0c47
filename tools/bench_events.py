"""Benchmark of meshrpc.events: subscribers in separate processes, the publisher in this one.

    python3 tools/bench_events.py fanout  [--subscribers 20] [--events 20000]
    python3 tools/bench_events.py latency [--subscribers 5] [--rate 1000] [--seconds 5] [--slow]
    python3 tools/bench_events.py all     (both, and latency again with one slow subscriber)

fanout: the publisher publishes as fast as it can (backlogs large enough to drop nothing); figures
are delivered events per second in all (first publish to last delivery) and CPU per delivered event
(every process's user+system time). latency: events at a steady rate, publish-to-handler time
measured in each subscriber (same machine, same clock). --slow adds one subscriber whose handler
sleeps 5 ms per event (backlog 1000), to see whether the publisher or the others notice.
Everything on loopback, in a mesh realm of its own. Prints one JSON object per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
END = "bench.end"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def subscriber(delay: float) -> int:
    from meshrpc.events import EventBus
    latencies: list[float] = []
    done = threading.Event()
    state = {"first": 0.0, "last": 0.0}

    def handler(event) -> None:
        now = time.time()
        if event.subject == END:
            done.set()
            return
        if not latencies:
            state["first"] = now
        state["last"] = now
        latencies.append(now - event.time)
        if delay:
            time.sleep(delay)
    with EventBus() as bus:
        bus.subscribe(["bench.data", END], handler)
        cpu_at_ready = cpu_seconds()       # start-up (imports, zeroconf) is not the events' cost
        print("ready", flush=True)
        done.wait()
        stats = bus.stats()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0
    print(json.dumps({"received": len(latencies), "lost": stats["lost"], "cpu": cpu_seconds() - cpu_at_ready,
                      "first": state["first"], "last": state["last"],
                      "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0)}), flush=True)
    return 0


def start_subscribers(count: int, env: dict[str, str], delays: list[float]) -> list[subprocess.Popen]:
    procs = []
    for i in range(count):
        procs.append(subprocess.Popen([sys.executable, __file__, "_sub", str(delays[i] if i < len(delays) else 0.0)],
                                      stdout=subprocess.PIPE, text=True, env=env))
    for proc in procs:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"a subscriber did not start: {line!r}")
    return procs


def results(procs: list[subprocess.Popen]) -> list[dict]:
    found = []
    for proc in procs:
        found.append(json.loads(proc.stdout.readline()))
        proc.wait(30)
    return found


def run(kind: str, subscribers: int, events: int, rate: float, seconds: float, slow: bool) -> dict:
    env = {**os.environ, "MESHRPC_REALM": "bench-" + uuid.uuid4().hex[:8], "MESHRPC_HOST": "127.0.0.1",
           "PYTHONPATH": str(ROOT)}
    if kind == "fanout":     # measure throughput, not drops: room for every event
        env["MESHRPC_EVENTS_QUEUE_MAX"] = str(max(10000, events + 10))
    from meshrpc.config import Settings
    from meshrpc.events import EventBus
    delays = [0.0] * subscribers + ([0.005] if slow else [])     # the slow one comes last
    if slow:      # its backlog overflows within the run: drops are part of what is measured
        env["MESHRPC_EVENTS_QUEUE_MAX"] = "1000"
    settings = Settings.from_env(env)
    procs = start_subscribers(subscribers + (1 if slow else 0), env, delays)
    try:
        with EventBus(settings) as bus:
            total = subscribers + (1 if slow else 0)
            if bus.wait_for_subscribers("bench.data", total, 30) < total:
                raise SystemExit("not every subscriber was found on the mesh")
            cpu0, t0 = cpu_seconds(), time.time()
            if kind == "fanout":
                for i in range(events):
                    bus.publish("bench.data", i)
            else:
                events = int(rate * seconds)
                for i in range(events):
                    delay = t0 + i / rate - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    bus.publish("bench.data", i)
            published_in = time.time() - t0
            bus.publish(END, None)
            bus.flush(120)
            pub_cpu = cpu_seconds() - cpu0
            stats = bus.stats()
        found = results(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    normal = found[:subscribers]
    delivered = sum(r["received"] for r in found)
    elapsed = max(r["last"] for r in normal) - t0
    sub_cpu = sum(r["cpu"] for r in found)
    out = {"case": kind + ("+slow" if slow else ""), "subscribers": subscribers, "published": events,
           "publish_rate": round(events / published_in), "delivered": delivered,
           "delivered_per_s": round(sum(r["received"] for r in normal) / elapsed),
           "dropped": stats["dropped"], "lost_seen_by_subscribers": sum(r["lost"] for r in found),
           "publisher_cpu_s": round(pub_cpu, 2), "subscribers_cpu_s": round(sub_cpu, 2),
           "cpu_us_per_delivered_event": round((pub_cpu + sub_cpu) / max(1, delivered) * 1e6, 1),
           "publisher_cpu_us_per_delivery": round(pub_cpu / max(1, delivered) * 1e6, 1),
           "p50_ms": round(max(r["p50_ms"] for r in normal), 2), "p99_ms": round(max(r["p99_ms"] for r in normal), 2),
           "max_ms": round(max(r["max_ms"] for r in normal), 2), "load_average": os.getloadavg()}
    if slow:
        out["slow_subscriber"] = {k: found[-1][k] for k in ("received", "lost", "p99_ms")}
    return out


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "_sub":
        return subscriber(float(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", choices=["fanout", "latency", "all"])
    p.add_argument("--subscribers", type=int, default=None)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--slow", action="store_true")
    args = p.parse_args()
    cases = [("fanout", False), ("latency", False), ("latency", True)] if args.case == "all" else [(args.case, args.slow)]
    for kind, slow in cases:
        subscribers = args.subscribers or (20 if kind == "fanout" else 5)
        print(json.dumps(run(kind, subscribers, args.events, args.rate, args.seconds, slow)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
