#!/usr/bin/env python3
"""How much CPU a receiver spends per 10 MiB read from loopback TCP, by where its buffer starts.

Why meshrpc's FrameReader receives the rest of a large frame at a page boundary (wire/frame.py, PAGE):
the kernel's copy into memory 16 bytes past a page, which is where malloc puts a large bytearray's
bytes, cost the receiver clearly more CPU than a copy into a page-aligned buffer on the machine of
docs/performance.md. A sender process and a receiver process, one blocking socket each; the receiver
reads ROUNDS messages into one buffer (an anonymous mapping, at OFFSET bytes past a page, or a plain
bytearray) and reports its CPU per message.

    python3 tools/recv_alignment.py                # offsets 0, 16, 64 and a bytearray, 3 times each
    python3 tools/recv_alignment.py --offsets 0,16 --repeat 5
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import socket
import subprocess
import sys
import time

SIZE = 10 * 1024 * 1024
ROUNDS = 40


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receive(port: int, where: str) -> None:
    """The receiver: ROUNDS messages of SIZE bytes into one buffer; prints its CPU per message."""
    if where == "bytearray":
        buffer: object = bytearray(SIZE)
    else:
        area = mmap.mmap(-1, SIZE + mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)  # as FrameReader's
        area.write(b"\1" * len(area))  # touched once, as a buffer kept for the next frame is
        buffer = memoryview(area)[int(where):int(where) + SIZE]
    view = memoryview(buffer)  # type: ignore[arg-type]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.recv_into(view[:1])  # the sender's go
    start = cpu_seconds()
    for _ in range(ROUNDS):
        got = 0
        while got < SIZE:
            count = sock.recv_into(view[got:])
            if not count:
                raise ConnectionError("the sender closed early")
            got += count
        sock.sendall(b"!")
    print(f"{(cpu_seconds() - start) / ROUNDS * 1000:.2f}", flush=True)


def measure(where: str) -> tuple[float, float]:
    """(receiver CPU ms per message, MiB/s) with the receiver's buffer at `where`."""
    listener = socket.create_server(("127.0.0.1", 0))
    child = subprocess.Popen([sys.executable, __file__, "--receive", str(listener.getsockname()[1]), where],
                             stdout=subprocess.PIPE, text=True)
    sock, _ = listener.accept()
    listener.close()
    payload = os.urandom(SIZE)
    sock.sendall(b"g")
    began = time.perf_counter()
    for _ in range(ROUNDS):
        sock.sendall(payload)
        sock.recv(1)
    elapsed = time.perf_counter() - began
    sock.close()
    out, _ = child.communicate(timeout=60)
    return float(out), ROUNDS * SIZE / elapsed / 2 ** 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offsets", default="0,16,64,bytearray",
                        help="where the receive buffer starts: bytes past a page, or 'bytearray'")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--receive", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receive:
        receive(int(args.receive[0]), args.receive[1])
        return 0
    print(f"receiver CPU per {SIZE >> 20} MiB message, {ROUNDS} messages per run; load {os.getloadavg()[0]:.2f}")
    for _ in range(args.repeat):
        for where in args.offsets.split(","):
            cpu_ms, rate = measure(where)
            label = where if where == "bytearray" else f"page + {where}"
            print(f"  {label:>12}: {cpu_ms:5.2f} ms CPU  {rate:6.0f} MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
