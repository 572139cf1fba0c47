"""FramedConnection.fill_within: a daemon worker's wait for the next request when it does not spin
(issue 15): one blocking read, time limited by SO_RCVTIMEO (limit_receive_time), instead of poll +
read. Nothing in time: False (the worker hands the connection back); data: read and fed, a large
frame's rest straight into its buffer; the peer gone: ConnectionClosedError."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from meshrpc.errors import ConnectionClosedError
from meshrpc.transport import sockets
from meshrpc.wire import frame as wire

LIMIT = 0.2  # seconds: the read's time limit in these tests


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    assert sockets.limit_receive_time(ours, LIMIT)
    yield sockets.FramedConnection(ours, 1 << 30), theirs
    ours.close()
    theirs.close()


def test_nothing_within_the_limit_is_false_and_the_connection_stays_usable(pair) -> None:
    conn, peer = pair
    started = time.monotonic()
    assert conn.fill_within() is False
    assert time.monotonic() - started >= LIMIT * 0.9  # it waited, blocking, for the limit
    request = wire.encode(wire.Frame(wire.MSG_PING, 0, 7, b""))
    peer.sendall(request)
    assert conn.fill_within() is True
    assert conn.reader.next_frame().seq == 7


class CountingReader(wire.FrameReader):
    """Counts the feeds made while a large frame's own buffer was offered (they would copy)."""

    def __init__(self) -> None:
        super().__init__(1 << 30)
        self.offered = self.fed_while_offered = 0

    def receive_buffer(self):
        view = super().receive_buffer()
        self.offered += view is not None
        return view

    def feed(self, data) -> None:
        if self._body is not None:
            self.fed_while_offered += 1
        super().feed(data)


def test_a_large_frame_is_read_into_its_own_buffer(pair) -> None:
    conn, peer = pair
    conn.reader = reader = CountingReader()
    payload = bytes(range(256)) * 8192  # 2 MiB: larger than LARGE_FRAME
    data = wire.encode(wire.Frame(wire.MSG_INVOKE, 0, 9, payload))
    writer = threading.Thread(target=peer.sendall, args=(data,), daemon=True)
    writer.start()
    frame = None
    deadline = time.monotonic() + 30
    while frame is None:
        assert time.monotonic() < deadline, "the frame did not arrive"
        assert conn.fill_within() is True
        frame = conn.reader.next_frame()
    writer.join(10)
    assert frame.seq == 9 and frame.payload == payload
    # its rest went straight into the frame's buffer (recv_into), never through feed (a copy)
    assert reader.offered and not reader.fed_while_offered


def test_the_peer_closing_is_an_error(pair) -> None:
    conn, peer = pair
    peer.close()
    with pytest.raises(ConnectionClosedError):
        conn.fill_within()


def test_receive_within_returns_what_fill_within_would_feed(pair) -> None:
    """receive_within (the daemon's lane reads with it when nothing is buffered): the same read, its bytes
    returned and nothing fed; None when nothing came in time; the peer gone: ConnectionClosedError."""
    conn, peer = pair
    started = time.monotonic()
    assert conn.receive_within() is None
    assert time.monotonic() - started >= LIMIT * 0.9
    request = wire.encode(wire.Frame(wire.MSG_PING, 0, 7, b""))
    peer.sendall(request)
    before = conn.last_active
    assert conn.receive_within() == request
    assert conn.reader.buffered == 0 and conn.last_active > before
    peer.sendall(request * 3)
    assert conn.receive_within(5) == request[:5]  # at most `size` bytes
    peer.close()
    assert conn.receive_within() == (request * 3)[5:]
    with pytest.raises(ConnectionClosedError):
        conn.receive_within()
