"""Eager start of the asyncio daemon's `async def` calls: no Task for a call that never suspends.

A Task per call costs about 7 µs of the daemon's CPU (the Task, a loop handle, a turn of the loop to
take its first step), and most remote `async def` methods finish without ever waiting. Python 3.12
has eager tasks for that; on 3.11 this does the same job: `EagerStarter.start` takes the coroutine's
first step at once, inside the given context. When it finishes there, that was the whole call and no
Task was made. When it suspends (it awaits a future that is not done), the started coroutine goes
on as a Task, which first waits for that same future and then drives the coroutine, so awaiting,
exceptions and cancellation behave as if it had been a Task from the start.

What "as if" needs: during the first step `asyncio.current_task()` must be the task that will go on
running the coroutine (asyncio.timeout, TaskGroup and the like capture it, and cancel it later). So
the first step runs with a *carrier* as the current task: a pure-Python asyncio Task (the
`asyncio.tasks._PyTask` class, whose fields are plain attributes) that is not scheduled yet. If the
call finishes, the carrier is reused for the next one (unless something kept it or asked to cancel
it); if the call suspends, the carrier becomes its Task. Where these internals are missing, `start`
falls back to `loop.create_task`.

The first step is taken by a *driver* (`_drive`), a generator that runs each coroutine with
`yield from`: a coroutine that returns hands its value back without the StopIteration that
`coro.send` raises, which cost more than the rest of the step. A call that suspends keeps its driver
(its Task goes on with it); the next call gets a new one.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextvars
import logging
import sys
import types
import weakref
from typing import Any, Callable, Coroutine

log = logging.getLogger("meshrpc.aio")

try:  # the pure-Python Task and the current-task bookkeeping of asyncio (Python 3.11)
    from asyncio.tasks import _PyTask, _enter_task, _leave_task, _register_task  # type: ignore[attr-defined]
    from asyncio.futures import _PyFuture  # type: ignore[attr-defined]
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]  # loop -> its running task
    _HAVE_INTERNALS = all(hasattr(_PyTask, name) for name in ("_Task__step", "_Task__wakeup"))
except ImportError:  # pragma: no cover - another Python
    _HAVE_INTERNALS = False

_STARTED = object()  # _Resume: the first step was taken
_weakrefs = weakref.getweakrefcount


class _Carrier(_PyTask if _HAVE_INTERNALS else object):  # type: ignore[misc]
    """A Task with no coroutine yet: the current task during an eager first step, and the call's
    Task if that step suspends."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:  # not Task.__init__: that schedules a step
        _PyFuture.__init__(self, loop=loop)
        self._name = f"meshrpc-aio-call-{id(self):x}"
        self._num_cancels_requested = 0
        self._must_cancel = False
        self._fut_waiter = None
        self._coro = None
        self._context = None
        self._log_destroy_pending = False  # an unused carrier is dropped silently

    def __repr__(self) -> str:
        return f"<meshrpc.aio call {self._name}: {'not started' if self._coro is None else self._state}>"

    def take(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context, resume: "_Resume") -> None:
        """Become the Task that goes on running `coro` (`rest(resume, ...)`: its first step runs on
        the next turn)."""
        self._coro = coro
        self._context = context
        self._log_destroy_pending = True
        self._loop.call_soon(self._start, resume, context=context)
        _register_task(self)

    def _start(self, resume: "_Resume") -> None:
        """The Task's first turn. A cancel that came before it (asyncio.timeout with a deadline passed
        already, `current_task().cancel()` in the first step, another call's cancel) found no future
        this Task waits on (`resume` holds it): a Task would throw it into its coroutine, which here has
        not started (`rest`: it would end outside its try, and the call would never be answered). It
        goes where the method waits instead, as in a Task that had run from the start."""
        if self._must_cancel:
            self._must_cancel = False
            resume.cancel_first = self._make_cancelled_error()  # (with cancel()'s message, if any)
        self._Task__step()


