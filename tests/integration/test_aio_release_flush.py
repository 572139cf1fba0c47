"""Calls an aio proxy wrote in one turn of the event loop are sent when the proxy is released in that
turn.

The proxy's cork sends the first message of a turn at once and gathers the rest for the turn's end
(aio/cork.py). A burst of oneway calls never yields to the loop (no reply to await), so
`async with meshrpc.aio.Proxy(uri) as p: await p.note(1); await p.note(2)` released the connection
while note(2) still waited in the cork, and the close dropped it: every oneway call after the first
of a turn was lost, though each call had returned. (Found while pinning the home soak's memory
figures, tools/soak_home.py --trace-memory: a loop of oneway calls with a release every 100 calls
delivered 3 of 300.)
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import meshrpc
import meshrpc.aio

pytestmark = pytest.mark.timeout(30)

BOUND = 10.0  # seconds any wait below may take
COUNT = 20


@meshrpc.expose
class Recorder:
    def __init__(self) -> None:
        self.ran: list[int] = []
        self.lock = threading.Lock()
        self.all_ran = threading.Event()

    @meshrpc.oneway
    def note(self, n: int) -> None:
        with self.lock:
            self.ran.append(n)
            if len(self.ran) == COUNT:
                self.all_ran.set()

    def count(self) -> int:
        return len(self.ran)


async def _all_ran(recorder: Recorder) -> list[int]:
    # (the aio daemon may run on this loop: wait without blocking it)
    await asyncio.to_thread(recorder.all_ran.wait, BOUND)
    return sorted(recorder.ran)


async def _burst_then_release(uri: Any) -> None:
    async with meshrpc.aio.Proxy(uri) as proxy:
        for n in range(COUNT):
            await proxy.note(n)  # (never yields to the loop: no reply to wait for)


def test_oneway_calls_of_one_turn_reach_an_aio_daemon_when_the_proxy_is_released():
    async def main() -> list[int]:
        recorder = Recorder()
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(recorder, "recorder")
        async with daemon:
            await _burst_then_release(uri)
            return await _all_ran(recorder)
    assert asyncio.run(main()) == list(range(COUNT))


def test_oneway_calls_of_one_turn_reach_a_threaded_daemon_when_the_proxy_is_released(start_daemon):
    recorder = Recorder()
    running = start_daemon()
    uri = running.register(recorder, "recorder")

    async def main() -> list[int]:
        await _burst_then_release(uri)
        return await _all_ran(recorder)
    assert asyncio.run(main()) == list(range(COUNT))


def test_a_proxy_released_with_pyroRelease_after_a_burst_sends_it_and_connects_again():
    async def main() -> list[int]:
        recorder = Recorder()
        daemon = meshrpc.aio.Daemon(host="127.0.0.1")
        uri = daemon.register(recorder, "recorder")
        async with daemon:
            proxy = meshrpc.aio.Proxy(uri)
            for n in range(COUNT):
                if n % 5 == 0:
                    await proxy._pyroRelease()
                await proxy.note(n)
            assert await proxy.count() >= 0  # a call with a reply on the same (new) connection works
            await proxy._pyroRelease()
            return await _all_ran(recorder)
    assert asyncio.run(main()) == list(range(COUNT))
