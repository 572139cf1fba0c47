"""What a mesh announcement looks like on the wire: pure functions, no I/O.

An `Entry` (one published object) becomes a DNS-SD instance label plus TXT bytes; a `Heartbeat`
(one per daemon) becomes TXT bytes. `decode` turns TXT bytes back into either, or into
`(None, reason)`: it never raises, because everything it reads came from the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..errors import NamingError
from ..uri import URI
from ..wire.constants import (DNS_MAX_LABEL, DNS_MAX_TXT_STRING, MESH_AUTH_TXT_KEY, MESH_FORMAT_VERSION,
                              MESH_HEARTBEAT_PREFIX, MESH_INDEX_PAGE_ENTRIES, MESH_INDEX_PREFIX, MESH_INDEX_SERVICE_TYPE,
                              MESH_MAX_OTHER_HOSTS, MESH_SERVER_PREFIX, MESH_SERVICE_TYPE, MESH_TXT_ADVISED_MAX)

# (the records' names, keys and sizes are protocol: wire/constants.py)
_DIGEST_HEX = 8
_PREFIX_MAX = 50                  # readable part of a label; the rest is "-" + 12 hex digits
_HASH_HEX = 12
_MAX_INT = 2 ** 63 - 1
_MAX_CHUNKS = 64
_MAX_REALM = 63
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}\Z")
_UNSAFE_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_TAG_ESCAPES = re.compile(r"%(25|2C)", re.IGNORECASE)


@dataclass(frozen=True)
class Entry:
    """One provider of a name, as a registry shows it. `last_seen` is `time.monotonic()` seconds."""

    name: str
    uri: str
    metadata: frozenset[str]
    host: str
    node: str
    version: int
    incarnation: int
    realm: str
    last_seen: float = field(default=0.0, compare=False)
    # mesh key authenticator (meshrpc.mesh.auth); b"" when unsigned. Not part of the entry's identity.
    auth: bytes = field(default=b"", compare=False, repr=False)
    # a daemon bound to every interface listens on these IPv4 addresses too (the URI names one):
    # a peer on another of its networks connects to the one it can reach (net.reachable_uri)
    other_hosts: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.uri)

    @property
    def order(self) -> tuple[int, int]:
        """Newer news compares greater."""
        return (self.incarnation, self.version)


@dataclass(frozen=True)
class Heartbeat:
    """'Node `node` (this incarnation) is alive': vouches for all of the node's entries.

    `count` and `digest` summarise the node's entries (entries_digest) so that a registry notices
    missing or stale ones; -1 and "" from publishers that do not send them."""

    realm: str
    node: str
    incarnation: int
    seq: int
    auth: bytes = field(default=b"", compare=False, repr=False)   # as Entry.auth
    count: int = -1
    digest: str = ""


@dataclass(frozen=True)
class IndexPage:
    """One page of a node's index: the (instance label, version) of its entries, sorted by label.

    `version` is the node's version counter when the index was taken: entries with a higher version
    are newer than the index. Page `page` of `pages` holds labels page*MESH_INDEX_PAGE_ENTRIES onwards."""

    realm: str
    node: str
    incarnation: int
    version: int
    page: int
    pages: int
    items: tuple[tuple[str, int], ...]
    auth: bytes = field(default=b"", compare=False, repr=False)


Decoded = Entry | Heartbeat | IndexPage


def entries_digest(items: Iterable[tuple[str, int]]) -> str:
    """Digest of a node's entries given as (instance label, version): equal sets, equal digests."""
    lines = sorted(f"{label.lower()}:{version}" for label, version in items)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:_DIGEST_HEX]


def index_pages(realm: str, node: str, incarnation: int, version: int,
                items: Iterable[tuple[str, int]]) -> list[IndexPage]:
    """A node's index split into pages (at least one, possibly empty)."""
    ordered = sorted(items, key=lambda item: item[0].lower())
    chunks = [tuple(ordered[i:i + MESH_INDEX_PAGE_ENTRIES])
              for i in range(0, len(ordered), MESH_INDEX_PAGE_ENTRIES)] or [()]
    return [IndexPage(realm, node, incarnation, version, n, len(chunks), chunk)
            for n, chunk in enumerate(chunks)]


