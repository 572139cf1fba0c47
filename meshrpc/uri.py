"""URI grammar and the URI value type.

    PYRO:<object>@<host>:<port>        a direct object; host may be [ipv6]
    PYRO:<object>@./u:<socket path>    a direct object on a Unix domain socket
    PYRONAME:<name>[@<host>:<port>]    by logical name (the optional location is a name server)
    PYROMETA:<tag>[,<tag>...][@<host>:<port>]   by metadata tags (all must match)
"""

from __future__ import annotations

import re
from typing import Any

from .errors import MeshError
from .wire.constants import NS_DEFAULT_PORT

PROTOCOLS = ("PYRO", "PYRONAME", "PYROMETA")

_LOCATION = re.compile(r"""
    (?:\./u:(?P<sockname>.+))                         # unix socket path
  | (?:\[(?P<ipv6>[0-9a-fA-F]*:[0-9a-fA-F:.]*(?:%[\w.-]+)?)\]|(?P<host>[^:\[\]@/\s]+))(?::(?P<port>[0-9]+))?
""", re.VERBOSE | re.ASCII)


class InvalidURIError(MeshError, ValueError):
    """A string that is not a valid meshrpc/Pyro URI."""


class URI:
    """A parsed URI. Compare, hash and print it like a string; it serializes as Pyro5's URI does."""

    __slots__ = ("protocol", "object", "host", "port", "sockname")

    def __init__(self, uri: "str | URI") -> None:
        if isinstance(uri, URI):
            self.protocol, self.object, self.host, self.port, self.sockname = (
                uri.protocol, uri.object, uri.host, uri.port, uri.sockname)
            return
        if not isinstance(uri, str):
            kind = type(uri)
            if kind.__name__ != "URI" or kind.__module__.partition(".")[0] not in ("Pyro5", "Pyro4"):
                raise TypeError(f"a URI must be a str or URI, not {kind.__module__}.{kind.__qualname__}")
            uri = str(uri)  # Pyro5's (or Pyro4's) URI object: its text is the same URI
        self.protocol, self.object, self.host, self.port, self.sockname = _parse(uri)

    @classmethod
    def from_parts(cls, object_id: Any, host: str | None = None, port: int | None = None,
                   sockname: str | None = None, protocol: str = "PYRO") -> "URI":
        uri = cls.__new__(cls)
        if protocol == "PYROMETA" and isinstance(object_id, str):
            object_id = _tag_set(object_id)
        uri.protocol, uri.object, uri.host, uri.port, uri.sockname = protocol, object_id, host, port or None, sockname
        return uri

    @property
    def tags(self) -> frozenset[str]:
        """The metadata tags of a PYROMETA URI (empty for the others); its `object` too, as in Pyro5."""
        if self.protocol != "PYROMETA":
            return frozenset()
        return self.object

    @staticmethod
    def isUnixsockLocation(location: str) -> bool:
        """Pyro5's test: is this location part a Unix socket (`./u:path`)?"""
        return location.startswith("./u:")

    @property
    def location(self) -> str | None:
        if self.sockname:
            return "./u:" + self.sockname
        if self.host is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host

    @property
    def is_direct(self) -> bool:
        return self.protocol == "PYRO"

    def __str__(self) -> str:
        location = self.location
        obj = ",".join(sorted(self.object)) if self.protocol == "PYROMETA" else self.object
        return f"{self.protocol}:{obj}" + (f"@{location}" if location else "")

    def __repr__(self) -> str:
        return f"<meshrpc.URI {self}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, URI):
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        return (self.protocol, self.object, self.host, self.port, self.sockname)

    def __wire_dict__(self) -> dict[str, Any]:
        return {"__class__": "Pyro5.core.URI", "state": self.__getstate__()}

    # Pyro5-compatible state: (protocol, object, sockname, host, port); Pyro5 keeps PYROMETA tags
    # as a set and an absent port as None
    def __getstate__(self) -> tuple[Any, ...]:
        obj: Any = set(self.tags) if self.protocol == "PYROMETA" else self.object
        return (self.protocol, obj, self.sockname, self.host, self.port)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if not isinstance(state, (tuple, list)) or len(state) != 5:
            raise InvalidURIError("a URI state is (protocol, object, sockname, host, port)")
        protocol, obj, sockname, host, port = state
        if protocol not in PROTOCOLS:
            raise InvalidURIError(f"unknown URI protocol {protocol!r} in URI state")
        if protocol == "PYROMETA" and isinstance(obj, (set, frozenset, list, tuple)):
            obj = ",".join(sorted(str(tag) for tag in obj))
        if not isinstance(obj, str) or not obj:
            raise InvalidURIError("bad object in URI state")
        if protocol == "PYROMETA":
            obj = _tag_set(obj)
        if not (sockname is None or isinstance(sockname, str)) or not (host is None or isinstance(host, str)):
            raise InvalidURIError("bad location in URI state")
        if port == 0:
            port = None
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535):
            raise InvalidURIError(f"bad port {port!r} in URI state")
        self.protocol, self.object, self.sockname, self.host, self.port = protocol, obj, sockname, host, port


