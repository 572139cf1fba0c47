"""Review of session 8's fast paths (w8-review), unit level: the aio proxy's pipelined reply lane
(`_Connection.buffer_updated` -> ClientSession.receive_results -> _deliver, then _pump for the rest)
against the general path (receive_data + next_event), for bursts of mixed replies in any order, cut at
every byte boundary, with late replies of abandoned calls and a malformed frame in the middle; and the
large-frame reader (FrameReader's anonymous-mmap buffer) fed at every alignment."""

from __future__ import annotations

import asyncio
import random

import pytest

from support import handshaken_sessions

from meshrpc import errors
from meshrpc.config import Settings
from meshrpc.uri import URI
from meshrpc.wire import frame as wire
from meshrpc.wire.session import NEED_DATA, ClientSession, NotRun

SERIALIZERS = ["serpent", "marshal", "json", "msgpack"]


def pipelined(serializer: str, **settings):
    return handshaken_sessions(serializer, pipelining=True, **settings)


# each: (request's vargs, correlation id?, how the server answers the request's frame)
KINDS = [
    ("usual", (1,), None, lambda s, f: s.result_reply(f, 1)),
    ("usual text", ("x" * 300,), None, lambda s, f: s.result_reply(f, "y" * 300)),
    ("error", (2,), None, lambda s, f: s.error_reply(f, ValueError("bad"))),
    ("annotated", (3,), None, lambda s, f: s.result_reply(f, 3, {"RESP": b"r"})),
    ("stream", (4,), None, lambda s, f: s.stream_reply(f, "s1")),
    ("batch", (5,), None, lambda s, f: s.result_reply(f, [1, 2], None, wire.FLAG_BATCH)),
    ("correlation id", (6,), bytes(range(16)), lambda s, f: s.result_reply(f, 6)),
    ("not run", (7,), None, lambda s, f: s.not_run_reply(f)),
    ("compressed", (8,), None, lambda s, f: wire.encode_parts(
        wire.Frame(wire.MSG_RESULT, f.serializer_id, f.seq, s.result_reply(f, "z" * 2000)[0][wire.HEADER_SIZE:]),
        compress_min=0)),
    ("usual 2", (9,), None, lambda s, f: s.result_reply(f, [9, {"a": 9}])),
    ("usual 3", (10,), None, lambda s, f: s.result_reply(f, None)),
]


def outcome(client: ClientSession, event):
    """What a call makes of its reply event, however it came (a receive_results tuple, a Frame, NotRun)."""
    if isinstance(event, BaseException):
        return ("failed", type(event).__name__)
    if event.__class__ is tuple:
        return ("value", {}, repr(client.result_value(event[1], event[2])))
    if isinstance(event, NotRun):
        return ("not run",)
    annotations = {k: bytes(v) for k, v in event.annotations.items()}
    try:
        value = client.reply_value(event, client.take_blobs(event))
    except Exception as exc:  # the remote exception
        return ("raised", annotations, type(exc).__name__, str(exc))
    return ("value", annotations, repr(value))


def burst(serializer: str, order_seed: int, abandon: int | None = None, garbage_at: int | None = None):
    """Requests of every kind on a pipelined session (its twin made the same ones): the replies' bytes in a
    shuffled order, the seqs, and which seq was abandoned (its late reply is among them)."""
    client, server = pipelined(serializer)
    seqs, frames = [], []
    for _, vargs, corr, _ in KINDS:
        server.receive_data(b"".join(client.call_request("obj", "echo", vargs, None, 0, None, corr)))
        seqs.append(client.last_seq)
        frames.append(server.next_event())
    pieces = [b"".join(answer(server, frame)) for (_, _, _, answer), frame in zip(KINDS, frames)]
    order = list(range(len(pieces)))
    random.Random(order_seed).shuffle(order)
    data = [pieces[i] for i in order]
    if garbage_at is not None:  # a frame with a bad magic number
        data.insert(garbage_at, wire.encode(wire.Frame(wire.MSG_RESULT, frames[0].serializer_id, 1, b"N"))[:-3]
                    + b"\x00\x00N")
    abandoned = seqs[abandon] if abandon is not None else None
    return client, b"".join(data), seqs, abandoned, [seqs[i] for i in order]


