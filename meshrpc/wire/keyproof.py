"""The mesh-key proof of the CONNECT handshake, both ways (docs/security.md). Pure functions plus a
small replay cache; no I/O, and no clock read when the caller passes the time (the sessions do).

The proxy sends nonce + timestamp + HMAC(handshake key, nonce, timestamp, object id) in CONNECT's
KEY_ANNOTATION; the daemon checks it (window, replay) and answers its own nonce + HMAC bound to the
proxy's nonce in CONNECTOK. Sub-keys are derived from the secret per purpose, so a MAC made for
announcements (mesh/auth.py) can never be presented here, nor the other way round.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
import time
from collections import OrderedDict
from functools import lru_cache

from ..limits import KEY_REPLAY_CACHE_MAX
from .constants import KEY_CLIENT_TOKEN_BYTES, KEY_NONCE_BYTES, KEY_SERVER_TOKEN_BYTES

REQUIRED_REASON = "this daemon requires the mesh key (MESHRPC_KEY)"
BAD_KEY_REASON = "mesh key check failed (wrong MESHRPC_KEY, or a clock off by more than KEY_WINDOW)"
REPLAY_REASON = "mesh key check failed (replayed handshake)"
# CONNECTFAIL reasons that are about the key start with one of these (the proxy raises SecurityError)
KEY_REASON_PREFIXES = ("this daemon requires the mesh key", "mesh key check failed")


@lru_cache(maxsize=16)
def subkeys(key: str) -> tuple[bytes, bytes]:
    """(announcement key, handshake key) derived from the mesh key."""
    secret = key.encode("utf-8")
    return (hmac.new(secret, b"meshrpc mesh key v1: announcements", hashlib.sha256).digest(),
            hmac.new(secret, b"meshrpc mesh key v1: handshake", hashlib.sha256).digest())


def fields(*parts: bytes) -> bytes:
    """Unambiguous concatenation: each part with a 4-byte length before it."""
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def client_mac(key: str, nonce: bytes, timestamp: bytes, object_id: str) -> bytes:
    return hmac.new(subkeys(key)[1], b"client" + fields(nonce, timestamp, object_id.encode("utf-8")),
                    hashlib.sha256).digest()


def server_mac(key: str, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(subkeys(key)[1], b"server" + fields(client_nonce, server_nonce), hashlib.sha256).digest()


def client_token(key: str, object_id: str, now_ms: int | None = None) -> bytes:
    """The proxy's CONNECT annotation: nonce + timestamp + mac."""
    nonce = os.urandom(KEY_NONCE_BYTES)
    timestamp = struct.pack(">Q", _now_ms() if now_ms is None else now_ms)
    return nonce + timestamp + client_mac(key, nonce, timestamp, object_id)


class ReplayCache:
    """Nonces of accepted handshakes, each kept for the window it could be replayed in. Bounded: the
    oldest go first when full (only handshakes with a valid MAC get in, i.e. key holders)."""

    def __init__(self, max_size: int = KEY_REPLAY_CACHE_MAX) -> None:
        self.max_size = max(1, max_size)
        self._seen: OrderedDict[bytes, float] = OrderedDict()   # nonce -> expiry (wall clock, s)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: bytes, keep: float, now: float | None = None) -> bool:
        """False if nonce was seen (and is still remembered); else remember it for `keep` seconds."""
        now = time.time() if now is None else now
        with self._lock:
            while self._seen:
                oldest, expiry = next(iter(self._seen.items()))
                if expiry > now:
                    break
                del self._seen[oldest]
            if nonce in self._seen:
                return False
            self._seen[nonce] = now + keep
            while len(self._seen) > self.max_size:
                self._seen.popitem(last=False)
            return True


_replay_cache = ReplayCache()


def check_client_token(key: str, token: bytes | None, object_id: str, window: float,
                       cache: ReplayCache | None = None, now_ms: int | None = None) -> tuple[bytes | None, str]:
    """Daemon side: (the server's CONNECTOK annotation, "") or (None, reason for CONNECTFAIL)."""
    if not token:
        return None, REQUIRED_REASON
    if len(token) != KEY_CLIENT_TOKEN_BYTES or not isinstance(object_id, str):
        return None, BAD_KEY_REASON
    nonce, timestamp, mac = token[:KEY_NONCE_BYTES], token[KEY_NONCE_BYTES:KEY_NONCE_BYTES + 8], token[KEY_NONCE_BYTES + 8:]
    if not hmac.compare_digest(mac, client_mac(key, nonce, timestamp, object_id)):
        return None, BAD_KEY_REASON
    now = _now_ms() if now_ms is None else now_ms
    if abs(now - struct.unpack(">Q", timestamp)[0]) > window * 1000:
        return None, BAD_KEY_REASON
    # remembered for twice the window: a timestamp can be up to `window` in the future
    if not (_replay_cache if cache is None else cache).add(nonce, 2 * window + 1, now / 1000):
        return None, REPLAY_REASON
    server_nonce = os.urandom(KEY_NONCE_BYTES)
    return server_nonce + server_mac(key, nonce, server_nonce), ""


def check_server_token(key: str, client_token_sent: bytes, token: bytes | None) -> str:
    """Proxy side: "" when the daemon proved it holds the key, else why not."""
    if not token:
        return "the daemon did not prove it holds the mesh key (a daemon without MESHRPC_KEY?)"
    if len(token) != KEY_SERVER_TOKEN_BYTES:
        return "the daemon's mesh key proof is malformed"
    server_nonce, mac = token[:KEY_NONCE_BYTES], token[KEY_NONCE_BYTES:]
    if not hmac.compare_digest(mac, server_mac(key, client_token_sent[:KEY_NONCE_BYTES], server_nonce)):
        return "the daemon's mesh key proof is wrong (it has another key)"
    return ""