def _tag_set(text: str) -> frozenset[str]:
    return frozenset(t for t in text.split(",") if t)


def _parse(raw: str) -> tuple[str, Any, str | None, int | None, str | None]:
    text = raw.lstrip()
    protocol, sep, rest = text.partition(":")
    protocol = protocol.upper()
    if not sep or protocol not in PROTOCOLS:
        raise InvalidURIError(f"invalid URI {text!r}: expected PYRO:, PYRONAME: or PYROMETA: at the start")
    head, unix, sockname = rest.partition("@./u:")
    if ":" in sockname:  # as Pyro5: a port after a socket path is a mistake, not part of the path
        raise InvalidURIError(f"invalid URI {raw!r}: a Unix socket path cannot contain ':'")
    if unix and protocol == "PYRO" and head and sockname.strip() and not any(c.isspace() for c in head):
        return protocol, head, None, None, sockname  # a socket path may contain spaces (Pyro5 allows them)
    text = text.rstrip()
    rest = rest.rstrip()
    if any(c.isspace() for c in rest):
        raise InvalidURIError(f"invalid URI {text!r}: whitespace is not allowed")
    # the object part may itself contain '@' only for PYRONAME/PYROMETA without location; split on the last '@'
    obj, at, location = rest.rpartition("@")
    if not at:
        obj, location = rest, ""
    if not obj:
        raise InvalidURIError(f"invalid URI {text!r}: the object {'name' if protocol != 'PYRO' else 'id'} is empty")
    if protocol == "PYROMETA" and not any(t for t in obj.split(",")):
        raise InvalidURIError(f"invalid URI {text!r}: PYROMETA needs at least one tag")
    if not location:
        if protocol == "PYRO":
            raise InvalidURIError(f"invalid URI {text!r}: PYRO URIs need a location, as in PYRO:obj@host:port")
        return protocol, _tag_set(obj) if protocol == "PYROMETA" else obj, None, None, None
    if location.startswith("[["):
        raise InvalidURIError("invalid ipv6 address: enclosed in too many brackets")  # Pyro5's text
    match = _LOCATION.fullmatch(location)
    if not match and location.startswith("["):
        raise InvalidURIError("invalid ipv6 address: the part between brackets must be a numeric ipv6 address")
    if not match:
        raise InvalidURIError(f"invalid URI {text!r}: bad location {location!r} (expected host:port, "
                              "[ipv6]:port or ./u:/socket/path)")
    if match["sockname"]:
        if protocol != "PYRO":
            raise InvalidURIError(f"invalid URI {text!r}: unix sockets only with PYRO:")
        return protocol, obj, None, None, match["sockname"]
    host = match["ipv6"] or match["host"]
    port = int(match["port"]) if match["port"] else 0
    if port > 65535:
        raise InvalidURIError(f"invalid URI {text!r}: port {port} out of range")
    if protocol == "PYRO" and not port:
        raise InvalidURIError(f"invalid URI {text!r}: PYRO URIs need a port, as in PYRO:obj@host:port")
    if protocol != "PYRO" and not port:
        port = NS_DEFAULT_PORT
    return protocol, _tag_set(obj) if protocol == "PYROMETA" else obj, host, port, None
