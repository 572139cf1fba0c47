"""Cork: the writes of one turn of an asyncio loop share system calls (used by the aio proxy and daemon)."""

from __future__ import annotations

import asyncio
from typing import Any


class Cork:
    """The first message written in a turn of the loop goes out at once (a lone call or reply waits for
    nothing); the ones written after it in the same turn are gathered and go out together at the end of
    the turn, or as soon as `flush_bytes` of them are waiting: many calls (or replies) made side by
    side cost a few system calls, not one each, and the peer starts on the first of them while this
    side still writes the rest (the two processes then work at the same time). `owner.transport` is
    the asyncio transport."""

    __slots__ = ("_loop", "_owner", "_parts", "_size", "_turn", "_flush_bytes")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: Any, flush_bytes: int) -> None:
        self._loop = loop
        self._owner = owner
        self._parts: list = []
        self._size = 0
        self._turn = False  # something was written in this turn already
        self._flush_bytes = flush_bytes

    def write(self, parts: list) -> None:
        if self._turn:
            self._parts += parts
            self._size += sum(map(len, parts))
            if self._size >= self._flush_bytes:
                self._send()
            return
        self._turn = True
        self._loop.call_soon(self._end_of_turn)
        transport = self._owner.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(parts)

    def _send(self) -> None:
        parts, self._parts, self._size = self._parts, [], 0
        transport = self._owner.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(parts)

    def _end_of_turn(self) -> None:
        self._turn = False
        if self._parts:
            self._send()
