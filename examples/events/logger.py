"""A logger: writes every home event it hears, with the publisher's time and the event's number.

    python3 examples/events/logger.py            # until Ctrl-C

It subscribes to `home.>` (everything under home) with the module-level meshrpc.events functions.
If events were ever lost on the way (a full backlog at a slow moment), it says how many.
"""

import threading
import time

import meshrpc.events


def log_event(event: meshrpc.events.Event) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    print(f"logger: {stamp} {event.subject} {event.msg} (#{event.seq})", flush=True)


def main() -> None:
    meshrpc.events.subscribe("home.>", log_event)
    print("ready: logging home.>", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        lost = meshrpc.events.default_bus().stats()["lost"]
        meshrpc.events.close()
        print(f"logger: stopped ({lost} events lost)", flush=True)


if __name__ == "__main__":
    main()
