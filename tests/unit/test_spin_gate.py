"""The spin gate (meshrpc/transport/spin.py): spin only while messages really come fast (issue 15)."""

from __future__ import annotations

import os
import socket

import pytest

from meshrpc.transport import sockets
from meshrpc.wire import frame as wire
from meshrpc.config import Settings
from meshrpc.transport.spin import SpinGate

SLOW_LIMIT = Settings.SPIN_SLOW_LIMIT
RECHECK_EVERY = Settings.SPIN_RECHECK_EVERY
START_AFTER = Settings.SPIN_START_AFTER

SPIN_WAIT = 200e-6


class FakeLine:
    """A fake clock (each reading advances it by `step`) and a message that arrives at `arrival`."""

    def __init__(self, step: float = 1e-6) -> None:
        self.now = 0.0
        self.step = step
        self.arrival = float("inf")
        self.polls = 0

    def clock(self) -> float:
        self.now += self.step
        return self.now

    def ready(self) -> bool:
        self.polls += 1
        return self.now >= self.arrival

    def message_in(self, seconds: float) -> None:
        self.arrival = self.now + seconds


def never() -> bool:
    return False


def proven_gate() -> SpinGate:
    """A gate past a new connection's first waits (SPIN_START_AFTER): the steady-state rules."""
    return SpinGate(SPIN_WAIT, start_after=0)


def spin(gate: SpinGate, line: FakeLine) -> bool:
    return gate.spin(line.ready, line.clock, never)


def test_fast_messages_keep_the_gate_open() -> None:
    gate, line = proven_gate(), FakeLine()
    for _ in range(50):
        assert gate.should_spin()
        line.message_in(20e-6)
        assert spin(gate, line)
    assert gate.open and gate.slow_streak == 0


def test_missed_spins_close_the_gate_and_it_rechecks_now_and_then() -> None:
    gate, line = proven_gate(), FakeLine()
    for _ in range(SLOW_LIMIT):
        assert gate.should_spin()
        line.message_in(1e-3)
        assert not spin(gate, line)
    assert not gate.open
    decisions = [gate.should_spin() for _ in range(RECHECK_EVERY * 3)]
    assert decisions.count(True) == 3  # one re-check per RECHECK_EVERY waits
    # a re-check that misses keeps it closed: the next spin comes only after RECHECK_EVERY waits again
    line.message_in(1e-3)
    assert not spin(gate, line)
    assert [gate.should_spin() for _ in range(RECHECK_EVERY)].count(True) == 1


def test_the_gate_takes_its_limits_from_settings() -> None:
    settings = Settings().copy(SPIN_WAIT=SPIN_WAIT, SPIN_SLOW_LIMIT=2, SPIN_RECHECK_EVERY=8, SPIN_LATE_SHARE=0.25,
                               SPIN_START_AFTER=1)
    gate, line = SpinGate.from_settings(settings), FakeLine()
    assert not gate.should_spin()  # the new connection's one unproven wait
    line.message_in(SPIN_WAIT * 0.4)  # fast under the default share (0.5), late under 0.25
    assert spin(gate, line) and gate.slow_streak == 1
    line.message_in(1e-3)
    assert not spin(gate, line)
    assert not gate.open  # closed after 2 slow spins, not 4
    assert [gate.should_spin() for _ in range(8 * 2)].count(True) == 2


def test_a_fast_recheck_reopens_the_gate() -> None:
    gate, line = proven_gate(), FakeLine()
    for _ in range(SLOW_LIMIT):
        line.message_in(1e-3)
        spin(gate, line)
    while not gate.should_spin():
        pass
    line.message_in(10e-6)
    assert spin(gate, line)
    assert gate.open and gate.should_spin()


def test_data_found_after_a_linger_does_not_reset_the_slow_streak() -> None:
    """The daemon's pattern for spaced requests (the bug of issue 15): a spin that misses, then the
    worker sleeps in its linger, then a second attempt finds the request already there."""
    gate, line = proven_gate(), FakeLine()
    spins = 0
    for _ in range(100):
        if gate.should_spin():
            spins += 1
            line.message_in(1e-3)  # the next request comes 1 ms later
            assert not spin(gate, line)
        line.now = line.arrival  # the linger slept until it came
        if gate.should_spin():
            assert spin(gate, line)  # already there: read without spinning
    assert not gate.open
    # the old gate spun for every request; now: the first SLOW_LIMIT, then the re-checks (the worker
    # asks twice per request: before and after its linger)
    assert spins <= SLOW_LIMIT + 2 * 100 // RECHECK_EVERY + 1


def test_late_arrivals_count_as_slow() -> None:
    """Data that comes late in the budget cost more CPU in spinning than a wake-up saves."""
    gate, line = proven_gate(), FakeLine()
    for _ in range(SLOW_LIMIT):
        line.message_in(SPIN_WAIT * 0.9)
        assert spin(gate, line)
    assert not gate.open


def test_giving_way_to_another_thread_is_not_judged() -> None:
    gate, line = proven_gate(), FakeLine()
    for _ in range(SLOW_LIMIT * 3):
        line.message_in(1e-3)
        assert not gate.spin(line.ready, line.clock, lambda: True)
    assert gate.open


def test_a_new_connection_spins_only_after_its_first_waits() -> None:
    """Its handshake and first calls never spin: their answers come late anyway, and a spin on a core
    the peer shares held the peer off (connect + first call took 2x as long as without spinning)."""
    gate, line = SpinGate(SPIN_WAIT), FakeLine()
    assert START_AFTER >= 2  # at least the handshake and the first call
    assert [gate.should_spin() for _ in range(START_AFTER)] == [False] * START_AFTER
    assert gate.open and gate.slow_streak == 0  # unproven waits are not judged slow
    for _ in range(10):
        assert gate.should_spin()
        line.message_in(20e-6)
        assert spin(gate, line)


def test_spin_wait_zero_never_spins() -> None:
    gate = SpinGate(0.0)
    assert not gate.should_spin() and not gate.open


class CountingPoller:
    def __init__(self, poller) -> None:
        self.poller = poller
        self.polls = 0

    def poll(self, *args):
        self.polls += 1
        return self.poller.poll(*args)

    def __getattr__(self, name):
        return getattr(self.poller, name)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="spinning is off on single-core machines")
def test_a_daemon_connection_stops_spinning_for_spaced_requests() -> None:
    """Real sockets, the daemon worker's sequence per request: try_fill (spin), linger, fill. With the
    requests coming after the spin gave up, the connection must stop spinning after SLOW_LIMIT of them."""
    server_sock, client_sock = socket.socketpair()
    try:
        conn = sockets.FramedConnection(server_sock, 1 << 20, spin_gate=proven_gate())
        counter = CountingPoller(conn.poller)
        conn.poller = counter  # type: ignore[assignment]
        spun = []
        # a real request, one byte at a time (its header is longer than the rounds)
        request = wire.encode(wire.Frame(wire.MSG_INVOKE, 1, 1, b"x" * 64))
        for i in range(SLOW_LIMIT + 6):
            before = counter.polls
            assert not conn.try_fill()  # nothing sent yet: the spin (if any) misses
            spun.append(counter.polls > before)
            client_sock.sendall(request[i:i + 1])  # the request comes after the worker gave up spinning
            conn.fill()                # (the linger saw it) the worker reads it
        assert all(spun[:SLOW_LIMIT])
        assert not any(spun[SLOW_LIMIT:]), f"still spinning for spaced requests: {spun}"
    finally:
        server_sock.close()
        client_sock.close()
