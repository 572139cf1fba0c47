"""One-shot questions (meshrpc/mesh/oneshot.py) against a real meshrpc daemon in the network lab.

What would break: answers that do not come by unicast to the asking socket (then a lost answer
could be asked for again only after the responder's 1 s multicast hold), or that zeroconf's record
manager does not take in (then no registry sees them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_mesh_lab import SERVER, Agent, lab, spawn  # noqa: F401 - fixtures

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(90)]

# Finds name through the registry, then asks for its TXT record with one-shot questions, twice
# 0.2 s apart (within the second in which a responder would not multicast it again), on command.
ASKER = r"""
import asyncio, json, sys, threading, time
import meshrpc
from meshrpc.mesh import get_registry, records
from meshrpc.mesh.discovery import get_discovery
from meshrpc.mesh.oneshot import OneShotAsker
from zeroconf import DNSQuestion, RecordUpdateListener

def emit(**msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()

registry = get_registry()
emit(op="ready")
for line in sys.stdin:
    cmd = json.loads(line)
    found = registry.resolve(cmd["name"], timeout=15)
    if not found:
        emit(op="reply", id=cmd["id"], error="not found")
        continue
    record_name = records.service_name(records.instance_label(found[0])).lower()
    discovery = get_discovery()
    zc = discovery._zc
    heard = []
    arrived = threading.Event()

    class Listener(RecordUpdateListener):
        def async_update_records(self, zc, now, updates):
            for update in updates:
                if update.new.name.lower() == record_name and update.new.type == 16:
                    heard.append(time.monotonic())
                    arrived.set()
    listener = Listener()
    zc.add_listener(listener, None)

    async def make():
        return OneShotAsker(zc)
    asker = asyncio.run_coroutine_threadsafe(make(), zc.loop).result(5)
    with discovery._lock:
        interfaces = list(discovery._interfaces)
    asked, answered = [], []
    for _ in range(2):
        arrived.clear()
        before = asker.answers
        asked.append(time.monotonic())
        zc.loop.call_soon_threadsafe(asker.ask, interfaces, [[DNSQuestion(record_name, 16, 1)]])
        arrived.wait(cmd["bound"])
        answered.append(asker.answers - before)
        time.sleep(0.2)   # the scenario: ask again within the responder's 1 s multicast hold
    zc.remove_listener(listener)
    zc.loop.call_soon_threadsafe(asker.close)
    emit(op="reply", id=cmd["id"], asked=asked, heard=heard, answered=answered, interfaces=interfaces)
"""


def test_a_one_shot_question_is_answered_at_once_by_unicast_even_right_after_a_multicast(
        lab: Any, spawn: Callable[..., Agent]) -> None:
    h1, h2, _ = lab.hosts
    server = spawn(h1, SERVER)
    asker = spawn(h2, ASKER)
    asker.wait_for(lambda m: m["op"] == "ready", 30, "asker ready")
    server.request("register", name="lab.oneshot", tags=[])
    reply = asker.request("ask", name="lab.oneshot", bound=2.0, timeout=60)
    assert "error" not in reply, reply
    print(f"\n[mesh-oneshot-lab] {reply}")
    # each question got its own unicast answer packet (to our socket, with our id) ...
    assert reply["answered"] == [1, 1], reply
    # ... at once: the second one 0.2 s after the first, inside the responder's multicast hold
    assert len(reply["heard"]) >= 2
    assert all(any(0 <= heard - asked < 1.0 for heard in reply["heard"]) for asked in reply["asked"]), reply
