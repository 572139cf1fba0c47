"""Registered objects, and running a call on one: the part of a daemon that knows no sockets.

Both daemons use it: the threaded `Daemon` runs whole calls (`run`); the asyncio daemon first looks
a call up (`prepare`), so that it can await an `async def` method on its loop and run a plain one
in its executor (`invoke`), then post-processes the result the same way (`finish`).

A call is the tuple a session decodes: (object id, method, vargs, kwargs). `connection` is the
driver's connection object: its `session` dict holds the per-connection instances ("session"
instance mode), and streams opened by its calls belong to it.
"""

from __future__ import annotations

import collections.abc
import logging
import threading
import types
from typing import Any, Callable

from .. import errors
from ..errors import DaemonError
from ..wire.constants import BATCH_METHOD, UNKNOWN_OBJECT_REASON
from ..wire.frame import FLAG_BATCH, FLAG_EXCEPTION, FLAG_ITEMSTREAMRESULT
from ..wire.serializers import ExceptionWrapper
from .decorators import Registration
from .streams import StreamTable

log = logging.getLogger("meshrpc.server")

_PLAIN_RESULTS = frozenset({type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset})
ATTRIBUTE_GET = "__getattr__"  # the method names a proxy sends for remote attributes (Pyro5's)
ATTRIBUTE_SET = "__setattr__"

#: how a method is called: (registration, instance, method name, vargs, kwargs) -> result
Invoker = Callable[[Registration, Any, str, tuple, dict], Any]


class PreparedCall:
    """A call looked up: the registration, the instance it runs on, and the bound method (`function`,
    None for attribute access and batches). `kind`: "method", "batch", "get" or "set"."""

    __slots__ = ("registration", "instance", "method", "vargs", "kwargs", "function", "kind")

    def __init__(self, registration: Registration, instance: Any, method: str, vargs: Any, kwargs: dict,
                 function: Any, kind: str) -> None:
        self.registration = registration
        self.instance = instance
        self.method = method
        self.vargs = vargs
        self.kwargs = kwargs
        self.function = function
        self.kind = kind


