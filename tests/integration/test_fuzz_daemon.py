"""A live daemon (threaded, and asyncio) fed random and mutated protocol 502 on many connections at once,
while a well-behaved client keeps calling: every one of its calls must succeed, the daemon must log no unexpected error,
its memory must stay flat and its connections must return to normal.

Cases (seeded, so any failure replays): random bytes; valid headers with garbage payloads,
annotations and flags; valid CONNECTs followed by mutated INVOKEs (flipped, cut, duplicated bytes,
random flags, batch and blob calls with junk); compressed garbage and a zip bomb; truncated frames;
pipelined bursts. Each case ends by half-closing its connection and reading until the daemon closes.

By default 2000 cases (well under a minute). A longer run, by hand:

    MESHRPC_TEST_FUZZ_CASES=100000 MESHRPC_TEST_FUZZ_SEED=7 python3 -m pytest tests/integration/test_fuzz_daemon.py -s

MESHRPC_TEST_FUZZ_SEED picks the seed (default 1); a failing case is reported with its number, and
`MESHRPC_TEST_FUZZ_ONLY=<number>` runs that case alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import marshal
import os
import random
import socket
import threading
import time
import zlib
from typing import Any, Callable

import pytest
from support import LoopThread, rss_mb, wait_until

import meshrpc
import meshrpc.aio
from meshrpc.wire import frame as wire
from meshrpc.wire.serializers import by_name

CASES = int(os.environ.get("MESHRPC_TEST_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("MESHRPC_TEST_FUZZ_SEED", "1"))
ONLY = os.environ.get("MESHRPC_TEST_FUZZ_ONLY")
FUZZERS = 16  # connections fuzzed at once
HOST = "127.0.0.1"
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
RSS_BOUND_MB = 40.0  # RSS at the end may exceed RSS after the warm-up cases by at most this

pytestmark = pytest.mark.timeout(max(180, CASES // 20))

BOMB = zlib.compress(bytes(MAX_MESSAGE_SIZE * 2), 9)  # 8 KiB that inflate to 8 MiB
SERIALIZERS = [by_name(name) for name in ("serpent", "json", "marshal", "msgpack")]
METHODS = ["echo", "add", "numbers", "fail", "nope", "_hidden", "__getattr__", "__setattr__", "__init__",
           "get_metadata", "get_next_stream_item", "<batch>",
           "aecho", "await_echo", "afail", "anumbers", "quick"]  # the asyncio daemon's lanes (the threaded one refuses)
FLAG_BITS = [wire.FLAG_EXCEPTION, wire.FLAG_COMPRESSED, wire.FLAG_ONEWAY, wire.FLAG_BATCH,
             wire.FLAG_ITEMSTREAMRESULT, wire.FLAG_KEEPSERIALIZED, wire.FLAG_CORR_ID, 128, 256, 0x8000]


@meshrpc.expose
class Target:
    value = 1

    def echo(self, value: Any) -> Any:
        return value

    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def numbers(self, n: Any) -> Any:
        return iter(range(min(int(n), 100)))

    def fail(self, message: Any) -> None:
        raise ValueError(message)

    def _hidden(self) -> str:
        return "secret"

    async def aecho(self, value: Any) -> Any:  # ends in its first step (the aio daemon's bare lane)
        return value

    async def await_echo(self, value: Any) -> Any:  # waits: goes on as a Task
        await asyncio.sleep(0)
        return value

    async def afail(self, message: Any) -> None:
        await asyncio.sleep(0)
        raise ValueError(message)

    async def anumbers(self, n: Any) -> Any:  # an async generator: a remote iterator
        for number in range(min(int(n), 100)):
            yield number

    @meshrpc.aio.nonblocking
    def quick(self, value: Any) -> Any:  # a plain method run on the aio daemon's loop
        return value


# ----------------------------------------------------------------------------------- case makers
def rand_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.randint(-2 ** 70, 2 ** 70)
    if kind == 1:
        return rng.random() * 10 ** rng.randint(-5, 300)
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(20)))
    if kind == 3:
        return None
    if kind == 4:
        return rng.choice([True, False])
    if kind == 5:
        return rng.randbytes(rng.randrange(16)).hex()
    if kind == 6:
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 7:
        return {str(rng.randrange(100)): rand_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"__class__": rng.choice(["builtins.ValueError", "os.system", "Pyro5.client.Proxy", "x"]),
            "args": [rand_value(rng, depth + 1)]}


def frame_bytes(msg_type: int, ser: Any, payload: bytes, flags: int = 0, seq: int = 1,
                annotations: dict[str, bytes] | None = None) -> bytes:
    return wire.encode(wire.Frame(msg_type, ser.id, seq, payload, flags & ~wire.FLAG_COMPRESSED,
                                  annotations or {}))


def raw_header(rng: random.Random, msg_type: int, ser_id: int, data_len: int, ann_len: int, flags: int = 0) -> bytes:
    return wire.HEADER.pack(wire.TAG, wire.PROTOCOL_VERSION, msg_type, ser_id, flags, rng.randrange(65536),
                            data_len, ann_len, rng.randbytes(16), 0, wire.MAGIC)


def valid_connect(ser: Any, seq: int = 1) -> bytes:
    return frame_bytes(wire.MSG_CONNECT, ser, ser.dumps({"handshake": "hello", "object": "target"}), seq=seq)


def valid_invoke(rng: random.Random, ser: Any, seq: int) -> bytes:
    method = rng.choice(METHODS)
    obj = rng.choice(["target", "target", "Pyro.Daemon", "nothing", ""])
    args = tuple(rand_value(rng) for _ in range(rng.randrange(3)))
    if method == "<batch>":
        args = tuple([rng.choice(METHODS), [rand_value(rng)], {}] for _ in range(rng.randrange(4)))
    try:
        payload = ser.dumps_call(obj, method, args, {})
    except Exception:  # noqa: BLE001 - some random values do not serialize in some formats
        payload = ser.dumps_call("target", "echo", (1,), {})
    flags = wire.FLAG_BATCH if method == "<batch>" else 0
    if rng.random() < 0.2:
        flags |= wire.FLAG_ONEWAY
    return frame_bytes(wire.MSG_INVOKE, ser, payload, flags, seq)


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if not buf:
            buf += rng.randbytes(10)
        if op == 0:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(buf))
                buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # cut
            del buf[rng.randrange(len(buf)):]
        elif op == 2:  # duplicate a chunk
            i = rng.randrange(len(buf))
            buf[i:i] = buf[i:i + rng.randint(1, 64)]
        elif op == 3:  # random bytes somewhere
            i = rng.randrange(len(buf))
            buf[i:i + rng.randint(0, 8)] = rng.randbytes(rng.randint(0, 8))
        elif op == 4 and len(buf) >= wire.HEADER_SIZE:  # random flags (compressed, batch, blob...)
            flags = 0
            for bit in rng.sample(FLAG_BITS, rng.randint(1, 3)):
                flags |= bit
            buf[8:10] = flags.to_bytes(2, "big")
        elif op == 5 and len(buf) >= wire.HEADER_SIZE:  # another message type or serializer
            buf[6] = rng.randrange(10)
            buf[7] = rng.randrange(8)
    return bytes(buf)


def case_random_bytes(rng: random.Random) -> list[bytes]:
    data = rng.randbytes(rng.randrange(400))
    if rng.random() < 0.5:
        data = b"PYRO" + (502).to_bytes(2, "big") + data
    return [data]


def case_garbage_payload(rng: random.Random) -> list[bytes]:
    msg_type = rng.choice([wire.MSG_CONNECT, wire.MSG_INVOKE, wire.MSG_PING, wire.MSG_RESULT,
                           wire.MSG_CONNECTOK, wire.MSG_CONNECTFAIL, 0, 99])
    payload = rng.randbytes(rng.randrange(3000))
    annotations = rng.randbytes(rng.choice([0, 0, 8, 12, rng.randrange(100)]))
    flags = rng.choice([0, 0, rng.randrange(0x10000)])
    data = raw_header(rng, msg_type, rng.randrange(7), len(payload), len(annotations), flags) + annotations + payload
    parts = [data]
    if rng.random() < 0.3:  # after a valid CONNECT
        parts.insert(0, valid_connect(rng.choice(SERIALIZERS)))
    return parts


def case_mutated_invokes(rng: random.Random) -> list[bytes]:
    ser = rng.choice(SERIALIZERS)
    parts = [valid_connect(ser)]
    for seq in range(2, 2 + rng.randint(1, 6)):
        frame = valid_invoke(rng, ser, seq)
        parts.append(mutate(rng, frame) if rng.random() < 0.7 else frame)
    return parts


def case_mutated_connect(rng: random.Random) -> list[bytes]:
    ser = rng.choice(SERIALIZERS)
    return [mutate(rng, valid_connect(ser)), valid_invoke(rng, ser, 2)]


def case_weird_handshake(rng: random.Random) -> list[bytes]:
    ser = rng.choice(SERIALIZERS)
    try:
        payload = ser.dumps(rng.choice([rand_value(rng), {"handshake": rand_value(rng)},
                                        {"object": rand_value(rng), "handshake": None}, []]))
    except Exception:  # noqa: BLE001
        payload = b"{}"
    return [frame_bytes(wire.MSG_CONNECT, ser, payload), valid_invoke(rng, ser, 2)]


def case_compressed(rng: random.Random) -> list[bytes]:
    ser = rng.choice(SERIALIZERS)
    choice = rng.randrange(3)
    if choice == 0:  # garbage that claims to be zlib
        payload = rng.randbytes(rng.randrange(500))
    elif choice == 1:  # a bomb: a few KiB that inflate beyond MAX_MESSAGE_SIZE
        payload = BOMB
    else:  # a valid compressed call, truncated
        full = zlib.compress(ser.dumps_call("target", "echo", ("z" * 1000,), {}))
        payload = full[: rng.randrange(1, len(full))]
    header = raw_header(rng, wire.MSG_INVOKE, ser.id, len(payload), 0, wire.FLAG_COMPRESSED)
    return [valid_connect(ser), header + payload]


def case_blob(rng: random.Random) -> list[bytes]:
    ser = rng.choice(SERIALIZERS)
    blbi = rng.choice([rng.randbytes(rng.randrange(40)),
                       marshal.dumps((rand_value(rng), "target", rng.choice(METHODS))),
                       marshal.dumps(rand_value(rng))])
    frame = frame_bytes(wire.MSG_INVOKE, ser, rng.randbytes(rng.randrange(200)), wire.FLAG_KEEPSERIALIZED, 2,
                        {"BLBI": blbi})
    return [valid_connect(ser), frame]


def case_truncated(rng: random.Random) -> list[bytes]:
    ser = rng.choice(SERIALIZERS)
    frame = valid_invoke(rng, ser, 2)
    return [valid_connect(ser), frame[: rng.randrange(len(frame))]]


def case_burst(rng: random.Random) -> list[bytes]:
    ser = rng.choice(SERIALIZERS)
    frames = [valid_connect(ser)]
    for seq in range(2, 2 + rng.randint(5, 40)):
        if rng.random() < 0.2:
            frames.append(frame_bytes(wire.MSG_PING, ser, b"ping", seq=seq))
        else:
            frames.append(valid_invoke(rng, ser, seq))
    return [b"".join(frames)]


def case_huge_declared(rng: random.Random) -> list[bytes]:
    size = rng.choice([MAX_MESSAGE_SIZE + 1, 0xFFFFFFFF, 2 ** 31])
    return [raw_header(rng, rng.choice([wire.MSG_CONNECT, wire.MSG_INVOKE]), 1, size, rng.choice([0, size])),
            rng.randbytes(rng.randrange(100))]


MAKERS: list[Callable[[random.Random], list[bytes]]] = [
    case_random_bytes, case_garbage_payload, case_mutated_invokes, case_mutated_invokes, case_mutated_invokes,
    case_mutated_connect, case_weird_handshake, case_compressed, case_blob, case_truncated, case_burst,
    case_huge_declared,
]


def make_case(number: int) -> list[bytes]:
    rng = random.Random(SEED * 1_000_003 + number)
    return rng.choice(MAKERS)(rng)


def run_case(port: int, number: int) -> str | None:
    """Send one case; None when the daemon closed the connection as it should, else what went wrong."""
    parts = make_case(number)
    try:
        with socket.create_connection((HOST, port), timeout=10) as sock:
            for part in parts:
                try:
                    sock.sendall(part)
                except OSError:
                    break  # the daemon closed it already: fine
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if not sock.recv(65536):
                        return None
                except socket.timeout:
                    break
                except OSError:
                    return None
            return f"case {number}: the daemon did not close the connection within 10 s"
    except OSError as exc:
        return f"case {number}: cannot connect: {exc}"




class ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < 20:
            self.messages.append(self.format(record))


def test_every_case_makes_valid_bytes() -> None:
    for number in range(200):
        assert all(isinstance(part, bytes) for part in make_case(number))


@pytest.mark.parametrize("kind", ["threaded", "aio"])
def test_fuzzed_daemon_keeps_serving(start_daemon: Any, kind: str) -> None:
    settings = meshrpc.Settings().copy(HOST=HOST, MAX_MESSAGE_SIZE=MAX_MESSAGE_SIZE, COMMTIMEOUT=10.0,
                                       MAX_STREAMS_PER_CONNECTION=20)
    loop = None
    if kind == "threaded":
        running = start_daemon(settings=settings)
        uri = running.register(Target(), "target")
        daemon = running.daemon
        connections: Callable[[], int] = lambda: len(daemon._connections)
        good_method = "echo"
    else:  # served from a loop of its own; the good client calls its `async def` lane
        loop = LoopThread()
        daemon = loop.call(lambda: meshrpc.aio.Daemon(host=HOST, settings=settings))
        uri = loop.call(lambda: daemon.register(Target(), "target"))
        loop.run(daemon.start())
        connections = lambda: len(daemon._aio_connections)
        good_method = "aecho"
    try:
        fuzz_and_call(uri, daemon, settings, connections, good_method)
    finally:
        if loop is not None:
            loop.run(daemon.aclose())
            loop.close()


def fuzz_and_call(uri: meshrpc.URI, daemon: Any, settings: meshrpc.Settings, connections: Callable[[], int],
                  good_method: str) -> None:
    """The cases against `daemon` (at `uri`), while a good client calls `good_method` (an echo)."""
    errors_seen = ErrorCounter()
    meshrpc_log = logging.getLogger("meshrpc")
    # the daemons' loggers: thousands of "closing connection" warnings are expected here (and pytest's log
    # capture would keep each record, with the exception and the frames it holds: RSS would measure them)
    server_logs = [logging.getLogger(name) for name in ("meshrpc.server", "meshrpc.aio")]
    saved_levels = [server_log.level for server_log in server_logs]
    meshrpc_log.addHandler(errors_seen)
    for server_log in server_logs:
        server_log.setLevel(logging.ERROR)
    numbers = [int(ONLY)] if ONLY else list(range(CASES))
    failures: list[str] = []
    good_calls: list[float] = []
    good_failures: list[str] = []
    stop = threading.Event()

    def good_client() -> None:
        rng = random.Random(SEED)
        with meshrpc.Proxy(uri, settings=settings) as proxy:
            while not stop.is_set():
                value = [rng.randrange(1000), "ok" * rng.randrange(50)]
                started = time.perf_counter()
                try:
                    if getattr(proxy, good_method)(value) != value:
                        good_failures.append("wrong answer")
                except Exception as exc:  # noqa: BLE001 - each failure is reported
                    good_failures.append(repr(exc))
                good_calls.append(time.perf_counter() - started)
                time.sleep(0.002)

    next_case = iter(numbers)
    lock = threading.Lock()

    def fuzzer() -> None:
        while True:
            with lock:
                number = next(next_case, None)
            if number is None:
                return
            problem = run_case(uri.port, number)
            if problem:
                failures.append(problem)

    def run_batch(count: int) -> None:
        threads = [threading.Thread(target=fuzzer, daemon=True) for _ in range(min(FUZZERS, count))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    calling = threading.Thread(target=good_client, daemon=True)
    calling.start()
    started = time.monotonic()
    try:
        warm = max(1, len(numbers) // 10)
        run_batch(warm)  # warm-up: caches, worker threads, allocator arenas
        gc.collect()
        before = rss_mb()
        run_batch(len(numbers) - warm)
        wait_until(lambda: connections() <= 1, timeout=15.0,
                   message="the daemon's connections back to the good client's one")
        gc.collect()
        after = rss_mb()
    finally:
        stop.set()
        calling.join(15)
        meshrpc_log.removeHandler(errors_seen)
        for server_log, saved_level in zip(server_logs, saved_levels):
            server_log.setLevel(saved_level)
    elapsed = time.monotonic() - started
    ordered = sorted(good_calls)
    print(f"\nfuzz: {len(numbers)} cases (seed {SEED}) in {elapsed:.1f} s; good client: {len(good_calls)} calls, "
          f"max {ordered[-1] * 1000:.1f} ms, p99 {ordered[int(len(ordered) * 0.99) - 1] * 1000:.1f} ms; "
          f"RSS {before} MB -> {after} MB; streams {len(daemon._streams)}")
    assert not failures, failures[:10]
    assert not good_failures, good_failures[:10]
    assert not errors_seen.messages, errors_seen.messages[:5]
    assert good_calls, "the good client made no call"
    if before is not None and after is not None:
        assert after - before < RSS_BOUND_MB, f"RSS grew from {before:.1f} to {after:.1f} MB"
    with meshrpc.Proxy(uri, settings=settings) as proxy:
        assert proxy.echo("after the storm") == "after the storm"
