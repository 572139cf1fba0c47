"""Smoke test of tools/aio_bench.py: a quick run of every case works end to end (no timings checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "aio_bench.py"


@pytest.mark.timeout(180)
def test_quick_run_reports_every_case() -> None:
    pytest.importorskip("Pyro5")
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          check=False, timeout=170, cwd=BENCH.parents[1], stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"aio_bench exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    doc = json.loads(proc.stdout)
    rows = {label: row for label, row in doc["sequential"].items() if isinstance(row, dict)}
    assert len(rows) == 9
    assert "aio proxy without the selector sleep (AIO_REPLY_WAIT=0) -> threaded daemon" in rows
    assert all(row["calls_per_s"] > 0 and row["cpu_us_per_call"] > 0 for row in rows.values())
    assert doc["sequential"]["aio -> threaded / threaded -> threaded"] > 0
    pipelined = doc["pipelined"]
    assert pipelined["100 concurrent, aio daemon"]["errors"] == 0
    assert pipelined["ratio to sequential"] > 0
    assert pipelined["100 concurrent, kept in flight (100 tasks x 2 awaits each), aio daemon"]["errors"] == 0
    assert pipelined["100 concurrent, Pyro5 daemon (serialized)"]["errors"] == 0
    assert doc["idle"]["aio daemon"]["clients"] == 50 and doc["idle"]["threaded daemon"]["clients"] == 50
    assert doc["slow"]["quick_calls_during_slow_call"] > 0
