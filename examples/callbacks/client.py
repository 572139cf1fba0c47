"""Starts a job on `example.worker` and receives its progress through callbacks: the client runs a
daemon of its own for its listener object (start server.py first).

    python3 examples/callbacks/client.py [STEPS]
"""

import sys
import threading

import meshrpc


class Listener:
    def __init__(self) -> None:
        self.finished = threading.Event()

    @meshrpc.expose
    @meshrpc.callback  # an exception in here is also logged here, not only sent back
    def progress(self, job: str, step: int, steps: int) -> None:
        print(f"{job}: step {step}/{steps}", flush=True)

    @meshrpc.expose
    @meshrpc.callback
    def done(self, job: str, result: int) -> None:
        print(f"{job}: done, result {result}", flush=True)
        self.finished.set()


def main() -> int:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    listener = Listener()
    with meshrpc.Daemon() as daemon:  # the client's own daemon; no name: reachable by its PYRO URI only
        daemon.register(listener)
        loop = threading.Thread(target=daemon.requestLoop, daemon=True)
        loop.start()
        with meshrpc.Proxy("PYRONAME:example.worker") as worker:
            worker.start("report", steps, listener)  # a registered object travels as a proxy to it
        ok = listener.finished.wait(30)
        daemon.shutdown()
        loop.join(10)
    if not ok:
        print("no result within 30 s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