class _Returned:
    """What a driver yields when its coroutine returned, instead of raising StopIteration (an
    exception per call costs more than the rest of an eager step): the value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None


@types.coroutine
def _drive(returned: _Returned) -> Any:
    """A driver: sent a coroutine, it runs it (`yield from`: what the coroutine waits on passes
    through, and its return value comes back without an exception), then yields `returned`, with
    the value in it, and waits for the next coroutine. An exception of the coroutine ends it."""
    coro = yield
    while True:
        returned.value = yield from coro
        coro = yield returned


def _new_driver() -> tuple[Any, _Returned]:
    returned = _Returned()
    driver = _drive(returned)
    driver.send(None)
    return driver, returned


class _Resume(collections.abc.Coroutine):
    """A call whose first step was taken already by `driver` (running its coroutine), `pending` the
    future it then waited on: a Task driving this first waits for `pending` (re-yielding it), then
    drives the coroutine on; its return (`returned` from the driver) ends this as a coroutine's would."""

    __slots__ = ("_driver", "_pending", "_returned", "cancel_first")

    def __init__(self, driver: Any, pending: Any, returned: _Returned) -> None:
        self._driver = driver
        self._pending = pending
        self._returned = returned
        self.cancel_first: BaseException | None = None  # its Task was cancelled before its first turn (_Carrier._start)

    def _outcome(self, got: Any) -> Any:
        if got is self._returned:
            value, got.value = got.value, None
            raise StopIteration(value)
        return got

    def send(self, value: Any) -> Any:
        pending = self._pending
        if pending is not _STARTED:
            cancel = self.cancel_first
            if cancel is not None:
                self.cancel_first = None
                return self.throw(cancel)
            self._pending = _STARTED
            return pending
        return self._outcome(self._driver.send(value))

    def throw(self, *exc: Any) -> Any:
        pending = self._pending
        if pending is not _STARTED:  # cancelled before the Task's first step: as a Task would, cancel
            self._pending = _STARTED  # the future it waits on, then raise where the coroutine waits
            if asyncio.isfuture(pending):  # (only a cancellation comes before the first step)
                pending.cancel()
        return self._outcome(self._driver.throw(*exc))

    def close(self) -> None:
        self._driver.close()

    def __await__(self) -> Any:
        return self

    def __next__(self) -> Any:  # awaited by a coroutine (EagerStarter.step's `rest`), not only driven by a Task
        return self.send(None)


class EagerStarter:
    """Starts a loop's `async def` calls eagerly (the loop's thread only)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._carrier: Any = None
        self._driver: tuple[Any, _Returned] | None = None  # (_drive's generator, its _Returned)
        self._eager = _HAVE_INTERNALS

    def start(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context) -> "asyncio.Future[Any] | None":
        """Run `coro` (which must not raise but BaseExceptions like KeyboardInterrupt) in `context`:
        None when it finished at once, else the Task that goes on running it."""
        try:
            task, _ = context.run(self.step, coro, context, _itself)
        except asyncio.CancelledError:
            return None  # the coroutine answered its caller already
        except Exception as exc:  # as a Task would: the call is lost, the loop goes on
            log.error("an asyncio daemon call failed: %r", exc, exc_info=exc)
            return None
        return task

    def step(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context,
             rest: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> tuple["asyncio.Future[Any] | None", Any]:
        """Take `coro`'s first step at once: (None, its value) when it returned there (raises what
        it raised there). The caller runs in `context` already (its own context.run, which also
        made `coro` and began the call's state: one entry into the context per call). When it
        suspended, `rest(awaitable, *args)` (a coroutine that awaits `awaitable`, the rest of
        `coro`, and handles its outcome) goes on as a Task in `context`: (that Task, None).
        Inside a running task, or without asyncio's internals, nothing runs now: `rest(coro, *args)`
        becomes a Task at once."""
        loop = self.loop
        if not self._eager or _current_tasks.get(loop) is not None:  # (inside a task: no eager step here)
            return loop.create_task(rest(coro, *args), context=context), None
        carrier, self._carrier = self._carrier, None
        if carrier is None:
            carrier = _Carrier(loop)
        driver = self._driver
        if driver is None:
            driver = self._driver = _new_driver()
        refs = sys.getrefcount(carrier)
        _enter_task(loop, carrier)
        failure = None
        try:
            pending = driver[0].send(coro)
        except BaseException as exc:  # (the driver ended with it)
            self._driver = None
            pending, failure = driver[1], exc
        finally:
            _leave_task(loop, carrier)
        returned = driver[1]
        if pending is returned:  # it finished (or failed) in its first step
            value, returned.value = returned.value, None
            # nothing kept it, asked to cancel it or to hear when it is done: reuse it
            if (sys.getrefcount(carrier) == refs and not (carrier._must_cancel or carrier._num_cancels_requested
                                                          or carrier._callbacks or _weakrefs(carrier))):
                self._carrier = carrier
            else:  # the call's task as the method saw it (asyncio.current_task()): done now, as a Task would be
                _finish(carrier, value, failure)
            if failure is not None:
                try:
                    raise failure
                finally:
                    failure = None  # (no cycle through this frame)
            return None, value
        self._driver = None  # (this one goes on with the call, in its Task)
        resume = _Resume(driver[0], pending, returned)
        carrier.take(rest(resume, *args), context, resume)
        return carrier, None


def _finish(carrier: _Carrier, value: Any, failure: BaseException | None) -> None:
    """A carrier someone kept (or asked to cancel, or to hear from) when its call ended in its first
    step: done with the call's outcome, as its Task would be, so that awaiting it or its done
    callbacks go on. A failure is the call's reply already: not logged again as never retrieved."""
    if carrier._must_cancel or isinstance(failure, asyncio.CancelledError):
        _PyFuture.cancel(carrier)
    elif failure is not None:
        _PyFuture.set_exception(carrier, failure)
        carrier._log_traceback = False
    else:
        _PyFuture.set_result(carrier, value)


def _itself(coro: Any) -> Any:
    return coro


def available() -> bool:
    """Whether calls can start eagerly on this Python (else every call gets a Task, as before)."""
    return _HAVE_INTERNALS
