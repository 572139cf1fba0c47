"""The call context: facts about the call being handled (server) or made (client).

Kept in a `contextvars.ContextVar`, so each thread has its own (as before) and so does each asyncio
task the asyncio daemon starts for a request (meshrpc.aio): calls awaited side by side on one loop
never see each other's context.
"""

from __future__ import annotations

import contextvars
from typing import Any

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
        self.correlation_id: bytes | None = None


_state: contextvars.ContextVar[_CallState] = contextvars.ContextVar("meshrpc_call_context")


def _current() -> _CallState:
    try:
        return _state.get()
    except LookupError:  # the first use in this thread (or context): a fresh, empty state
        state = _CallState()
        _state.set(state)
        return state


def current_state() -> _CallState:
    """The state behind current_context, for hot paths: plain attribute access on it, no indirection."""
    try:
        return _state.get()
    except LookupError:
        return _current()


def _field(name: str) -> property:
    def get(self: Any) -> Any:
        return getattr(_current(), name)

    def put(self: Any, value: Any) -> None:
        setattr(_current(), name, value)
    return property(get, put)


class CallContext:
    """`meshrpc.current_context`: on the server, who is calling and how; on the client, what to send.

    Server side, during a call: `client` (the connection), `client_sock_addr`, `seq`, `msg_flags`,
    `serializer_id`, `annotations` (received), `response_annotations` (add entries to send back),
    `correlation_id` (16 bytes or None).
    Client side: set `correlation_id` to have proxies in this thread (or asyncio task) send it;
    received annotations of the last reply are in `response_annotations`.
    """

    __slots__ = ()

    client = _field("client")
    client_sock_addr = _field("client_sock_addr")
    seq = _field("seq")
    msg_flags = _field("msg_flags")
    serializer_id = _field("serializer_id")
    annotations = _field("annotations")
    response_annotations = _field("response_annotations")
    correlation_id = _field("correlation_id")

    def isolate(self) -> None:
        """Give the current context (an asyncio task's) a state of its own, starting empty.

        asyncio tasks inherit a copy of their creator's context, which would share one state object:
        a server task handling a request calls this first."""
        _state.set(_CallState())

    def begin(self, client: Any, client_sock_addr: Any, seq: int, msg_flags: int, serializer_id: int,
              annotations: dict[str, bytes], correlation_id: bytes | None) -> None:
        """A server starts handling a call: a fresh state with these facts (one step, for speed)."""
        state = _CallState()
        state.client, state.client_sock_addr, state.seq, state.msg_flags = client, client_sock_addr, seq, msg_flags
        state.serializer_id, state.annotations, state.correlation_id = serializer_id, annotations, correlation_id
        _state.set(state)

    def to_global(self) -> dict[str, Any]:
        """A plain dict copy, to carry the context into another thread."""
        state = _current()
        return {name: getattr(state, name) for name in _FIELDS}

    def from_global(self, values: dict[str, Any]) -> None:
        state = _current()
        for key, value in values.items():
            setattr(state, key, value)


current_context = CallContext()
