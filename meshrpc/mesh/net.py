"""Which interfaces and addresses discovery uses, this machine's addresses, and endpoint probes."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterator

import netifaces

from ..limits import NETWORKS_CACHE_TTL
from ..transport import interfaces as host_interfaces
from ..uri import URI

log = logging.getLogger("meshrpc.mesh")

LOOPBACK = ["127.0.0.1"]
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})  # names of this host's loopback


def is_wildcard(bind_host: str, override: str = "") -> bool:
    """True when the interfaces follow the machine's addresses (and may change at runtime)."""
    return not override.strip() and bind_host.strip() in ("0.0.0.0", "::")


def interfaces_for(bind_host: str, override: str = "") -> list[str]:
    """mDNS interface addresses for a daemon bound to bind_host (override: INTERFACES setting).

    Never InterfaceChoice.All: a daemon on localhost must not send discovery traffic off the machine.
    """
    if override.strip():
        return _dedup(part.strip() for part in override.split(",") if part.strip())
    host = bind_host.strip()
    if is_wildcard(host):
        found = ipv4_addresses(include_loopback=False)
        if not found:
            log.warning("mesh: no non-loopback IPv4 interface for %r; announcing on loopback only", host)
            return list(LOOPBACK)
        return found
    address = _address_of(host)
    if address is None or _is_loopback(address):
        return list(LOOPBACK)
    return [address]


def addresses_for(bind_host: str, interfaces: list[str]) -> list[str]:
    """Addresses to publish in A/AAAA records: where a daemon bound to bind_host is reachable."""
    host = bind_host.strip()
    if is_wildcard(host):
        return list(interfaces)
    address = _address_of(host)
    if address is None or _is_loopback(address):
        return list(LOOPBACK)
    return [address]


def ipv4_interface_infos() -> Iterator[dict[str, str]]:
    """netifaces' IPv4 entries (addr, netmask, broadcast, peer) of every interface, now."""
    return host_interfaces.ipv4_interface_infos(netifaces)


def ipv4_addresses(include_loopback: bool = True) -> list[str]:
    return host_interfaces.ipv4_addresses(include_loopback, netifaces)


_networks_cache: tuple[float, list[ipaddress.IPv4Network]] = (-NETWORKS_CACHE_TTL, [])


def local_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this machine has an interface on (from address and netmask), recent."""
    global _networks_cache
    now = time.monotonic()
    when, networks = _networks_cache
    if now - when < NETWORKS_CACHE_TTL:
        return networks
    networks = []
    for info in ipv4_interface_infos():
        try:
            network = ipaddress.IPv4Network(f"{info['addr']}/{info.get('netmask') or '32'}", strict=False)
        except (KeyError, ValueError):
            continue
        if not network.network_address.is_loopback and network not in networks:
            networks.append(network)
    _networks_cache = (now, networks)
    return networks


def reachable_uri(uri: str, other_hosts: tuple[str, ...] | list[str]) -> str:
    """The URI of a provider that also listens on other_hosts (it is bound to every interface),
    with the host this machine can reach: the announced host when it is on one of our networks or
    none of the others is; else the first other address on one of our networks. So a peer on the
    daemon's second network connects there, not to an address only its first network can route."""
    if not other_hosts:
        return uri
    networks = local_networks()

    def on_link(host: str) -> bool:
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return any(address in network for network in networks)

    parsed = URI(uri)
    if parsed.host is None or on_link(parsed.host):
        return uri
    for host in other_hosts:
        if on_link(host):
            return str(URI.from_parts(parsed.object, host, parsed.port))
    return uri


def local_hosts() -> set[str]:
    """Names and addresses of this machine, for the replica policy's 'same host' preference."""
    hosts = set(LOOPBACK_NAMES) | {"127.0.0.1", "::1"}
    try:
        hosts.add(socket.gethostname())       # not getfqdn(): a reverse DNS lookup may hang
    except OSError:
        pass
    hosts.update(ipv4_addresses())
    for name in host_interfaces.interface_names(netifaces):
        try:
            for info in netifaces.ifaddresses(name).get(netifaces.AF_INET6, []):
                if info.get("addr"):
                    hosts.add(info["addr"].split("%")[0])
        except ValueError:
            continue
    return hosts


def probe(uri: str, timeout: float) -> bool:
    """Can a connection to uri's endpoint be opened? (Refused or no answer within timeout: False.)"""
    return probe_outcome(uri, timeout) == "open"


def probe_outcome(uri: str, timeout: float) -> str:
    """Open a connection to uri's endpoint and close it: "open"; "refused" when nothing listens
    there (a connection refused, a unix socket that is gone): the daemon is gone; "silent" when
    there was no answer in time or no route (no evidence either way on a lossy network)."""
    try:
        parsed = URI(uri)
        if parsed.sockname:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(parsed.sockname)
            return "open"
        with socket.create_connection((parsed.host, parsed.port), timeout=timeout):
            return "open"
    except (ConnectionRefusedError, FileNotFoundError):
        return "refused"
    except (OSError, ValueError):
        return "silent"


def _address_of(host: str) -> str | None:
    if host.startswith(("./u:", "/")) or host.lower() in LOOPBACK_NAMES or not host:
        return None                           # unix sockets and loopback names: this machine only
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    try:
        return socket.gethostbyname(host)     # a host name: the address it binds to
    except OSError:
        log.warning("mesh: cannot resolve bind host %r; announcing on loopback only", host)
        return None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return True


def _dedup(items: object) -> list[str]:
    return list(dict.fromkeys(items))  # type: ignore[call-overload]
