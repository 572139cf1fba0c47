#!/usr/bin/env python3
"""Scale benchmark of the etcd registry (docs/etcd.md): D daemons with O objects in all against a real
3-member etcd cluster on loopback. Not a test: it prints figures.

    python3 tools/etcd_bench.py --daemons 100 --objects 10000 --procs 10

Daemons run in --procs child processes (several daemons per process: on a 2-core machine 100 Python
processes would measure the scheduler, not meshrpc). Measured:
- a new client's time to a full view: a fresh mirror's prefix read until it holds every object
  (median of --repeat), and the CPU it used;
- watch delivery: --watch-writes puts by a writer, time from just before each put to the mirror's
  event (p50, p99);
- etcd writes per daemon per second in steady state, over --steady seconds: counted by the daemons'
  registrars (lease keep-alives) and, from etcd's own /metrics, the puts and transactions applied.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from etcd_cluster import EtcdCluster  # noqa: E402

CHILD = r"""
import json, sys, time, meshrpc
from meshrpc import etcd
first, daemons, per_daemon = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
class Obj:
    @meshrpc.expose
    def ping(self):
        return 1
running = []
for d in range(first, first + daemons):
    daemon = meshrpc.Daemon(host="127.0.0.1")
    for o in range(per_daemon):
        daemon.register(Obj(), name=f"bench.d{d}.o{o}", metadata={"bench", f"d{d}"})
    running.append(daemon)
def registrar_of(daemon):     # the daemon's etcd announcer
    announcers = getattr(daemon, "_announcers", None)
    return announcers.active["etcd"] if announcers is not None else daemon._etcd_registrar
registrars = [registrar_of(d) for d in running]
while sum(r.written() for r in registrars) < daemons * per_daemon:
    time.sleep(0.05)
print("READY", flush=True)
for line in sys.stdin:            # "writes" -> the registrars' write counters
    print(json.dumps([r.writes for r in registrars]), flush=True)
for daemon in running:
    daemon.close()
"""


def metric(cluster: EtcdCluster, names: tuple[str, ...]) -> dict[str, float]:
    """Sums over the members of etcd's counters (Prometheus text)."""
    totals = {name: 0.0 for name in names}
    for i in range(cluster.size):
        with urllib.request.urlopen(cluster.url(i) + "/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                for name in names:
                    if line.startswith(name + " ") or line.startswith(name + "{"):
                        totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--daemons", type=int, default=100)
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--procs", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--watch-writes", type=int, default=300)
    ap.add_argument("--steady", type=float, default=10.0)
    args = ap.parse_args()
    import meshrpc
    from meshrpc.etcd import entries
    from meshrpc.etcd.gateway import Gateway
    from meshrpc.etcd.mirror import Mirror
    from meshrpc.etcd.watcher import Watcher
    from meshrpc.mesh import records

    per_daemon = args.objects // args.daemons
    per_proc = args.daemons // args.procs
    realm = "bench-" + uuid.uuid4().hex[:8]
    with EtcdCluster(3) as cluster:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHRPC_", "PYRO_"))}
        env.update(MESHRPC_REALM=realm, MESHRPC_RESOLVE=cluster.resolve, PYTHONPATH=str(REPO))
        settings = meshrpc.config.copy(REALM=realm, RESOLVE=cluster.resolve)
        started = time.monotonic()
        children = [subprocess.Popen([sys.executable, "-c", CHILD, str(p * per_proc), str(per_proc), str(per_daemon)],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    for p in range(args.procs)]
        for child in children:
            assert child.stdout.readline().strip() == "READY"
        registered = time.monotonic() - started
        total = per_daemon * per_proc * args.procs

        # a new client's time to a full view
        views, cpus = [], []
        for _ in range(args.repeat):
            usage = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.monotonic()
            full = threading.Event()
            mirror = Mirror(settings, start=lambda m: (setattr(m, "feeder", Watcher(m, m.settings)), m.feeder.start()))
            mirror.subscribe(lambda e, entry: len(mirror._entries) >= total and full.set())
            mirror.ensure_synced(60)
            if mirror.stats()["entries"] < total:
                full.wait(60)
            views.append(time.monotonic() - t0)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpus.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
            assert mirror.stats()["entries"] == total, mirror.stats()
            mirror.feeder.close()

        # watch delivery
        mirror = Mirror(settings, start=lambda m: (setattr(m, "feeder", Watcher(m, m.settings)), m.feeder.start()))
        mirror.ensure_synced(60)
        sent: dict[str, float] = {}
        delays: list[float] = []
        done = threading.Event()

        def on_event(event: str, entry: records.Entry) -> None:
            if entry.name in sent and event == "added":
                delays.append(time.monotonic() - sent[entry.name])
                if len(delays) == args.watch_writes:
                    done.set()
        mirror.subscribe(on_event)
        writer = Gateway(settings)
        lease = writer.grant(30)
        prefix = entries.realm_prefix(settings)
        for n in range(args.watch_writes):
            entry = records.make_entry(realm=realm, name=f"watch.{n}", uri=f"PYRO:w{n}@127.0.0.1:1", metadata=(),
                                       node="benchw", incarnation=1, version=n + 1)
            sent[entry.name] = time.monotonic()
            writer.put(entries.key_for(prefix, entry), entries.encode_value(entry), lease)
            time.sleep(0.01)          # pacing: 100 writes/s, one event at a time (not a burst)
        done.wait(30)
        writer.revoke(lease)
        mirror.feeder.close()
        delays.sort()

        # steady state: writes per daemon per second
        names = ("etcd_mvcc_put_total", "etcd_mvcc_txn_total", "etcd_debugging_server_lease_expired_total")
        time.sleep(2)                  # let the watch-delivery writes settle out of the window
        before_m = metric(cluster, names)
        for child in children:
            child.stdin.write("writes\n")
            child.stdin.flush()
        before = [w for child in children for w in json.loads(child.stdout.readline())]
        t0 = time.monotonic()
        time.sleep(args.steady)        # the measuring window itself
        for child in children:
            child.stdin.write("writes\n")
            child.stdin.flush()
        after = [w for child in children for w in json.loads(child.stdout.readline())]
        window = time.monotonic() - t0
        after_m = metric(cluster, names)
        for child in children:
            child.stdin.close()
            child.wait(30)
        per_daemon_rate = (sum(after) - sum(before)) / len(after) / window
        load = os.getloadavg()
        result = {
            "daemons": args.daemons, "objects": total, "processes": args.procs,
            "registration_s": round(registered, 2),
            "full_view_s": [round(v, 3) for v in views], "full_view_median_s": round(statistics.median(views), 3),
            "full_view_cpu_s": [round(c, 3) for c in cpus],
            "watch_delivery_ms": {"n": len(delays), "p50": round(delays[len(delays) // 2] * 1000, 2),
                                  "p99": round(delays[int(len(delays) * 0.99) - 1] * 1000, 2),
                                  "max": round(delays[-1] * 1000, 2)},
            "steady_writes_per_daemon_per_s": round(per_daemon_rate, 3),
            "steady_etcd_puts_in_window": after_m["etcd_mvcc_put_total"] - before_m["etcd_mvcc_put_total"],
            "steady_etcd_txns_in_window": after_m["etcd_mvcc_txn_total"] - before_m["etcd_mvcc_txn_total"],
            "window_s": round(window, 1), "loadavg": [round(x, 2) for x in load],
        }
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
