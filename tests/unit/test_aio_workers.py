"""meshrpc.aio.workers: the threads an asyncio daemon runs plain methods on (real threads, a real loop)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from meshrpc.aio.workers import Workers

pytestmark = pytest.mark.timeout(30)


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10)
    return asyncio.run(bounded())


def failed(exc: BaseException, *args: Any) -> tuple:
    return ("failed", repr(exc), args)


def occupy(workers: Workers, owner: Any) -> tuple[threading.Event, threading.Event]:
    """A call of `owner` that holds a thread until `release` is set: (release, started)."""
    release, started = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(5)
    workers.submit(owner, blocker, lambda outcome: None)
    return release, started


def test_each_outcome_reaches_its_done_on_the_loop_with_its_arguments() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        workers = Workers(loop, 4, "test-worker", failed)
        got: list[Any] = []
        finished = loop.create_future()
        loop_thread = threading.get_ident()

        def done(outcome: Any, n: int) -> None:
            assert threading.get_ident() == loop_thread  # answered on the loop, never on a worker
            got.append((n, outcome))
            if len(got) == 50:
                finished.set_result(None)

        def work(n: int) -> Any:
            if n == 7:
                raise ValueError("seven")
            return n * n, threading.current_thread().name
        for n in range(50):
            workers.submit(None, work, done, n)
        await finished
        assert workers.running == 0
        assert sorted(n for n, _ in got) == list(range(50))
        for n, outcome in got:
            if n == 7:
                assert outcome == ("failed", "ValueError('seven')", (7,))
            else:
                assert outcome[0] == n * n and outcome[1].startswith("test-worker_")
        workers.shutdown()
    run(main())


def test_a_call_that_waits_for_another_gets_a_thread_of_its_own_up_to_the_bound() -> None:
    """A method that waits for a second call of the same daemon (a callback round trip) must not wait
    for a thread: there is one per call handed over, up to `size`, and no more."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        workers = Workers(loop, 3, "test-worker", failed)
        first_running, second_done = threading.Event(), threading.Event()
        outcomes: list[Any] = []

        def first() -> str:
            first_running.set()
            assert second_done.wait(5), "the second call never ran: it waited for the first one's thread"
            return "first"

        def second() -> str:
            assert first_running.wait(5)
            second_done.set()
            return "second"
        for function in (first, second):
            workers.submit(None, function, lambda outcome: outcomes.append(outcome))
        await workers.all_done()
        assert sorted(outcomes) == ["first", "second"]
        threads = len(workers._threads)
        assert threads == 2
        for _ in range(20):  # one at a time: the threads there serve them, none more start
            workers.submit(None, lambda: None, lambda outcome: None)
            await workers.all_done()
        assert len(workers._threads) == threads
        release = threading.Event()
        for _ in range(10):  # ten blocked at once: at most the bound
            workers.submit(None, release.wait, lambda outcome: None, 5)
        assert len(workers._threads) == 3
        release.set()
        await workers.all_done()
        workers.shutdown()
        for thread in workers._threads:
            thread.join(5)
            assert not thread.is_alive() and thread.daemon
    run(main())


def test_shutdown_drops_calls_not_started_and_all_done_still_comes() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        workers = Workers(loop, 1, "test-worker", failed)
        release, started = occupy(workers, None)
        ran: list[int] = []
        for n in range(5):
            workers.submit(None, ran.append, lambda outcome: None, n)
        await loop.run_in_executor(None, started.wait, 5)
        all_done = workers.all_done()
        assert not all_done.done()
        workers.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            workers.submit(None, ran.append, lambda outcome: None, 99)
        release.set()
        await all_done  # the running call finished; the five queued ones were dropped
        assert ran == [] and workers.running == 0
    run(main())


def test_waiting_calls_are_handed_over_one_owner_after_the_other() -> None:
    """All threads busy: a client that sent many calls does not make another's wait behind all of them
    (each owner's own calls keep their order); a gone owner's waiting calls are dropped."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        workers = Workers(loop, 1, "test-worker", failed)
        release, started = occupy(workers, "a")
        ran: list[str] = []
        for n in range(5):
            workers.submit("a", ran.append, lambda outcome: None, f"a{n}")
        workers.submit("b", ran.append, lambda outcome: None, "b0")
        workers.submit("b", ran.append, lambda outcome: None, "b1")
        for n in range(3):
            workers.submit("gone", ran.append, lambda outcome: None, f"gone{n}")
        workers.forget("gone")
        await loop.run_in_executor(None, started.wait, 5)
        release.set()
        await workers.all_done()
        assert ran == ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]
        assert workers.running == 0 and not workers._waiting and not workers._turns
        workers.shutdown()
    run(main())
