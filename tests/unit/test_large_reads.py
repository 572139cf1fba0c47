"""Large frames over real TCP sockets (issue 15, fifth pass): the rest of a large frame is read in few
large reads (SO_RCVLOWAT while plenty is still to come), never waiting for bytes the frame does not
have, the mark is one byte again before the next message, and a peer that announces a huge frame but
sends little never makes the reader allocate it."""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import termios
import threading
import tracemalloc

import pytest
from support import wait_until

from meshrpc.transport import sockets
from meshrpc.wire import frame as wire

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_RCVLOWAT"), reason="needs SO_RCVLOWAT")


@pytest.fixture
def tcp_pair():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)  # room for a queued frame
    peer = socket.create_connection(listener.getsockname())
    ours, _ = listener.accept()
    listener.close()
    yield ours, peer
    ours.close()
    peer.close()


def low_water(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def receive_in_thread(conn: sockets.FramedConnection) -> tuple[threading.Thread, list]:
    got: list = []
    thread = threading.Thread(target=lambda: got.append(conn.recv()), daemon=True)
    thread.start()
    return thread, got


def test_a_frame_whose_last_bytes_come_late_is_not_held_up(tcp_pair) -> None:
    """All but the last bytes, then (once the reader took them) the rest: a read waiting for a
    low-water mark larger than what the frame has left would never return (a blocking socket, no
    timeout); it must complete as soon as the last bytes are in."""
    ours, peer = tcp_pair
    conn = sockets.FramedConnection(ours, 1 << 30)
    payload = bytes(range(256)) * (6 * 4096)  # 6 MiB
    data = wire.encode(wire.Frame(wire.MSG_RESULT, 0, 3, payload))
    tail = 100
    thread, got = receive_in_thread(conn)
    peer.sendall(data[:-tail])
    wait_until(lambda: conn.reader.buffered >= len(data) - tail, timeout=30, message="the frame's first part read")
    peer.sendall(data[-tail:])
    thread.join(30)
    assert got and got[0].payload == payload, "the frame's last bytes did not end the read"
    assert low_water(ours) == 1  # the next message may be a single byte


def test_large_frames_take_few_reads_and_small_ones_follow_at_once(tcp_pair) -> None:
    ours, peer = tcp_pair
    conn = sockets.FramedConnection(ours, 1 << 30)
    reads = []
    recv_into = ours.recv_into

    class Counting:  # counts the reads of the frame's rest (socket objects' methods cannot be patched)
        def __getattr__(self, name):
            return getattr(ours, name)

        def recv_into(self, view, *args):
            reads.append((len(view), low_water(ours)))  # what was still to come, and the mark
            return recv_into(view, *args)
    conn.sock = Counting()
    payload = b"\x5a" * (10 * 1024 * 1024)
    big = wire.encode(wire.Frame(wire.MSG_RESULT, 0, 1, payload))
    small = wire.encode(wire.Frame(wire.MSG_RESULT, 0, 2, b"x"))
    for _ in range(2):
        thread, got = receive_in_thread(conn)
        writer = threading.Thread(target=peer.sendall, args=(big,), daemon=True)
        writer.start()
        thread.join(60)
        writer.join(60)
        assert got and got[0].payload == payload
        assert low_water(ours) == 1
        thread, got = receive_in_thread(conn)
        peer.sendall(small)
        thread.join(10)
        assert got and got[0].payload == b"x", "a small message after a large one was held up"
    # the mark: LOW_WATER while twice that was still to come, one byte closer to the frame's end
    assert all(mark == (sockets.LOW_WATER if rest >= 2 * sockets.LOW_WATER else 1) for rest, mark in reads), reads
    assert sum(mark > 1 for _, mark in reads) >= 2, reads


def test_a_frame_read_whole_from_far_before_its_end_resets_the_mark(tcp_pair) -> None:
    """All of a frame of up to 3 MiB is queued before the read: the read that starts 2 MiB or more before the
    frame's end (the mark at LOW_WATER) brings all of it, and the mark must not stay up."""
    ours, peer = tcp_pair
    size = ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 - 256 * 1024  # what may queue (net.core.rmem_max)
    if size < 2 * sockets.LOW_WATER + 128 * 1024:
        pytest.skip(f"a receive buffer of {size} bytes cannot queue a frame 2 * LOW_WATER long")
    conn = sockets.FramedConnection(ours, 1 << 30)
    payload = b"\x33" * min(size, 3 * 1024 * 1024)
    data = wire.encode(wire.Frame(wire.MSG_RESULT, 0, 4, payload))
    writer = threading.Thread(target=peer.sendall, args=(data,), daemon=True)
    writer.start()
    wait_until(lambda: queued(ours) >= len(data), timeout=30, message="the whole frame queued")
    frame = conn.recv()
    writer.join(10)
    assert frame.payload == payload
    assert low_water(ours) == 1


def queued(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_huge_announcement_with_little_data_allocates_nothing_large(tcp_pair) -> None:
    """The memory-safety rule (wire.frame.LARGE_FRAME_PROOF): a header announcing 512 MiB followed by
    64 KiB makes the connection hold about what came, not what was announced."""
    ours, peer = tcp_pair
    ours.settimeout(0.5)
    conn = sockets.FramedConnection(ours, 1 << 30)
    header = wire.HEADER.pack(wire.TAG, wire.PROTOCOL_VERSION, wire.MSG_RESULT, 0, 0, 1, 512 * 1024 * 1024, 0,
                              bytes(16), 0, wire.MAGIC)
    peer.sendall(header + b"\0" * 65536)
    tracemalloc.start()
    try:
        while conn.reader.buffered < len(header) + 65536:
            conn.fill()
        assert conn.reader.receive_buffer() is None  # no buffer of the announced size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak
    assert conn.reader.buffered < 1024 * 1024


def test_a_slow_frame_under_a_read_timeout_is_not_cut_short(tcp_pair) -> None:
    """A proxy with a timeout (settimeout: Python polls before each read) on a link slower than the
    mark per timeout: the bytes keep coming within every timeout, so the frame must arrive, as it
    did before the mark existed (a poll waits for the mark, so it would have timed out)."""
    ours, peer = tcp_pair
    ours.settimeout(0.5)
    conn = sockets.FramedConnection(ours, 1 << 30)
    payload = bytes(range(256)) * (4 * 4096)  # 4 MiB
    data = wire.encode(wire.Frame(wire.MSG_RESULT, 0, 3, payload))
    thread, got = receive_in_thread(conn)
    step = 128 * 1024
    for start in range(0, len(data), step):  # about 1.3 MiB/s: the mark would take 0.8 s to fill
        peer.sendall(data[start:start + step])
        if start + step < len(data):
            wait_until(lambda: conn.reader.buffered >= start + step, timeout=30, message="the chunk read")
            threading.Event().wait(0.1)  # the slow link itself, not a synchronisation
    thread.join(60)
    assert got and not isinstance(got[0], Exception) and bytes(got[0].payload) == payload


def test_between_reads_of_a_large_frame_a_poll_sees_its_tail(tcp_pair) -> None:
    """A daemon's worker polls between the reads of a large frame (its linger when the pool is more than
    half busy, e.g. SERVERTYPE multiplex) and the selector polls a connection handed back mid-frame. A
    poll waits for SO_RCVLOWAT too, so a mark left at LOW_WATER by a read that took all but the last
    half MiB would never see that tail: the call hung until the client gave up."""
    ours, peer = tcp_pair
    tail = 512 * 1024
    payload = b"\x42" * (3 * 1024 * 1024)
    data = wire.encode(wire.Frame(wire.MSG_INVOKE, 0, 7, payload))
    if ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2 < len(data):
        pytest.skip("the receive buffer cannot queue the frame (net.core.rmem_max too small)")
    conn = sockets.FramedConnection(ours, 1 << 30)
    writer = threading.Thread(target=peer.sendall, args=(data[:-tail],), daemon=True)
    writer.start()
    wait_until(lambda: queued(ours) >= len(data) - tail, timeout=30, message="all but the tail queued")
    writer.join(10)
    while conn.reader.buffered < len(data) - tail:  # the reads a worker makes (all of it is queued)
        conn.fill(spin=False)
    assert ours.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) <= max(1, conn.reader.wanted())
    peer.sendall(data[-tail:])
    poller = select.poll()
    poller.register(ours, select.POLLIN)
    assert poller.poll(10_000), "a poll between reads did not see the frame's tail"
    while (frame := conn.reader.next_frame()) is None:
        conn.fill(spin=False)
    assert frame.payload == payload
