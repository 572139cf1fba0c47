"""Helpers for tests: wait for a condition with a deadline instead of sleeping."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 5.0, interval: float = 0.01,
               message: str = "condition") -> T:
    """Poll `condition` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def rss_mb() -> float | None:
    """This process's resident memory in MiB (None where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def handshaken_sessions(serializer: str = "serpent", *, pipelining: bool = False, **settings: object) -> tuple:
    """A wire.session ClientSession and ServerSession that completed their handshake in memory (no
    sockets), with Settings(**settings) on both sides, pipelining agreed when asked: (client, server)."""
    from meshrpc.config import Settings
    from meshrpc.wire.serializers import BY_NAME
    from meshrpc.wire.session import ClientSession, ServerSession
    config = Settings(**settings)
    client = ClientSession(BY_NAME[serializer], config, pipelining=pipelining)
    server = ServerSession(config, pipelining=pipelining)
    server.receive_data(b"".join(client.connect_request("obj", "hello", {}, None)))
    client.receive_data(b"".join(server.accept_connect(server.next_event(), "hello", {"methods": {"echo"}})))
    client.next_event()
    assert client.pipelined == pipelining
    return client, server