def expected(serializer: str, order_seed: int, abandon: int | None, garbage_at: int | None) -> dict:
    """The general path's outcome per seq (receive_data of all, then next_event until NEED_DATA)."""
    client, data, seqs, abandoned, _ = burst(serializer, order_seed, abandon, garbage_at)
    if abandoned is not None:
        client.abandon(abandoned)
    client.receive_data(data)
    out: dict = {}
    try:
        while (event := client.next_event()) is not NEED_DATA:
            out[event.seq] = outcome(client, event)
    except errors.ProtocolError:
        pass
    for seq in seqs:
        if seq != abandoned:
            out.setdefault(seq, ("failed", "ConnectionClosedError"))
    return out


async def through_the_aio_connection(serializer: str, order_seed: int, abandon: int | None,
                                     garbage_at: int | None, cuts: list) -> tuple[dict, bool]:
    """The same replies read by the aio proxy's _Connection in pieces ending at `cuts`."""
    from meshrpc.aio.proxy import _Connection
    client, data, seqs, abandoned, _ = burst(serializer, order_seed, abandon, garbage_at)
    conn = _Connection(client, URI("PYRO:obj@127.0.0.1:1"), Settings())
    for seq in seqs:
        conn.waiting[seq] = conn._new_future()
    futures = dict(conn.waiting)
    if abandoned is not None:  # as Proxy._abandon does
        conn.waiting.pop(abandoned)
        assert client.abandon(abandoned)
    start = 0
    for stop in [*cuts, len(data)]:
        if stop <= start:
            continue
        piece = data[start:stop]
        conn._received[:len(piece)] = piece
        conn.buffer_updated(len(piece))
        start = stop
        if conn.closed:
            break
    out = {}
    for seq, future in futures.items():
        if seq == abandoned:
            assert not future.done()
            continue
        assert future.done(), f"seq {seq}: no answer (cuts {cuts})"
        out[seq] = outcome(client, future.exception() or future.result())
    return out, conn.closed


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_aio_pipelined_replies_cut_at_every_byte_give_what_the_general_path_gives(serializer):
    async def main():
        for seed in range(2):
            want = expected(serializer, seed, None, None)
            _, data, *_ = burst(serializer, seed)
            for cut in range(1, len(data), 1 if seed == 0 else 13):  # every byte boundary once
                got, closed = await through_the_aio_connection(serializer, seed, None, None, [cut])
                assert (got, closed) == (want, False), (seed, cut)
            # and in pieces of one to a few bytes
            pieces = sorted(random.Random(seed).sample(range(1, len(data)), len(data) // 3))
            got, closed = await through_the_aio_connection(serializer, seed, None, None, pieces)
            assert (got, closed) == (want, False)
    run(main())


@pytest.mark.parametrize("abandon", [0, 2, 5])
def test_aio_pipelined_late_replies_of_abandoned_calls_among_others_go_nowhere(abandon):
    async def main():
        for seed in range(3):
            want = expected("marshal", seed, abandon, None)
            _, data, *_ = burst("marshal", seed)
            for cut in range(0, len(data), 11):
                got, closed = await through_the_aio_connection("marshal", seed, abandon, None, [cut])
                assert (got, closed) == (want, False), (seed, cut)
    run(main())


@pytest.mark.parametrize("garbage_at", [0, 1, 4, 11])
def test_aio_pipelined_a_malformed_frame_mid_burst_answers_what_came_before_and_fails_the_rest(garbage_at):
    """Replies before the malformed frame are delivered (nothing lost for calls already answered); the
    calls after it get ConnectionClosedError and the connection is closed (unusable, reported)."""
    async def main():
        for seed in range(3):
            want = expected("serpent", seed, None, garbage_at)
            _, data, *_ = burst("serpent", seed, None, garbage_at)
            for cut in range(0, len(data), 17):
                got, closed = await through_the_aio_connection("serpent", seed, None, garbage_at, [cut])
                assert closed
                assert got == want, (seed, cut)
    run(main())


# ---------------------------------------------------------------- the large-frame reader (anonymous mmap)

def _frames(sizes: list, oob: bool = False, compress: bool = False) -> list:
    out = []
    for n, size in enumerate(sizes):
        payload = bytes([n % 251]) * size
        annotations = {}
        if oob:
            annotations[wire.OOB_ANNOTATION] = wire.pack_oob([bytes([n + 1]) * (size // 2), b"tail%d" % n])
        frame = wire.Frame(wire.MSG_RESULT, 77, n + 1, payload, 0, annotations)
        out.append((frame, b"".join(bytes(p) for p in wire.encode_parts(frame, compress_min=0 if compress else -1))))
    return out


def _read_like_a_socket(reader: wire.FrameReader, data: bytes, first: int, chunk: int) -> list:
    """Feed `data` as the threaded transport does: the first `first` bytes fed, then into
    receive_buffer() when it offers one (a large frame's rest), else fed in `chunk`s."""
    frames, pos = [], 0
    reader.feed(data[:first])
    pos = first
    while True:
        while (frame := reader.next_frame()) is not None:
            frames.append(frame)
        if pos >= len(data):
            return frames
        into = reader.receive_buffer()
        if into is not None:
            count = min(len(into), len(data) - pos, chunk * 3)
            into[:count] = data[pos:pos + count]
            reader.received(count)
            pos += count
            del into
        else:
            reader.feed(data[pos:pos + chunk])
            pos += chunk


def _check(frames: list, got: list) -> None:
    assert len(got) == len(frames)
    for (want, _), frame in zip(frames, got):
        assert (frame.seq, frame.flags, len(frame.payload)) == (want.seq, want.flags, len(want.payload))
        assert frame.payload == want.payload
        if wire.OOB_ANNOTATION in want.annotations:
            blobs = wire.unpack_oob(frame.annotations[wire.OOB_ANNOTATION])
            assert [bytes(b) for b in blobs] == [bytes(p) for p in want.annotations[wire.OOB_ANNOTATION][1:]]


@pytest.mark.parametrize("first", [wire.HEADER_SIZE, 4095 - 7, 4096, 4097, 70_001, 8191, 8192 + 40])
def test_large_frames_read_into_their_own_buffer_at_any_alignment_keep_every_byte(first):
    """A large frame whose first read ends anywhere, followed in the same reads by small frames and by
    another large one (bigger, then smaller than the spare), with OOB blobs and compression."""
    sizes = [300_000, 10, 20, 600_000, 5, 270_000, 300_001]
    for oob, compress in ((False, False), (True, False), (False, True)):
        frames = _frames(sizes, oob, compress)
        data = b"".join(raw for _, raw in frames)
        reader = wire.FrameReader()
        got = _read_like_a_socket(reader, data, first, 65536 + 13)
        _check(frames, got)
        assert reader.buffered == 0
        # the blobs and payloads handed out stay intact after further large frames reuse the spare buffer
        again = _read_like_a_socket(reader, data, first, 65536)
        _check(frames, got)
        _check(frames, again)


def test_a_large_frame_over_max_size_is_refused_before_any_buffer():
    frame = wire.Frame(wire.MSG_RESULT, 77, 1, b"x" * 400_000)
    data = wire.encode(frame)
    reader = wire.FrameReader(max_size=300_000)
    reader.feed(data[:100_000])
    with pytest.raises(errors.MessageTooLargeError):
        reader.receive_buffer()


def test_large_frame_header_alone_never_makes_the_reader_take_its_size():
    """LARGE_FRAME_PROOF: a header announcing a big frame gives no buffer until a quarter of it came."""
    data = wire.encode(wire.Frame(wire.MSG_RESULT, 77, 1, b"x" * (8 * 1024 * 1024)))
    reader = wire.FrameReader()
    reader.feed(data[:wire.HEADER_SIZE + 10])
    assert reader.receive_buffer() is None
