"""Home automation on asyncio: motion sensors and lamps served by one meshrpc.aio.Daemon, each
announced on the mesh with tags (`aiohome`, `motion` or `lamp`, and the room).

    python3 examples/asyncio_home/devices.py         # serves until Ctrl-C

A sensor calls its subscribers back (oneway) when it sees motion; here motion is simulated: a few
events, a moment apart, after each subscription.
"""

import asyncio
import signal

import meshrpc
import meshrpc.aio

ROOMS = ("hall", "porch")
EVENTS_PER_SUBSCRIPTION = 3


@meshrpc.expose
class MotionSensor:
    def __init__(self, room: str) -> None:
        self.room = room
        self._tasks: set[asyncio.Task] = set()

    async def subscribe(self, listener: meshrpc.Proxy) -> str:
        """listener: the subscriber's callback object (it arrives as a proxy); called back on this loop."""
        watcher = meshrpc.aio.Proxy.from_proxy(listener)  # the asyncio twin: never blocks this loop
        task = asyncio.get_running_loop().create_task(self._report(watcher))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return f"{self.room} motion sensor: subscribed"

    async def _report(self, watcher: meshrpc.aio.Proxy) -> None:
        try:
            for _ in range(EVENTS_PER_SUBSCRIPTION):
                await asyncio.sleep(0.1)
                await watcher.motion(self.room)
        except meshrpc.errors.CommunicationError:
            pass  # the subscriber went away
        finally:
            await watcher._pyroRelease()


@meshrpc.expose
class Lamp:
    def __init__(self, room: str) -> None:
        self.room = room
        self._on = False

    @property
    def on(self) -> bool:
        return self._on

    @meshrpc.idempotent  # switching on twice is switching on once
    async def switch(self, on: bool) -> str:
        self._on = bool(on)
        return f"{self.room} lamp {'on' if self._on else 'off'}"


async def main() -> None:
    daemon = meshrpc.aio.Daemon()
    for room in ROOMS:
        daemon.register(MotionSensor(room), name=f"aiohome.{room}.motion", metadata={"aiohome", "motion", room})
        daemon.register(Lamp(room), name=f"aiohome.{room}.lamp", metadata={"aiohome", "lamp", room})
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, daemon.shutdown)   # Ctrl-C: a graceful shutdown, goodbyes
    loop.add_signal_handler(signal.SIGTERM, daemon.shutdown)
    await daemon.start()
    print(f"ready: {len(ROOMS)} motion sensors and {len(ROOMS)} lamps on {daemon.locationStr}", flush=True)
    await daemon.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
