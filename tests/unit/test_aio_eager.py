"""meshrpc.aio.eager: an `async def` call's first step runs at once; a Task only when it suspends."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from meshrpc.aio import eager
from meshrpc.aio.eager import EagerStarter

pytestmark = [pytest.mark.timeout(30),
              pytest.mark.skipif(not eager.available(), reason="this Python lacks asyncio's pure-Python Task")]

mark: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="unset")


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10)
    return asyncio.run(bounded())


async def on_loop(body: Any) -> Any:
    """Run body(starter) as the daemon does: in a loop callback, where no task is current."""
    loop = asyncio.get_running_loop()
    starter = EagerStarter(loop)
    outcome = loop.create_future()

    def callback() -> None:
        try:
            outcome.set_result(body(starter))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.set_exception(exc)
    loop.call_soon(callback)
    return await outcome


def test_a_call_that_never_waits_finishes_in_its_first_step_without_a_task() -> None:
    seen: list[Any] = []

    async def quick() -> None:
        mark.set("quick")
        seen.append((asyncio.current_task() is not None, mark.get()))

    async def main() -> None:
        context = contextvars.copy_context()
        tasks_before = len(asyncio.all_tasks())
        assert await on_loop(lambda starter: starter.start(quick(), context)) is None
        assert seen == [(True, "quick")]  # a current task during the step, as in a Task
        assert context[mark] == "quick"   # it ran in the given context
        assert mark.get() == "unset"
        assert len(asyncio.all_tasks()) == tasks_before
    run(main())


def test_a_call_that_suspends_goes_on_as_the_task_it_saw_with_its_context() -> None:
    gate_holder: list[asyncio.Future[None]] = []

    async def waits() -> tuple[bool, str, int]:
        mark.set("before")
        first = asyncio.current_task()
        await gate_holder[0]
        return first is asyncio.current_task(), mark.get(), 42

    async def main() -> None:
        gate = asyncio.get_running_loop().create_future()
        gate_holder.append(gate)
        task = await on_loop(lambda starter: starter.start(waits(), contextvars.copy_context()))
        assert task is not None and not task.done()
        assert task in asyncio.all_tasks()
        gate.set_result(None)
        assert await task == (True, "before", 42)
    run(main())


def test_asyncio_timeout_works_whether_the_call_waits_or_not() -> None:
    async def within(wait: bool) -> str:
        try:
            async with asyncio.timeout(0.05):
                if wait:
                    await asyncio.Event().wait()
                return "in time"
        except TimeoutError:
            return "timed out"

    async def main() -> None:
        results: list[str] = []

        async def record(wait: bool) -> None:
            results.append(await within(wait))
        assert await on_loop(lambda starter: starter.start(record(False), contextvars.copy_context())) is None
        task = await on_loop(lambda starter: starter.start(record(True), contextvars.copy_context()))
        await task
        assert results == ["in time", "timed out"]
    run(main())


def test_cancelled_before_its_task_steps_the_call_sees_cancellation_and_its_future_is_cancelled() -> None:
    outcome: list[str] = []

    async def main() -> None:
        waited_on = asyncio.get_running_loop().create_future()

        async def waits() -> None:
            try:
                await waited_on
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        def start_and_cancel(starter: EagerStarter) -> Any:
            task = starter.start(waits(), contextvars.copy_context())
            task.cancel("switched off")  # before its first step
            return task
        task = await on_loop(start_and_cancel)
        with pytest.raises(asyncio.CancelledError, match="switched off"):  # (cancel()'s message goes with it)
            await task
        assert outcome == ["cancelled"]
        assert waited_on.cancelled()
    run(main())


def test_a_call_cancelled_by_itself_through_the_task_it_saw_while_waiting() -> None:
    async def main() -> None:
        caught: list[str] = []

        async def cancels_itself_later() -> None:
            me = asyncio.current_task()
            assert me is not None
            asyncio.get_running_loop().call_later(0.01, me.cancel)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                caught.append("cancelled")
                raise
        task = await on_loop(lambda starter: starter.start(cancels_itself_later(), contextvars.copy_context()))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert caught == ["cancelled"]
    run(main())


def test_exceptions_after_suspending_end_in_the_task() -> None:
    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    async def main() -> None:
        task = await on_loop(lambda starter: starter.start(fails_later(), contextvars.copy_context()))
        with pytest.raises(KeyError, match="late"):
            await task
    run(main())


def test_calls_started_while_one_waits_or_after_one_failed_each_end_with_their_own_outcome() -> None:
    """A call that suspends keeps what ran its first step (its Task goes on with it); the calls started
    meanwhile, and those after a call whose first step raised, start afresh: each returns its own value."""
    async def waits(gate: asyncio.Future[None]) -> str:
        await gate
        return "waited"

    async def quick(value: Any) -> Any:
        return value

    async def boom() -> None:
        raise ValueError("boom")

    async def rest(awaitable: Any) -> Any:
        return await awaitable

    def step(starter: EagerStarter, coro: Any) -> tuple:
        context = contextvars.copy_context()
        return context.run(starter.step, coro, context, rest)

    async def main() -> None:
        gate = asyncio.get_running_loop().create_future()

        def body(starter: EagerStarter) -> tuple:
            waiting, _ = step(starter, waits(gate))
            quick_ones = [step(starter, quick(n)) for n in range(3)]
            with pytest.raises(ValueError, match="boom"):
                step(starter, boom())
            return waiting, quick_ones, step(starter, quick("after"))
        waiting, quick_ones, after = await on_loop(body)
        assert waiting is not None
        assert quick_ones == [(None, 0), (None, 1), (None, 2)] and after == (None, "after")
        gate.set_result(None)
        assert await waiting == "waited"
    run(main())


def test_the_carrier_is_reused_unless_something_kept_it() -> None:
    kept: list[Any] = []

    async def quick() -> None:
        pass

    async def keeps() -> None:
        kept.append(asyncio.current_task())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        starter = EagerStarter(loop)
        carriers: list[Any] = []

        def step(coro: Any) -> None:
            assert starter.start(coro, contextvars.copy_context()) is None
            carriers.append(starter._carrier)
        done = loop.create_future()

        def all_steps() -> None:
            step(quick())
            step(quick())
            step(keeps())  # kept: not reused
            step(quick())
            done.set_result(None)
        loop.call_soon(all_steps)
        await done
        assert carriers[0] is carriers[1]
        assert carriers[2] is None and carriers[3] is not None
        assert kept[0] is not carriers[3]
    run(main())


def test_inside_a_task_it_falls_back_to_a_plain_task() -> None:
    async def quick() -> str:
        return "done"

    async def main() -> None:
        task = EagerStarter(asyncio.get_running_loop()).start(quick(), contextvars.copy_context())
        assert task is not None
        assert await task == "done"
    run(main())
