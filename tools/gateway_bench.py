#!/usr/bin/env python3
"""Benchmark of `meshrpc gateway` against Pyro5's gateway (Pyro5.utils.httpgateway), same backend.

Every peer is its own process: a name server (`meshrpc ns`, Pyro5-compatible, which Pyro5's gateway
needs), one backend (`meshrpc echo --name http.echo`, announced on the mesh and registered in that
name server), `meshrpc gateway`, and Pyro5's gateway started as Pyro5 documents it
(`python -m Pyro5.utils.httpgateway -e 'http\\.'`). The load comes from this process (aiohttp client).

Measured:
  overhead     p50/p90 of sequential calls: direct meshrpc Proxy vs HTTP through each gateway
               (one keep-alive connection; Pyro5's wsgiref server closes after every request)
  throughput   calls/s with --concurrency clients for --duration s, per gateway, interleaved over
               --rounds rounds (median); CPU ms per request of the gateway and of the backend process
  clients      --clients concurrent HTTP clients (a connection each), --per-client calls each: errors
  sse          kill -9 of a second backend: when this process's own mesh registry removes it, and when
               the gateway's event stream (/events) says so

    python3 tools/gateway_bench.py                    # the table
    python3 tools/gateway_bench.py --json             # JSON on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

import meshrpc  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A peer process; its stdout lines are collected by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines:
                    found = re.search(pattern, line)
                    if found:
                        return found
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"no {pattern!r} from {self.proc.args}: {self.lines[-20:]}")
                self.changed.wait(0.5)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential_http(url: str, count: int) -> list[float]:
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    times = []
    try:
        for i in range(count):
            started = time.perf_counter()
            conn.request("GET", f"{parts.path}?message={i}")
            response = conn.getresponse()
            body = response.read()
            times.append(time.perf_counter() - started)
            if response.status != 200 or json.loads(body) != str(i):
                raise RuntimeError(f"bad reply {response.status} {body[:200]!r}")
            if response.getheader("Connection", "").lower() == "close" or response.version == 10:
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    finally:
        conn.close()
    return times


def sequential_direct(uri: str, count: int) -> list[float]:
    times = []
    with meshrpc.Proxy(uri) as proxy:
        proxy.echo("warm")
        for i in range(count):
            started = time.perf_counter()
            assert proxy.echo(str(i)) == str(i)
            times.append(time.perf_counter() - started)
    return times


async def load(url: str, concurrency: int, duration: float) -> tuple[int, int]:
    """(successful calls, errors) of `concurrency` clients calling for `duration` seconds."""
    done = errors = 0
    deadline = time.monotonic() + duration

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal done, errors
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                async with session.get(url, params={"message": f"{n}.{i}"}) as response:
                    body = await response.read()
                    if response.status == 200 and json.loads(body) == f"{n}.{i}":
                        done += 1
                    else:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, n) for n in range(concurrency)))
    return done, errors


async def many_clients(url: str, clients: int, per_client: int) -> dict[str, Any]:
    errors: list[str] = []
    ok = 0

    async def client(n: int) -> None:
        nonlocal ok
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for i in range(per_client):
                try:
                    async with session.get(url, params={"message": f"{n}.{i}"}) as response:
                        body = await response.read()
                        if response.status == 200 and json.loads(body) == f"{n}.{i}":
                            ok += 1
                        else:
                            errors.append(f"{response.status} {body[:100]!r}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    errors.append(repr(exc))

    started = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.monotonic() - started
    return {"clients": clients, "calls": ok, "errors": len(errors), "first_errors": errors[:3],
            "seconds": round(elapsed, 2), "calls_per_s": round(ok / elapsed)}


async def sse_departure(base: str, victim: Child, realm: str) -> dict[str, float]:
    from meshrpc.mesh import get_registry
    registry = get_registry(meshrpc.config.copy(REALM=realm, HOST="127.0.0.1"))
    removed: list[float] = []
    unsubscribe = registry.subscribe(
        lambda event, entry: removed.append(time.monotonic()) if event == "removed" and entry.name == "http.victim"
        else None)
    try:
        registry.resolve("http.victim", timeout=20)
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "events", timeout=aiohttp.ClientTimeout(total=60)) as response:
                seen_added = False
                event = ""
                killed = 0.0
                async for raw in response.content:
                    line = raw.decode().strip()
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        names = [e["name"] for e in data.get("entries", [])] if event == "snapshot" else \
                            [data.get("name")]
                        if not seen_added and "http.victim" in names and event in ("snapshot", "added"):
                            seen_added = True
                            killed = time.monotonic()
                            victim.proc.kill()
                        elif event == "removed" and data["name"] == "http.victim":
                            streamed = time.monotonic()
                            break
        deadline = time.monotonic() + 10
        while not removed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return {"registry_removed_s": round(removed[0] - killed, 3) if removed else -1.0,
                "sse_removed_s": round(streamed - killed, 3)}
    finally:
        unsubscribe()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    realm = "bench-" + uuid.uuid4().hex[:8]
    ns_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHRPC_", "PYRO_"))}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", MESHRPC_REALM=realm, MESHRPC_HOST="127.0.0.1",
               MESHRPC_NS_HOST="127.0.0.1", MESHRPC_NS_PORT=str(ns_port), MESHRPC_GATEWAY_RATE="0",
               PYRO_NS_HOST="127.0.0.1", PYRO_NS_PORT=str(ns_port))
    meshrpc.config.set("REALM", realm)
    meshrpc.config.set("HOST", "127.0.0.1")
    py = sys.executable
    load_before = os.getloadavg()
    children: list[Child] = []
    try:
        ns = Child([py, "-m", "meshrpc", "ns", "--host", "127.0.0.1", "--port", str(ns_port), "--no-broadcast"], env)
        children.append(ns)
        ns.expect(r"PYRO:")
        backend = Child([py, "-m", "meshrpc", "echo", "--name", "http.echo"], env)
        children.append(backend)
        direct_uri = backend.expect(r"(PYRO:\S+)").group(1)
        ours = Child([py, "-m", "meshrpc", "gateway", "-p", "0", "-e", r"http\."], env)
        children.append(ours)
        our_url = ours.expect(r"(http://\S+/)").group(1)
        threaded = Child([py, "-m", "meshrpc", "gateway", "-p", "0", "-e", r"http\."],
                         {**env, "MESHRPC_GATEWAY_BACKEND": "threads"})
        children.append(threaded)
        threaded_url = threaded.expect(r"(http://\S+/)").group(1)
        pyro_port = free_port()
        theirs = Child([py, "-m", "Pyro5.utils.httpgateway", "-H", "127.0.0.1", "-p", str(pyro_port),
                        "-e", r"http\."], env)
        children.append(theirs)
        theirs.expect(r"running on")
        their_url = f"http://127.0.0.1:{pyro_port}/"
        call = "pyro/http.echo/echo"
        # both gateways find the backend (the name server registration is in the background)
        deadline = time.monotonic() + 30
        while True:
            try:
                sequential_http(their_url + call, 1)
                sequential_http(our_url + call, 1)
                sequential_http(threaded_url + call, 1)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        results: dict[str, Any] = {"load_before": [round(x, 2) for x in load_before]}
        direct = sequential_direct(direct_uri, args.sequential)
        via_ours = sequential_http(our_url + call, args.sequential)
        via_threaded = sequential_http(threaded_url + call, args.sequential)
        via_theirs = sequential_http(their_url + call, max(200, args.sequential // 4))
        results["sequential_ms"] = {name: {"p50": round(percentile(t, 0.5) * 1000, 3),
                                           "p90": round(percentile(t, 0.9) * 1000, 3)}
                                    for name, t in (("direct proxy", direct), ("meshrpc gateway", via_ours),
                                                    ("meshrpc, threads", via_threaded),
                                                    ("Pyro5 gateway", via_theirs))}
        results["overhead_p50_ms"] = round((percentile(via_ours, 0.5) - percentile(direct, 0.5)) * 1000, 3)

        rates: dict[str, list[dict[str, float]]] = {"meshrpc gateway": [], "meshrpc, threads": [],
                                                    "Pyro5 gateway": []}
        for round_no in range(args.rounds):
            order = [("meshrpc gateway", our_url, ours), ("meshrpc, threads", threaded_url, threaded),
                     ("Pyro5 gateway", their_url, theirs)]
            order = order[round_no % 3:] + order[:round_no % 3]
            for name, url, proc in order:
                cpu_gw, cpu_backend = proc.cpu_seconds(), backend.cpu_seconds()
                done, errors = asyncio.run(load(url + call, args.concurrency, args.duration))
                gw_ms = (proc.cpu_seconds() - cpu_gw) * 1000 / max(1, done)
                be_ms = (backend.cpu_seconds() - cpu_backend) * 1000 / max(1, done)
                rates[name].append({"calls_per_s": done / args.duration, "errors": errors,
                                    "gateway_cpu_ms_per_call": gw_ms, "backend_cpu_ms_per_call": be_ms})
        results["throughput"] = {
            name: {"calls_per_s": round(statistics.median(r["calls_per_s"] for r in runs)),
                   "errors": sum(r["errors"] for r in runs),
                   "gateway_cpu_ms_per_call": round(statistics.median(r["gateway_cpu_ms_per_call"] for r in runs), 3),
                   "backend_cpu_ms_per_call": round(statistics.median(r["backend_cpu_ms_per_call"] for r in runs), 3)}
            for name, runs in rates.items()}
        results["throughput_ratio"] = round(results["throughput"]["meshrpc gateway"]["calls_per_s"]
                                            / max(1, results["throughput"]["Pyro5 gateway"]["calls_per_s"]), 2)
        results["many_clients"] = asyncio.run(many_clients(our_url + call, args.clients, args.per_client))

        victim = Child([py, "-m", "meshrpc", "echo", "--name", "http.victim"], env)
        children.append(victim)
        victim.expect(r"echo server ready")
        results["sse_kill9"] = asyncio.run(sse_departure(our_url, victim, realm))
        results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for child in reversed(children):
            child.stop()

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"load average before {results['load_before']}, after {results['load_after']} (machine shared)")
        for name, figures in results["sequential_ms"].items():
            print(f"sequential  {name:16} p50 {figures['p50']:7.3f} ms  p90 {figures['p90']:7.3f} ms")
        print(f"overhead of meshrpc gateway over a direct proxy call at p50: {results['overhead_p50_ms']:.3f} ms")
        for name, figures in results["throughput"].items():
            print(f"throughput  {name:16} {figures['calls_per_s']:6d} calls/s  errors {figures['errors']}  "
                  f"CPU/call gateway {figures['gateway_cpu_ms_per_call']:.3f} ms, "
                  f"backend {figures['backend_cpu_ms_per_call']:.3f} ms")
        print(f"throughput ratio meshrpc/Pyro5: {results['throughput_ratio']}x (concurrency {args.concurrency})")
        many = results["many_clients"]
        print(f"{many['clients']} concurrent clients: {many['calls']} calls, {many['errors']} errors, "
              f"{many['calls_per_s']} calls/s")
        sse = results["sse_kill9"]
        print(f"kill -9: mesh registry removed it after {sse['registry_removed_s']} s, "
              f"the event stream after {sse['sse_removed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
