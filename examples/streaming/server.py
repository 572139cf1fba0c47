"""Serves a large result as a stream of chunks: a generator is returned as a remote iterator, and
the client pulls one chunk at a time, so neither side holds the whole result.

    python3 examples/streaming/server.py         # serves until Ctrl-C
"""

import hashlib
import random
from collections.abc import Iterator

import meshrpc

CHUNK = 1024 * 1024


def content(size: int, seed: int) -> Iterator[bytes]:
    """`size` bytes of reproducible data, CHUNK bytes at a time."""
    rng = random.Random(seed)
    while size > 0:
        n = min(CHUNK, size)
        yield rng.randbytes(n)
        size -= n


@meshrpc.expose
class Files:
    def download(self, size: int, seed: int = 1) -> Iterator[bytes]:
        return content(size, seed)  # an iterator result becomes a stream

    def sha256(self, size: int, seed: int = 1) -> str:
        digest = hashlib.sha256()
        for chunk in content(size, seed):
            digest.update(chunk)
        return digest.hexdigest()


def main() -> None:
    with meshrpc.Daemon() as daemon:
        uri = daemon.register(Files(), name="example.files")
        print(f"ready: {uri}", flush=True)
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
