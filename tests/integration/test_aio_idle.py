"""The aio daemon's IDLE_TIMEOUT check never closes a connection whose next request has already
arrived: its client would hear "may have run" for a call that did not run. Real daemon and sockets;
the check is run by hand in the same loop turn as the request's arrival (the window it must close)."""

from __future__ import annotations

import asyncio
import select
import threading
import time
from typing import Any

import pytest

import meshrpc
import meshrpc.aio

pytestmark = pytest.mark.timeout(60)


@meshrpc.expose
class Counter:
    def __init__(self) -> None:
        self.counted = 0

    def count(self) -> int:
        self.counted += 1
        return self.counted


def test_the_idle_check_leaves_a_connection_whose_request_has_arrived() -> None:
    counter = Counter()
    outcomes: list[Any] = []
    first_done, go = threading.Event(), threading.Event()

    def client(uri: meshrpc.URI) -> None:  # one thread: the proxy's owner makes both calls
        with meshrpc.Proxy(uri, settings=meshrpc.Settings().copy(COMMTIMEOUT=10.0)) as proxy:
            for _ in range(2):
                try:
                    outcomes.append(proxy.count())
                except Exception as exc:  # the outcome the test looks at
                    outcomes.append(exc)
                first_done.set()
                go.wait(10)

    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host="127.0.0.1", settings=meshrpc.Settings().copy(IDLE_TIMEOUT=30.0))
        uri = daemon.register(counter, "counter")
        async with daemon:
            caller = threading.Thread(target=client, args=(uri,))
            caller.start()
            assert await asyncio.to_thread(first_done.wait, 10) and outcomes == [1]
            (conn,) = daemon._aio_connections
            arrived = select.poll()
            arrived.register(conn.transport.get_extra_info("socket").fileno(), select.POLLIN)
            go.set()  # the second call is sent; this coroutine holds the loop until it is in the socket
            deadline = time.monotonic() + 10
            while not arrived.poll(10):
                assert time.monotonic() < deadline, "the second request never reached the daemon's socket"
            conn.last_active = time.monotonic() - 60.0  # past IDLE_TIMEOUT, as after a long quiet spell
            daemon._close_idle(time.monotonic())  # the housekeeping's check, in this same loop turn
            await asyncio.to_thread(caller.join, 10)
        assert outcomes == [1, 2], outcomes
        assert counter.counted == 2

    asyncio.run(asyncio.wait_for(main(), 40))
