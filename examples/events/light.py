"""The hall light, in an asyncio program: turns on while any door of the home is open.

    python3 examples/events/light.py             # until Ctrl-C

It subscribes to `home.*.door` (one token for the room) with meshrpc.events.aio; the handler is a
coroutine and runs on this program's event loop.
"""

import asyncio

from meshrpc.events.aio import EventBus


async def main() -> None:
    open_doors: set[str] = set()

    async def on_door(event) -> None:
        room = event.subject.split(".")[1]
        if event.msg["state"] == "open":
            open_doors.add(room)
        else:
            open_doors.discard(room)
        print(f"light: {room} door {event.msg['state']} -> light {'on' if open_doors else 'off'}", flush=True)

    async with EventBus() as bus:
        await bus.subscribe("home.*.door", on_door)
        print("ready: the light follows home.*.door", flush=True)
        await asyncio.Event().wait()       # serve until Ctrl-C


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
