"""Remote iterators: results kept on the daemon while a proxy pulls their items."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import DaemonError


@dataclass
class Stream:
    iterator: Iterator[Any]
    owner: Any  # the connection that pulls it; None while lingering after a disconnect
    created: float = field(default_factory=time.monotonic)
    orphaned_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class StreamTable:
    def __init__(self, lifetime: float, linger: float, per_connection: int, *, settings: Any = None) -> None:
        self._lifetime = lifetime
        self._linger = linger
        self.per_connection = per_connection
        self._settings = settings  # given: ITER_STREAM_LIFETIME/ITER_STREAM_LINGER are read from it when needed
        self._streams: dict[str, Stream] = {}
        self._lock = threading.Lock()

    @property
    def lifetime(self) -> float:
        return self._settings.ITER_STREAM_LIFETIME if self._settings is not None else self._lifetime

    @property
    def linger(self) -> float:
        return self._settings.ITER_STREAM_LINGER if self._settings is not None else self._linger

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, iterator: Iterator[Any], owner: Any) -> str:
        with self._lock:
            owned = sum(1 for s in self._streams.values() if s.owner is owner)
            if owned >= self.per_connection:
                raise DaemonError(f"too many open streams on this connection ({owned}); close or exhaust some first")
            stream_id = str(uuid.uuid4())
            self._streams[stream_id] = Stream(iterator, owner)
            return stream_id

    def next_item(self, stream_id: str, caller: Any) -> Any:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise DaemonError("unknown or expired stream; it may have ended, timed out, or its daemon restarted")
        if stream.owner is not caller:
            # the stream id (a random UUID) is the capability: a proxy that reconnected takes its
            # stream along, even before the daemon noticed that the old connection broke
            stream.owner, stream.orphaned_at = caller, 0.0
        with stream.lock:
            try:
                return next(stream.iterator)
            except StopIteration:
                self.close(stream_id)
                raise
            except BaseException:
                self.close(stream_id)
                raise

    def close(self, stream_id: str) -> None:
        with self._lock:
            stream = self._streams.pop(stream_id, None)
        if stream is not None:
            _close_iterator(stream.iterator)

    def orphan(self, owner: Any) -> None:
        """The owner disconnected: keep its streams for the linger time (or drop them at once)."""
        now = time.monotonic()
        with self._lock:
            for stream_id, stream in list(self._streams.items()):
                if stream.owner is owner:
                    if self.linger > 0:
                        stream.owner, stream.orphaned_at = None, now
                    else:
                        del self._streams[stream_id]
                        _close_iterator(stream.iterator)

    def expire(self) -> int:
        now = time.monotonic()
        expired = []
        with self._lock:
            for stream_id, stream in list(self._streams.items()):
                too_old = self.lifetime > 0 and now - stream.created > self.lifetime
                abandoned = stream.owner is None and now - stream.orphaned_at > self.linger
                if too_old or abandoned:
                    expired.append(self._streams.pop(stream_id))
        for stream in expired:
            _close_iterator(stream.iterator)
        return len(expired)

    def close_all(self) -> None:
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            _close_iterator(stream.iterator)


def _close_iterator(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass
