#!/usr/bin/env python3
"""Instructions per call of meshrpc.aio's pairings, counted by valgrind (deterministic, unlike calls/s).

A shared machine moves calls/s by 2x between runs; instruction counts do not move (a few hundred
per call, depending on whether a reply is already there when a wait starts). This counts one side
of one pairing of tools/aio_bench.py: the process under `valgrind --tool=callgrind` runs 200
warm-up calls and then N calls; the count per call is the difference of the "Collected" totals of
a run with N=--calls and one with N=0, divided by N. The other side runs normally.

    python3 tools/aio_icount.py --side client --client aio --server threaded --method echo
    python3 tools/aio_icount.py --side server --client aio --server aio --method aecho
    python3 tools/aio_icount.py --side client --client aio --server aio --method aecho --concurrency 100

`--concurrency K`: K tasks on one proxy, each awaiting calls in turn (the pipelined case kept in
flight; aio client only): N is then the total. Servers are `tools/aio_bench.py --serve KIND`
(its Bench service: echo, fecho (nonblocking), aecho (async def)). Needs valgrind; takes about a
minute per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tools" / "aio_bench.py"
WARMUP = 200
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def run_client(kind: str, uri: str, calls: int, method: str, concurrency: int) -> None:
    """The client side: WARMUP calls, then `calls` calls (this is what valgrind traces for --side client)."""
    sys.path.insert(0, str(ROOT))
    if kind == "threaded":
        import meshrpc
        with meshrpc.Proxy(uri) as proxy:
            call = getattr(proxy, method)
            for _ in range(WARMUP + calls):
                call(1)
        return
    import meshrpc.aio

    async def worker(call, count: int) -> None:
        for _ in range(count):
            await call(1)

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri) as proxy:
            call = getattr(proxy, method)
            await worker(call, WARMUP)
            if concurrency <= 1:
                await worker(call, calls)
            else:
                share, rest = divmod(calls, concurrency)
                await asyncio.gather(*(worker(call, share + (i < rest)) for i in range(concurrency)))
    asyncio.run(main())


def _valgrind(argv: list[str]) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, *argv]


def _collected(text: str) -> int:
    found = _COLLECTED.findall(text)
    if not found:
        raise RuntimeError(f"no 'Collected' line from valgrind:\n{text[-2000:]}")
    return int(found[-1])


def _start_server(kind: str, traced: bool) -> tuple[subprocess.Popen, str]:
    argv = [str(BENCH), "--serve", kind]
    proc = subprocess.Popen(_valgrind(argv) if traced else [sys.executable, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE if traced else None, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    uri = proc.stdout.readline().strip()
    if not uri.startswith("PYRO:"):
        proc.kill()
        raise RuntimeError(f"the {kind} server did not start")
    return proc, uri


def _client_argv(args: argparse.Namespace, uri: str, calls: int) -> list[str]:
    return [str(Path(__file__).resolve()), "--run-client", args.client, uri, str(calls), args.method,
            str(args.concurrency)]


def count_once(args: argparse.Namespace, calls: int) -> int:
    """The traced side's total instructions for a run with `calls` calls after the warm-up."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.side == "client":
        server, uri = _start_server(args.server, traced=False)
        try:
            done = subprocess.run(_valgrind(_client_argv(args, uri, calls)), capture_output=True, text=True,
                                  env=env, cwd=ROOT, check=True)
        finally:
            server.stdin.close()
            server.wait(60)
        return _collected(done.stderr)
    server, uri = _start_server(args.server, traced=True)
    try:
        subprocess.run([sys.executable, *_client_argv(args, uri, calls)], env=env, cwd=ROOT, check=True)
    finally:
        server.stdin.close()
        err = server.stderr.read()
        server.wait(300)
    return _collected(err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-client", nargs=5, metavar=("KIND", "URI", "CALLS", "METHOD", "CONCURRENCY"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=("client", "server"), default="client", help="the traced process")
    parser.add_argument("--client", choices=("aio", "threaded"), default="aio")
    parser.add_argument("--server", choices=("aio", "threaded", "pyro5"), default="threaded")
    parser.add_argument("--method", default="echo", help="echo, fecho (nonblocking) or aecho (async def)")
    parser.add_argument("--calls", type=int, default=2000, help="calls counted (2000)")
    parser.add_argument("--concurrency", type=int, default=1, help="tasks calling at once (aio client)")
    args = parser.parse_args(argv)
    if args.run_client:
        kind, uri, calls, method, concurrency = args.run_client
        run_client(kind, uri, int(calls), method, int(concurrency))
        return 0
    if args.concurrency > 1 and args.client != "aio":
        parser.error("--concurrency needs the aio client")
    base, loaded = count_once(args, 0), count_once(args, args.calls)
    per_call = (loaded - base) / args.calls
    print(f"{args.client} proxy -> {args.server} daemon, {args.method}, concurrency {args.concurrency}: "
          f"{args.side} {per_call:,.0f} instructions per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
