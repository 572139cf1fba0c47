"""A peer that vanishes without a word (host powered off, cable pulled), between hosts of the namespace
lab (tools/netlab.py, needs root): every side notices within DEAD_PEER_TIMEOUT (docs/resilience.md).

The cable of one host is pulled (its switch port goes down: no FIN, no RST, every frame dropped) while
the other side waits:
1. a proxy (threaded, and asyncio) with no timeout waits for the reply of a call the daemon is still
   running. Nothing is in flight for TCP to retransmit, so without keep-alive probes it waited
   forever; now the call fails as maybe delivered (ReplyLostError) after about DEAD_PEER_TIMEOUT.
2. a proxy sends a call to a daemon that vanished while the connection was idle: its request is never
   acknowledged, and TCP's retransmissions alone would take a quarter of an hour (tcp_retries2);
   TCP_USER_TIMEOUT ends it after DEAD_PEER_TIMEOUT.
3. a daemon (threaded, and asyncio) holds the idle connection of a client whose host vanished: it is
   freed after about DEAD_PEER_TIMEOUT (IDLE_TIMEOUT is off by default).

Each process is a child inside a lab host, with MESHRPC_DEAD_PEER_TIMEOUT=3; the test waits for the
lines they print, with deadlines (the pulled cable is the scenario, not a synchronisation).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_netlab import lab_or_skip


pytestmark = [pytest.mark.netlab, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
DEAD_PEER = 3.0  # seconds: MESHRPC_DEAD_PEER_TIMEOUT of every child
NOTICED = DEAD_PEER + 6.0  # seconds to notice at most: the probes' whole-second steps, the loaded machine
START = 30.0  # seconds for a child to start and say so

SERVER = """
import asyncio, sys, threading, time
import meshrpc, meshrpc.aio

@meshrpc.expose
class Service:
    def hang(self):
        print("RUNNING", flush=True)
        threading.Event().wait(600)  # still running when the caller's host is gone

    def ping(self):
        return "pong"

def count(connections):
    last = None
    while True:
        now = len(connections())
        if now != last:
            print("CONNECTIONS", now, flush=True)
            last = now
        time.sleep(0.05)  # (the child's own watch; the test waits for its lines)

if sys.argv[1] == "threaded":
    daemon = meshrpc.Daemon(host=sys.argv[2], port=0)
    print("URI", daemon.register(Service(), "service"), flush=True)
    threading.Thread(target=count, args=(lambda: daemon._connections,), daemon=True).start()
    daemon.requestLoop()
else:
    async def main():
        daemon = meshrpc.aio.Daemon(host=sys.argv[2], port=0)
        print("URI", daemon.register(Service(), "service"), flush=True)
        threading.Thread(target=count, args=(lambda: list(daemon._aio_connections),), daemon=True).start()
        await daemon.serve_forever()
    asyncio.run(main())
"""

CLIENT = """
import asyncio, sys
import meshrpc, meshrpc.aio

kind, uri, method = sys.argv[1:4]

def outcome(exc):
    print("OUTCOME", type(exc).__name__, flush=True)

if kind == "threaded":
    proxy = meshrpc.Proxy(uri)
    proxy._pyroBind()
    print("BOUND", flush=True)
    sys.stdin.readline()  # the test pulls a cable, then says go
    try:
        print("OUTCOME returned", getattr(proxy, method)(), flush=True)
    except Exception as exc:
        outcome(exc)
else:
    async def main():
        async with meshrpc.aio.Proxy(uri) as proxy:
            print("BOUND", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            try:
                print("OUTCOME returned", await getattr(proxy, method)(), flush=True)
            except Exception as exc:
                outcome(exc)
    asyncio.run(main())
"""


class Child:
    """A process inside a lab host whose stdout lines the test waits for."""

    def __init__(self, host, code: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MESHRPC_DEAD_PEER_TIMEOUT": str(DEAD_PEER),
               "MESHRPC_HOST": host.address}
        self.proc = host.popen([sys.executable, "-c", code, *args], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, within: float) -> str:
        """The first line (from here on) that starts with `prefix`, waiting at most `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line within {within:g} s; output: {self.seen[-15:]}") from None
            self.seen.append(line)
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def say(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()


@pytest.fixture
def lab():
    with lab_or_skip(2) as built:
        yield built


@pytest.mark.parametrize("client", ["threaded", "aio"])
@pytest.mark.parametrize("when", ["mid-call", "idle"])
def test_a_proxy_with_no_timeout_learns_that_its_daemon_vanished(lab, client: str, when: str) -> None:
    h1, h2 = lab.hosts
    server = Child(h1, SERVER, "threaded", h1.address)
    uri = server.expect("URI", START)
    caller = Child(h2, CLIENT, client, uri, "hang" if when == "mid-call" else "ping")
    caller.expect("BOUND", START)
    if when == "mid-call":
        caller.say()
        server.expect("RUNNING", START)
        h1.link_down()  # the call runs on: its reply will never come
    else:
        h1.link_down()  # idle: the next call's request is never acknowledged
        caller.say()
    pulled = time.monotonic()
    assert caller.expect("OUTCOME", NOTICED) == "ReplyLostError"  # sent: it may have run
    took = time.monotonic() - pulled
    print(f"\n[dead-peer] {client} proxy, daemon gone {when}: noticed after {took:.1f} s "
          f"(DEAD_PEER_TIMEOUT {DEAD_PEER:g} s)")
    assert took >= DEAD_PEER * 0.5  # the kernel's probes, not something else, ended it


@pytest.mark.parametrize("daemon", ["threaded", "aio"])
def test_a_daemon_frees_the_connection_of_a_client_whose_host_vanished(lab, daemon: str) -> None:
    h1, h2 = lab.hosts
    server = Child(h1, SERVER, daemon, h1.address)
    uri = server.expect("URI", START)
    server.expect("CONNECTIONS 0", START)
    caller = Child(h2, CLIENT, "threaded", uri, "ping")
    caller.expect("BOUND", START)
    server.expect("CONNECTIONS 1", START)
    h2.link_down()
    pulled = time.monotonic()
    server.expect("CONNECTIONS 0", NOTICED)
    took = time.monotonic() - pulled
    print(f"\n[dead-peer] {daemon} daemon, client gone: connection freed after {took:.1f} s")
    assert took >= DEAD_PEER * 0.5
