"""This machine's IPv4 interfaces and addresses (netifaces), read fresh each time (the names: see interface_names)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import netifaces

# netifaces' list of names, and the kernel's interfaces (socket.if_nameindex) when it was taken
_names: tuple[tuple[Any, ...] | None, list[str]] = (None, [])
_names_lock = threading.Lock()


def interface_names(source: Any = None) -> list[str]:
    """The names netifaces knows the interfaces by, labelled aliases (eth0:1) included.

    netifaces-plus 0.12's interfaces() leaks the names it returns (about 90 bytes per interface and
    call): a program that looks at its interfaces every few seconds (the mesh's interface check) grew
    by megabytes a day (tools/soak_home.py, tests/unit/test_interfaces_leak.py). So netifaces is
    asked again only when the kernel's list (socket.if_nameindex, which does not leak) changed; an
    alias label added to an interface that stays is seen at the next change. `source`: a
    netifaces-like module (tests pass a fake), asked every time."""
    global _names
    if source is not None and source is not netifaces:
        return list(source.interfaces())
    try:
        kernel = tuple(socket.if_nameindex())
    except (OSError, AttributeError):  # no if_nameindex here: netifaces every time
        return list(netifaces.interfaces())
    with _names_lock:
        if _names[0] != kernel:
            _names = (kernel, list(netifaces.interfaces()))
        return list(_names[1])


def ipv4_interface_infos(source: Any = None) -> Iterator[dict[str, str]]:
    """netifaces' IPv4 entries (addr, netmask, broadcast, peer) of every interface, now.
    `source`: a netifaces-like module (tests pass a fake)."""
    names = interface_names(source)
    source = source or netifaces
    for name in names:
        try:
            infos = source.ifaddresses(name).get(source.AF_INET, [])
        except ValueError:                   # the interface vanished meanwhile
            continue
        yield from infos


def ipv4_addresses(include_loopback: bool = True, source: Any = None) -> list[str]:
    found = []
    for info in ipv4_interface_infos(source):
        address = info.get("addr")
        if address and (include_loopback or not address.startswith("127.")):
            found.append(address)
    return list(dict.fromkeys(found))
