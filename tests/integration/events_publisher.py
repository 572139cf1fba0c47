"""A publisher for the events tests: waits for subscribers, publishes numbered events, reports.

    events_publisher.py --subjects a.b,c.d --count N [--rate R] [--subscribers K] [--retain-first]
                        [--watch-subject S] [--linger SECONDS]

Event i goes to subjects[i % len(subjects)] with message i. Prints `ready: K subscribers`, then
`subscribers N` whenever the number of known subscribers changes, then after a flush one JSON line
`{"stats": ...}`. Environment as any meshrpc program (MESHRPC_REALM, MESHRPC_EVENTS_*).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from meshrpc.events import EventBus


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--subjects", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    p.add_argument("--subscribers", type=int, default=1)
    p.add_argument("--retain", action="store_true", help="publish every event with retain=True")
    p.add_argument("--linger", type=float, default=0.0, help="seconds to stay after the last event")
    args = p.parse_args()
    subjects = args.subjects.split(",")
    with EventBus() as bus:
        found = bus.wait_for_subscribers(None, args.subscribers, 30.0)
        print(f"ready: {found} subscribers", flush=True)
        known = len(bus.subscribers())
        started = time.monotonic()
        for i in range(args.count):
            bus.publish(subjects[i % len(subjects)], i, retain=args.retain)
            if args.rate:
                delay = started + (i + 1) / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            now_known = len(bus.subscribers())
            if now_known != known:
                known = now_known
                print(f"subscribers {known} after event {i} at {time.monotonic() - started:.2f} s", flush=True)
        print(f"published {args.count} in {time.monotonic() - started:.2f} s", flush=True)
        bus.flush(30.0)
        deadline = time.monotonic() + args.linger
        while time.monotonic() < deadline:
            now_known = len(bus.subscribers())
            if now_known != known:
                known = now_known
                print(f"subscribers {known} at {time.monotonic() - started:.2f} s", flush=True)
            time.sleep(0.05)
        print(json.dumps({"stats": bus.stats()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
