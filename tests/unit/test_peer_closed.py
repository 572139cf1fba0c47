"""FramedConnection.peer_closed: the check a proxy makes before each call (issue 15: on TCP the
kernel's TCP state, which keeps the GIL; elsewhere poll)."""

from __future__ import annotations

import socket
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
