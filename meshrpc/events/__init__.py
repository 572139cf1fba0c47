"""Events on the mesh: publish/subscribe without a broker (docs/events.md).

    bus = EventBus()                       # or EventBus(settings), EventBus(server="host:port")
    sub = bus.subscribe("home.*.door", lambda ev: print(ev.subject, ev.msg))
    bus.publish("home.hall.door", {"open": True})
    sub.unsubscribe(); bus.close()

`publish`, `subscribe` and `close` at module level use one bus per process, made on first use.
"""

from __future__ import annotations

import threading
from typing import Any

from ..wire.serializers import register_class_to_dict, register_dict_to_class
from ..wire.constants import EVENT_CLASS
from ..wire.constants import EVENTS_INBOX_NAME as INBOX_NAME, EVENTS_SERVER_NAME as SERVER_NAME  # public names
from .bus import EventBus
from .inbox import Event, Handler, Subscription
from .subjects import Pattern, SubjectError, check_subject

__all__ = ["INBOX_NAME", "SERVER_NAME", "Event", "EventBus", "Handler", "Pattern", "SubjectError",
           "Subscription", "check_subject", "close", "default_bus", "publish", "subscribe"]

# Pyro3-style subscribers get event(ev) with an Event: it travels as a dict with this class name
register_class_to_dict(Event, lambda ev: {"__class__": EVENT_CLASS, "subject": ev.subject, "msg": ev.msg,
                                          "time": ev.time})
register_dict_to_class(EVENT_CLASS, lambda _name, d: Event(d.get("subject", ""), d.get("msg"), d.get("time", 0.0)))

_default: EventBus | None = None
_default_lock = threading.Lock()


def default_bus() -> EventBus:
    """The process's bus for the module-level functions (meshrpc.config's settings), made on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = EventBus()
        return _default


def publish(subject: str, message: Any, *, retain: bool = False) -> int:
    return default_bus().publish(subject, message, retain=retain)


def subscribe(patterns: Any, handler: Handler, *, regex: bool = False) -> Subscription:
    return default_bus().subscribe(patterns, handler, regex=regex)


def close(flush: float = 0.0) -> None:
    """Close the process's bus (a later publish or subscribe makes a new one)."""
    global _default
    with _default_lock:
        bus, _default = _default, None
    if bus is not None:
        bus.close(flush)
