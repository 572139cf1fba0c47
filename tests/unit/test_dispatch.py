"""server/dispatch.py without sockets: looking calls up, running them, batches, attributes, streams."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from meshrpc import errors
from meshrpc.config import Settings
from meshrpc.server.decorators import Registration, behavior, expose
from meshrpc.server.dispatch import Dispatcher
from meshrpc.server.streams import StreamTable
from meshrpc.wire import frame as wire
from meshrpc.wire.constants import BATCH_METHOD
from meshrpc.wire.serializers import ExceptionWrapper


@expose
class Thing:
    colour = "red"

    def __init__(self) -> None:
        self._size = 1

    @property
    def size(self) -> int:
        return self._size

    @size.setter
    def size(self, value: int) -> None:
        self._size = value

    def add(self, a: int, b: int) -> int:
        return a + b

    def fail(self) -> None:
        raise ValueError("deliberate")

    def count(self, n: int) -> Any:
        yield from range(n)

    async def later(self) -> str:
        return "awaited"


@behavior(instance_mode="session")
@expose
class PerConnection:
    def me(self) -> int:
        return id(self)


class Connection:
    def __init__(self) -> None:
        self.session: dict[str, Any] = {}


@pytest.fixture
def dispatcher() -> Dispatcher:
    settings = Settings()
    d = Dispatcher(settings, StreamTable(60, 10, 4))
    d.add(Registration("thing", Thing(), None, frozenset()))
    d.add(Registration("per", PerConnection, None, frozenset()))
    return d


def test_run_a_call_and_a_failure(dispatcher: Dispatcher) -> None:
    conn = Connection()
    assert dispatcher.run(conn, 0, ("thing", "add", (1, 2), {})) == (0, 3)
    flags, exc = dispatcher.run(conn, 0, ("thing", "fail", (), {}))
    assert flags == wire.FLAG_EXCEPTION and isinstance(exc, ValueError)
    assert "deliberate" in "".join(getattr(exc, errors.REMOTE_TRACEBACK_ATTR))
    for call in (("nobody", "add", (), {}), ("thing", "_size", (), {}), ("thing", "nothing", (), {})):
        flags, exc = dispatcher.run(conn, 0, call)
        assert flags == wire.FLAG_EXCEPTION and isinstance(exc, (errors.DaemonError, AttributeError)), call


def test_attributes_get_and_set(dispatcher: Dispatcher) -> None:
    conn = Connection()
    assert dispatcher.run(conn, 0, ("thing", "__getattr__", ("size",), {})) == (0, 1)
    assert dispatcher.run(conn, 0, ("thing", "__setattr__", ("size", 5), {})) == (0, None)
    assert dispatcher.run(conn, 0, ("thing", "__getattr__", ("size",), {})) == (0, 5)
    flags, exc = dispatcher.run(conn, 0, ("thing", "__getattr__", ("_size",), {}))
    assert flags == wire.FLAG_EXCEPTION and isinstance(exc, AttributeError)


def test_batches_stop_at_the_first_failure(dispatcher: Dispatcher) -> None:
    calls = [("add", (1, 2), {}), ("fail", (), {}), ("add", (3, 4), {})]
    flags, results = dispatcher.run(Connection(), wire.FLAG_BATCH, ("thing", BATCH_METHOD, calls, {}))
    assert flags == wire.FLAG_BATCH and results[0] == 3 and len(results) == 2
    assert isinstance(results[1], ExceptionWrapper)


def test_iterators_become_streams_owned_by_the_connection(dispatcher: Dispatcher) -> None:
    conn = Connection()
    flags, stream_id = dispatcher.run(conn, 0, ("thing", "count", (3,), {}))
    assert flags == wire.FLAG_EXCEPTION | wire.FLAG_ITEMSTREAMRESULT
    assert [dispatcher.streams.next_item(stream_id, conn) for _ in range(3)] == [0, 1, 2]


def test_instance_modes_follow_the_connection(dispatcher: Dispatcher) -> None:
    one, two = Connection(), Connection()
    first = dispatcher.run(one, 0, ("per", "me", (), {}))[1]
    assert dispatcher.run(one, 0, ("per", "me", (), {}))[1] == first
    assert dispatcher.run(two, 0, ("per", "me", (), {}))[1] != first


def test_prepare_then_run_lets_a_driver_await_async_methods(dispatcher: Dispatcher) -> None:
    conn = Connection()
    prepared = dispatcher.prepare(conn, 0, ("thing", "later", (), {}))
    assert prepared.kind == "method" and inspect.iscoroutinefunction(prepared.function)
    flags, coroutine = dispatcher.run_prepared(conn, prepared)
    assert flags == 0 and inspect.iscoroutine(coroutine)
    try:
        coroutine.send(None)
    except StopIteration as done:
        assert dispatcher.finish(conn, done.value) == (0, "awaited")
    plain = dispatcher.prepare(conn, 0, ("thing", "add", (2, 2), {}))
    assert not inspect.iscoroutinefunction(plain.function) and dispatcher.run_prepared(conn, plain) == (0, 4)
    assert dispatcher.prepare(conn, wire.FLAG_BATCH, ("thing", BATCH_METHOD, [], {})).kind == "batch"
    assert dispatcher.prepare(conn, 0, ("thing", "__getattr__", ("size",), {})).kind == "get"
    with pytest.raises(AttributeError):
        dispatcher.prepare(conn, 0, ("thing", "__setattr__", ("colourx", 1), {}))
    with pytest.raises(errors.DaemonError):
        dispatcher.prepare(conn, 0, ("nobody", "add", (), {}))
    flags, exc = dispatcher.failure(ValueError("x"), "later")
    assert flags == wire.FLAG_EXCEPTION and hasattr(exc, errors.REMOTE_TRACEBACK_ATTR)


def test_metadata(dispatcher: Dispatcher) -> None:
    meta = dispatcher.metadata("thing")
    assert {"add", "fail", "count", "later"} <= meta["methods"] and "size" in meta["attrs"]
    assert isinstance(dispatcher.metadata("thing", as_lists=True)["methods"], list)
    with pytest.raises(errors.DaemonError):
        dispatcher.metadata("nobody")


def test_an_invoker_replaces_how_methods_are_called(dispatcher: Dispatcher) -> None:
    seen = []

    def invoke(registration: Registration, instance: Any, method: str, vargs: tuple, kwargs: dict) -> Any:
        seen.append(method)
        return dispatcher.call(registration, instance, method, vargs, kwargs)

    dispatcher.invoke = invoke
    dispatcher.run(Connection(), wire.FLAG_BATCH, ("thing", BATCH_METHOD, [("add", (1, 1), {})], {}))
    assert seen == ["add"]
