"""A door sensor: publishes `home.hall.door` events (open, closed, ...) on the mesh, no broker.

    python3 examples/events/door_sensor.py [COUNT] [--subscribers N]

It waits (up to 10 s) until N subscribers are known, publishes COUNT changes half a second apart
(the last state retained for subscribers that start later), waits until they were delivered, and
exits.
"""

import argparse
import time

from meshrpc.events import EventBus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", type=int, nargs="?", default=6)
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.5)
    args = parser.parse_args()
    with EventBus() as bus:
        found = bus.wait_for_subscribers("home.hall.door", args.subscribers, timeout=10.0)
        print(f"door sensor: {found} subscribers listening", flush=True)
        for i in range(args.count):
            state = "open" if i % 2 == 0 else "closed"
            bus.publish("home.hall.door", {"state": state, "change": i + 1}, retain=True)
            print(f"door sensor: the hall door is {state}", flush=True)
            time.sleep(args.pause)          # a real door is not opened thousands of times a second
        bus.flush(10.0)
        stats = bus.stats()
        print(f"door sensor: {stats['published']} events, {stats['delivered']} deliveries, "
              f"{stats['dropped']} dropped", flush=True)


if __name__ == "__main__":
    main()
