"""The mesh on a lossy network (issue 13), in the network lab with the impairment relay.

Bounded for CI (about a minute in all): one test loses every frame of a daemon while it publishes
and withdraws, then lets 80 % through and checks that anti-entropy repairs both; one runs
tools/mesh_bench.py's lossy scenario once, small (3 daemons x 20 objects, 15 s of calls), with
every host losing 10 % of the frames it sends, 10-30 ms late. The full-size scenario with its
figures is `python3 tools/mesh_bench.py --lossy` (docs/mesh.md). Bounds here are loose (a shared
CI machine); the failure modes they catch are names that never appear, goodbyes that never arrive,
failed calls, false departures and calls that ran twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from test_mesh_lab import CLIENT, SERVER, Agent, lab, spawn  # noqa: F401 - fixtures
from test_netlab import load_tool, netlab

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(150)]


def _names(client: Agent) -> set[str]:
    return {e["name"] for e in client.request("list")["entries"]}


def test_lost_announcements_and_a_lost_goodbye_are_repaired_by_anti_entropy(
        lab: Any, spawn: Callable[..., Agent]) -> None:
    h1, _, h3 = lab.hosts
    client = spawn(h3, CLIENT)
    server = spawn(h1, SERVER)
    server.request("register_many", prefix="ae", count=10, tags=[])
    doomed = server.request("register", name="ae.doomed", tags=[])
    expected_before = {f"ae.obj{i:03d}" for i in range(10)} | {"ae.doomed"}
    assert netlab.wait_for(lambda: _names(client) == expected_before, timeout=15)

    h1.set_loss(100, direction="egress")          # h1's cable loses everything it sends
    server.request("unregister", object=doomed["object"])
    server.request("register_many", prefix="ae.late", count=5, tags=[])
    # The scenario, not a synchronisation: long enough for every copy to be lost (goodbyes within
    # 0.5 s; zeroconf's three announcements and the two extra ones at 1 s and 3 s).
    time.sleep(3.5)
    lost = h1.impairment_stats()["egress"]["dropped"]
    assert lost > 5

    h1.set_loss(20, delay_ms=(10, 30), direction="egress")
    healed = time.monotonic()
    expected = {f"ae.obj{i:03d}" for i in range(10)} | {f"ae.late.obj{i:03d}" for i in range(5)}
    # Only the node's index tells that ae.doomed was withdrawn (no query ever brings a goodbye back).
    assert netlab.wait_for(lambda: _names(client) == expected, timeout=20, interval=0.2), _names(client)
    print(f"\n[mesh-loss-lab] repaired {time.monotonic() - healed:.2f} s after the loss dropped to 20 %")


def test_a_small_lossy_scenario_meets_the_issue_goals_loosely() -> None:
    ok, reason = netlab.available()
    if not ok:
        pytest.skip(reason)
    bench = load_tool("mesh_bench.py")
    # 10 % loss, callers with the default budgets: connecting by name in short attempts
    # (docs/resilience.md) keeps lost SYNs and handshakes from eating REBIND_TIMEOUT. The discovery
    # side is tested at 20 % above and in test_netlab; connecting at 20 % in test_connect_loss_lab.
    result = bench._lossy_run(netlab, daemons=3, objects=20, loss=10.0, delay=(10.0, 30.0), soak=15.0,
                              seed=7, progress=lambda text: print(f"[mesh-loss-lab] {text}"), call_names=5)
    print(f"[mesh-loss-lab] {result}")
    assert result["warm_missing"] == []
    assert result["warm_visible_max_s"] < 10.0         # goal 3 s; loose for a loaded CI machine
    assert result["cold_seen"] == 61 and result["cold_all_max_s"] < 15.0   # goal 5 s
    assert result["calls_ok"] > 0 and result["calls_failed"] == 0, (result["failures"], result["restart_failures"])
    assert result["restart_in_flight_failed"] <= 1     # the call the kill interrupted, at most
    assert result["false_departures"] == 0, result["departed"]
    assert result["duplicates"] == 0
    assert result["restart_to_call_s"] < 10.0          # goal 2 s (docs/mesh.md); loose for a loaded CI machine
    relay = result["relay"]["h1"]
    assert 0.03 < relay["dropped"] / relay["frames"] < 0.2   # the loss really was there
