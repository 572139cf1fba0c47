"""A counter for trying batched and oneway calls. Registered as a class: each connection gets its own
instance (instance mode "session"), so every client starts counting at zero.

    python3 examples/batch_oneway/server.py      # serves until Ctrl-C
"""

import time

import meshrpc


@meshrpc.behavior(instance_mode="session")
@meshrpc.expose
class Counter:
    def __init__(self) -> None:
        self.total = 0
        self.notes: list[str] = []

    def add(self, n: int) -> int:
        self.total += n
        return self.total

    @meshrpc.oneway
    def note(self, text: str) -> None:
        time.sleep(0.5)  # slow, but the caller does not wait for it
        self.notes.append(text)

    def summary(self) -> dict:
        return {"total": self.total, "notes": list(self.notes)}


def main() -> None:
    with meshrpc.Daemon() as daemon:
        uri = daemon.register(Counter, name="example.counter")  # the class, not an instance
        print(f"ready: {uri}", flush=True)
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
