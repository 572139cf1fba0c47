#!/usr/bin/env python3
"""Side-by-side benchmark: meshrpc vs Pyro5 (and a raw-socket floor), client and server in separate processes.

Every server (meshrpc daemon, Pyro5 daemon, raw length-prefixed ping-pong server) runs in a child
process started by this script (``bench.py --serve KIND``); it binds 127.0.0.1 port 0, prints its
URI/port on stdout, and serves until its stdin closes. The client side runs in this process. A fresh
server is started for every (round, case, library), libraries are interleaved and their order is
rotated per round, and every figure is the median over ``--rounds`` rounds (the machine is small and
shared, so single runs are noisy).

Cases (``--cases`` takes names or numbers, comma separated):

1. small    small synchronous call (int echoed) per serializer; raw: length-prefixed ping-pong
2. batch    BatchProxy with 1000 calls: time per batch and calls/s
3. oneway   10,000 oneway calls then one synchronous call: time until it returns, and until the
            server has run all oneway calls
4. connect  new proxy + connect + first call (median latency); raw: connect + one ping-pong
5. large    10 MiB bytes echoed (serpent, marshal; gRPC too when grpcio is installed); 50 MiB stream of 1 MiB chunks
6. threads  N client threads (one proxy each) hammering one daemon for a bounded time
7. discovery placeholder: measured only when meshrpc.mesh exposes MeshPublisher/get_registry
8. idle     server memory with many connected idle proxies
9. spaced   calls 100 us and 1 ms apart (a sleep between calls): rate and CPU per call, both sides

Every rate comes with CPU per call beside it (client process, server process, and their total; from
getrusage for this process and /proc/<pid>/stat for the server, 10 ms ticks).

Usage::

    python3 tools/bench.py --rounds 3                # full run, table
    python3 tools/bench.py --quick --json            # CI smoke run, JSON on stdout
    python3 tools/bench.py --cases small,threads --threads 50 --duration 5
    python3 tools/bench.py --profile                 # case 1 (serpent) under cProfile, both sides
    python3 tools/bench.py --profile --cases batch   # the same for case 2 (or spaced: case 9, 100 us gaps)

Like for like: Pyro5's serpent carries ``bytes`` as a base64 dict; the bench server turns such a dict
back into bytes before echoing it (so both directions pay the encoding), and the client decodes the
reply the same way for both libraries. Between meshrpc peers serpent carries bytes out of band (real
bytes arrive; docs/clients.md), which is what the meshrpc column measures.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import datetime
import io
import json
import math
import os
import platform
import pstats
import select
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Self

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
THIS = os.path.abspath(__file__)

LIBS = ("meshrpc", "pyro5")
LIB_TITLES = {"meshrpc": "meshrpc", "pyro5": "Pyro5", "raw": "raw", "grpc": "gRPC"}
# gRPC (grpcio, the `bench` extra) is a reference peer in case 5 only: raw bytes in, the same bytes out
GRPC_ECHO = "/bench.Bench/Echo"
GRPC_MAX_MESSAGE = 256 * 1024 * 1024
SERIALIZERS = ("serpent", "marshal", "json", "msgpack")
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 20.0

perf = time.perf_counter


# ====================================================================== shared helpers

def tobytes(value: Any) -> bytes:
    """Bytes from whatever a serializer made of them (serpent: {'data': base64, 'encoding': 'base64'})."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict) and value.get("encoding") == "base64":
        return base64.b64decode(value["data"])
    raise TypeError(f"expected bytes, got {type(value).__name__}")


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(pct / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ====================================================================== server side (child processes)

def make_service(expose: Callable, oneway: Callable) -> type:
    """The benchmark object, decorated with the given library's expose/oneway."""

    class Bench:
        def __init__(self) -> None:
            self._lock = threading.Lock()
            self._fired = 0

        def echo(self, value: Any) -> Any:
            return value

        def echo_bytes(self, data: Any) -> bytes:
            return tobytes(data)  # serpent hands us a base64 dict: echo real bytes, like for like

        @oneway
        def fire(self, value: Any) -> None:
            with self._lock:
                self._fired += 1

        def fired(self) -> int:
            return self._fired

        def reset(self) -> None:
            with self._lock:
                self._fired = 0

        def rss(self) -> int:
            """This server process's resident memory, KiB."""
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
            return 0

        def stream(self, total: int, chunk: int):
            block = b"\x5a" * chunk
            sent = 0
            while sent < total:
                size = min(chunk, total - sent)
                yield block if size == chunk else block[:size]
                sent += size

    return expose(Bench)


class ThreadProfiles:
    """cProfile for every thread of the server process (cProfile itself only sees its own thread).

    Wraps Thread._bootstrap_inner, so threads that override run() (Pyro5's workers) are covered too."""

    def __init__(self) -> None:
        self.profiles: list[tuple[threading.Thread, cProfile.Profile, list]] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        me = self
        orig_bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

        def bootstrap(thread: threading.Thread) -> None:
            if thread.name == "stdin-watch":
                return orig_bootstrap(thread)
            prof = cProfile.Profile()
            done: list = []
            with me._lock:
                me.profiles.append((thread, prof, done))
            prof.enable()
            try:
                orig_bootstrap(thread)
            finally:
                prof.disable()
                done.append(True)

        threading.Thread._bootstrap_inner = bootstrap  # type: ignore[attr-defined]

    def dump(self, main_profile: cProfile.Profile, path: str) -> None:
        stats = pstats.Stats(main_profile)
        unfinished = 0
        with self._lock:
            profiles = list(self.profiles)
        for thread, prof, done in profiles:
            if done:
                stats.add(prof)
            else:
                unfinished += 1
        if unfinished:
            print(f"profile: {unfinished} server threads still running were left out", file=sys.stderr)
        stats.dump_stats(path)


def serve_main(kind: str, profile_out: str | None, name: str | None) -> int:
    if kind == "raw":
        return raw_server_main()
    if kind == "grpc":
        return grpc_server_main()
    profiles = main_prof = None
    if profile_out:  # before the daemon exists: Pyro5 starts its first workers in Daemon()
        profiles = ThreadProfiles()
        profiles.install()
        main_prof = cProfile.Profile()
    if kind == "meshrpc":
        import meshrpc
        daemon = meshrpc.Daemon(host="127.0.0.1", port=0)
        service = make_service(meshrpc.expose, meshrpc.oneway)
        uri = daemon.register(service(), "bench", name=name) if name else daemon.register(service(), "bench")
    elif kind == "pyro5":
        from Pyro5 import api
        daemon = api.Daemon(host="127.0.0.1", port=0)
        service = make_service(api.expose, api.oneway)
        uri = daemon.register(service(), "bench")
    else:
        print(f"unknown server kind {kind}", file=sys.stderr)
        return 2

    def watch_stdin() -> None:
        try:
            sys.stdin.buffer.read()  # returns at EOF: the bench closed our stdin (or died)
        finally:
            daemon.shutdown()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()  # never profiled
    print(f"URI {uri}", flush=True)
    try:
        if main_prof is not None:
            main_prof.enable()
        daemon.requestLoop()
    finally:
        if main_prof is not None:
            main_prof.disable()
        try:
            daemon.close()
        except Exception:  # noqa: BLE001, S110 - best effort at exit
            pass
    if profiles is not None and main_prof is not None and profile_out:
        deadline = time.monotonic() + 5.0
        for thread in threading.enumerate():
            if thread is threading.current_thread() or thread.name == "stdin-watch":
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
        profiles.dump(main_prof, profile_out)
    return 0


# --- raw socket ping-pong: 4-byte length + 1-byte kind, then the payload
RAW_HEADER = struct.Struct("!IB")
RAW_ECHO, RAW_ONEWAY, RAW_FETCH = 0, 1, 2


def recv_exact(sock: socket.socket, size: int) -> bytes:
    if size <= 65536:
        data = sock.recv(size)
        if len(data) == size:
            return data
        if not data:
            raise ConnectionError("peer closed")
        parts = [data]
        got = len(data)
        while got < size:
            more = sock.recv(size - got)
            if not more:
                raise ConnectionError("peer closed")
            parts.append(more)
            got += len(more)
        return b"".join(parts)
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if not n:
            raise ConnectionError("peer closed")
        got += n
    return bytes(buf)


def raw_server_main() -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)

    def watch_stdin() -> None:
        try:
            sys.stdin.buffer.read()
        finally:
            os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                size, kind = RAW_HEADER.unpack(recv_exact(conn, RAW_HEADER.size))
                payload = recv_exact(conn, size) if size else b""
                if kind == RAW_ECHO:
                    if size < 65536:
                        conn.sendall(RAW_HEADER.pack(size, kind) + payload)
                    else:
                        conn.sendall(RAW_HEADER.pack(size, kind))
                        conn.sendall(payload)
                elif kind == RAW_FETCH:
                    (want,) = struct.unpack("!I", payload)
                    conn.sendall(RAW_HEADER.pack(want, kind))
                    conn.sendall(b"\x5a" * want)
                # RAW_ONEWAY: no answer
        except (ConnectionError, OSError, struct.error):
            pass
        finally:
            conn.close()

    print(f"PORT {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def grpc_available() -> bool:
    try:
        import grpc  # noqa: F401
    except ImportError:
        return False
    return True


def grpc_server_main() -> int:
    """A gRPC server with one unary method that returns its request: no protobuf, raw bytes both ways."""
    from concurrent import futures

    import grpc
    options = [("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
               ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    service, method = GRPC_ECHO.strip("/").split("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(lambda request, _context: request)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    try:
        sys.stdin.buffer.read()  # until the bench closes our stdin
    finally:
        server.stop(0)
    return 0


class GrpcClient:
    def __init__(self, port: int) -> None:
        import grpc
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE)])
        self.echo = self.channel.unary_unary(GRPC_ECHO)  # no (de)serializers: bytes as they are

    def close(self) -> None:
        self.channel.close()


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def echo(self, payload: bytes) -> bytes:
        sock = self.sock
        if len(payload) < 65536:
            sock.sendall(RAW_HEADER.pack(len(payload), RAW_ECHO) + payload)
        else:
            sock.sendall(RAW_HEADER.pack(len(payload), RAW_ECHO))
            sock.sendall(payload)
        size, _ = RAW_HEADER.unpack(recv_exact(sock, RAW_HEADER.size))
        return recv_exact(sock, size)

    def oneway(self, payload: bytes) -> None:
        self.sock.sendall(RAW_HEADER.pack(len(payload), RAW_ONEWAY) + payload)

    def fetch(self, size: int) -> bytes:
        self.sock.sendall(RAW_HEADER.pack(4, RAW_FETCH) + struct.pack("!I", size))
        got, _ = RAW_HEADER.unpack(recv_exact(self.sock, RAW_HEADER.size))
        return recv_exact(self.sock, got)

    def close(self) -> None:
        self.sock.close()


# ====================================================================== server processes, from the bench

class Server:
    """A server child process: `with Server("meshrpc") as srv: srv.uri` (or srv.port for raw)."""

    def __init__(self, kind: str, env: dict[str, str] | None = None, profile_out: str | None = None,
                 name: str | None = None) -> None:
        self.kind = kind
        cmd = [sys.executable, THIS, "--serve", kind]
        if profile_out:
            cmd += ["--profile-out", profile_out]
        if name:
            cmd += ["--name", name]
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors,
                                     env=full_env, cwd=REPO)
        self.uri: str = ""
        self.port: int = 0
        try:
            line = self._read_line(SERVER_START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        if line.startswith("URI "):
            self.uri = line[4:].strip()
            self.port = int(self.uri.rsplit(":", 1)[1])
        elif line.startswith("PORT "):
            self.port = int(line[5:].strip())
        else:
            self.stop()
            raise RuntimeError(f"{kind} server printed {line!r} instead of its URI; stderr: {self.stderr_tail()}")

    def _read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"{self.kind} server did not print its URI within {timeout:.0f}s; "
                               f"stderr: {self.stderr_tail()}")
        line = self.proc.stdout.readline().decode("utf-8", "replace")
        if not line:
            self.proc.wait(5)
            raise RuntimeError(f"{self.kind} server exited ({self.proc.returncode}) before printing its URI; "
                               f"stderr: {self.stderr_tail()}")
        return line

    def cpu_time(self) -> float:
        """CPU seconds (user + system) the server process has used so far (Linux /proc; 10 ms ticks)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stderr_tail(self, limit: int = 2000) -> str:
        try:  # pread: the child writes through this same file, so a seek would move its offset too
            fd = self.errors.fileno()
            text = os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""
        return text[-limit:].strip()

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            try:
                if proc.stdin:
                    proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.errors.close()


def client_api(lib: str) -> SimpleNamespace:
    if lib == "meshrpc":
        import meshrpc
        return SimpleNamespace(Proxy=meshrpc.Proxy, BatchProxy=meshrpc.BatchProxy)
    from Pyro5 import api
    return SimpleNamespace(Proxy=api.Proxy, BatchProxy=api.BatchProxy)


def bound_proxy(lib: str, uri: str, serializer: str | None = None) -> Any:
    proxy = client_api(lib).Proxy(uri)
    if serializer:
        proxy._pyroSerializer = serializer
    proxy._pyroBind()
    return proxy


# ====================================================================== counts

@dataclass
class Counts:
    small_calls: int
    small_warmup: int
    raw_msg_size: int
    batch_size: int
    batch_repeats: int
    oneway_calls: int
    connect_ops: int
    large_bytes: int
    large_repeats: int
    stream_total: int
    stream_chunk: int
    threads: int
    duration: float
    discovery_ops: int
    idle_proxies: int = 1000
    spaced_calls: int = 3000  # at the 100 us gap; half as many at 1 ms


FULL = Counts(small_calls=5000, small_warmup=200, raw_msg_size=100, batch_size=1000, batch_repeats=5,
              oneway_calls=10000, connect_ops=200, large_bytes=10 * 1024 * 1024, large_repeats=20,
              stream_total=50 * 1024 * 1024, stream_chunk=1024 * 1024, threads=100, duration=3.0,
              discovery_ops=5)
QUICK = Counts(small_calls=50, small_warmup=5, raw_msg_size=100, batch_size=20, batch_repeats=2,
               oneway_calls=50, connect_ops=5, large_bytes=64 * 1024, large_repeats=1,
               stream_total=256 * 1024, stream_chunk=64 * 1024, threads=4, duration=0.3,
               discovery_ops=2, idle_proxies=20, spaced_calls=40)


# ====================================================================== CPU accounting

class CpuSpan:
    """CPU seconds (user + system) the client process (this one, all threads) and the server process
    used between enter and exit: `with CpuSpan(srv) as cpu: ...; cpu.per_call(n)`. Server CPU comes
    from /proc/<pid>/stat in 10 ms ticks: measure at least a few hundred milliseconds of it."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.client = self.server = 0.0

    def __enter__(self) -> Self:
        self._client0, self._server0 = time.process_time(), self.srv.cpu_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client = time.process_time() - self._client0
        self.server = self.srv.cpu_time() - self._server0

    def per_call(self, calls: int, prefix: str = "cpu", suffix: str = "") -> dict[str, float]:
        """{prefix_client<suffix>, prefix_server<suffix>, prefix_total<suffix>}: microseconds per call."""
        calls = max(1, calls)
        client, server = self.client / calls * 1e6, self.server / calls * 1e6
        return {f"{prefix}_client{suffix}": client, f"{prefix}_server{suffix}": server,
                f"{prefix}_total{suffix}": client + server}


