"""One replica of `example.failover`. Run two or three, each with its own label.

    python3 examples/failover/replica.py A       # serves until Ctrl-C (or kill -9 it: that's the point)
"""

import os
import sys

import meshrpc


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else str(os.getpid())

    @meshrpc.expose
    class Square:
        @meshrpc.idempotent  # safe to run twice: a proxy may re-send it when a replica dies mid-call
        def square(self, n: int) -> dict:
            return {"replica": label, "result": n * n}

    with meshrpc.Daemon() as daemon:
        uri = daemon.register(Square(), name="example.failover", metadata={"replica-" + label})
        print(f"ready: replica {label} at {uri}", flush=True)
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
