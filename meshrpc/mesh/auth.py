"""The mesh key (setting KEY, env MESHRPC_KEY): a shared secret that signs mesh announcements and
proves possession in the CONNECT handshake (that part lives in wire/keyproof.py and is re-exported
here). Pure functions; no I/O.

Empty key: nothing here is used and the wire is exactly as without this module.

Two sub-keys are derived from the secret (HMAC-SHA256 of fixed labels), so that a MAC made for one
purpose can never be presented for the other: one for announcements (entries and heartbeats), one
for the handshake. All MACs are HMAC-SHA256; announcement MACs are truncated to MESH_AUTH_BYTES.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace

from ..wire.keyproof import (BAD_KEY_REASON, REPLAY_REASON, REQUIRED_REASON, ReplayCache,  # noqa: F401
                             check_client_token, check_server_token, client_mac, client_token, server_mac)
from ..wire.constants import MESH_AUTH_BYTES
from ..wire.keyproof import fields as _fields, subkeys as _subkeys
from .records import Entry, Heartbeat, IndexPage


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
    """Signed bytes of a heartbeat; its digest of the node's entries only when it carries one."""
    signed = b"meshrpc-heartbeat-v1" + _fields(
        hb.realm.encode("utf-8"), hb.node.encode("utf-8"), str(hb.incarnation).encode(), str(hb.seq).encode())
    if hb.count >= 0:
        signed += _fields(b"digest", str(hb.count).encode(), hb.digest.encode("ascii"))
    return signed


def canonical_index(page: IndexPage) -> bytes:
    return b"meshrpc-index-v1" + _fields(
        page.realm.encode("utf-8"), page.node.encode("utf-8"), str(page.incarnation).encode(),
        str(page.version).encode(), str(page.page).encode(), str(page.pages).encode(),
        *(f"{label}:{version}".encode("ascii") for label, version in page.items))


Signed = Entry | Heartbeat | IndexPage


def _canonical(item: Signed) -> bytes:
    if isinstance(item, Heartbeat):
        return canonical_heartbeat(item)
    if isinstance(item, IndexPage):
        return canonical_index(item)
    return canonical_entry(item)


def authenticator(key: str, item: Signed) -> bytes:
    return hmac.new(_subkeys(key)[0], _canonical(item), hashlib.sha256).digest()[:MESH_AUTH_BYTES]


def sign(key: str, item: Signed) -> Signed:
    """item with its authenticator (unchanged when key is empty)."""
    if not key:
        return item
    return replace(item, auth=authenticator(key, item))


def verify(key: str, item: Signed) -> str:
    """"" when item may be used by a receiver with this key, else why not. Keyless: always ""."""
    if not key:
        return ""
    if not item.auth:
        return "no mesh key authenticator (publisher without MESHRPC_KEY?)"
    if not hmac.compare_digest(item.auth, authenticator(key, item)):
        return "bad mesh key authenticator (another key, or tampered)"
    return ""
