"""The asyncio controller of examples/asyncio_home: finds the motion sensors and lamps by their tags
(PYROMETA:), subscribes to the sensors with a callback object of its own, and switches a room's lamp
on when its sensor reports motion. Everything runs on one event loop; no call blocks it.

    python3 examples/asyncio_home/controller.py      # start devices.py first
"""

import asyncio

import meshrpc
import meshrpc.aio

ROOMS = ("hall", "porch")
EVENTS_PER_ROOM = 3


class Controller:
    def __init__(self, lamps: dict[str, meshrpc.aio.Proxy]) -> None:
        self.lamps = lamps
        self.seen = {room: 0 for room in lamps}
        self.all_seen = asyncio.Event()

    @meshrpc.expose
    @meshrpc.oneway
    async def motion(self, room: str) -> None:
        """Called back by a sensor (on this program's loop)."""
        self.seen[room] += 1
        if self.seen[room] == 1:
            print(f"motion in the {room}: {await self.lamps[room].switch(True)}", flush=True)
        if all(count >= EVENTS_PER_ROOM for count in self.seen.values()):
            self.all_seen.set()


async def main() -> None:
    sensors = {room: meshrpc.aio.Proxy(f"PYROMETA:aiohome,motion,{room}") for room in ROOMS}
    lamps = {room: meshrpc.aio.Proxy(f"PYROMETA:aiohome,lamp,{room}") for room in ROOMS}
    controller = Controller(lamps)
    callbacks = meshrpc.aio.Daemon()      # hosts our callback object, on this loop
    callbacks.register(controller)
    async with callbacks:
        # subscribe to every sensor at once: the lookups and calls run side by side
        for answer in await asyncio.gather(*(sensor.subscribe(controller) for sensor in sensors.values())):
            print(answer, flush=True)
        await asyncio.wait_for(controller.all_seen.wait(), 30)
        for room, lamp in lamps.items():
            print(f"{room} lamp: {'on' if await lamp.on else 'off'} after {controller.seen[room]} motion events",
                  flush=True)
        for proxy in (*sensors.values(), *lamps.values()):
            await proxy._pyroRelease()


if __name__ == "__main__":
    asyncio.run(main())
