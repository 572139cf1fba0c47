"""BatchProxy: collect calls, send them in one message, get the results back in order."""

from __future__ import annotations

from typing import Any

from .proxy import Proxy, raise_batch_item


class BatchedCall:
    __slots__ = ("_calls", "_name")

    def __init__(self, calls: list, name: str) -> None:
        self._calls = calls
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self._calls.append((self._name, args, kwargs))


class BatchProxy:
    """`batch = BatchProxy(proxy); batch.a(1); batch.b(2); results = batch()`.

    Calling the batch sends every recorded call in one message; the daemon runs them in order and
    stops at the first exception, which is raised when the iteration over the results reaches it.
    `batch(oneway=True)` sends them without waiting and returns None; `batch(asynchronous=True)`
    returns a FutureResult (meshrpc.asyncproxy) whose value is the results' iterator."""

    def __init__(self, proxy: Proxy) -> None:
        self.__proxy = proxy
        self.__calls: list[tuple[str, tuple, dict]] = []
        self.__async: Any = None  # the asynchronous twin of the proxy, for batch(asynchronous=True)

    def __getattr__(self, name: str) -> BatchedCall:
        if name.startswith("__"):
            raise AttributeError(name)
        # kept on the instance, so the next `batch.name(...)` finds it without coming here
        method = self.__dict__[name] = BatchedCall(self.__calls, name)
        return method

    def __enter__(self) -> "BatchProxy":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.__calls.clear()

    def __call__(self, oneway: bool = False, asynchronous: bool = False) -> Any:
        calls = self.__calls[:]
        self.__calls.clear()   # the same list: the kept methods record into it
        if asynchronous:
            if self.__async is None:
                from .futures import AsyncProxy
                self.__async = AsyncProxy(self.__proxy)
            future = self.__async._pyroInvokeBatch(calls, oneway)
            return future if oneway else future.then(lambda results: (raise_batch_item(item) for item in results))
        results = self.__proxy._pyroInvokeBatch(calls, oneway)
        if oneway:
            return None
        return (raise_batch_item(item) for item in results)
