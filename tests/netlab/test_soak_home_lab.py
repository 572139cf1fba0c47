"""A short soak of tools/soak_home.py (needs root): an asyncio hub and four devices (two on the threaded
daemon, two on the asyncio one) in the namespace lab, through about 20 s of churn: loss and delay,
a device killed (-9) and restarted on its port, a device's address moved, a device's cable pulled, a
device restarted on a new port, the hub's own cable pulled. The tool runs the same for as many minutes
as asked (`python3 tools/soak_home.py --minutes 30`).

What a user of such a program expects, asserted through the tool's analysis (its `findings`):
the hub's event loop is never late by more than 100 ms; each toggle (not idempotent) ran as its
outcome says (once when it succeeded, never when not delivered, at most once when maybe delivered) and
only with the documented exceptions; the hub's view of the mesh, its polls, callbacks and events are
right again after the last change, within CONVERGE_BOUND; nothing grows; no traceback; shutdown is
quick and clean, and the devices' goodbyes reach the hub at once. Run with `-s` for the summary.
"""

from __future__ import annotations

import pytest
from test_netlab import load_tool

soak_home = load_tool("soak_home.py")
Action = soak_home.Action

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(150)]

# every kind of change once, in about 20 s (the tool's own schedule spreads them over minutes)
SCHEDULE = [
    Action(0.5, "loss", "d2", {"percent": 20.0, "delay": (5.0, 30.0)}),
    Action(1.0, "kill", "d1", {"away": 0.5}),
    Action(4.0, "move", "d3"),
    Action(6.0, "down", "d4"),
    Action(8.0, "newport", "d2"),
    Action(12.0, "up", "d4"),
    Action(13.0, "hubdown", "hub"),
    Action(16.0, "hubup", "hub"),
    Action(17.0, "clear", "d2"),
]


def test_home_hub_lives_through_churn(tmp_path):
    ok, reason = soak_home.netlab.available()
    if not ok:
        pytest.skip(reason)
    r = soak_home.soak(18.0, 12, tmp_path, actions=SCHEDULE)
    print("\n" + soak_home.summary(r))
    assert r["findings"] == [], r["findings"]
    assert r["lag_ms"]["max"] <= soak_home.STALL_AT * 1000
    assert r["settled_after"] is not None and r["settled_after"] <= soak_home.CONVERGE_BOUND
    assert set(r["callbacks"]) == set(r["events"]) == {"d1", "d2", "d3", "d4"}
    assert r["calls"].get("ok", 0) >= 20
