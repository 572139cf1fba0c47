#!/usr/bin/env python3
"""Benchmark of meshrpc.aio (issue 12's goals): servers in child processes, figures with CPU per call.

Every server runs in a child (``aio_bench.py --serve KIND``, KIND: aio, threaded or pyro5), binds
127.0.0.1 port 0, prints its URI and serves until its stdin closes. The client side runs here. CPU
per call is the server child's user+system time (from /proc) plus this process's, divided by the
calls. The machine may be shared: the load average is printed with the results.

Cases (``--cases``, comma separated):

  sequential  one call after the other, default settings: aio proxy -> aio daemon (async def, plain,
              and plain marked meshrpc.aio.nonblocking), threaded proxy -> threaded daemon, and the
              two crossed (the proxies compared on one server: aio vs threaded proxy -> threaded
              daemon); then the aio proxy without its sleep in the selector (AIO_REPLY_WAIT=0), and
              both proxies with the opt-in spin (SPIN_WAIT=0.0002); the two ratios of issue 12
  pipelined   N concurrent awaits on one aio proxy (aio daemon; then a Pyro5 daemon, serialized):
              calls/s, errors, p50/p99 latency, and the ratio to the sequential rate; once as one
              burst of N, once kept in flight (N tasks each awaiting --each calls in turn). The
              burst is issue 12's "N concurrent awaits" read literally, what a program that fans
              out writes (`await asyncio.gather(*(proxy.m(x) for x in N items))`), and it includes
              filling and draining the pipe; "kept in flight" is the steady state of N tasks that
              each call in a loop (N awaits outstanding all the time). Both rows count.
  idle        N idle connected clients held by an aio daemon and by a threaded daemon: memory per
              connection (the server's RSS growth / N)
  slow        one client awaits a 2 s `async def` call while another makes quick calls: their worst
              latency
  large       a 10 MiB bytes echo (``--large-bytes``), serpent and marshal, ``--large-repeats`` times:
              aio proxy -> aio daemon (async def), aio proxy -> threaded daemon, threaded proxy -> aio
              daemon (async def), threaded proxy -> threaded daemon, interleaved; the median MiB/s
              (payload bytes each way over the echo's time) and the CPU ms per echo (client, server, both)

Usage::

    python3 tools/aio_bench.py                              # everything, defaults below
    python3 tools/aio_bench.py --cases pipelined --concurrency 1000
    python3 tools/aio_bench.py --cases idle --idle 10000
    python3 tools/aio_bench.py --cases large --large-repeats 20
    python3 tools/aio_bench.py --quick --json               # a smoke run
    python3 tools/aio_bench.py --cases sequential,pipelined --tls   # every meshrpc connection over TLS

`--tls` makes a CA and a certificate for 127.0.0.1 with the `openssl` command (a temporary directory)
and runs every meshrpc daemon and proxy with SSL on (the MESHRPC_SSL* settings, inherited by the
server children); the Pyro5 daemon's rows are left out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------ the server side (child processes)

def make_service(lib: Any) -> Any:
    import meshrpc.aio
    nonblocking = meshrpc.aio.nonblocking if lib.__name__.startswith("meshrpc") else (lambda method: method)

    @lib.expose
    class Bench:
        def echo(self, value: Any) -> Any:
            return value

        @nonblocking
        def fecho(self, value: Any) -> Any:  # a plain method the aio daemon may run on its loop
            return value

        async def aecho(self, value: Any) -> Any:
            return value

        async def anap(self, seconds: float) -> float:
            await asyncio.sleep(seconds)
            return seconds
    return Bench


def serve_main(kind: str) -> int:
    raise_fd_limit()
    if kind == "pyro5":
        import Pyro5.api
        import threading
        daemon = Pyro5.api.Daemon(host="127.0.0.1")
        print(daemon.register(make_service(Pyro5.api)(), "bench"), flush=True)
        threading.Thread(target=daemon.requestLoop, daemon=True).start()
        sys.stdin.read()
        return 0
    import meshrpc
    import meshrpc.aio
    if kind == "threaded":
        import threading
        daemon = meshrpc.Daemon(host="127.0.0.1")
        print(daemon.register(make_service(meshrpc)(), "bench"), flush=True)
        threading.Thread(target=daemon.requestLoop, daemon=True).start()
        sys.stdin.read()
        daemon.shutdown()
        return 0

    async def serve() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        print(daemon.register(make_service(meshrpc)(), "bench"), flush=True)
        await daemon.start()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await daemon.aclose()
    asyncio.run(serve())
    return 0


class Server:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT), "MESHRPC_MAX_CONNECTIONS": "100000"})
        assert self.proc.stdout is not None
        self.uri = self.proc.stdout.readline().strip()
        if not self.uri.startswith("PYRO:"):
            raise RuntimeError(f"the {kind} server did not start")

    def cpu(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, hard)) if hard != resource.RLIM_INFINITY
                                                    else want, max(hard, want) if os.geteuid() == 0 else hard))
    except (ValueError, OSError):
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------ measurements

class Meter:
    """calls/s and CPU µs per call (this process + the server child) of the code between start() and stop()."""

    def __init__(self, server: Server, calls: int) -> None:
        self.server, self.calls = server, calls

    def start(self) -> None:
        self.cpu_server, self.cpu_client, self.started = self.server.cpu(), time.process_time(), time.perf_counter()

    def stop(self, **extra: Any) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        cpu = (self.server.cpu() - self.cpu_server) + (time.process_time() - self.cpu_client)
        return {"calls": self.calls, "calls_per_s": round(self.calls / elapsed),
                "cpu_us_per_call": round(cpu / self.calls * 1e6, 1), **extra}


SPIN_ON = {"SPIN_WAIT": 0.0002}       # the opt-in spin (issue 15: off by default)
NO_SELECTOR_SLEEP = {"AIO_REPLY_WAIT": 0.0}  # the aio proxy reads a lone call's reply through the loop


def settings_with(overrides: dict[str, Any] | None) -> Any:
    """The default settings with `overrides`."""
    from meshrpc.config import config
    return config.copy(**overrides) if overrides else config


def aio_sequential(server: Server, method: str, calls: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    import meshrpc.aio
    settings = settings_with(overrides)

    async def main() -> dict[str, Any]:
        async with meshrpc.aio.Proxy(server.uri, settings=settings) as proxy:
            call = getattr(proxy, method)
            for _ in range(50):
                await call(1)
            meter = Meter(server, calls)
            meter.start()
            for _ in range(calls):
                await call(1)
            return meter.stop()
    return asyncio.run(main())


def threaded_sequential(server: Server, method: str, calls: int,
                        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    import meshrpc
    with meshrpc.Proxy(server.uri, settings=settings_with(overrides)) as proxy:
        call = getattr(proxy, method)
        for _ in range(50):
            call(1)
        meter = Meter(server, calls)
        meter.start()
        for _ in range(calls):
            call(1)
        return meter.stop()


def case_sequential(args: argparse.Namespace) -> dict[str, Any]:
    """Each variant `--rounds` times, interleaved; the medians. Default settings unless a row says."""
    rounds: dict[str, list[dict[str, Any]]] = {}
    aio, threaded = aio_sequential, threaded_sequential
    with Server("aio") as aio_server, Server("threaded") as threaded_server:
        for _ in range(args.rounds):
            for label, server, client, method, overrides in (
                    ("aio proxy -> aio daemon, async def", aio_server, aio, "aecho", None),
                    ("aio proxy -> aio daemon, plain method", aio_server, aio, "echo", None),
                    ("aio proxy -> aio daemon, plain method marked nonblocking", aio_server, aio, "fecho", None),
                    ("threaded proxy -> threaded daemon", threaded_server, threaded, "echo", None),
                    ("aio proxy -> threaded daemon", threaded_server, aio, "echo", None),
                    ("aio proxy without the selector sleep (AIO_REPLY_WAIT=0) -> threaded daemon", threaded_server,
                     aio, "echo", NO_SELECTOR_SLEEP),
                    ("threaded proxy, spinning (SPIN_WAIT=0.0002) -> threaded daemon", threaded_server, threaded,
                     "echo", SPIN_ON),
                    ("aio proxy, spinning (SPIN_WAIT=0.0002) -> threaded daemon", threaded_server, aio, "echo",
                     SPIN_ON),
                    ("threaded proxy -> aio daemon, async def", aio_server, threaded, "aecho", None)):
                rounds.setdefault(label, []).append(client(server, method, args.calls, overrides))
    out = {label: {"calls": runs[0]["calls"], "rounds": len(runs),
                   "calls_per_s": statistics.median(r["calls_per_s"] for r in runs),
                   "cpu_us_per_call": statistics.median(r["cpu_us_per_call"] for r in runs),
                   "each_round": [r["calls_per_s"] for r in runs]}
           for label, runs in rounds.items()}
    base = out["threaded proxy -> threaded daemon"]["calls_per_s"]
    out["aio -> threaded / threaded -> threaded"] = round(out["aio proxy -> threaded daemon"]["calls_per_s"] / base, 2)
    out["aio -> aio (async def) / threaded -> threaded"] = round(
        out["aio proxy -> aio daemon, async def"]["calls_per_s"] / base, 2)
    for label, row in out.items():
        log(f"  {label}: {row}")
    return out


def pipelined(server: Server, method: str, concurrency: int) -> dict[str, Any]:
    import meshrpc.aio
    latencies: list[float] = []
    errors = 0

    async def one(proxy: Any) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            await getattr(proxy, method)(1)
        except Exception:
            errors += 1
        latencies.append(time.perf_counter() - started)

    async def main() -> dict[str, Any]:
        async with meshrpc.aio.Proxy(server.uri) as proxy:
            await asyncio.gather(*(getattr(proxy, method)(1) for _ in range(50)))
            meter = Meter(server, concurrency)
            meter.start()
            await asyncio.gather(*(one(proxy) for _ in range(concurrency)))
            latencies.sort()
            return meter.stop(errors=errors, p50_ms=round(latencies[len(latencies) // 2] * 1000, 2),
                              p99_ms=round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2))
    return asyncio.run(main())


def sustained(server: Server, method: str, concurrency: int, each: int) -> dict[str, Any]:
    """`concurrency` tasks on one aio proxy, each awaiting `each` calls one after the other: that many
    awaits stay in flight the whole time (a burst also measures filling and draining the pipe)."""
    import meshrpc.aio
    latencies: list[float] = []
    errors = 0

    async def worker(proxy: Any) -> None:
        nonlocal errors
        call = getattr(proxy, method)
        for _ in range(each):
            started = time.perf_counter()
            try:
                await call(1)
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - started)

    async def main() -> dict[str, Any]:
        async with meshrpc.aio.Proxy(server.uri) as proxy:
            await asyncio.gather(*(getattr(proxy, method)(1) for _ in range(50)))
            meter = Meter(server, concurrency * each)
            meter.start()
            await asyncio.gather(*(worker(proxy) for _ in range(concurrency)))
            latencies.sort()
            return meter.stop(errors=errors, p50_ms=round(latencies[len(latencies) // 2] * 1000, 2),
                              p99_ms=round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2))
    return asyncio.run(main())


def case_pipelined(args: argparse.Namespace) -> dict[str, Any]:
    """`--rounds` rounds against one aio daemon, each: a sequential run (`--calls`), then N concurrent
    awaits on one proxy as one burst, then N tasks on one proxy each awaiting `--each` calls in turn (N
    awaits kept in flight), then a burst of N calls of a plain method (the daemon's threads run it); medians (errors: the sum) and the ratios of the medians; then one round against
    a Pyro5 daemon (serialized)."""
    out: dict[str, Any] = {}
    n = args.concurrency
    seq_label, conc_label = "sequential, aio daemon", f"{n} concurrent, aio daemon"
    kept_label = f"{n} concurrent, kept in flight ({n} tasks x {args.each} awaits each), aio daemon"
    plain_label = f"{n} concurrent, plain method (run on the daemon's threads), aio daemon"
    with Server("aio") as server:
        rounds: dict[str, list[dict[str, Any]]] = {seq_label: [], conc_label: [], kept_label: [], plain_label: []}
        for _ in range(args.rounds):
            rounds[seq_label].append(aio_sequential(server, "aecho", args.calls))
            rounds[conc_label].append(pipelined(server, "aecho", n))
            rounds[kept_label].append(sustained(server, "aecho", n, args.each))
            rounds[plain_label].append(pipelined(server, "echo", n))
        for label, runs in rounds.items():
            out[label] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            out[label]["rounds"] = [r["calls_per_s"] for r in runs]
            if "errors" in runs[0]:
                out[label]["errors"] = sum(r["errors"] for r in runs)
        out["ratio to sequential"] = round(out[conc_label]["calls_per_s"] / out[seq_label]["calls_per_s"], 2)
        out["ratio to sequential, kept in flight"] = round(out[kept_label]["calls_per_s"]
                                                          / out[seq_label]["calls_per_s"], 2)
    if os.environ.get("MESHRPC_SSL"):
        out["Pyro5"] = "left out (--tls)"
        log(f"  {out}")
        return out
    try:
        with Server("pyro5") as server:
            out["sequential, Pyro5 daemon"] = aio_sequential(server, "echo", n)
            out[f"{n} concurrent, Pyro5 daemon (serialized)"] = pipelined(server, "echo", n)
    except ImportError:
        out["Pyro5"] = "not installed"
    log(f"  {out}")
    return out


def case_idle(args: argparse.Namespace) -> dict[str, Any]:
    import meshrpc.aio
    raise_fd_limit()
    out: dict[str, Any] = {}
    n = args.idle

    async def connect_all(uri: str) -> list[Any]:
        proxies = [meshrpc.aio.Proxy(uri) for _ in range(n)]
        gate = asyncio.Semaphore(200)

        async def bind(proxy: Any) -> None:
            async with gate:
                await proxy._pyroBind()
        await asyncio.gather(*(bind(p) for p in proxies))
        return proxies

    for kind in ("aio", "threaded"):
        with Server(kind) as server:
            aio_sequential(server, "echo", 50)
            before = server.rss_mb()

            async def main() -> dict[str, Any]:
                started = time.perf_counter()
                proxies = await connect_all(server.uri)
                connected = time.perf_counter() - started
                await asyncio.sleep(1.0)  # let the server settle (threads park, buffers shrink)
                after = server.rss_mb()
                # the daemon still answers while holding them all
                probe = time.perf_counter()
                assert await proxies[0].echo(1) == 1
                answered_ms = (time.perf_counter() - probe) * 1000
                for proxy in proxies:
                    await proxy._pyroRelease()
                return {"clients": n, "connect_s": round(connected, 1), "rss_before_mb": round(before, 1),
                        "rss_after_mb": round(after, 1), "kib_per_connection": round((after - before) * 1024 / n, 1),
                        "call_while_holding_ms": round(answered_ms, 2)}
            out[f"{kind} daemon"] = asyncio.run(main())
            log(f"  {kind}: {out[f'{kind} daemon']}")
    return out


def case_slow(args: argparse.Namespace) -> dict[str, Any]:
    import meshrpc.aio
    with Server("aio") as server:
        async def main() -> dict[str, Any]:
            async with meshrpc.aio.Proxy(server.uri) as slow, meshrpc.aio.Proxy(server.uri) as quick:
                pending = asyncio.ensure_future(slow.anap(2.0))
                latencies = []
                while not pending.done():
                    started = time.perf_counter()
                    await quick.aecho(1)
                    latencies.append(time.perf_counter() - started)
                await pending
                return {"quick_calls_during_slow_call": len(latencies),
                        "worst_ms": round(max(latencies) * 1000, 2),
                        "median_ms": round(statistics.median(latencies) * 1000, 3)}
        out = asyncio.run(main())
    log(f"  {out}")
    return out


def large_echoes(server: Server, client: str, method: str, serializer: str, payload: bytes,
                 repeats: int) -> dict[str, Any]:
    """`repeats` echoes of `payload` (every reply checked) after one warm-up: each echo's time, and the
    CPU seconds of this process and of the server child over all of them."""
    times: list[float] = []
    settings = settings_with({"SERIALIZER": serializer})

    def measured(echo: Any) -> dict[str, Any]:
        cpu_server, cpu_client = server.cpu(), time.process_time()
        for _ in range(repeats):
            started = time.perf_counter()
            reply = echo(payload)
            times.append(time.perf_counter() - started)
            if reply != payload:
                raise AssertionError("the echoed bytes differ")
        return {"times": times, "client_s": time.process_time() - cpu_client, "server_s": server.cpu() - cpu_server}

    if client == "threaded":
        import meshrpc
        with meshrpc.Proxy(server.uri, settings=settings) as proxy:
            call = getattr(proxy, method)
            call(payload)
            return measured(call)
    import meshrpc.aio

    async def main() -> dict[str, Any]:
        async with meshrpc.aio.Proxy(server.uri, settings=settings) as proxy:
            call = getattr(proxy, method)
            await call(payload)
            # the loop runs the calls; the timing and CPU are read around each one as above
            cpu_server, cpu_client = server.cpu(), time.process_time()
            for _ in range(repeats):
                started = time.perf_counter()
                reply = await call(payload)
                times.append(time.perf_counter() - started)
                if reply != payload:
                    raise AssertionError("the echoed bytes differ")
            return {"times": times, "client_s": time.process_time() - cpu_client,
                    "server_s": server.cpu() - cpu_server}
    return asyncio.run(main())


def case_large(args: argparse.Namespace) -> dict[str, Any]:
    """The four pairings of proxy and daemon, each serializer, interleaved; medians and CPU per echo."""
    payload = os.urandom(args.large_bytes)
    mib = len(payload) / 1024 / 1024
    out: dict[str, Any] = {"payload_mib": round(mib, 3), "repeats": args.large_repeats}
    with Server("aio") as aio_server, Server("threaded") as threaded_server:
        for serializer in ("serpent", "marshal"):
            for label, server, client, method in (
                    ("aio proxy -> aio daemon", aio_server, "aio", "aecho"),
                    ("aio proxy -> threaded daemon", threaded_server, "aio", "echo"),
                    ("threaded proxy -> aio daemon", aio_server, "threaded", "aecho"),
                    ("threaded proxy -> threaded daemon", threaded_server, "threaded", "echo")):
                run = large_echoes(server, client, method, serializer, payload, args.large_repeats)
                median = statistics.median(run["times"])
                row = out[f"{label}, {serializer}"] = {
                    "mib_per_s": round(mib / median),
                    "cpu_ms_per_echo": round((run["client_s"] + run["server_s"]) / args.large_repeats * 1e3, 1),
                    "cpu_ms_client": round(run["client_s"] / args.large_repeats * 1e3, 1),
                    "cpu_ms_server": round(run["server_s"] / args.large_repeats * 1e3, 1)}
                log(f"  {label}, {serializer}: {row}")
    return out


CASES = {"sequential": case_sequential, "pipelined": case_pipelined, "idle": case_idle, "slow": case_slow,
         "large": case_large}


def tls_settings(root: Path) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1 made in `root` (openssl); the MESHRPC_SSL* settings
    that make every meshrpc daemon and proxy of this run use them."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (root / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return {"MESHRPC_SSL": "1", "MESHRPC_SSL_CACERTS": str(root / "ca.pem"),
            "MESHRPC_SSL_SERVERCERT": str(root / "server.pem"), "MESHRPC_SSL_SERVERKEY": str(root / "server-key.pem")}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=("aio", "threaded", "pyro5"), help=argparse.SUPPRESS)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--calls", type=int, default=5000, help="calls per sequential measurement (5000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of 'sequential' and 'pipelined' (medians; default 3)")
    parser.add_argument("--concurrency", type=int, default=1000, help="concurrent awaits in 'pipelined' (1000)")
    parser.add_argument("--each", type=int, default=10,
                        help="'pipelined', kept in flight: calls each concurrent task awaits in turn (10)")
    parser.add_argument("--idle", type=int, default=10000, help="idle clients in 'idle' (10000)")
    parser.add_argument("--large-bytes", type=int, default=10 * 1024 * 1024,
                        help="payload of 'large' (10 MiB)")
    parser.add_argument("--large-repeats", type=int, default=20, help="echoes per pairing in 'large' (20)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run, not a measurement")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--tls", action="store_true", help="every meshrpc connection over TLS (needs `openssl`)")
    args = parser.parse_args(argv)
    if args.serve:
        return serve_main(args.serve)
    if args.tls:
        tls_dir = tempfile.TemporaryDirectory(prefix="aio-bench-tls-")
        os.environ.update(tls_settings(Path(tls_dir.name)))  # before meshrpc's settings are read
    if args.quick:
        args.calls, args.concurrency, args.idle, args.rounds, args.each = 200, 100, 50, 1, 2
        args.large_bytes, args.large_repeats = 1024 * 1024, 2
    results: dict[str, Any] = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "tls": args.tls,
                               "command": " ".join([Path(sys.executable).name, *sys.argv])}
    for name in args.cases.split(","):
        log(f"{name}:")
        results[name] = CASES[name.strip()](args)
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