def index_page_count(count: int) -> int:
    return max(1, -(-count // MESH_INDEX_PAGE_ENTRIES))


# ---- building and checking values (publisher side: errors raise NamingError)

def make_entry(*, realm: str, name: str, uri: str, metadata: Iterable[str], node: str,
               incarnation: int, version: int, last_seen: float = 0.0,
               other_hosts: Iterable[str] = ()) -> Entry:
    """A validated Entry with the uri in canonical form; NamingError when something cannot be sent."""
    check_realm(realm)
    check_node(node)
    if not isinstance(name, str) or not name:
        raise NamingError("a mesh name must be a non-empty string")
    _utf8(name, "name")
    try:
        parsed = URI(uri)
    except (ValueError, TypeError) as exc:
        raise NamingError(f"cannot publish {name!r}: {exc}") from None
    if not parsed.is_direct:
        raise NamingError(f"cannot publish {name!r}: only PYRO: URIs can be published, not {uri}")
    if isinstance(metadata, str):    # a str is iterable too, and would become single letters
        raise NamingError("metadata must be a set of strings, not a string")
    tags = frozenset(metadata or ())
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise NamingError(f"metadata tags must be non-empty strings, got {tag!r}")
        _utf8(tag, "metadata tag")
    for number in (incarnation, version):
        if not isinstance(number, int) or not 0 <= number <= _MAX_INT:
            raise NamingError(f"incarnation and version must be integers in 0..2**63-1, got {number!r}")
    return Entry(name=name, uri=str(parsed), metadata=tags, host=_host_of(parsed), node=node,
                 version=version, incarnation=incarnation, realm=realm, last_seen=last_seen,
                 other_hosts=_other_hosts(other_hosts, parsed))


def _other_hosts(hosts: Iterable[str], uri: URI) -> tuple[str, ...]:
    """Distinct IPv4 addresses other than the URI's host, in the order given (at most MESH_MAX_OTHER_HOSTS)."""
    if isinstance(hosts, str):
        raise NamingError("other_hosts must be a sequence of addresses, not a string")
    found: list[str] = []
    for host in hosts:
        try:
            address = str(ipaddress.IPv4Address(host))
        except (ValueError, TypeError):
            raise NamingError(f"other hosts must be IPv4 addresses, got {host!r}") from None
        if address != uri.host and address not in found:
            found.append(address)
    if len(found) > MESH_MAX_OTHER_HOSTS:
        raise NamingError(f"at most {MESH_MAX_OTHER_HOSTS} other addresses fit in an announcement, got {len(found)}")
    if found and (uri.sockname or not uri.host):
        raise NamingError("other addresses make sense only for a TCP URI")
    return tuple(found)


def check_realm(realm: str) -> None:
    if not isinstance(realm, str) or not realm or len(_utf8(realm, "realm")) > _MAX_REALM \
            or not realm.isprintable():
        raise NamingError(f"a mesh realm must be 1..{_MAX_REALM} printable UTF-8 bytes, got {realm!r}")


def check_node(node: str) -> None:
    if not isinstance(node, str) or not _NODE_RE.match(node):
        raise NamingError(f"a mesh node id is 1..32 letters, digits or '-', got {node!r}")


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise NamingError(f"the {what} {text!r} cannot be encoded as UTF-8") from None


def _host_of(uri: URI) -> str:
    return uri.host if uri.host else "localhost"   # unix sockets are on this machine


# ---- names

def instance_label(entry: Entry) -> str:
    """DNS-SD instance label: readable, no dots, at most 63 bytes, unique per (realm, name, uri, node)."""
    readable = _UNSAFE_LABEL_CHARS.sub("-", entry.name).strip("-")[:_PREFIX_MAX] or "obj"
    digest = hashlib.sha256(f"{entry.realm}\x00{entry.name}\x00{entry.uri}\x00{entry.node}"
                            .encode()).hexdigest()[:_HASH_HEX]
    return f"{readable}-{digest}"


def heartbeat_label(node: str) -> str:
    return MESH_HEARTBEAT_PREFIX + node


def index_label(node: str, page: int) -> str:
    return f"{MESH_INDEX_PREFIX}{page}-{node}"


def index_name(node: str, page: int) -> str:
    return f"{index_label(node, page)}.{MESH_INDEX_SERVICE_TYPE}"


def server_name(node: str) -> str:
    return f"{MESH_SERVER_PREFIX}{node}.local."


def service_name(label: str) -> str:
    return f"{label}.{MESH_SERVICE_TYPE}"


def label_of(record_name: str, service_type: str = MESH_SERVICE_TYPE) -> str | None:
    """The instance label of a full record name under service_type (ours), else None."""
    if not record_name.lower().endswith("." + service_type):
        return None
    label = record_name[: -len(service_type) - 1]
    return label if label and "." not in label else None


# ---- encoding

def encode_entry(entry: Entry, max_size: int = MESH_TXT_ADVISED_MAX) -> bytes:
    """TXT bytes for an entry; NamingError when they would exceed max_size (nothing is dropped)."""
    name, uri = entry.name.encode("utf-8"), entry.uri.encode("utf-8")
    tags = encode_tags(entry.metadata).encode("utf-8")
    if len(name) + len(uri) + len(tags) > max_size:      # before splitting anything enormous
        raise _too_big(entry, len(name) + len(uri) + len(tags), max_size)
    props: list[tuple[str, bytes]] = [
        ("v", MESH_FORMAT_VERSION.encode()), ("r", entry.realm.encode("utf-8")),
        ("o", entry.node.encode()), ("i", str(entry.incarnation).encode()),
        ("s", str(entry.version).encode())]
    _put(props, "n", name)
    _put(props, "u", uri)
    if tags:
        _put(props, "t", tags)
    if entry.other_hosts:
        props.append(("x", ",".join(entry.other_hosts).encode("ascii")))
    if entry.auth:
        props.append((MESH_AUTH_TXT_KEY, _b64(entry.auth)))
    size = sum(len(key) + len(value) + 2 for key, value in props)   # length byte + "="
    if size > max_size:
        raise _too_big(entry, size, max_size)
    return _pack(props)


def _too_big(entry: Entry, size: int, max_size: int) -> NamingError:
    return NamingError(
        f"cannot publish {entry.name[:80]!r}: its mesh announcement needs at least {size} bytes of "
        f"TXT, more than MESH_TXT_MAX={max_size} (name {len(entry.name.encode())} bytes, uri "
        f"{len(entry.uri)} bytes, {len(entry.metadata)} metadata tags); use fewer or shorter tags")


def encode_heartbeat(hb: Heartbeat) -> bytes:
    props = [("v", MESH_FORMAT_VERSION.encode()), ("r", hb.realm.encode("utf-8")),
             ("o", hb.node.encode()), ("i", str(hb.incarnation).encode()), ("h", str(hb.seq).encode())]
    if hb.count >= 0:
        props += [("c", str(hb.count).encode()), ("d", hb.digest.encode("ascii"))]
    if hb.auth:
        props.append((MESH_AUTH_TXT_KEY, _b64(hb.auth)))
    return _pack(props)


def encode_index_page(page: IndexPage) -> bytes:
    props = [("v", MESH_FORMAT_VERSION.encode()), ("r", page.realm.encode("utf-8")),
             ("o", page.node.encode()), ("i", str(page.incarnation).encode()),
             ("s", str(page.version).encode()), ("p", f"{page.page}/{page.pages}".encode())]
    _put(props, "e", ",".join(f"{label}:{version}" for label, version in page.items).encode("ascii"))
    if page.auth:
        props.append((MESH_AUTH_TXT_KEY, _b64(page.auth)))
    return _pack(props)


def _b64(auth: bytes) -> bytes:
    return base64.b64encode(auth)


def _unb64(text: bytes) -> bytes:
    """An authenticator from its TXT value; b"?" (never valid) when it is not base64."""
    try:
        return base64.b64decode(text, validate=True) or b"?"
    except (binascii.Error, ValueError):
        return b"?"


def encode_tags(tags: Iterable[str]) -> str:
    return ",".join(sorted(t.replace("%", "%25").replace(",", "%2C") for t in tags))


def decode_tags(text: str) -> frozenset[str]:
    if not text:
        return frozenset()
    return frozenset(_TAG_ESCAPES.sub(lambda m: "%" if m.group(1) == "25" else ",", part)
                     for part in text.split(","))


def _put(props: list[tuple[str, bytes]], key: str, value: bytes) -> None:
    """Add key=value, split over numbered keys (key*=count, key0=, key1=...) if one string is too small."""
    if len(key) + 1 + len(value) <= DNS_MAX_TXT_STRING:
        props.append((key, value))
        return
    size = DNS_MAX_TXT_STRING - len(key) - 4          # room for "=" and a chunk number of up to 3 digits
    chunks = [value[i:i + size] for i in range(0, len(value), size)]
    if len(chunks) > _MAX_CHUNKS:
        raise NamingError(f"value of TXT key {key!r} is too long ({len(value)} bytes)")
    props.append((key + "*", str(len(chunks)).encode()))
    props.extend((f"{key}{n}", chunk) for n, chunk in enumerate(chunks))


def _pack(props: list[tuple[str, bytes]]) -> bytes:
    out = bytearray()
    for key, value in props:
        item = key.encode("ascii") + b"=" + value
        if len(item) > DNS_MAX_TXT_STRING:
            raise NamingError(f"TXT string for key {key!r} is too long ({len(item)} bytes)")
        out.append(len(item))
        out += item
    return bytes(out)


# ---- decoding (receiver side: never raises)

class _Reject(Exception):
    pass


def decode(txt: bytes, *, realm: str | None = None, label: str | None = None,
           max_size: int = MESH_TXT_ADVISED_MAX) -> tuple[Decoded | None, str]:
    """Parse a TXT record: (Entry or Heartbeat, "") or (None, why it was ignored).

    realm: accept only that realm (None: any). label: the record's instance label, checked against
    the content so a record cannot claim someone else's name.
    """
    try:
        return _decode(txt, realm, label, max_size), ""
    except _Reject as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - network input must never crash the receiver
        return None, f"undecodable ({type(exc).__name__}: {exc})"


def _decode(txt: bytes, realm: str | None, label: str | None, max_size: int) -> Decoded:
    if not isinstance(txt, (bytes, bytearray)):
        raise _Reject("TXT is not bytes")
    if len(txt) > max_size:
        raise _Reject(f"TXT of {len(txt)} bytes exceeds {max_size}")
    props = _unpack(bytes(txt))
    version = props.get("v")
    if version is None:
        raise _Reject("no format version (not a meshrpc record)")
    if version != MESH_FORMAT_VERSION.encode():
        raise _Reject(f"unsupported format version {version[:16]!r}")
    got_realm = _text(props, "r")
    if realm is not None and got_realm != realm:
        raise _Reject(f"other realm {got_realm[:64]!r}")
    node = _text(props, "o")
    if not _NODE_RE.match(node):
        raise _Reject("bad node id")
    incarnation = _int(props, "i")
    auth = _unb64(props[MESH_AUTH_TXT_KEY]) if MESH_AUTH_TXT_KEY in props else b""
    if "h" in props:
        if label is not None and label.lower() != heartbeat_label(node).lower():
            raise _Reject("heartbeat label does not match its node")
        count, digest = -1, ""
        if "c" in props:
            count, digest = _int(props, "c"), _text(props, "d")
            if not re.fullmatch(r"[0-9a-f]{%d}" % _DIGEST_HEX, digest):
                raise _Reject("bad digest")
        return Heartbeat(realm=got_realm, node=node, incarnation=incarnation, seq=_int(props, "h"),
                         auth=auth, count=count, digest=digest)
    if "p" in props:
        return _decode_index(props, got_realm, node, incarnation, auth, label)
    tags = decode_tags(_text(props, "t")) if ("t" in props or "t*" in props) else frozenset()
    other_hosts = _text(props, "x").split(",") if "x" in props else ()
    try:
        entry = make_entry(realm=got_realm, name=_text(props, "n"), uri=_text(props, "u"),
                           metadata=tags, node=node, incarnation=incarnation, version=_int(props, "s"),
                           other_hosts=other_hosts)
    except NamingError as exc:
        raise _Reject(str(exc)) from None
    if label is not None and label.lower() != instance_label(entry).lower():
        raise _Reject("instance label does not match the record's content")
    return replace(entry, auth=auth) if auth else entry


def _decode_index(props: dict[str, bytes], realm: str, node: str, incarnation: int, auth: bytes,
                  label: str | None) -> IndexPage:
    page_text, _, pages_text = _text(props, "p").partition("/")
    if not (page_text.isdigit() and pages_text.isdigit()) or not int(page_text) < int(pages_text) <= 4096:
        raise _Reject("bad index page number")
    page, pages = int(page_text), int(pages_text)
    if label is not None and label.lower() != index_label(node, page).lower():
        raise _Reject("index label does not match its node and page")
    items = []
    listed = _text(props, "e")
    for part in listed.split(",") if listed else ():
        item_label, _, version = part.rpartition(":")
        if not item_label or len(item_label) > DNS_MAX_LABEL or not version.isdigit() or len(version) > 19:
            raise _Reject("bad index item")
        items.append((item_label, int(version)))
    if len(items) > MESH_INDEX_PAGE_ENTRIES:
        raise _Reject("too many index items")
    return IndexPage(realm, node, incarnation, _int(props, "s"), page, pages, tuple(items), auth)


def _unpack(txt: bytes) -> dict[str, bytes]:
    props: dict[str, bytes] = {}
    pos = 0
    while pos < len(txt):
        length = txt[pos]
        item = txt[pos + 1: pos + 1 + length]
        if len(item) != length:
            raise _Reject("truncated TXT string")
        pos += 1 + length
        key, eq, value = item.partition(b"=")
        if not eq or not key:
            continue                                # RFC 6763: boolean or empty attributes; not ours
        name = key.decode("ascii", "replace").lower()
        props.setdefault(name, value)               # RFC 6763 6.4: the first occurrence wins
    return props


def _raw(props: dict[str, bytes], key: str) -> bytes:
    if key in props:
        return props[key]
    count_text = props.get(key + "*")
    if count_text is None:
        raise _Reject(f"missing key {key!r}")
    if not count_text.isdigit() or not 1 <= int(count_text) <= _MAX_CHUNKS:
        raise _Reject(f"bad chunk count for {key!r}")
    parts = [props.get(f"{key}{n}") for n in range(int(count_text))]
    if any(part is None for part in parts):
        raise _Reject(f"incomplete chunks for {key!r}")
    return b"".join(parts)  # type: ignore[arg-type]


def _text(props: dict[str, bytes], key: str) -> str:
    try:
        return _raw(props, key).decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject(f"key {key!r} is not UTF-8") from None


def _int(props: dict[str, bytes], key: str) -> int:
    raw = _raw(props, key)
    if not raw.isdigit() or len(raw) > 19 or int(raw) > _MAX_INT:
        raise _Reject(f"key {key!r} is not a number")
    return int(raw)
