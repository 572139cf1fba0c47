"""The mesh key (setting KEY, env MESHRPC_KEY): a shared secret that signs mesh announcements and
proves possession in the CONNECT handshake. Pure functions plus a small replay cache; no I/O.

Empty key: nothing here is used and the wire is exactly as without this module.

Two sub-keys are derived from the secret (HMAC-SHA256 of fixed labels), so that a MAC made for one
purpose can never be presented for the other: one for announcements (entries and heartbeats), one
for the handshake. All MACs are HMAC-SHA256; announcement MACs are truncated to AUTH_BYTES.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from functools import lru_cache

from .records import Entry, Heartbeat

AUTH_TXT_KEY = "a"               # TXT key of the authenticator: a=<base64 of AUTH_BYTES> (records.py)
AUTH_BYTES = 16                  # truncated HMAC-SHA256 (128 bits)
HANDSHAKE_ANNOTATION = "MKEY"    # CONNECT and CONNECTOK annotation
NONCE_BYTES = 16
MAC_BYTES = 32
CLIENT_TOKEN_BYTES = NONCE_BYTES + 8 + MAC_BYTES      # nonce, timestamp (ms, u64), mac
SERVER_TOKEN_BYTES = NONCE_BYTES + MAC_BYTES          # server nonce, mac
REPLAY_CACHE_MAX = 65536
REQUIRED_REASON = "this daemon requires the mesh key (MESHRPC_KEY)"
BAD_KEY_REASON = "mesh key check failed (wrong MESHRPC_KEY, or a clock off by more than KEY_WINDOW)"
REPLAY_REASON = "mesh key check failed (replayed handshake)"


@lru_cache(maxsize=16)
def _subkeys(key: str) -> tuple[bytes, bytes]:
    secret = key.encode("utf-8")
    return (hmac.new(secret, b"meshrpc mesh key v1: announcements", hashlib.sha256).digest(),
            hmac.new(secret, b"meshrpc mesh key v1: handshake", hashlib.sha256).digest())


def _fields(*parts: bytes) -> bytes:
    """Unambiguous concatenation: each part with a 4-byte length before it."""
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


# ---------------------------------------------------------------- announcements

def canonical_entry(entry: Entry) -> bytes:
    """The signed bytes of an entry: realm, name, uri, sorted tags, node, incarnation, version, and
    the other addresses when there are any (so entries without them sign as they always did)."""
    tags = sorted(tag.encode("utf-8") for tag in entry.metadata)
    signed = b"meshrpc-entry-v1" + _fields(
        entry.realm.encode("utf-8"), entry.name.encode("utf-8"), entry.uri.encode("utf-8"),
        _fields(*tags), entry.node.encode("utf-8"), str(entry.incarnation).encode(),
        str(entry.version).encode())
    if entry.other_hosts:
        signed += _fields(b"other hosts", *(host.encode("ascii") for host in entry.other_hosts))
    return signed


def canonical_heartbeat(hb: Heartbeat) -> bytes:
    return b"meshrpc-heartbeat-v1" + _fields(
        hb.realm.encode("utf-8"), hb.node.encode("utf-8"), str(hb.incarnation).encode(), str(hb.seq).encode())


def _canonical(item: Entry | Heartbeat) -> bytes:
    return canonical_heartbeat(item) if isinstance(item, Heartbeat) else canonical_entry(item)


def authenticator(key: str, item: Entry | Heartbeat) -> bytes:
    return hmac.new(_subkeys(key)[0], _canonical(item), hashlib.sha256).digest()[:AUTH_BYTES]


def sign(key: str, item: Entry | Heartbeat) -> Entry | Heartbeat:
    """item with its authenticator (unchanged when key is empty)."""
    if not key:
        return item
    return replace(item, auth=authenticator(key, item))


def verify(key: str, item: Entry | Heartbeat) -> str:
    """"" when item may be used by a receiver with this key, else why not. Keyless: always ""."""
    if not key:
        return ""
    if not item.auth:
        return "no mesh key authenticator (publisher without MESHRPC_KEY?)"
    if not hmac.compare_digest(item.auth, authenticator(key, item)):
        return "bad mesh key authenticator (another key, or tampered)"
    return ""


# ---------------------------------------------------------------- handshake

def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def client_mac(key: str, nonce: bytes, timestamp: bytes, object_id: str) -> bytes:
    return hmac.new(_subkeys(key)[1], b"client" + _fields(nonce, timestamp, object_id.encode("utf-8")),
                    hashlib.sha256).digest()


def server_mac(key: str, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(_subkeys(key)[1], b"server" + _fields(client_nonce, server_nonce), hashlib.sha256).digest()


def client_token(key: str, object_id: str, now_ms: int | None = None) -> bytes:
    """The proxy's CONNECT annotation: nonce + timestamp + mac."""
    nonce = os.urandom(NONCE_BYTES)
    timestamp = struct.pack(">Q", _now_ms() if now_ms is None else now_ms)
    return nonce + timestamp + client_mac(key, nonce, timestamp, object_id)


class ReplayCache:
    """Nonces of accepted handshakes, each kept for the window it could be replayed in. Bounded: the
    oldest go first when full (only handshakes with a valid MAC get in, i.e. key holders)."""

    def __init__(self, max_size: int = REPLAY_CACHE_MAX) -> None:
        self.max_size = max(1, max_size)
        self._seen: OrderedDict[bytes, float] = OrderedDict()   # nonce -> monotonic expiry
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: bytes, keep: float, now: float | None = None) -> bool:
        """False if nonce was seen (and is still remembered); else remember it for `keep` seconds."""
        now = time.monotonic() if now is None else now
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
    if len(token) != CLIENT_TOKEN_BYTES or not isinstance(object_id, str):
        return None, BAD_KEY_REASON
    nonce, timestamp, mac = token[:NONCE_BYTES], token[NONCE_BYTES:NONCE_BYTES + 8], token[NONCE_BYTES + 8:]
    if not hmac.compare_digest(mac, client_mac(key, nonce, timestamp, object_id)):
        return None, BAD_KEY_REASON
    now = _now_ms() if now_ms is None else now_ms
    if abs(now - struct.unpack(">Q", timestamp)[0]) > window * 1000:
        return None, BAD_KEY_REASON
    # remembered for twice the window: a timestamp can be up to `window` in the future
    if not (_replay_cache if cache is None else cache).add(nonce, 2 * window + 1):
        return None, REPLAY_REASON
    server_nonce = os.urandom(NONCE_BYTES)
    return server_nonce + server_mac(key, nonce, server_nonce), ""


def check_server_token(key: str, client_token_sent: bytes, token: bytes | None) -> str:
    """Proxy side: "" when the daemon proved it holds the key, else why not."""
    if not token:
        return "the daemon did not prove it holds the mesh key (a daemon without MESHRPC_KEY?)"
    if len(token) != SERVER_TOKEN_BYTES:
        return "the daemon's mesh key proof is malformed"
    server_nonce, mac = token[:NONCE_BYTES], token[NONCE_BYTES:]
    if not hmac.compare_digest(mac, server_mac(key, client_token_sent[:NONCE_BYTES], server_nonce)):
        return "the daemon's mesh key proof is wrong (it has another key)"
    return ""
