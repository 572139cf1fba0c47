"""Connecting by name on a lossy network (issue 13, docs/resilience.md "Connecting by name"), in the
network lab with the impairment relay (tools/netlab.py).

- A connect that stalls (every SYN to the provider lost) is retried in short attempts within
  REBIND_TIMEOUT: with CONNECT_TIMEOUT = REBIND_TIMEOUT one stalled connect used to take the whole
  budget (TCP retransmits a SYN after 1, 3, 7 s), so a call made during a {OUTAGE:g} s outage failed.
- A restarted provider is called soon after its first announcement is heard, on a network where
  every host loses 20 % of the frames it sends, 10-30 ms late.

Nothing waits by sleeping except the outage itself, which is the scenario. About 35 s in all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from test_mesh_lab import SERVER, Agent, _expected_uri, lab, spawn  # noqa: F401 - fixtures

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(120)]

# Calls PYRONAME URIs: "call" (a new proxy, one call) on command, or "loop" (one proxy, calling until
# stdin closes), stamping every outcome; registry events of the names it calls, as they happen.
CALLER = r"""
import json, logging, os, sys, threading, time
logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("meshrpc").setLevel(os.environ.get("MESHRPC_LOGLEVEL") or "WARNING")
import meshrpc
from meshrpc.mesh import get_registry

out_lock = threading.Lock()
def emit(**msg):
    with out_lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

registry = get_registry()
registry.subscribe(lambda event, e: emit(op="event", event=event, name=e.name, uri=e.uri, t=time.monotonic()))
emit(op="ready", t=time.monotonic())

def call(proxy):
    started = time.monotonic()
    try:
        answer = proxy.greet("h3")
        return {"answer": answer, "resolved": str(proxy._pyroUri), "seconds": time.monotonic() - started,
                "t": time.monotonic()}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - started,
                "t": time.monotonic()}

stop = threading.Event()
def loop(uri):
    with meshrpc.Proxy(uri) as proxy:
        while not stop.is_set():
            emit(op="looped", **call(proxy))
            stop.wait(0.02)

for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "call":
        emit(op="calling", id=cmd["id"], t=time.monotonic())
        with meshrpc.Proxy(cmd["uri"]) as proxy:
            emit(op="reply", id=cmd["id"], **call(proxy))
    elif cmd["op"] == "loop":
        threading.Thread(target=loop, args=(cmd["uri"],), daemon=True).start()
        emit(op="reply", id=cmd["id"])
stop.set()
"""

# Linux sends a SYN at c, c+1, .. c+5, then c+7, c+11 s here (c: when the connect began; linear
# retransmissions first, tcp_syn_linear_timeouts, then exponential backoff; older kernels: c+1, c+3,
# c+7, c+15): in the outage every SYN up to c+7 is lost and the next one comes after the budget, so
# one TCP connect given the whole budget fails. Short attempts (fresh SYNs, at most
# CONNECT_ATTEMPT_TIMEOUT_MAX = 1 s apart) get through about a second after the outage.
BUDGET = 10.0  # CONNECT_TIMEOUT = REBIND_TIMEOUT (the defaults)
OUTAGE = 7.5
RESTART_BOUND = 3.0   # goal 2 s (docs/mesh.md measures it); loose for a loaded CI machine


def _send(agent: Agent, op: str, **fields: Any) -> int:
    """A command to the agent, without waiting for its reply."""
    request_id = next(agent._ids)
    assert agent.proc.stdin is not None
    agent.proc.stdin.write(json.dumps({"op": op, "id": request_id, **fields}) + "\n")
    agent.proc.stdin.flush()
    return request_id


def test_a_stalled_connect_is_retried_within_the_rebind_budget(lab: Any, spawn: Callable[..., Agent]) -> None:
    h1, _, h3 = lab.hosts
    server = spawn(h1, SERVER)
    caller = spawn(h3, CALLER, env={"MESHRPC_REBIND_TIMEOUT": str(BUDGET), "MESHRPC_CONNECT_TIMEOUT": str(BUDGET),
                                    "MESHRPC_COMMTIMEOUT": "0"})
    server.request("register", name="lab.stall", tags=[])
    warm = caller.request("call", timeout=30, uri="PYRONAME:lab.stall")  # known, and h1's MAC in h3's ARP cache
    assert warm.get("answer") == "hello h3 from h1", warm

    h1.set_loss(100, direction="ingress")         # h1 hears nothing: SYNs vanish (its heartbeats still go out)
    request_id = _send(caller, "call", uri="PYRONAME:lab.stall")
    calling = caller.wait_for(lambda m: m["op"] == "calling" and m["id"] == request_id, 30, "calling")
    time.sleep(max(0.0, calling["t"] + OUTAGE - time.monotonic()))   # the outage is the scenario
    lost = h1.impairment_stats()["ingress"]["dropped"]
    h1.clear_loss()
    reply = caller.wait_for(lambda m: m["op"] == "reply" and m["id"] == request_id, 30, "reply")
    print(f"\n[connect-loss-lab] call during a {OUTAGE:g} s outage answered after {reply['seconds']:.2f} s "
          f"(budget {BUDGET:g} s)")
    assert reply.get("answer") == "hello h3 from h1", reply
    assert lost >= 3                              # the SYNs really were lost
    assert OUTAGE - 0.5 < reply["seconds"] < BUDGET


def test_a_restarted_provider_is_called_soon_after_its_announcement_under_20_percent_loss(
        lab: Any, spawn: Callable[..., Agent]) -> None:
    h1, h2, h3 = lab.hosts
    for host in lab.hosts:
        host.set_loss(20, delay_ms=(10, 30), direction="egress")
    old_server = spawn(h1, SERVER)
    new_server = spawn(h2, SERVER)                # started (imports done), publishing nothing yet
    caller = spawn(h3, CALLER, env={"MESHRPC_REBIND_TIMEOUT": "10", "MESHRPC_CONNECT_TIMEOUT": "10",
                                    "MESHRPC_COMMTIMEOUT": "0"})   # the defaults
    old = _expected_uri(old_server.request("register", name="lab.again", tags=[]), h1)
    # hosts on a LAN talk: h3 knows h2's MAC address (a first contact's ARP exchange, when lost, is
    # repeated by the kernel after 1 s: a cost of its own, docs/resilience.md)
    new_server.request("register", name="lab.neighbour", tags=[])
    warm = caller.request("call", timeout=60, uri="PYRONAME:lab.neighbour")
    assert warm.get("answer") == "hello h3 from h2", warm
    caller.request("loop", uri="PYRONAME:lab.again")
    caller.wait_for(lambda m: m["op"] == "looped" and m.get("resolved") == old, 60, "a call served on h1")

    since = caller.mark()
    old_server.kill9()
    new = _expected_uri(new_server.request("register", name="lab.again", tags=[]), h2)
    heard = caller.wait_for(lambda m: m["op"] == "event" and m["event"] == "added" and m["uri"] == new, 60,
                            "the new provider heard", since)
    served = caller.wait_for(lambda m: m["op"] == "looped" and m.get("resolved") == new, 60,
                             "a call served on h2", since)
    lag = served["t"] - heard["t"]
    print(f"\n[connect-loss-lab] restarted provider called {lag:.2f} s after its first announcement was heard")
    failures = [m for m in caller.history[since:] if m["op"] == "looped" and "error" in m]
    # the call in flight when h1's daemon died may have run: it fails as maybe-delivered, at most once
    assert len(failures) <= 1 and all(m["error"] in ("ReplyLostError", "ConnectionClosedError")
                                      for m in failures), failures
    assert lag < RESTART_BOUND
