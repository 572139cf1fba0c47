"""A worker for tests/integration/test_aio_resilience.py: an asyncio daemon in a process of its own.

    python3 aio_resilience_server.py LABEL RUNS_FILE     # serves "resil.worker" until SIGINT

Every run of a method is appended to RUNS_FILE ("start LABEL METHOD TAG"), so a test can count runs
across processes (a kill -9 loses nothing already written)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import meshrpc
import meshrpc.aio


def main() -> None:
    label, runs_file = sys.argv[1], sys.argv[2]

    def record(method: str, tag: str) -> None:
        with open(runs_file, "a") as runs:
            runs.write(f"start {label} {method} {tag}\n")
            runs.flush()
            os.fsync(runs.fileno())

    @meshrpc.expose
    class Worker:
        @meshrpc.idempotent
        async def lookup(self, seconds: float, tag: str) -> str:
            record("lookup", tag)
            await asyncio.sleep(seconds)
            return f"lookup {tag} by {label}"

        async def write(self, seconds: float, tag: str) -> str:
            record("write", tag)
            await asyncio.sleep(seconds)
            return f"write {tag} by {label}"

    async def serve() -> None:
        daemon = meshrpc.aio.Daemon()
        uri = daemon.register(Worker(), name="resil.worker")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, daemon.shutdown)
        loop.add_signal_handler(signal.SIGTERM, daemon.shutdown)
        await daemon.start()
        print(f"ready: {label} {uri}", flush=True)
        await daemon.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