def cpu_rows(label: str, suffix: str = "") -> list["Row"]:
    return [Row(f"cpu_{side}{suffix}", f"{label} {side} CPU/call", "us", False, True)
            for side in ("client", "server", "total")]


# ====================================================================== cases
# Each measure function runs one (case, library) in one round against a fresh server and returns
# {row key: value}; raw returns values for the rows where it applies.

@dataclass
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    raw: bool  # the raw-socket floor applies to this row


@dataclass
class Case:
    number: int
    name: str
    title: str
    rows: list[Row]
    libs: tuple[str, ...]
    measure: Callable[[str, Server, Counts], dict[str, float]]
    env: Callable[[str, Counts], dict[str, str]] = lambda lib, counts: {}
    placeholder: bool = False
    note: str = ""


def measure_small(lib: str, srv: Server, c: Counts) -> dict[str, float]:
    """calls/s per serializer, and CPU microseconds per call of the client and the server process
    (CPU time is far less sensitive than wall time to other load on the machine)."""
    out: dict[str, float] = {}
    if lib == "raw":
        client = RawClient(srv.port)
        try:
            msg = b"x" * c.raw_msg_size
            for _ in range(c.small_warmup):
                client.echo(msg)
            with CpuSpan(srv) as cpu:
                start = perf()
                for _ in range(c.small_calls):
                    client.echo(msg)
                elapsed = perf() - start
        finally:
            client.close()
        for ser in SERIALIZERS:
            out[ser] = c.small_calls / elapsed
            out.update(cpu.per_call(c.small_calls, suffix=f"_{ser}"))
        return out
    for ser in SERIALIZERS:
        proxy = bound_proxy(lib, srv.uri, ser)
        try:
            echo = proxy.echo
            for i in range(c.small_warmup):
                echo(i)
            with CpuSpan(srv) as cpu:
                start = perf()
                for i in range(c.small_calls):
                    echo(i)
                elapsed = perf() - start
            if echo(123456) != 123456:
                raise AssertionError("echo returned a wrong value")
        finally:
            proxy._pyroRelease()
        out[ser] = c.small_calls / elapsed
        out.update(cpu.per_call(c.small_calls, suffix=f"_{ser}"))
    return out


