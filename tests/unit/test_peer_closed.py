"""FramedConnection.peer_closed: the check a proxy makes before each call (issue 15: on TCP the
kernel's TCP state, which keeps the GIL; elsewhere poll)."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from meshrpc.transport import sockets


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_peer_closed_sees_the_peer_close_an_idle_connection(kind: str) -> None:
    """The proxy's check before each call (FramedConnection.peer_closed): TCP asks the TCP state,
    other sockets poll. Open and idle: False; after the peer closed: True."""
    client, server = _tcp_pair() if kind == "tcp" else socket.socketpair()
    try:
        conn = sockets.FramedConnection(client, 1 << 20)
        assert (conn.peer_closed.__name__ == "closed") is (kind == "tcp")  # the TCP state, not poll
        assert not conn.peer_closed()
        server.sendall(b"")  # nothing: still open
        assert not conn.peer_closed()
        server.close()
        deadline = time.monotonic() + 10
        while not conn.peer_closed():  # the close travels (at once on loopback)
            assert time.monotonic() < deadline, "the close was not seen"
            time.sleep(0.001)
    finally:
        client.close()
        server.close()


class _Info:
    """A socket whose TCP_INFO says what a test wants (silent_peer_check reads nothing else)."""

    family = socket.AF_INET

    def __init__(self, *, probes: int = 0, mss: int = 1448, unacked: int = 0, last_ack_ms: int = 0, unsent: int = 0,
                 window: int | None = 65536) -> None:
        info = bytearray(232 if window is not None else 160)
        info[3] = probes
        for offset, value in ((16, mss), (24, unacked), (56, last_ack_ms), (144, unsent), (228, window)):
            if value is not None:
                info[offset:offset + 4] = value.to_bytes(4, sys.byteorder)
        self.info = bytes(info)

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return self.info[:size]


@pytest.mark.parametrize("info, silent", [
    (dict(unacked=2), True),                                  # sent, and nothing acknowledged meanwhile
    (dict(unsent=500), True),                                 # this side cannot send (its address is gone)
    (dict(unsent=500, window=0), False),                      # the peer's window is closed: it answers probes
    (dict(unsent=500, window=0, probes=2), True),             # ... two of them in a row unanswered: gone
    (dict(unsent=500, window=0, last_ack_ms=0), False),       # acknowledged just now
    (dict(unsent=500, window=None), True),                    # before Linux 5.4 (no window said): the quiet counts
])
def test_silent_peer_check_takes_a_closed_window_for_a_slow_peer_not_a_silent_one(
        info: dict, silent: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules of transport.sockets.silent_peer_check on TCP_INFO as Linux gives it (a stale wait: the
    timeout 0 has passed since the check was made, with no floor for a delayed ACK; the last
    acknowledgement 5 s ago unless said)."""
    monkeypatch.setattr(sockets, "ACK_DELAY_MAX", 0.0)
    check = sockets.silent_peer_check(_Info(**{"last_ack_ms": 5000, **info}))
    assert check(0.0) is silent


def test_silent_peer_check_counts_no_quiet_shorter_than_a_delayed_ack() -> None:
    """A timeout below ACK_DELAY_MAX: data unacknowledged for a moment is no silence yet."""
    check = sockets.silent_peer_check(_Info(unacked=1, last_ack_ms=150))
    assert check(0.0) is False


def test_silent_peer_check_on_a_kernel_whose_tcp_info_is_short_never_says_silent() -> None:
    """Linux before 4.6 ends TCP_INFO before tcpi_notsent_bytes (CentOS 7's 3.10: 104 bytes): that is no
    answer, not silence (taken for silence, every oneway call with a timeout was kept out of its
    connection, and out of each new one alike)."""
    short = _Info(unacked=1, last_ack_ms=5000, window=None)
    short.info = short.info[:104]
    assert sockets.silent_peer_check(short)(0.0) is False
