"""Asynchronous calls for plain (non-asyncio) code, as Pyro4 had them: futures and call chains.

    slow = meshrpc.asyncproxy(proxy)           # or proxy._pyroAsync()
    result = slow.compute(42)                  # returns at once: a FutureResult
    result.then(format_answer).iferror(report)
    print(result.value)                        # waits

The calls run on meshrpc.aio proxies on the process's one background loop (meshrpc.aio.background),
so many calls in flight cost no thread each and pipeline on one connection to a meshrpc daemon.
Chained callables and meshrpc.Future callables are user code that may block: they run on a small
bounded pool (FUTURE_WORKERS), never on the loop. A worker that waits for another result whose chain
(or meshrpc.Future callable) still waits for a worker runs it itself: links that wait for other chained
results cannot take every worker and starve the chains they wait for.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Any, Callable, Iterator

from ..aio import background as _background
from ..loopcheck import refuse_in_running_loop

log = logging.getLogger("meshrpc.client")

_worker = threading.local()  # `running`: this thread runs a futures task (a chain, a Future callable) now

_Link = tuple[Callable[..., Any], tuple, dict]


class FutureResult:
    """The result of an asynchronous call, available later.

    `value` waits for it (and raises the call's exception); `ready` says whether it is there;
    `wait(timeout)` waits at most timeout seconds and says whether it is there; `then(fn, *args,
    **kwargs)` chains a call on the result (its return value becomes the new result); `iferror(fn)`
    calls fn(exception) when the call (or a link of the chain) fails; `cancel()` abandons a call that
    has not finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # done, or work offered (_offer)
        self._done = threading.Event()
        self._work: Callable[[], None] | None = None  # waits for a worker: run by whoever takes it first
        self._value: Any = None
        self._exception: BaseException | None = None
        self._settled = False               # the call finished; the chain may still be running
        self._chain: list[_Link] = []
        self._error_handler: Callable[[BaseException], Any] | None = None
        self._source: concurrent.futures.Future[Any] | None = None

    # --- the consumer's side
    @property
    def value(self) -> Any:
        if not self._done.is_set():
            self._wait("meshrpc.FutureResult.value", None)
        if self._exception is not None:
            raise self._exception
        return self._value

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._done.is_set() or (timeout is not None and timeout <= 0):
            return self._done.is_set()
        return self._wait("meshrpc.FutureResult.wait()", timeout)

    def _wait(self, what: str, timeout: float | None) -> bool:
        """Wait until done. Refused on a thread that runs an asyncio loop (it would freeze the loop, and
        never end when the call is served by that loop). A futures worker that waits runs the work this
        result waits for (its chain, a Future callable) itself when no worker has taken it yet."""
        refuse_in_running_loop(what)
        if not getattr(_worker, "running", False):
            return self._done.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._done.is_set():
                work, self._work = self._work, None
                if work is not None:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            else:
                return True
        work()
        return self._done.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def then(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> "FutureResult":
        """Call `call(result, *args, **kwargs)` when the result is there; its return value is the new
        result. Links run in order; a link that raises ends the chain (see iferror)."""
        with self._lock:
            if not self._done.is_set():
                self._chain.append((call, args, kwargs))
                return self
        if self._exception is None:  # already there: run it now, in the caller's thread
            try:
                self._value = call(self._value, *args, **kwargs)
            except Exception as exc:
                self._exception = exc
        return self

    def iferror(self, handler: Callable[[BaseException], Any]) -> "FutureResult":
        """Call handler(exception) if the call or a link of its chain fails."""
        with self._lock:
            if not self._done.is_set():
                self._error_handler = handler
                return self
        if self._exception is not None:
            _call_handler(handler, self._exception)
        return self

    def cancel(self) -> bool:
        """Abandon the call if it has not finished (an asynchronous proxy call is cancelled on its
        connection, which stays usable); True when it was cancelled."""
        source = self._source
        return source is not None and source.cancel()

    def __repr__(self) -> str:
        state = "pending" if not self.ready else ("failed" if self._exception is not None else "ready")
        return f"<meshrpc.FutureResult {state}>"

    # --- the producer's side
    def _settle(self, value: Any, exception: BaseException | None, workers: concurrent.futures.Executor | None) -> None:
        """The call finished. Links run on `workers` (None: here, the caller is a worker already)."""
        with self._lock:
            self._value, self._exception, self._settled = value, exception, True
            if not self._chain and (exception is None or self._error_handler is None):
                self._finish()
                return
        if workers is None:
            self._run_chain()
        else:
            self._offer(self._run_chain, workers)

    def _finish(self) -> None:
        """Done (the caller holds the lock)."""
        self._done.set()
        self._changed.notify_all()

    def _offer(self, work: Callable[[], None], workers: concurrent.futures.Executor) -> None:
        """Run `work` on a worker, or in a worker that waits for this result, whichever comes first."""
        with self._lock:
            self._work = work
            self._changed.notify_all()
        workers.submit(self._take_work)

    def _take_work(self) -> None:
        _worker.running = True  # (a pool thread: it runs futures tasks from now on)
        with self._lock:
            work, self._work = self._work, None
        if work is not None:
            work()

    def _run_chain(self) -> None:
        while True:
            with self._lock:
                if self._exception is not None or not self._chain:
                    handler = self._error_handler if self._exception is not None else None
                    self._error_handler = None
                    self._chain.clear()
                    if handler is None:
                        self._finish()
                        return
                    link = None
                else:
                    link = self._chain.pop(0)
            if link is None:
                _call_handler(handler, self._exception)  # type: ignore[arg-type]
                continue
            call, args, kwargs = link
            try:
                self._value = call(self._value, *args, **kwargs)
            except BaseException as exc:  # (SystemExit, asyncio's CancelledError too: else never done)
                self._exception = exc

    def _follow(self, source: concurrent.futures.Future[Any], workers: concurrent.futures.Executor) -> "FutureResult":
        """Settle when `source` (a call running on the background loop) does."""
        self._source = source

        def done(finished: concurrent.futures.Future[Any]) -> None:
            if finished.cancelled():
                self._settle(None, concurrent.futures.CancelledError("the call was cancelled"), workers)
                return
            exc = finished.exception()
            self._settle(None if exc is not None else finished.result(), exc, workers)
        source.add_done_callback(done)
        return self


def _call_handler(handler: Callable[[BaseException], Any], exc: BaseException) -> None:
    try:
        handler(exc)
    except Exception:
        log.exception("the iferror handler of a future raised")


class Future:
    """`meshrpc.Future(callable)`: calling it runs the callable on a background worker and returns a
    FutureResult at once. Configure before calling: `then(fn, *a, **kw)` and `iferror(fn)` (copied to
    every FutureResult it returns), `delay(seconds)`; `cancel()` stops calls that have not started."""

    def __init__(self, somecallable: Callable[..., Any]) -> None:
        self._callable = somecallable
        self._chain: list[_Link] = []
        self._error_handler: Callable[[BaseException], Any] | None = None
        self._delay = 0.0
        self._cancelled = False
        self._lock = threading.Lock()
        self._pending = 0

    def __call__(self, *args: Any, **kwargs: Any) -> FutureResult:
        if self._cancelled:
            raise RuntimeError("this Future was cancelled")
        loop = _background.shared()
        result = FutureResult()
        result._chain = list(self._chain)
        result._error_handler = self._error_handler
        with self._lock:
            self._pending += 1

        def run() -> None:
            with self._lock:
                self._pending -= 1
                cancelled = self._cancelled
            if cancelled:
                result._settle(None, concurrent.futures.CancelledError("the Future was cancelled"), None)
                return
            try:
                value, exc = self._callable(*args, **kwargs), None
            except BaseException as error:  # (SystemExit, asyncio's CancelledError too: else never done)
                value, exc = None, error
            result._settle(value, exc, None)

        if self._delay > 0:
            loop.call_later(self._delay, lambda: result._offer(run, loop.workers))
        else:
            result._offer(run, loop.workers)
        return result

    def delay(self, seconds: float) -> bool:
        """Start later calls `seconds` after they are made. False when cancelled."""
        if self._cancelled:
            return False
        self._delay = max(0.0, seconds)
        return True

    def cancel(self) -> bool:
        """Calls that have not started running will not run (their results raise CancelledError)."""
        with self._lock:
            self._cancelled = True
            return self._pending > 0

    def then(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> "Future":
        self._chain.append((call, args, kwargs))
        return self

    def iferror(self, handler: Callable[[BaseException], Any]) -> "Future":
        self._error_handler = handler
        return self


class _AsyncMethod:
    __slots__ = ("_owner", "_name")

    def __init__(self, owner: "AsyncProxy", name: str) -> None:
        self._owner = owner
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> FutureResult:
        aio_proxy = self._owner._pyroAio
        return self._owner._pyroRun(aio_proxy._pyroCall(self._name, args, kwargs))


class AsyncProxy:
    """Calls on it return FutureResults: `meshrpc.asyncproxy(proxy)` or `proxy._pyroAsync()`.

    It has a connection of its own (a meshrpc.aio.Proxy on the background loop, with the proxy's
    settings, handshake, serializer, timeout and retries): calls made without waiting for each other
    are all in flight at once. `_pyroGetAttr(name)`/`_pyroSetAttr(name, value)` read and write remote
    attributes; `_pyroRelease()` closes the connection; `with` closes it at the end. Its `_pyroTimeout`,
    `_pyroMaxRetries`, `_pyroSerializer` and `_pyroHandshake` are its calls' own (set them on it)."""

    def __init__(self, proxy: Any, loop: _background.BackgroundLoop | None = None) -> None:
        from ..aio.proxy import Proxy as AioProxy
        self._pyroProxy = proxy
        self._pyroLoop = loop or _background.shared(proxy._pyroSettings)
        self._pyroAio = AioProxy.from_proxy(proxy)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncMethod(self, name)

    def __enter__(self) -> "AsyncProxy":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._pyroRelease()

    def __repr__(self) -> str:
        return f"<meshrpc.AsyncProxy for {self._pyroAio._pyroUri}>"

    def _pyroRun(self, coro: Any) -> FutureResult:
        return FutureResult()._follow(self._pyroLoop.submit(self._blocking_streams(coro)), self._pyroLoop.workers)

    async def _blocking_streams(self, coro: Any) -> Any:
        from ..aio.proxy import AsyncStreamIterator
        value = await coro
        if isinstance(value, AsyncStreamIterator):
            return _BlockingStream(value, self._pyroLoop)
        return value

    def _pyroGetAttr(self, name: str) -> FutureResult:
        return self._pyroRun(self._pyroAio._pyroGetAttr(name))

    def _pyroSetAttr(self, name: str, value: Any) -> FutureResult:
        return self._pyroRun(self._pyroAio._pyroSetAttr(name, value))

    def _pyroInvokeBatch(self, calls: list[tuple[str, tuple, dict]], oneway: bool = False) -> FutureResult:
        return self._pyroRun(self._pyroAio._pyroInvokeBatch(calls, oneway))

    def _pyroBind(self) -> FutureResult:
        return self._pyroRun(self._pyroAio._pyroBind())

    def _pyroRelease(self) -> None:
        if not self._pyroLoop.on_loop():
            self._pyroLoop.submit(self._pyroAio._pyroRelease()).result(5.0)


def _forwarded(name: str) -> property:
    return property(lambda self: getattr(self._pyroAio, name), lambda self, value: setattr(self._pyroAio, name, value),
                    doc=f"the {name} of this proxy's calls (its meshrpc.aio.Proxy's)")


# a proxy's own settings, read by its calls or connections: set on the wrapper (a Pyro4 asynchronous
# proxy was a proxy), they are its aio proxy's
_FORWARDED = ("_pyroTimeout", "_pyroMaxRetries", "_pyroSerializer", "_pyroHandshake")
for _name in _FORWARDED:
    setattr(AsyncProxy, _name, _forwarded(_name))


class _BlockingStream:
    """A remote iterator for plain code, pulled through the background loop."""

    def __init__(self, stream: Any, loop: _background.BackgroundLoop) -> None:
        self._stream = stream
        self._loop = loop

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        refuse_in_running_loop("a remote iterator of meshrpc.asyncproxy")
        try:
            return self._loop.submit(self._stream.__anext__()).result()
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._loop.submit(self._stream.aclose()).result(5.0)


def asyncproxy(proxy: Any) -> AsyncProxy:
    """An asynchronous twin of `proxy` (a meshrpc.Proxy): its calls return FutureResults."""
    return AsyncProxy(proxy)
