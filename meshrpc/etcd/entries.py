"""meshrpc's entries as etcd keys and values: pure functions, no I/O.

Key: `<ETCD_PREFIX><realm, %-escaped>/<instance label>`, one per (realm, name, uri, node), the
label being the mesh's DNS-SD instance label (readable name + hash). Value: the very bytes of the
mesh's TXT record (records.encode_entry): URI, tags, other hosts, node, incarnation, version and,
under a mesh key, the same authenticator, so readers check etcd entries exactly like mDNS ones.
"""

from __future__ import annotations

from urllib.parse import quote

from ..config import Settings
from ..limits import ETCD_VALUE_MAX
from ..mesh import records
from ..mesh.records import Entry


def realm_prefix(settings: Settings, realm: str | None = None) -> bytes:
    return (settings.ETCD_PREFIX + quote(realm or settings.REALM, safe="") + "/").encode("utf-8")


def key_for(prefix: bytes, entry: Entry) -> bytes:
    return prefix + records.instance_label(entry).encode("ascii")


def encode_value(entry: Entry) -> bytes:
    return records.encode_entry(entry, ETCD_VALUE_MAX)


def decode_value(prefix: bytes, key: bytes, value: bytes, realm: str) -> tuple[Entry | None, str]:
    """(Entry, "") or (None, why it is ignored); never raises (the store is written by others too)."""
    if not key.startswith(prefix):
        return None, "key outside the realm's prefix"
    try:
        label = key[len(prefix):].decode("ascii")
    except UnicodeDecodeError:
        return None, "key is not ASCII"
    item, why = records.decode(value, realm=realm, label=label, max_size=ETCD_VALUE_MAX)
    if item is None:
        return None, why
    if not isinstance(item, Entry):
        return None, "a heartbeat has no place in etcd"
    return item, ""