class Dispatcher:
    """The registry of a daemon's objects (by object id) and the rules of running calls on them:
    instance modes, exposed members, attribute get/set, batches, streams, remote tracebacks.

    `invoke` (optional) replaces how one method is called, e.g. to run coroutines on a loop."""

    def __init__(self, settings: Any, streams: StreamTable, invoke: Invoker | None = None) -> None:
        self.settings = settings
        self.objects: dict[str, Registration] = {}
        self.lock = threading.RLock()  # for changes; lookups read the dict as it is
        self.streams = streams
        self.invoke = invoke or self.call

    @property
    def invoke(self) -> Invoker:
        return self._invoke

    @invoke.setter
    def invoke(self, invoke: Invoker) -> None:
        self._invoke = invoke
        # run() calls a method itself when nothing replaces call() (call() inlined: frames less per call)
        self._direct = getattr(invoke, "__func__", None) is Dispatcher.call and getattr(invoke, "__self__", None) is self

    # ------------------------------------------------------------------ the registry
    def lookup(self, object_id: Any) -> Registration | None:
        return self.objects.get(object_id) if isinstance(object_id, str) else None

    def add(self, registration: Registration) -> None:
        with self.lock:
            self.objects[registration.object_id] = registration

    def remove(self, object_id: str) -> Registration | None:
        with self.lock:
            return self.objects.pop(object_id, None)

    def metadata(self, object_id: str, as_lists: bool = False) -> dict[str, Any]:
        """What a proxy learns in the handshake: methods, oneway, attrs (and idempotent, when any)."""
        registration = self.lookup(object_id)
        if registration is None:
            raise DaemonError(UNKNOWN_OBJECT_REASON)
        members = registration.members
        convert = list if as_lists else set
        meta = {key: convert(members[key]) for key in ("methods", "oneway", "attrs")}
        if members["idempotent"]:
            meta["idempotent"] = convert(members["idempotent"])
        return meta

    # ------------------------------------------------------------------ running calls
    def run(self, connection: Any, flags: int, call: tuple) -> tuple[int, Any]:
        """Run one call (or a batch) to the end: (reply flags, result or exception)."""
        object_id, method, vargs, kwargs = call
        try:
            # lookup(), instance() for a registered object, and call() for a plain method, inlined:
            # this is every call's path
            registration = self.objects.get(object_id) if isinstance(object_id, str) else None
            if registration is None:
                raise DaemonError(f"unknown object {object_id!r}")
            instance = registration.shared
            if instance is None:
                instance = registration.instance(connection.session)
            if flags & FLAG_BATCH and method == BATCH_METHOD:
                return FLAG_BATCH, self.run_batch(registration, instance, vargs)
            if (self._direct and method in registration.members["methods"] and method != ATTRIBUTE_GET
                    and method != ATTRIBUTE_SET):
                func = getattr(instance, method)
                try:
                    result = func(*vargs, **kwargs)
                except Exception:
                    _log_callback_failure(func, method)
                    raise
            else:
                result = self.invoke(registration, instance, method, vargs, kwargs)
        except Exception as exc:
            return FLAG_EXCEPTION, self.traced(exc, method)
        if type(result) in _PLAIN_RESULTS:  # finish() for the common case, one call less
            return 0, result
        return self.finish(connection, result)

    def prepare(self, connection: Any, flags: int, call: tuple) -> PreparedCall:
        """Look a call up without running it. Raises what the call would raise for an unknown
        object, method or attribute (reply with failure(exc, method))."""
        object_id, method, vargs, kwargs = call
        registration = self.lookup(object_id)
        if registration is None:
            raise DaemonError(f"unknown object {object_id!r}")
        instance = registration.instance(connection.session)
        if flags & FLAG_BATCH and method == BATCH_METHOD:
            return PreparedCall(registration, instance, method, vargs, kwargs, None, "batch")
        if method == ATTRIBUTE_GET or method == ATTRIBUTE_SET:
            self._check_attribute(registration, method, vargs)
            return PreparedCall(registration, instance, method, vargs, kwargs, None,
                                "get" if method == ATTRIBUTE_GET else "set")
        return PreparedCall(registration, instance, method, vargs, kwargs,
                            self._method(registration, instance, method), "method")

    def run_prepared(self, connection: Any, prepared: PreparedCall) -> tuple[int, Any]:
        """Run a prepared call (synchronously) to the end: (reply flags, result or exception). For an
        `async def` method the result is its coroutine: await it, then finish(connection, value)."""
        try:
            if prepared.kind == "batch":
                return FLAG_BATCH, self.run_batch(prepared.registration, prepared.instance, prepared.vargs)
            result = self.invoke(prepared.registration, prepared.instance, prepared.method, prepared.vargs,
                                 prepared.kwargs)
        except Exception as exc:
            return self.failure(exc, prepared.method)
        return self.finish(connection, result)

    def failure(self, exc: BaseException, method: str) -> tuple[int, Any]:
        """The reply flags and exception of a call that raised `exc`."""
        return FLAG_EXCEPTION, self.traced(exc, method)

    def finish(self, connection: Any, result: Any) -> tuple[int, Any]:
        """(reply flags, result) for what a method returned: an iterator becomes a stream the proxy
        pulls from (owned by `connection`)."""
        if type(result) in _PLAIN_RESULTS or not self.is_stream(result):  # the first test: the common case
            return 0, result
        if not self.settings.ITER_STREAMING:
            return FLAG_EXCEPTION, errors.MeshError(
                "the result is an iterator and ITER_STREAMING is off; return a list instead")
        try:
            stream_id = self.streams.add(iter(result), connection)
        except DaemonError as exc:
            return FLAG_EXCEPTION, exc
        return FLAG_EXCEPTION | FLAG_ITEMSTREAMRESULT, stream_id

    def run_batch(self, registration: Registration, instance: Any, calls: Any) -> list[Any]:
        """The results of a batch's calls, in order, up to and including the first failure (as an
        ExceptionWrapper): Pyro5's rule."""
        results: list[Any] = []
        for item in calls:
            try:
                method, vargs, kwargs = item
                result = self.invoke(registration, instance, method, tuple(vargs), kwargs or {})
                if result.__class__ is types.CoroutineType:  # (the asyncio daemon's invoke awaits it)
                    raise awaitable_refused(result, method)
                results.append(result)
            except Exception as exc:
                results.append(ExceptionWrapper(self.traced(exc, item[0] if isinstance(item, (list, tuple)) else "?")))
                break
        return results

    def call(self, registration: Registration, instance: Any, method: str, vargs: tuple, kwargs: dict) -> Any:
        """Call an exposed method, or get/set an exposed attribute, on `instance`."""
        if method == ATTRIBUTE_GET:
            self._check_attribute(registration, method, vargs)
            return getattr(instance, vargs[0])
        if method == ATTRIBUTE_SET:
            self._check_attribute(registration, method, vargs)
            setattr(instance, vargs[0], vargs[1])
            return None
        if method not in registration.members["methods"]:
            raise AttributeError(f"remote object {registration.object_id!r} has no exposed method {method!r}")
        func = getattr(instance, method)
        try:
            return func(*vargs, **kwargs)
        except Exception:
            _log_callback_failure(func, method)
            raise

    @staticmethod
    def _check_attribute(registration: Registration, method: str, vargs: Any) -> None:
        if len(vargs) != (1 if method == ATTRIBUTE_GET else 2) or vargs[0] not in registration.members["attrs"]:
            raise AttributeError(f"remote object {registration.object_id!r} has no exposed attribute "
                                 f"{vargs[0] if vargs else '?'!r}")

    @staticmethod
    def _method(registration: Registration, instance: Any, method: str) -> Any:
        if method not in registration.members["methods"]:
            raise AttributeError(f"remote object {registration.object_id!r} has no exposed method {method!r}")
        return getattr(instance, method)

    def traced(self, exc: BaseException, method: str) -> BaseException:
        """`exc` with its remote traceback attached (what a Pyro5 proxy shows as the remote side)."""
        if not hasattr(exc, errors.REMOTE_TRACEBACK_ATTR):
            try:
                setattr(exc, errors.REMOTE_TRACEBACK_ATTR,
                        errors.format_traceback(exc, self.settings.DETAILED_TRACEBACK))
            except (AttributeError, TypeError):
                pass
        log.debug("call %s raised %r", method, exc)
        return exc

    @staticmethod
    def is_stream(result: Any) -> bool:
        if type(result) in _PLAIN_RESULTS:  # the common case, without an ABC check
            return False
        return isinstance(result, (types.GeneratorType, collections.abc.Iterator))


def awaitable_refused(coroutine: types.CoroutineType, method: str) -> DaemonError:
    """An `async def` method gave `coroutine` to a daemon with no loop to await it on (the threaded
    one): closed (no "never awaited" warning), and the error its caller gets."""
    coroutine.close()
    return DaemonError(f"{method} is an `async def` method: serve its object with meshrpc.aio.Daemon "
                       f"(docs/asyncio.md)")


def _log_callback_failure(func: Any, method: str) -> None:
    """A @callback method raised: logged where it runs too (the exception in flight goes to the caller)."""
    if getattr(func, "_pyroCallback", False):
        log.warning("exception in callback %s", method, exc_info=True)
