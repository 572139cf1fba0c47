"""A worker that reports back: `start(job, listener)` returns at once (oneway) and then calls the
client's listener object with progress and the result.

    python3 examples/callbacks/server.py         # serves until Ctrl-C
"""

import time

import meshrpc


@meshrpc.expose
class Worker:
    @meshrpc.oneway  # the caller does not wait; the work runs on the daemon's worker pool
    def start(self, job: str, steps: int, listener: meshrpc.Proxy) -> None:
        with listener:  # a proxy to the client's own object: it arrived as one (autoproxy)
            total = 0
            for step in range(1, steps + 1):
                time.sleep(0.05)  # pretend to work
                total += step
                listener.progress(job, step, steps)
            listener.done(job, total)


def main() -> None:
    with meshrpc.Daemon() as daemon:
        uri = daemon.register(Worker(), name="example.worker")
        print(f"ready: {uri}", flush=True)
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
