"""BatchProxy: collect calls, send them in one message, get the results back in order."""

from __future__ import annotations

from typing import Any, Iterator

from .proxy import Proxy, raise_batch_item


class _BatchedCall:
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
    `batch(oneway=True)` sends them without waiting and returns None."""

    def __init__(self, proxy: Proxy) -> None:
        self.__proxy = proxy
        self.__calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> _BatchedCall:
        if name.startswith("__"):
            raise AttributeError(name)
        # kept on the instance, so the next `batch.name(...)` finds it without coming here
        method = self.__dict__[name] = _BatchedCall(self.__calls, name)
        return method

    def __enter__(self) -> "BatchProxy":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.__calls.clear()

    def __call__(self, oneway: bool = False) -> Iterator[Any] | None:
        calls = self.__calls[:]
        self.__calls.clear()   # the same list: the kept methods record into it
        results = self.__proxy._pyroInvokeBatch(calls, oneway)
        if oneway:
            return None
        return (raise_batch_item(item) for item in results)
