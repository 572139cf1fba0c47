"""meshrpc.aio.turn.Turn: one call at a time on a connection that does not pipeline, in order; a
free turn is taken without awaiting, and no cancellation leaves the turn taken for good."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshrpc.aio.turn import Turn

pytestmark = pytest.mark.timeout(30)


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 10)
    return asyncio.run(bounded())


def test_a_free_turn_is_taken_at_once_and_a_taken_one_is_not() -> None:
    turn = Turn()
    assert turn.take_now() is True
    assert turn.take_now() is False
    turn.release()
    assert turn.take_now() is True


def test_waiting_calls_take_their_turns_in_order() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        turn = Turn()
        order: list[int] = []
        assert turn.take_now()

        async def call(n: int) -> None:
            await turn.take(loop)
            order.append(n)
            await asyncio.sleep(0)  # hold it across a turn of the loop: nobody else may enter
            assert order[-1] == n
            turn.release()
        tasks = [asyncio.ensure_future(call(n)) for n in range(5)]
        await asyncio.sleep(0)
        assert order == []  # all wait for the first holder
        turn.release()
        await asyncio.gather(*tasks)
        assert not turn.taken
        return order
    assert run(main()) == [0, 1, 2, 3, 4]


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        turn = Turn()
        assert turn.take_now()
        cancelled = asyncio.ensure_future(turn.take(loop))
        after = asyncio.ensure_future(turn.take(loop))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        turn.release()
        await after  # the turn went past the cancelled waiter
        assert turn.taken
        turn.release()
        assert not turn.taken and turn.take_now()
    run(main())


def test_a_waiter_cancelled_after_the_turn_was_handed_to_it_passes_it_on() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        turn = Turn()
        assert turn.take_now()
        first = asyncio.ensure_future(turn.take(loop))
        second = asyncio.ensure_future(turn.take(loop))
        await asyncio.sleep(0)
        turn.release()   # handed to `first`, which has not run yet ...
        first.cancel()   # ... and is cancelled before it does
        with pytest.raises(asyncio.CancelledError):
            await first
        await second     # so the turn went on to the next
        turn.release()
        assert not turn.taken
        # and with nobody queued, a cancelled holder-to-be frees it
        assert turn.take_now()
        third = asyncio.ensure_future(turn.take(loop))
        await asyncio.sleep(0)
        turn.release()
        third.cancel()
        with pytest.raises(asyncio.CancelledError):
            await third
        assert not turn.taken
    run(main())
