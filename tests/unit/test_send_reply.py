"""server/connections.py: ClientConnection.send_reply (a worker's replies, no send lock on a plain socket)
sends and fails exactly as FramedConnection.send_parts does."""

from __future__ import annotations

import socket

import pytest

from meshrpc import errors
from meshrpc.config import Settings
from meshrpc.server.connections import ClientConnection
from meshrpc.transport.sockets import limit_send_time


@pytest.mark.parametrize("method", ["send_reply", "send_parts"])
def test_send_reply_sends_in_order_and_says_when_the_peer_is_gone(method):
    ours, theirs = socket.socketpair()
    conn = ClientConnection(ours, "peer", Settings())
    try:
        before = conn.last_active
        getattr(conn, method)([b"one", b"two"])
        assert theirs.recv(100) == b"onetwo" and conn.last_active >= before
        theirs.close()
        with pytest.raises(errors.ConnectionClosedError, match="connection lost while sending"):
            for _ in range(100):  # the first send after the close may still be buffered
                getattr(conn, method)([b"x" * 65536])
    finally:
        conn.close()


def test_send_reply_times_out_as_send_parts_does():
    outcomes = []
    for method in ("send_reply", "send_parts"):
        ours, theirs = socket.socketpair()
        limit_send_time(ours, 0.05)
        conn = ClientConnection(ours, "peer", Settings())
        try:
            with pytest.raises(errors.MeshError) as raised:
                for _ in range(10000):  # the peer never reads: the buffers fill up, then the send limit ends it
                    getattr(conn, method)([b"x" * 65536])
            outcomes.append((type(raised.value), str(raised.value)))
        finally:
            conn.close()
            theirs.close()
    assert outcomes[0] == outcomes[1]


def test_fill_within_reads_whole_and_partial_frames():
    """fill_within, a worker's read: with nothing buffered (the usual case) one read of RECV_CHUNK, with a
    partial frame a read sized for its rest; "nothing came in time" is False, a peer gone an error."""
    from meshrpc.transport.sockets import limit_receive_time
    from meshrpc.wire import frame as wire

    message = wire.encode(wire.Frame(wire.MSG_PING, 1, 7, b"ping"))
    ours, theirs = socket.socketpair()
    conn = ClientConnection(ours, "peer", Settings())
    assert limit_receive_time(ours, 0.05)
    try:
        seen = []
        theirs.sendall(message[:10])  # a partial frame first
        seen.append(conn.fill_within())
        seen.append(conn.reader.next_frame())
        theirs.sendall(message[10:] + message)  # its rest, then a whole frame
        while len(seen) < 4 and conn.fill_within():
            frame = conn.reader.next_frame()
            while frame is not None:
                seen.append((frame.type, frame.seq, frame.payload))
                frame = conn.reader.next_frame()
        assert conn.reader.buffered == 0
        seen.append(conn.fill_within())  # nothing more comes: False after the time limit
        theirs.close()
        with pytest.raises(errors.ConnectionClosedError, match="closed the connection"):
            conn.fill_within()
    finally:
        conn.close()
    assert seen == [True, None, (wire.MSG_PING, 7, b"ping"), (wire.MSG_PING, 7, b"ping"), False]
