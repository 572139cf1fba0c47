"""Oneway calls do not vanish into a connection the peer no longer answers (the namespace lab,
tools/netlab.py, needs root).

A device calls its hub back with oneway calls, `_pyroTimeout` set, and then its own address moves
(DHCP renumbering; tools/soak_home.py found it). Its connection to the hub still sends from the old
address, which nobody answers: nothing it sends is acknowledged again. A two-way call would time out
and go on a new connection; a oneway call waits for no reply, so until 2026-12 both proxies kept
writing into the dead connection, and the callbacks were lost without a word for DEAD_PEER_TIMEOUT
(60 s) until the kernel gave up on it. Now a oneway call first asks whether the peer acknowledged
nothing for the proxy's timeout (transport.sockets.silent_peer_check) and, if so, goes on a new
connection: the callbacks come again within about that timeout.

The server and the two callers (threaded and asyncio) are processes inside lab hosts; the test waits
for the lines they print, with deadlines.
"""

from __future__ import annotations

import time

import pytest
from test_netlab import lab_or_skip, load_tool

bench = load_tool("resilience_bench.py")

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(90)]

STEP = 30.0         # a process starting
TIMEOUT = 1.0       # the callers' _pyroTimeout
BACK_WITHIN = 8.0   # the callbacks come again after the move (DEAD_PEER_TIMEOUT, the old bound, is 60 s)

SERVER = r"""
import meshrpc

@meshrpc.expose
class Hub:
    @meshrpc.oneway
    def changed(self, who, n):
        print("CHANGED", who, n, flush=True)

daemon = meshrpc.Daemon()
print("URI", daemon.register(Hub(), "hub"), flush=True)
daemon.requestLoop()
"""

CALLER = r"""
import asyncio, sys, time
import meshrpc, meshrpc.aio

kind, uri, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])

def said(n, exc):
    if exc is not None:
        print("ERROR", n, type(exc).__name__, exc, flush=True)

if kind == "aio":
    async def main():
        hub = meshrpc.aio.Proxy(uri)
        hub._pyroTimeout = timeout
        n = 0
        while True:
            try:
                await hub.changed(kind, n)
            except meshrpc.errors.CommunicationError as exc:
                said(n, exc)
            n += 1
            await asyncio.sleep(0.1)  # (the device's own pace)
    asyncio.run(main())
else:
    hub = meshrpc.Proxy(uri)
    hub._pyroTimeout = timeout
    n = 0
    while True:
        try:
            hub.changed(kind, n)
        except meshrpc.errors.CommunicationError as exc:
            said(n, exc)
        n += 1
        time.sleep(0.1)  # (the device's own pace)
"""


def _first_after(child, prefix: str, start: int, after: float) -> float:
    """When the first line starting with prefix arrived after `after` (a callback sent after the move: those
    sent before it arrive within a few ms, the lab has no delay); waits up to BACK_WITHIN + STEP."""
    deadline = time.monotonic() + BACK_WITHIN + STEP
    i = start
    while True:
        i, _ = child.wait_line(prefix, max(0.0, deadline - time.monotonic()), i)
        if child.lines[i][0] > after:
            return child.lines[i][0]
        i += 1


def test_oneway_callbacks_come_again_soon_after_the_callers_address_moved(tmp_path):
    with lab_or_skip(2) as lab:
        hub_host, device_host = lab.hosts
        with bench.Run(lab, tmp_path) as run:
            server = run.start(hub_host, SERVER, [], "hub")
            uri = server.wait_line("URI ", STEP)[1].split()[1]
            callers = {kind: run.start(device_host, CALLER, [kind, uri, str(TIMEOUT)], f"caller-{kind}")
                       for kind in ("threaded", "aio")}
            for kind in callers:
                server.wait_line(f"CHANGED {kind} ", STEP)
            mark = server.count()
            moved_at = time.monotonic()
            device_host.move_address()
            back = {kind: _first_after(server, f"CHANGED {kind} ", mark, moved_at + 0.5) - moved_at
                    for kind in callers}
            errors = {kind: [line for _, line in c.lines if line.startswith("ERROR")] for kind, c in callers.items()}
    print(f"\n[oneway] callbacks again {', '.join(f'{k} {v:.2f} s' for k, v in back.items())} after the move; "
          f"errors {errors}")
    for kind, seconds in back.items():
        assert seconds <= BACK_WITHIN, (kind, seconds)
