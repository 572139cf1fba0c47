"""The call context: facts about the call being handled (server) or made (client).

Kept in a `contextvars.ContextVar`, so each thread has its own (as before) and so does each asyncio
task the asyncio daemon starts for a request (meshrpc.aio): calls awaited side by side on one loop
never see each other's context.

A state object may be shared: asyncio tasks inherit their creator's context, so a task made after its
creator touched the context holds the same object. So a state is never changed in place once it is
in a context: a write makes a changed copy and sets that in the current context only (copy on write),
and a field set in one task shows in that task and in the tasks it creates later, never in its
siblings or its creator.
"""

from __future__ import annotations

import contextvars
import uuid
from typing import Any

from .errors import MeshError

_FIELDS = ("client", "client_sock_addr", "seq", "msg_flags", "serializer_id", "annotations",
           "response_annotations", "correlation_id")


class _CallState:
    __slots__ = _FIELDS

    def __init__(self) -> None:
        self.client: Any = None
        self.client_sock_addr: Any = None
        self.seq = 0
        self.msg_flags = 0
        self.serializer_id = 0
        self.annotations: dict[str, bytes] = {}
        self.response_annotations: dict[str, bytes] = {}
        self.correlation_id: uuid.UUID | bytes | None = None  # bytes as received; read as a UUID


class _FreshId:
    """A server call that came without a correlation id gets a fresh uuid4, as Pyro5 daemons give one:
    made when first read (most calls never read it), so this marker stands in until then."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False


FRESH_ID = _FreshId()


def _fresh(state: "_CallState") -> uuid.UUID:
    # in place on purpose: the call's one id, made late; every task sharing the call's state sees it
    corr = state.correlation_id = uuid.uuid4()
    return corr


_state: contextvars.ContextVar[_CallState] = contextvars.ContextVar("meshrpc_call_context")
_state_set = _state.set
_new_state = object.__new__


def _current() -> _CallState:
    try:
        return _state.get()
    except LookupError:  # the first use in this thread (or context): a fresh, empty state
        state = _CallState()
        _state.set(state)
        return state


#: current_state() where a state certainly exists (a server during a call, after begin): no Python frame
call_state = _state.get


def current_state() -> _CallState:
    """The state behind current_context, for hot paths: plain attribute access on it, no indirection."""
    try:
        return _state.get()
    except LookupError:
        return _current()


def _copy(state: _CallState) -> _CallState:
    twin = _new_state(_CallState)
    for name in _FIELDS:
        setattr(twin, name, getattr(state, name))
    return twin


def _put(name: str, value: Any) -> None:
    """Set one field for the current context only (copy on write: the state may be shared)."""
    twin = _copy(_current())
    setattr(twin, name, value)
    _state_set(twin)


def set_response_annotations(state: _CallState, annotations: dict[str, bytes]) -> None:
    """A proxy's hot path: the annotations of the reply just received, `state` being current_state().
    Nothing is copied when they stay empty (most calls)."""
    if annotations or state.response_annotations:
        twin = _copy(state)
        twin.response_annotations = annotations
        _state_set(twin)


def _field(name: str) -> property:
    def get(self: Any) -> Any:
        return getattr(_current(), name)

    def put(self: Any, value: Any) -> None:
        _put(name, value)
    return property(get, put)


class CallContext:
    """`meshrpc.current_context`: on the server, who is calling and how; on the client, what to send.

    Server side, during a call: `client` (the connection; its `tracked_resources`, and attributes a
    program sets on it), `client_sock_addr`, `seq`, `msg_flags`, `serializer_id`, `annotations`
    (received), `response_annotations` (add entries to send back), `correlation_id` (a `uuid.UUID` or
    None, as in Pyro5), `track_resource(r)` (`r.close()` runs when the client disconnects).
    Client side: set `correlation_id` (a `uuid.UUID`, or its 16 bytes) to have proxies in this thread
    (or asyncio task) send it; received annotations of the last reply are in `response_annotations`.
    """

    __slots__ = ()

    client = _field("client")
    client_sock_addr = _field("client_sock_addr")
    seq = _field("seq")
    msg_flags = _field("msg_flags")
    serializer_id = _field("serializer_id")
    annotations = _field("annotations")
    response_annotations = _field("response_annotations")

    @property
    def correlation_id(self) -> uuid.UUID | None:
        state = _current()
        corr = state.correlation_id
        if corr is None or isinstance(corr, uuid.UUID):
            return corr
        if corr is FRESH_ID:
            return _fresh(state)
        return uuid.UUID(bytes=bytes(corr))  # as received: Pyro5's type is uuid.UUID

    @correlation_id.setter
    def correlation_id(self, value: uuid.UUID | bytes | None) -> None:
        if not (value is None or isinstance(value, uuid.UUID)
                or (isinstance(value, (bytes, bytearray)) and len(value) == 16)):
            raise TypeError(f"a correlation id is a uuid.UUID (or its 16 bytes), not {value!r}")
        _put("correlation_id", value)

    @property
    def correlation_bytes(self) -> bytes | None:
        """The correlation id as it travels in a message header (16 bytes), or None."""
        state = _current()
        corr = state.correlation_id
        if corr is FRESH_ID:
            corr = _fresh(state)
        return corr.bytes if isinstance(corr, uuid.UUID) else corr

    def track_resource(self, resource: Any) -> None:
        """Server side: call `resource.close()` when the calling client disconnects (unless untracked)."""
        self._tracked("track").add(resource)

    def untrack_resource(self, resource: Any) -> None:
        """Server side: forget a resource given to track_resource (it was freed otherwise)."""
        self._tracked("untrack").discard(resource)

    @staticmethod
    def _tracked(verb: str) -> Any:
        tracked = getattr(_current().client, "tracked_resources", None)
        if tracked is None:
            raise MeshError(f"cannot {verb} a resource outside a call from a connected client")
        return tracked

    def isolate(self) -> None:
        """Give the current context (an asyncio task's) a state of its own, starting empty.

        asyncio tasks inherit a copy of their creator's context, which would share one state object:
        a server task handling a request calls this first."""
        _state.set(_CallState())

    def begin(self, client: Any, client_sock_addr: Any, seq: int, msg_flags: int, serializer_id: int,
              annotations: dict[str, bytes], correlation_id: bytes | None) -> None:
        """A server starts handling a call: a fresh state with these facts (one step, for speed). A call
        without a correlation id gets a fresh one (made when read), as in Pyro5."""
        state = _new_state(_CallState)  # every field set here once: no __init__ setting them first
        state.client = client  # one by one: a tuple assignment of four builds a tuple first
        state.client_sock_addr = client_sock_addr
        state.seq = seq
        state.msg_flags = msg_flags
        state.serializer_id = serializer_id
        state.annotations = annotations
        state.response_annotations = {}
        state.correlation_id = correlation_id or FRESH_ID
        _state_set(state)

    def to_global(self) -> dict[str, Any]:
        """A plain dict copy, to carry the context into another thread."""
        return {name: getattr(self, name) for name in _FIELDS}

    def from_global(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            setattr(self, key, value)


current_context = CallContext()
