"""Downloads a large result chunk by chunk and checks it (start server.py first).

    python3 examples/streaming/client.py [MEGABYTES]
"""

import hashlib
import sys
import time

import meshrpc


def main() -> int:
    size = int(float(sys.argv[1] if len(sys.argv) > 1 else 16) * 1024 * 1024)
    with meshrpc.Proxy("PYRONAME:example.files") as files:
        files._pyroSerializer = "marshal"  # bytes travel as bytes (serpent would send them base64-encoded)
        started = time.perf_counter()
        digest, received, chunks = hashlib.sha256(), 0, 0
        for chunk in files.download(size):  # each step pulls the next chunk from the daemon
            digest.update(chunk)
            received += len(chunk)
            chunks += 1
        seconds = time.perf_counter() - started
        expected = files.sha256(size)
    ok = digest.hexdigest() == expected
    print(f"received {received / 2**20:.1f} MiB in {chunks} chunks, {received / 2**20 / seconds:.0f} MiB/s; "
          f"checksum {'matches' if ok else 'DIFFERS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