def measure_spaced(lib: str, srv: Server, c: Counts) -> dict[str, float]:
    """Calls spaced by a sleep (as sensors and home scripts make them): the rate, and CPU per call
    of each side. The gap is a time.sleep, so the real spacing is the gap plus the timer's slack."""
    out: dict[str, float] = {}
    if lib == "raw":
        client = RawClient(srv.port)
        msg = b"x" * c.raw_msg_size
        call: Callable[[int], Any] = lambda _i: client.echo(msg)  # noqa: E731
        close: Callable[[], None] = client.close
    else:
        proxy = bound_proxy(lib, srv.uri, "serpent")
        call, close = proxy.echo, proxy._pyroRelease
    sleep = time.sleep
    try:
        for gap_us, calls in ((100, c.spaced_calls), (1000, max(1, c.spaced_calls // 2))):
            gap = gap_us / 1e6
            for i in range(c.small_warmup):
                call(i)
                sleep(gap)
            with CpuSpan(srv) as cpu:
                start = perf()
                for i in range(calls):
                    call(i)
                    sleep(gap)
                elapsed = perf() - start
            out[f"rate_{gap_us}us"] = calls / elapsed
            out.update(cpu.per_call(calls, suffix=f"_{gap_us}us"))
    finally:
        close()
    return out


def measure_batch(lib: str, srv: Server, c: Counts) -> dict[str, float]:
    api = client_api(lib)
    proxy = bound_proxy(lib, srv.uri)
    times = []
    cpu = CpuSpan(srv)

    def one_batch() -> float:
        start = perf()
        batch = api.BatchProxy(proxy)
        for i in range(c.batch_size):
            batch.echo(i)
        results = list(batch())
        elapsed = perf() - start
        if len(results) != c.batch_size or results[-1] != c.batch_size - 1:
            raise AssertionError(f"batch returned {len(results)} results")
        return elapsed

    try:
        one_batch()  # warms up
        with cpu:
            for _ in range(c.batch_repeats):
                times.append(one_batch())
    finally:
        proxy._pyroRelease()
    median = statistics.median(times)
    return {"batch_time": median * 1000.0, "batch_rate": c.batch_size / median,
            **cpu.per_call(c.batch_size * c.batch_repeats)}


def measure_oneway(lib: str, srv: Server, c: Counts) -> dict[str, float]:
    n = c.oneway_calls
    if lib == "raw":
        client = RawClient(srv.port)
        try:
            msg = b"x" * c.raw_msg_size
            client.echo(msg)
            start = perf()
            for _ in range(n):
                client.oneway(msg)
            client.echo(msg)
            elapsed = perf() - start
        finally:
            client.close()
        return {"sync_return": elapsed, "all_done": elapsed}  # one connection, in order: both the same
    proxy = bound_proxy(lib, srv.uri)
    try:
        proxy.reset()
        fire = proxy.fire
        start = perf()
        for i in range(n):
            fire(i)
        proxy.echo(0)
        sync_return = perf() - start
        deadline = time.monotonic() + 120.0
        while proxy.fired() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server ran only {proxy.fired()} of {n} oneway calls within 120s")
            time.sleep(0.002)
        all_done = perf() - start
    finally:
        proxy._pyroRelease()
    return {"sync_return": sync_return, "all_done": all_done}


def measure_connect(lib: str, srv: Server, c: Counts) -> dict[str, float]:
    latencies = []
    warm = max(1, c.connect_ops // 20)
    if lib == "raw":
        msg = b"x" * c.raw_msg_size
        for i in range(c.connect_ops + warm):
            start = perf()
            client = RawClient(srv.port)
            client.echo(msg)
            elapsed = perf() - start
            client.close()
            if i >= warm:
                latencies.append(elapsed)
    else:
        Proxy = client_api(lib).Proxy
        for i in range(c.connect_ops + warm):
            start = perf()
            proxy = Proxy(srv.uri)
            result = proxy.echo(1)
            elapsed = perf() - start
            proxy._pyroRelease()
            if result != 1:
                raise AssertionError("echo returned a wrong value")
            if i >= warm:
                latencies.append(elapsed)
    latencies.sort()
    return {"p50": percentile(latencies, 50) * 1000.0, "p90": percentile(latencies, 90) * 1000.0}


def timed_echoes(echo: Callable[[bytes], bytes], payload: bytes, c: Counts, srv: Server) -> dict[str, float]:
    """The median time of large_repeats echoes of `payload`, the throughput (payload bytes per second
    each way), and CPU per echo of both sides; every reply is checked."""
    echo(payload)  # warm-up: connection windows, allocator
    times = []
    with CpuSpan(srv) as cpu:
        for _ in range(c.large_repeats):
            start = perf()
            reply = echo(payload)
            times.append(perf() - start)
            if reply != payload:
                raise AssertionError("the echoed bytes differ")
    median = statistics.median(times)
    return {"echo": median, "mibs": len(payload) / median / 1024 / 1024,
            **cpu.per_call(c.large_repeats, suffix="_echo")}


def measure_large(lib: str, srv: Server, c: Counts) -> dict[str, float]:
    payload = os.urandom(c.large_bytes)
    out: dict[str, float] = {}
    if lib == "grpc":
        client = GrpcClient(srv.port)
        try:
            echoed = timed_echoes(client.echo, payload, c, srv)
        finally:
            client.close()
        out["echo_serpent"] = out["echo_marshal"] = echoed.pop("echo")
        out.update(echoed)
        return out
    if lib == "raw":
        client = RawClient(srv.port)
        try:
            echoed = timed_echoes(client.echo, payload, c, srv)
            out["echo_serpent"] = out["echo_marshal"] = echoed.pop("echo")
            out.update(echoed)
            start = perf()
            got = 0
            while got < c.stream_total:
                got += len(client.fetch(min(c.stream_chunk, c.stream_total - got)))
            out["stream_serpent"] = out["stream_marshal"] = perf() - start
        finally:
            client.close()
        return out
    for ser in ("serpent", "marshal"):
        proxy = bound_proxy(lib, srv.uri, ser)
        try:
            echoed = timed_echoes(lambda data, echo=proxy.echo_bytes: tobytes(echo(data)), payload, c, srv)
            out[f"echo_{ser}"] = echoed.pop("echo")
            if ser == "serpent":  # the throughput and CPU rows are serpent's (bytes travel as they are)
                out.update(echoed)
            start = perf()
            got = 0
            for chunk in proxy.stream(c.stream_total, c.stream_chunk):
                got += len(tobytes(chunk))
            out[f"stream_{ser}"] = perf() - start
            if got != c.stream_total:
                raise AssertionError(f"stream delivered {got} bytes of {c.stream_total}")
        finally:
            proxy._pyroRelease()
    return out


def measure_threads(lib: str, srv: Server, c: Counts) -> dict[str, float]:
    nthreads = c.threads
    barrier = threading.Barrier(nthreads + 1)
    state = {"deadline": 0.0}
    lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in range(nthreads)]
    errors = [0] * nthreads
    first_errors: list[str] = []
    ends = [0.0] * nthreads
    msg = b"x" * c.raw_msg_size

    def note_error(idx: int, exc: BaseException) -> None:
        errors[idx] += 1
        with lock:
            if len(first_errors) < 3:
                first_errors.append(f"{type(exc).__name__}: {exc}")

    def connect() -> Any:
        if lib == "raw":
            return RawClient(srv.port)
        return bound_proxy(lib, srv.uri)

    def release(client: Any) -> None:
        try:
            if lib == "raw":
                client.close()
            else:
                client._pyroRelease()
        except Exception:  # noqa: BLE001, S110 - closing a broken client
            pass

    def worker(idx: int) -> None:
        client = None
        try:
            client = connect()
        except Exception as exc:  # noqa: BLE001 - counted as an error
            note_error(idx, exc)
        try:
            barrier.wait(120)  # everyone connected
            barrier.wait(120)  # the bench has set the deadline: go
        except threading.BrokenBarrierError:
            ends[idx] = perf()
            if client is not None:
                release(client)
            return
        deadline = state["deadline"]
        lat = latencies[idx]
        call = None
        try:
            while True:
                now = perf()
                if now >= deadline:
                    break
                if client is None:
                    try:
                        client = connect()
                    except Exception as exc:  # noqa: BLE001 - counted as an error
                        note_error(idx, exc)
                        time.sleep(0.05)
                        continue
                if call is None:
                    call = (lambda _i, cl=client: cl.echo(msg)) if lib == "raw" else client.echo
                try:
                    call(idx)
                    lat.append(perf() - now)
                except Exception as exc:  # noqa: BLE001 - counted as an error
                    note_error(idx, exc)
                    release(client)
                    client = call = None
                    time.sleep(0.05)
        finally:
            ends[idx] = perf()
            if client is not None:
                release(client)

    threads = [threading.Thread(target=worker, args=(i,), name=f"bench-client-{i}", daemon=True)
               for i in range(nthreads)]
    for thread in threads:
        thread.start()
    # the clock starts when every thread has connected (or failed to)
    cpu = CpuSpan(srv)
    try:
        barrier.wait(120)
        cpu.__enter__()
        start = perf()
        state["deadline"] = start + c.duration
        barrier.wait(120)
    except threading.BrokenBarrierError:
        raise RuntimeError("client threads did not get ready within 120s") from None
    for thread in threads:
        thread.join(c.duration + 60)
    cpu.__exit__()
    hung = sum(t.is_alive() for t in threads)
    end = max(ends) if ends else perf()
    all_lat = sorted(x for lst in latencies for x in lst)
    calls = len(all_lat)
    errs = sum(errors) + hung
    result = {"rate": calls / max(end - start, 1e-9),
              "p50": percentile(all_lat, 50) * 1000.0 if all_lat else float("nan"),
              "p99": percentile(all_lat, 99) * 1000.0 if all_lat else float("nan"),
              "errors": float(errs),
              # fairness: calls of the least served thread over those of the median thread (1.0 = even)
              "fairness": (min(len(x) for x in latencies) / max(1.0, statistics.median(len(x) for x in latencies))),
              **cpu.per_call(calls)}
    if first_errors or hung:
        result["_note"] = "; ".join(first_errors + ([f"{hung} client threads hung"] if hung else []))  # type: ignore
    return result


def discovery_status() -> tuple[bool, str]:
    try:
        from meshrpc import mesh
    except Exception as exc:  # noqa: BLE001 - any import failure means: nothing to measure
        return False, f"meshrpc.mesh cannot be imported ({type(exc).__name__}: {exc})"
    if not (hasattr(mesh, "MeshPublisher") and hasattr(mesh, "get_registry")):
        return False, "meshrpc.mesh exposes nothing measurable yet (no MeshPublisher/get_registry); skipped"
    return True, "meshrpc PYRONAME resolution over the mesh (mDNS on loopback); Pyro5 would need a name server: not measured"


def measure_discovery(lib: str, srv: Server, c: Counts) -> dict[str, float]:
    """Placeholder hook: `Proxy("PYRONAME:<name>")` until the first call returns, with a registry that
    has not seen the name yet (cold: a new realm per round) and then with the registry warm."""
    import meshrpc
    settings = meshrpc.config.copy(REALM=srv.realm, RESOLVE="mesh")  # type: ignore[attr-defined]
    times = []
    for _ in range(max(2, c.discovery_ops)):
        start = perf()
        proxy = meshrpc.Proxy(f"PYRONAME:{srv.name}", settings=settings)  # type: ignore[attr-defined]
        if proxy.echo(1) != 1:
            raise AssertionError("echo returned a wrong value")
        times.append(perf() - start)
        proxy._pyroRelease()
    return {"cold": times[0] * 1000.0, "warm": statistics.median(times[1:]) * 1000.0}


def measure_idle(lib: str, srv: Server, c: Counts) -> dict[str, float]:
    """Server memory with many connected idle proxies (each bound, then left alone)."""
    probe = bound_proxy(lib, srv.uri)
    before = probe.rss()
    idle = [bound_proxy(lib, srv.uri) for _ in range(c.idle_proxies)]
    time.sleep(0.5)  # not synchronisation: let workers finish lingering before reading memory
    after = probe.rss()
    still_served = all(p.echo(7) == 7 for p in idle[:: max(1, len(idle) // 20)])
    for proxy in idle + [probe]:
        proxy._pyroRelease()
    if not still_served:
        raise AssertionError("an idle proxy was not served")
    return {"rss_growth": (after - before) / 1024.0, "per_connection": (after - before) / c.idle_proxies}


def idle_env(lib: str, c: Counts) -> dict[str, str]:
    # Pyro5 needs a pool thread per connection: without this it refuses connections past its pool
    return {"PYRO_THREADPOOL_SIZE": str(c.idle_proxies + 20)} if lib == "pyro5" else {}


def threads_env(lib: str, c: Counts) -> dict[str, str]:
    # Pyro5's thread pool gives each connection its own worker: raise it above the client count
    return {"PYRO_THREADPOOL_SIZE": str(c.threads + 20)} if lib == "pyro5" else {}


def build_cases(counts: Counts) -> list[Case]:
    n_batch, n_oneway = counts.batch_size, counts.oneway_calls
    mb = counts.large_bytes / 1024 / 1024
    smb, cmb = counts.stream_total / 1024 / 1024, counts.stream_chunk / 1024 / 1024
    return [
        Case(1, "small", "small synchronous call (int echo), one proxy",
             [Row(ser, f"{ser}", "calls/s", True, True) for ser in SERIALIZERS]
             + [row for ser in SERIALIZERS for row in cpu_rows(ser, f"_{ser}")],
             LIBS + ("raw",), measure_small,
             note=f"raw: {counts.raw_msg_size}-byte length-prefixed ping-pong, same for every row (the floor); "
                  "CPU/call: user+system CPU of the client process and of the server process per call "
                  "(10 ms tick resolution), less sensitive to machine load than calls/s"),
        Case(2, "batch", f"BatchProxy, {n_batch} calls per batch (serpent)",
             [Row("batch_time", "time per batch", "ms", False, False),
              Row("batch_rate", "calls", "calls/s", True, False)] + cpu_rows("batched call"),
             LIBS, measure_batch),
        Case(3, "oneway", f"{n_oneway} oneway calls, then one sync call (serpent)",
             [Row("sync_return", "until the sync call returns", "s", False, True),
              Row("all_done", "until the server ran all oneways", "s", False, True)],
             LIBS + ("raw",), measure_oneway,
             note="both libraries run oneway calls off the connection's thread (Pyro5: a new thread per "
                  "call; meshrpc: its worker pool); raw: one connection handled in order, both rows equal"),
        Case(4, "connect", "new proxy + connect + first call",
             [Row("p50", "median latency", "ms", False, True),
              Row("p90", "p90 latency", "ms", False, True)],
             LIBS + ("raw",), measure_connect, note="raw: TCP connect + one ping-pong"),
        Case(5, "large", f"{mb:g} MiB bytes echo; {smb:g} MiB stream of {cmb:g} MiB chunks (generator)",
             [Row("echo_serpent", f"{mb:g} MiB echo, serpent", "s", False, True),
              Row("mibs", f"{mb:g} MiB echo, serpent", "MiB/s", True, True)]
             + cpu_rows("echo", "_echo")
             + [Row("echo_marshal", f"{mb:g} MiB echo, marshal", "s", False, True),
                Row("stream_serpent", f"{smb:g} MiB stream, serpent", "s", False, True),
                Row("stream_marshal", f"{smb:g} MiB stream, marshal", "s", False, True)],
             LIBS + ("raw", "grpc"), measure_large,
             note="serpent: Pyro5 sends bytes as base64 dicts (server re-encodes real bytes), meshrpc "
                  "peers out of band; raw: plain bytes, one round trip per chunk; gRPC (grpcio, when "
                  "installed: pip install -e .[bench]): a unary method echoing raw bytes, no protobuf, "
                  "echo rows only; MiB/s: payload bytes per second each way"),
        Case(6, "threads", f"{counts.threads} client threads (one proxy each), {counts.duration:g} s, serpent",
             [Row("rate", "aggregate", "calls/s", True, True),
              Row("p50", "p50 latency", "ms", False, True),
              Row("p99", "p99 latency", "ms", False, True),
              Row("errors", "errors", "count", False, True),
              Row("fairness", "fairness (min/median calls)", "ratio", True, True)] + cpu_rows("call"),
             LIBS + ("raw",), measure_threads, env=threads_env,
             note=f"Pyro5 server runs with PYRO_THREADPOOL_SIZE={counts.threads + 20}; meshrpc with its "
                  "defaults; raw: a thread per connection"),
        Case(7, "discovery", "discovery: Proxy(\"PYRONAME:...\") until the first call returns",
             [Row("cold", "cold registry (new realm)", "ms", False, False),
              Row("warm", "warm registry", "ms", False, False)],
             ("meshrpc",), measure_discovery, placeholder=True),
        Case(8, "idle", f"server memory with {counts.idle_proxies} connected idle proxies (serpent)",
             [Row("rss_growth", "server RSS growth", "MiB", False, False),
              Row("per_connection", "per idle connection", "KiB", False, False)],
             LIBS, measure_idle, env=idle_env,
             note=f"Pyro5 server runs with PYRO_THREADPOOL_SIZE={counts.idle_proxies + 20} (a thread per "
                  "connection); meshrpc with its defaults (idle connections hold no thread)"),
        Case(9, "spaced", f"spaced calls: int echo (serpent), then time.sleep(gap); {counts.spaced_calls} "
             f"calls at 100 us, {max(1, counts.spaced_calls // 2)} at 1 ms",
             [row for gap in ("100us", "1000us")
              for row in [Row(f"rate_{gap}", f"gap {gap}", "calls/s", True, True)] + cpu_rows(f"gap {gap}", f"_{gap}")],
             LIBS + ("raw",), measure_spaced,
             note="CPU/call: user+system CPU of each process over the measured calls (10 ms ticks); the "
                  "client's share includes its sleeps' wake-ups, the same for every library"),
    ]


# ====================================================================== running

def run_one(case: Case, lib: str, counts: Counts) -> tuple[dict[str, float] | None, str | None]:
    """One (case, library) measurement against a fresh server: (values, error)."""
    name = None
    extra_env = case.env(lib, counts)
    if case.name == "discovery":
        name = "bench.discovery." + uuid.uuid4().hex[:8]
        realm = "bench-" + uuid.uuid4().hex[:12]
        extra_env = {**extra_env, "MESHRPC_REALM": realm}
    srv = None
    try:
        with Server(lib, env=extra_env, name=name) as srv:
            if name:
                srv.name, srv.realm = name, extra_env["MESHRPC_REALM"]  # type: ignore[attr-defined]
            return case.measure(lib, srv, counts), None
    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
        detail = f"{type(exc).__name__}: {exc}"
        tail = srv.stderr_tail(600) if srv is not None else ""
        if tail:
            detail += f" | server stderr: {tail}"
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
        return None, detail


def run_cases(cases: list[Case], counts: Counts, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    samples: dict[tuple[str, str, str], list[float]] = {}
    errors: dict[tuple[str, str], list[str]] = {}
    notes: dict[tuple[str, str], list[str]] = {}
    skipped: dict[str, str] = {}
    for case in cases:
        if case.name == "discovery":
            ok, why = discovery_status()
            if not ok:
                skipped[case.name] = why
            else:
                case.note = why
    for rnd in range(rounds):
        for case in cases:
            if case.name in skipped:
                continue
            libs = [lib for lib in case.libs if lib != "grpc" or grpc_available()]
            shift = rnd % len(libs)
            for lib in libs[shift:] + libs[:shift]:  # rotate who goes first
                log(f"[round {rnd + 1}/{rounds}] case {case.number} {case.name}: {LIB_TITLES[lib]} ...")
                t0 = time.monotonic()
                values, error = run_one(case, lib, counts)
                if error:
                    log(f"    ERROR {error}")
                    errors.setdefault((case.name, lib), []).append(f"round {rnd + 1}: {error}")
                    continue
                assert values is not None
                note = values.pop("_note", None)
                if note:
                    notes.setdefault((case.name, lib), []).append(f"round {rnd + 1}: {note}")
                for key, value in values.items():
                    samples.setdefault((case.name, key, lib), []).append(float(value))
                log(f"    done in {time.monotonic() - t0:.1f}s: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    for case in cases:
        entry: dict[str, Any] = {"number": case.number, "title": case.title, "note": case.note,
                                 "libs": list(case.libs), "rows": []}
        if case.name in skipped:
            entry["status"] = "skipped"
            entry["note"] = skipped[case.name]
            results[case.name] = entry
            continue
        entry["status"] = "ok"
        for row in case.rows:
            r: dict[str, Any] = {"key": row.key, "label": row.label, "unit": row.unit,
                                 "higher_is_better": row.higher_is_better}
            for lib in ("meshrpc", "pyro5", "raw", "grpc"):
                vals = samples.get((case.name, row.key, lib), [])
                applies = lib in case.libs and (lib != "raw" or row.raw) and (lib != "grpc" or bool(vals))
                r[lib] = statistics.median(vals) if vals and applies else None
                if applies:
                    r.setdefault("samples", {})[lib] = vals
            r["ratio_pyro5"] = ratio(r["meshrpc"], r["pyro5"])
            r["ratio_raw"] = ratio(r["meshrpc"], r["raw"])
            r["ratio_grpc"] = ratio(r["meshrpc"], r["grpc"])
            entry["rows"].append(r)
        entry["errors"] = {lib: errs for (cname, lib), errs in errors.items() if cname == case.name}
        entry["notes"] = {lib: ns for (cname, lib), ns in notes.items() if cname == case.name}
        if entry["errors"]:
            entry["status"] = "errors"
        results[case.name] = entry
    return results


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


# ====================================================================== output

def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "calls/s":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_table(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    out = io.StringIO()
    w = out.write
    w(f"meshrpc {meta['versions'].get('meshrpc')} vs Pyro5 {meta['versions'].get('Pyro5')} "
      f"(serpent {meta['versions'].get('serpent')}, msgpack {meta['versions'].get('msgpack')}), "
      f"Python {meta['python']}, {meta['cpus']} CPUs, 127.0.0.1\n")
    w(f"medians over {meta['rounds']} round(s){' (QUICK: tiny counts, numbers meaningless)' if meta['quick'] else ''}; "
      "ratios are meshrpc/Pyro5 and meshrpc/raw of the figure as shown "
      "(↑ higher is better, ↓ lower is better)\n")
    w(f"command: {meta['command']}\n")
    if meta.get("env"):
        w("settings: " + " ".join(f"{k}={v}" for k, v in meta["env"].items()) + "\n")
    w("\n")
    header = f"{'case / metric':<44} {'meshrpc':>12} {'Pyro5':>12} {'raw':>12} {'mesh/Pyro5':>11} {'mesh/raw':>9}\n"
    w(header)
    w("-" * (len(header) - 1) + "\n")
    for name, case in doc["cases"].items():
        w(f"{case['number']}. {case['title']}  [{name}]\n")
        if case["status"] == "skipped":
            w(f"   SKIPPED: {case['note']}\n\n")
            continue
        for row in case["rows"]:
            arrow = "↑" if row["higher_is_better"] else "↓"
            label = f"   {row['label']} ({row['unit']} {arrow})"
            cells = []
            for lib in ("meshrpc", "pyro5", "raw"):
                v = row[lib]
                if v is None and lib in case.get("errors", {}):
                    cells.append("ERROR")
                else:
                    cells.append(fmt_value(v, row["unit"]))
            w(f"{label:<44} {cells[0]:>12} {cells[1]:>12} {cells[2]:>12} "
              f"{fmt_ratio(row['ratio_pyro5']):>11} {fmt_ratio(row['ratio_raw']):>9}\n")
            if row.get("grpc") is not None:  # gRPC's figure (case 5) on a line of its own
                w(f"{'':<44} {'gRPC':>12} {fmt_value(row['grpc'], row['unit']):>12} {'':>12} "
                  f"{'mesh/gRPC':>11} {fmt_ratio(row['ratio_grpc']):>9}\n")
        if case.get("note"):
            w(f"   note: {case['note']}\n")
        if "grpc" in case.get("libs", ()) and not any(row.get("grpc") is not None for row in case["rows"]):
            w("   gRPC: not measured (grpcio is not installed: pip install -e .[bench])\n")
        for lib, errs in case.get("errors", {}).items():
            for err in errs[:3]:
                w(f"   ERROR {LIB_TITLES[lib]}: {err[:400]}\n")
        for lib, ns in case.get("notes", {}).items():
            for n in ns[:3]:
                w(f"   {LIB_TITLES[lib]}: {n[:300]}\n")
        w("\n")
    return out.getvalue()


def versions() -> dict[str, str]:
    out = {}
    for mod in ("meshrpc", "Pyro5", "serpent", "msgpack"):
        try:
            module = __import__(mod)
            out[mod] = str(getattr(module, "__version__", "?"))
        except Exception:  # noqa: BLE001
            out[mod] = "missing"
    return out


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=REPO, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


# ====================================================================== profiling

def short_path(path: str) -> str:
    for prefix, label in ((REPO + os.sep, ""), (sysconfig.get_paths()["purelib"] + os.sep, ""),
                          (sysconfig.get_paths()["stdlib"] + os.sep, "<stdlib>/")):
        if path.startswith(prefix):
            return label + path[len(prefix):]
    return path


def func_label(key: tuple) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    return f"{short_path(filename)}:{line}({func})"


def top_rows(stats: pstats.Stats, sort: str, limit: int, calls: int) -> list[dict[str, Any]]:
    entries = []
    for key, (cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append({"function": func_label(key), "ncalls": nc, "primitive_calls": cc, "tottime": tt,
                        "cumtime": ct, "calls_per_rpc": nc / calls, "tottime_us_per_rpc": tt / calls * 1e6,
                        "cumtime_us_per_rpc": ct / calls * 1e6})
    field = "cumtime" if sort == "cumulative" else "tottime"
    entries.sort(key=lambda e: e[field], reverse=True)
    return entries[:limit]


# builtins whose own time is (mostly) blocking, not Python work; select.poll.poll is listed apart because
# meshrpc's spin-wait calls it with a zero timeout, where its time is CPU spent spinning
WAIT_GROUPS = {
    "socket recv": ("<method 'recv' of '_socket.socket' objects>", "<method 'recv_into' of '_socket.socket' objects>"),
    "socket sendall": ("<method 'sendall' of '_socket.socket' objects>", "<method 'send' of '_socket.socket' objects>"),
    "select.poll.poll": ("<method 'poll' of 'select.poll' objects>",),
    "idle (epoll, locks, sleep)": ("<method 'poll' of 'select.epoll' objects>",
                                   "<method 'acquire' of '_thread.lock' objects>",
                                   "<method 'acquire' of '_thread.RLock' objects>",
                                   "<built-in method time.sleep>"),
}


def time_breakdown(stats: pstats.Stats, calls: int) -> dict[str, float]:
    """Own time per rpc (us) of blocking builtins by group, and of everything else ("python work")."""
    groups = {name: 0.0 for name in WAIT_GROUPS}
    total = 0.0
    for key, (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tt
        label = func_label(key)
        for name, members in WAIT_GROUPS.items():
            if label in members:
                groups[name] += tt
                break
    out = {name: value / calls * 1e6 for name, value in groups.items()}
    out["python work (the rest)"] = (total - sum(groups.values())) / calls * 1e6
    return out


def render_profile_rows(title: str, rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    out.write(f"{title}\n")
    out.write(f"{'ncalls':>9} {'/rpc':>6} {'tottime':>8} {'cumtime':>8} {'tot us/rpc':>10} {'cum us/rpc':>10}  function\n")
    for e in rows:
        out.write(f"{e['ncalls']:>9} {e['calls_per_rpc']:>6.2f} {e['tottime']:>8.3f} {e['cumtime']:>8.3f} "
                  f"{e['tottime_us_per_rpc']:>10.1f} {e['cumtime_us_per_rpc']:>10.1f}  {e['function'][:110]}\n")
    return out.getvalue()


def profile_workload(lib: str, proxy: Any, case: str, batch_size: int) -> Callable[[int], None]:
    """The loop --profile runs: `run(n)` makes n rpcs (a batch of batch_size calls counts as one)."""
    if case == "batch":
        api = client_api(lib)

        def run(n: int) -> None:
            for _ in range(n):
                batch = api.BatchProxy(proxy)
                for i in range(batch_size):
                    batch.echo(i)
                list(batch())
        return run
    echo = proxy.echo
    if case == "spaced":
        sleep = time.sleep

        def run(n: int) -> None:
            for i in range(n):
                echo(i)
                sleep(100e-6)
        return run

    def run(n: int) -> None:
        for i in range(n):
            echo(i)
    return run


PROFILE_CASES = {"small": "case 1 (serpent)", "batch": "case 2 (serpent, batches of 1000 calls; an rpc is a batch)",
                 "spaced": "case 9 (serpent, calls 100 us apart)"}


def run_profile(libs: list[str], calls: int, warmup: int, limit: int, case: str = "small",
                batch_size: int = 1000) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for lib in libs:
        log(f"profiling {PROFILE_CASES[case]} for {LIB_TITLES[lib]}: {calls} rpcs, client and server under cProfile")
        fd, server_file = tempfile.mkstemp(suffix=".prof", prefix=f"bench-{lib}-server-")
        os.close(fd)
        try:
            with Server(lib, profile_out=server_file) as srv:
                proxy = bound_proxy(lib, srv.uri, "serpent")
                run = profile_workload(lib, proxy, case, batch_size)
                run(warmup)
                prof = cProfile.Profile()
                start = perf()
                prof.enable()
                run(calls)
                prof.disable()
                elapsed = perf() - start
                proxy._pyroRelease()
                srv.stop()
                tail = srv.stderr_tail()
            for line in tail.splitlines():
                if line.startswith("profile:"):
                    log(f"{lib} server {line}")
            client_stats = pstats.Stats(prof)
            if os.path.getsize(server_file) == 0:
                raise RuntimeError(f"the {lib} server wrote no profile; stderr: {tail}")
            server_stats = pstats.Stats(server_file)
            total_calls = calls + warmup + 2  # the server also saw the warmup, the handshake and metadata
            report[lib] = {
                "case": PROFILE_CASES[case],
                "calls": calls,
                "calls_per_s_under_profile": calls / elapsed,
                "client": {"cumulative": top_rows(client_stats, "cumulative", limit, calls),
                           "tottime": top_rows(client_stats, "tottime", limit, calls),
                           "total_tottime": client_stats.total_tt,  # type: ignore[attr-defined]
                           "breakdown_us_per_rpc": time_breakdown(client_stats, calls)},
                "server": {"cumulative": top_rows(server_stats, "cumulative", limit, total_calls),
                           "tottime": top_rows(server_stats, "tottime", limit, total_calls),
                           "total_tottime": server_stats.total_tt,  # type: ignore[attr-defined]
                           "breakdown_us_per_rpc": time_breakdown(server_stats, total_calls),
                           "note": "all server threads merged; the daemon also handled the warmup calls, "
                                   "so per-rpc figures divide by calls+warmup"},
            }
        finally:
            try:
                os.unlink(server_file)
            except OSError:
                pass
    return report


def render_profile(report: dict[str, Any], limit: int) -> str:
    out = io.StringIO()
    for lib, data in report.items():
        out.write(f"=== {LIB_TITLES[lib]}: {data['case']}, {data['calls']} rpcs, "
                  f"{data['calls_per_s_under_profile']:,.0f} rpcs/s under cProfile ===\n")
        out.write("own time per rpc (us, under cProfile), blocking builtins apart from python work:\n")
        for side in ("client", "server"):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in data[side]["breakdown_us_per_rpc"].items())
            out.write(f"  {side}: {parts}\n")
        out.write("\n")
        for side in ("client", "server"):
            for sort in ("cumulative", "tottime"):
                out.write(render_profile_rows(f"--- {LIB_TITLES[lib]} {side}: top {limit} by {sort} "
                                              f"(total {data[side]['total_tottime']:.3f}s)",
                                              data[side][sort]))
                out.write("\n")
    return out.getvalue()


# ====================================================================== main

def parse_cases(text: str, all_cases: list[Case]) -> list[Case]:
    if text in ("", "all"):
        return all_cases
    chosen = []
    for token in text.split(","):
        token = token.strip()
        if not token:
            continue
        match = [c for c in all_cases if token == c.name or token == str(c.number)]
        if not match:
            raise SystemExit(f"unknown case {token!r}; choose from "
                             + ", ".join(f"{c.number}/{c.name}" for c in all_cases))
        if match[0] not in chosen:
            chosen.append(match[0])
    return sorted(chosen, key=lambda c: c.number)


def raise_fd_limit() -> None:
    """Many connected proxies need many descriptors, on both sides."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="rounds; figures are medians (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run, not a measurement")
    parser.add_argument("--cases", default="all", help="comma-separated case names or numbers "
                        "(small,batch,oneway,connect,large,threads,discovery,idle,spaced or 1-9)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout (no table)")
    parser.add_argument("--json-out", metavar="FILE", help="also write the JSON results to FILE")
    parser.add_argument("--threads", type=int, help="client threads in case 6 (default 100, quick 4)")
    parser.add_argument("--duration", type=float, help="seconds of hammering in case 6 (default 3)")
    parser.add_argument("--calls", type=int, help="calls per measurement in case 1 (default 5000)")
    parser.add_argument("--profile", action="store_true",
                        help="run case 1 (serpent) with client and server under cProfile and print the top functions")
    parser.add_argument("--profile-libs", default="meshrpc,pyro5", help="libraries to profile (default both)")
    parser.add_argument("--profile-top", type=int, default=25, help="functions per profile listing")
    parser.add_argument("--mesh-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a meshrpc setting for client and servers (as MESHRPC_NAME), e.g. SPIN_WAIT=0.0002 (spinning is off by default); repeatable")
    parser.add_argument("--pyro-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a Pyro5 setting for client and servers (as PYRO_NAME), e.g. SOCK_NODELAY=true; repeatable")
    parser.add_argument("--serve", choices=["meshrpc", "pyro5", "raw", "grpc"], help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_fd_limit()

    if args.serve:
        return serve_main(args.serve, args.profile_out, args.name)

    # settings travel as environment variables: read by both libraries at import, here (no import of
    # them has happened yet) and in every server process
    for prefix, items in (("MESHRPC_", args.mesh_setting), ("PYRO_", args.pyro_setting)):
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise SystemExit(f"expected NAME=VALUE, got {item!r}")
            os.environ[prefix + key.strip().upper()] = value.strip()
    counts = Counts(**vars(QUICK if args.quick else FULL))
    if args.threads is not None:
        counts.threads = max(1, args.threads)
    if args.duration is not None:
        counts.duration = max(0.05, args.duration)
    if args.calls is not None:
        counts.small_calls = max(1, args.calls)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    rounds = max(1, rounds)
    command = " ".join(shlex.quote(a) for a in ["python3", os.path.relpath(THIS, os.getcwd())]
                       + list(sys.argv[1:] if argv is None else argv))
    meta = {"command": command, "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "rounds": rounds, "quick": args.quick, "versions": versions(),
            "git": git_revision(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "counts": vars(counts), "host": "127.0.0.1",
            "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("MESHRPC_", "PYRO_"))}}

    if args.profile:
        libs = [lib.strip() for lib in args.profile_libs.split(",") if lib.strip()]
        for lib in libs:
            if lib not in LIBS:
                raise SystemExit(f"unknown library {lib!r} for --profile-libs")
        case = {"all": "small", "small": "small", "1": "small", "batch": "batch", "2": "batch",
                "spaced": "spaced", "9": "spaced"}.get(args.cases)
        if case is None:
            raise SystemExit("--profile runs one case: --cases small (the default), batch or spaced")
        if case == "batch":
            calls, warmup = (2, 1) if args.quick else (50, 3)
        else:
            calls, warmup = (counts.small_calls if args.calls is not None or args.quick else 5000), counts.small_warmup
        report = run_profile(libs, calls, warmup, args.profile_top, case, counts.batch_size)
        doc = {"meta": meta, "profile": report}
        if args.json_out:
            with open(args.json_out, "w") as fh:
                json.dump(doc, fh, indent=2)
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(render_profile(report, args.profile_top))
        return 0

    cases = parse_cases(args.cases, build_cases(counts))
    started = time.monotonic()
    results = run_cases(cases, counts, rounds)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    doc = {"meta": meta, "cases": results}
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(doc, fh, indent=2)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(doc))
        print(f"(took {meta['elapsed_s']}s)")
    # fail when some figure that should exist has no sample at all (placeholders may skip or fail)
    missing = []
    for case in cases:
        entry = results[case.name]
        if case.placeholder or entry["status"] == "skipped":
            continue
        for row in entry["rows"]:
            for lib in case.libs:
                if lib == "grpc":  # optional, and for the echo rows only
                    continue
                if (lib != "raw" or any(r.raw for r in case.rows if r.key == row["key"])) and row.get(lib) is None:
                    missing.append(f"{case.name}/{row['key']}/{lib}")
    if missing:
        log("no result for: " + ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
