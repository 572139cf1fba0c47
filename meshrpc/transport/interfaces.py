"""This machine's IPv4 interfaces and addresses (netifaces), read fresh each time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import netifaces


def ipv4_interface_infos(source: Any = None) -> Iterator[dict[str, str]]:
    """netifaces' IPv4 entries (addr, netmask, broadcast, peer) of every interface, now.
    `source`: a netifaces-like module (tests pass a fake)."""
    source = source or netifaces
    for name in source.interfaces():
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
