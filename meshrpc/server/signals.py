"""Stopping a daemon on the signals a service manager sends (systemd, docker and kill send SIGTERM).

`requestLoop()` and `serve()` use `stop_on_signals` when they run in the main thread; a program that
handles signals itself calls `daemon.shutdown()` from its own handler (safe there) instead.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

DEFAULT_SIGNALS = (signal.SIGTERM,)  # Ctrl-C (SIGINT) is Python's KeyboardInterrupt already


@contextlib.contextmanager
def stop_on_signals(daemon: Any, signals: tuple[int, ...] = DEFAULT_SIGNALS) -> Iterator[list[int]]:
    """While inside: each of signals calls daemon.shutdown() (the loop ends, goodbyes go out when the
    daemon closes). Only in the main thread (Python delivers signals there), and only for signals whose
    handler is still the default one: a program's own handler is left alone. Yields the signals taken
    over; the previous handlers are back at the end."""
    taken: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signals:
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                taken[signum] = signal.signal(signum, lambda _signum, _frame: daemon.shutdown())
    try:
        yield list(taken)
    finally:
        for signum, previous in taken.items():
            signal.signal(signum, previous)
