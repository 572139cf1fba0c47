"""Smoke test of tools/bench.py: the quick run works end to end and reports every case (no timings checked)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench.py"

EXPECTED_CASES = ("small", "batch", "oneway", "connect", "large", "threads", "discovery", "idle", "spaced")
PLACEHOLDERS = ("discovery",)  # may be skipped (with a note) until meshrpc.mesh has something to measure
RAW_CASES = ("small", "oneway", "connect", "large", "threads", "spaced")
# every rate comes with CPU per call of the client, the server and both: {case: rate rows}
RATE_CASES = {"small": ("serpent", "marshal", "json", "msgpack"), "batch": ("batch_rate",), "threads": ("rate",),
              "spaced": ("rate_100us", "rate_1000us")}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def quick_run() -> tuple[subprocess.CompletedProcess, dict]:
    pytest.importorskip("Pyro5")
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          check=False, timeout=120, cwd=BENCH.parents[1], stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"bench exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    try:
        doc = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"--json output is not JSON ({exc}):\n{proc.stdout[:2000]}\nstderr:\n{proc.stderr[-2000:]}")
    return proc, doc


@pytest.mark.timeout(180)
def test_quick_run_reports_every_case(quick_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    _, doc = quick_run
    assert doc["meta"]["quick"] is True
    cases = doc["cases"]
    assert set(EXPECTED_CASES) <= set(cases), f"missing cases: {set(EXPECTED_CASES) - set(cases)}"
    for name in EXPECTED_CASES:
        case = cases[name]
        if name in PLACEHOLDERS and case["status"] == "skipped":
            assert case["note"], "a skipped case must say why"
            continue
        assert case["status"] == "ok", f"{name}: {case['status']} {case.get('errors')}"
        assert case["rows"], f"{name} has no rows"
        libs = ("meshrpc",) if name in PLACEHOLDERS else ("meshrpc", "pyro5")
        for row in case["rows"]:
            for lib in libs:
                assert _is_number(row[lib]), f"{name}/{row['key']}: no number for {lib}: {row[lib]!r}"
            if name not in PLACEHOLDERS:
                assert _is_number(row["ratio_pyro5"]) or row["pyro5"] == 0, f"{name}/{row['key']}: no ratio"


@pytest.mark.timeout(180)
def test_quick_run_has_the_raw_floor(quick_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    _, doc = quick_run
    for name in RAW_CASES:
        rows = doc["cases"][name]["rows"]
        assert any(_is_number(row["raw"]) for row in rows), f"{name}: no raw-socket figure"
    keys = [row["key"] for row in doc["cases"]["small"]["rows"]]
    for serializer in ("serpent", "marshal", "json", "msgpack"):  # case 1 covers every serializer
        assert serializer in keys


@pytest.mark.timeout(180)
def test_every_rate_has_cpu_per_call_beside_it(quick_run: tuple[subprocess.CompletedProcess, dict]) -> None:
    _, doc = quick_run
    for name, rate_keys in RATE_CASES.items():
        rows = {row["key"]: row for row in doc["cases"][name]["rows"]}
        for rate_key in rate_keys:
            suffix = rate_key.replace("rate", "") if name == "spaced" else ("" if name != "small" else f"_{rate_key}")
            for side in ("client", "server", "total"):
                row = rows.get(f"cpu_{side}{suffix}")
                assert row is not None, f"{name}: no {side} CPU row beside {rate_key}"
                assert row["unit"] == "us"
                for lib in ("meshrpc", "pyro5"):
                    assert _is_number(row[lib]) and row[lib] >= 0, f"{name}/{row['key']}/{lib}: {row[lib]!r}"
            assert rows[f"cpu_total{suffix}"]["meshrpc"] >= rows[f"cpu_client{suffix}"]["meshrpc"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["small", "batch"])
def test_profile_runs_for_small_calls_and_batches(case: str) -> None:
    pytest.importorskip("Pyro5")
    proc = subprocess.run([sys.executable, str(BENCH), "--profile", "--quick", "--json", "--cases", case,
                           "--profile-top", "5"], capture_output=True, text=True, check=False, timeout=100,
                          cwd=BENCH.parents[1], stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"bench --profile exited {proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)["profile"]
    assert set(report) == {"meshrpc", "pyro5"}
    for lib, data in report.items():
        assert data["case"].startswith("case 1" if case == "small" else "case 2")
        for side in ("client", "server"):
            assert data[side]["tottime"], f"{lib} {side}: an empty profile"
