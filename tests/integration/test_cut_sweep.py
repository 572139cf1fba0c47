"""At most once under connection cuts: a relay cuts the proxy's connection after exactly k bytes.

The full sweep (every byte offset of every exchange, both ways, by reset and by FIN) is
tools/cutsweep.py; here each exchange is cut at its frame ends +-1, at its start and end, and at a few
seeded random offsets (tools/cutsweep.py --boundaries runs the same cuts without the random ones).
A daemon in a process of its own appends a line each time a method runs; after the runs it is
stopped and its record must agree with what every caller was told (docs/resilience.md): a result ran
exactly once, NotDeliveredError never ran, MaybeDeliveredError ran at most once; a request the daemon
received whole ran; nothing hung, no call got another's reply, and a healthy client (not through the
relay) was served after every run.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import cutsweep  # noqa: E402

SEED = 12
SAMPLE = 2  # random offsets per direction, besides the frame ends


def _sweep(rig: cutsweep.Rig, client: str, scenarios: list[str], hows: tuple[str, ...] = ("rst", "fin")) -> None:
    rng = random.Random(f"{SEED}-{rig.kind}-{client}")
    for i, scenario in enumerate(scenarios):
        # every scenario is cut in both directions; reset and FIN alternate between scenarios unless
        # `hows` has one (the full sweep does both everywhere)
        how = hows[i % len(hows)]
        cutsweep.sweep(rig, client, scenario, [how], full=False, rng=rng, sample=SAMPLE)


def _verdict(rig: cutsweep.Rig) -> None:
    found = rig.verdict()
    assert rig.runs > 0
    assert not found, "\n".join(found[:20])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["threaded", "aio"])
def test_cuts_against_a_meshrpc_daemon(kind: str, tmp_path: Path) -> None:
    rig = cutsweep.Rig(kind, tmp_path)
    try:
        for how in ("rst", "fin"):
            _sweep(rig, "proxy", list(cutsweep.THREADED), (how,))
        _sweep(rig, "aio", list(cutsweep.AIO))
        _sweep(rig, "pyro5", ["call"])  # Pyro5's client: the daemon loses nothing and serves on
        # every connection cut at the same offset: recovery finds no way through, the outcome stays clear
        cutsweep.sweep(rig, "proxy", "call", ["rst"], full=False, persistent=True)
        cutsweep.sweep(rig, "aio", "multi", ["fin"], full=False, persistent=True)
    finally:
        _verdict(rig)


@pytest.mark.timeout(60)
def test_cuts_against_a_pyro5_daemon(tmp_path: Path) -> None:
    rig = cutsweep.Rig("pyro5", tmp_path)
    try:
        _sweep(rig, "proxy", ["call", "oneway", "raises", "batch", "attr", "stream"])
        _sweep(rig, "aio", ["multi", "batch1w", "stream", "two"], ("fin", "rst"))
    finally:
        _verdict(rig)


@pytest.mark.timeout(60)
def test_cuts_by_name_with_two_replicas(tmp_path: Path) -> None:
    """PYRONAME: with two replicas, each behind a relay: the first connection is cut, whichever replica
    it went to; recovery may go to the other."""
    rig = cutsweep.Rig("aio", tmp_path, named=True)
    try:
        _sweep(rig, "proxy", ["call", "idem", "two"])
        _sweep(rig, "aio", ["multi", "stream"], ("fin", "rst"))
    finally:
        _verdict(rig)
