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


class CallbackFails:
    @expose
    def plain(self, value: Any) -> Any:
        return value

    @expose
    def boom(self) -> None:
        raise KeyError("boom")

    def hidden(self) -> int:
        return 1

    @expose
    def __getattr__(self, name: str) -> Any:  # exposed explicitly: still the attribute protocol, never a method
        raise AttributeError(name)

    def _private(self) -> int:
        return 2


CallbackFails.boom._pyroCallback = True  # type: ignore[attr-defined]


@behavior(instance_mode="percall")
@expose
class PerCall:
    def me(self) -> int:
        return id(self)


SAME_CALLS = [("thing", "add", (1, 2), {}), ("thing", "add", (), {"a": 1, "b": 5}), ("thing", "fail", (), {}),
              ("thing", "add", (1,), {}), ("thing", "nothing", (), {}), ("thing", "_size", (), {}),
              ("thing", "__getattr__", ("size",), {}), ("thing", "__setattr__", ("size", 3), {}),
              ("thing", "__getattr__", ("colour",), {}), ("thing", "count", (2,), {}), ("thing", "later", (), {}),
              ("per", "me", (), {}), ("percall", "me", (), {}), ("nobody", "add", (), {}), (7, "add", (), {}),
              ("cb", "plain", ([1, {"x": 2}],), {}), ("cb", "boom", (), {}), ("cb", "hidden", (), {}),
              ("cb", "__getattr__", ("plain",), {}), ("cb", "_private", (), {}), ("weak", "add", (2, 2), {})]


def outcome(result: tuple[int, Any]) -> Any:
    flags, value = result
    if isinstance(value, BaseException):
        return flags, type(value), str(value), "".join(getattr(value, errors.REMOTE_TRACEBACK_ATTR, "")).count("\n") > 0
    if isinstance(value, int) and value > 1 << 32:  # id() of a fresh instance
        return flags, "id"
    if flags & wire.FLAG_ITEMSTREAMRESULT:
        return flags, "stream"
    if inspect.iscoroutine(value):
        value.close()
        return flags, "coroutine"
    return flags, value


@pytest.mark.parametrize("call", SAME_CALLS, ids=[f"{c[0]}.{c[1]}" for c in SAME_CALLS])
def test_run_calling_methods_itself_equals_running_them_through_call(call, caplog) -> None:
    """run() inlines call() for plain methods when no invoker replaces it: every outcome (result, exception
    and its remote traceback, attribute access, instance modes, a callback's log) is call()'s."""
    keep = Thing()
    results, logs = [], []
    for direct in (True, False):
        d = Dispatcher(Settings(), StreamTable(60, 10, 4))
        if not direct:
            d.invoke = lambda *args: d.call(*args)  # the general path: call() through an invoker
        assert d._direct is direct
        for object_id, target in (("thing", Thing()), ("per", PerConnection), ("percall", PerCall),
                                  ("cb", CallbackFails()), ("weak", keep)):
            d.add(Registration(object_id, target, None, frozenset(), weak=object_id == "weak"))
        caplog.clear()
        results.append(outcome(d.run(Connection(), 0, call)))
        logs.append([r.getMessage() for r in caplog.records if r.name == "meshrpc.server" and r.levelname == "WARNING"])
    assert results[0] == results[1]
    assert logs[0] == logs[1]
    if call[1] == "boom":
        assert logs[0] == ["exception in callback boom"]


def test_a_registered_object_is_shared_and_a_class_or_weak_object_is_not() -> None:
    thing = Thing()
    assert Registration("a", thing, None, frozenset()).shared is thing
    assert Registration("b", thing, None, frozenset(), weak=True).shared is None
    assert Registration("c", PerConnection, None, frozenset()).shared is None
    d = Dispatcher(Settings(), StreamTable(60, 10, 4))
    assert d._direct
    d.invoke = d.call  # the dispatcher's own call() again: direct
    assert d._direct
    other = Dispatcher(Settings(), StreamTable(60, 10, 4))
    d.invoke = other.call  # another dispatcher's call(): not this one's rules
    assert not d._direct
