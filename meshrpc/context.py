"""The call context: per-thread facts about the call being handled (server) or made (client)."""

from __future__ import annotations

import threading
from typing import Any


class CallContext(threading.local):
    """`meshrpc.current_context`: on the server, who is calling and how; on the client, what to send.

    Server side, during a call: `client` (the connection), `client_sock_addr`, `seq`, `msg_flags`,
    `serializer_id`, `annotations` (received), `response_annotations` (add entries to send back),
    `correlation_id` (16 bytes or None).
    Client side: set `correlation_id` to have proxies in this thread send it; received annotations of
    the last reply are in `response_annotations`.
    """

    def __init__(self) -> None:
        self.client: Any = None
        self.client_sock_addr: Any = None
        self.seq = 0
        self.msg_flags = 0
        self.serializer_id = 0
        self.annotations: dict[str, bytes] = {}
        self.response_annotations: dict[str, bytes] = {}
        self.correlation_id: bytes | None = None

    def to_global(self) -> dict[str, Any]:
        """A plain dict copy, to carry the context into another thread."""
        return dict(vars(self))

    def from_global(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            setattr(self, key, value)


current_context = CallContext()
