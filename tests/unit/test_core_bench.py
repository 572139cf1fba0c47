"""Smoke test of tools/core_bench.py: the wire core's per-side loops run for every serializer (no timings checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "core_bench.py"


def test_core_bench_runs_both_sides_of_every_serializer():
    proc = subprocess.run([sys.executable, str(TOOL), "--calls", "30", "--rounds", "1", "--json",
                           "--serializers", "serpent,marshal,json,msgpack"], capture_output=True, text=True,
                          check=False, timeout=60, cwd=TOOL.parents[1], stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert set(results) == {"serpent", "marshal", "json", "msgpack"}
    for sides in results.values():
        assert set(sides) == {"client", "server"} and all(us > 0 for us in sides.values())


def test_core_bench_drives_a_real_daemon_for_every_serializer():
    proc = subprocess.run([sys.executable, str(TOOL), "--side", "daemon", "--calls", "40", "--warmup", "5", "--rounds", "1",
                           "--json", "--burst", "2", "--serializers", "serpent,marshal,json,msgpack"],
                          capture_output=True, text=True, check=False, timeout=90, cwd=TOOL.parents[1],
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert set(results) == {"serpent", "marshal", "json", "msgpack"}
    assert all(r["calls_per_s"] > 0 and r["user"] + r["system"] >= 0 for r in results.values())
