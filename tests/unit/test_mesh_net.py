"""Interface selection follows the bind host; interface changes reach zeroconf. No sockets opened."""

from __future__ import annotations

import asyncio
import socket
import threading
import types
from typing import Any

import pytest

from meshrpc.config import Settings
from meshrpc.mesh import discovery as discovery_module
from meshrpc.mesh import net

pytestmark = pytest.mark.timeout(30)


class FakeNetifaces:
    AF_INET, AF_INET6 = 2, 10

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def interfaces(self) -> list[str]:
        return list(self.table)

    def ifaddresses(self, name: str) -> dict[int, list[dict[str, str]]]:
        if name not in self.table:
            raise ValueError(name)
        return {self.AF_INET: [{"addr": a} for a in self.table[name] if ":" not in a],
                self.AF_INET6: [{"addr": a} for a in self.table[name] if ":" in a]}


@pytest.fixture
def fake_netifaces(monkeypatch: pytest.MonkeyPatch) -> FakeNetifaces:
    fake = FakeNetifaces({"lo": ["127.0.0.1", "::1"], "eth0": ["192.0.2.7", "fe80::1%eth0"],
                          "wlan0": ["198.51.100.3"]})
    monkeypatch.setattr(net, "netifaces", fake)
    return fake


@pytest.mark.parametrize("bind_host, expected", [
    ("localhost", ["127.0.0.1"]), ("127.0.0.1", ["127.0.0.1"]), ("127.0.1.1", ["127.0.0.1"]),
    ("::1", ["127.0.0.1"]), ("", ["127.0.0.1"]), ("./u:/tmp/sock", ["127.0.0.1"]),
    ("0.0.0.0", ["192.0.2.7", "198.51.100.3"]), ("::", ["192.0.2.7", "198.51.100.3"]),
    ("192.0.2.7", ["192.0.2.7"]), ("[fd00::5]", ["fd00::5"]),
])
def test_interfaces_follow_the_bind_host(fake_netifaces: FakeNetifaces, bind_host: str,
                                         expected: list[str]) -> None:
    assert net.interfaces_for(bind_host) == expected


def test_override_wins(fake_netifaces: FakeNetifaces) -> None:
    assert net.interfaces_for("0.0.0.0", " 10.1.1.1, 10.1.1.2 ,") == ["10.1.1.1", "10.1.1.2"]
    assert not net.is_wildcard("0.0.0.0", "10.1.1.1") and net.is_wildcard("0.0.0.0")


def test_wildcard_without_lan_falls_back_to_loopback(fake_netifaces: FakeNetifaces) -> None:
    fake_netifaces.table = {"lo": ["127.0.0.1"]}
    assert net.interfaces_for("0.0.0.0") == ["127.0.0.1"]


def test_unresolvable_host_name_stays_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(host: str) -> str:
        raise socket.gaierror("no such host")
    monkeypatch.setattr(net.socket, "gethostbyname", fail)
    assert net.interfaces_for("no-such-host.invalid") == ["127.0.0.1"]


def test_published_addresses(fake_netifaces: FakeNetifaces) -> None:
    assert net.addresses_for("localhost", ["127.0.0.1"]) == ["127.0.0.1"]
    assert net.addresses_for("0.0.0.0", ["192.0.2.7"]) == ["192.0.2.7"]
    assert net.addresses_for("192.0.2.7", ["192.0.2.7"]) == ["192.0.2.7"]


def test_local_hosts(fake_netifaces: FakeNetifaces) -> None:
    hosts = net.local_hosts()
    assert {"127.0.0.1", "192.0.2.7", "198.51.100.3", "fe80::1", "localhost"} <= hosts


def test_probe_tells_refused_from_listening() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert net.probe(f"PYRO:x@127.0.0.1:{port}", 1.0)
    assert not net.probe(f"PYRO:x@127.0.0.1:{port}", 1.0)
    assert not net.probe("PYRO:x@./u:/nonexistent/socket", 1.0)
    assert not net.probe("garbage", 1.0)


def test_interface_changes_reach_zeroconf_and_publishers(fake_netifaces: FakeNetifaces) -> None:
    """The watcher compares the wanted interfaces and calls update_interfaces (on a fake zeroconf)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    calls: list[Any] = []

    async def update_interfaces(interfaces: list[str]) -> None:
        calls.append(list(interfaces))

    refreshed = threading.Event()

    class Publisher:
        def refresh_addresses(self) -> None:
            refreshed.set()

    publisher = Publisher()
    disc = discovery_module.Discovery(Settings())
    disc._zc = types.SimpleNamespace(loop=loop, async_update_interfaces=update_interfaces)  # type: ignore[assignment]
    disc._needs[1] = lambda: net.interfaces_for("0.0.0.0")
    disc._interfaces = ["192.0.2.7", "198.51.100.3"]
    disc._publishers.add(publisher)  # type: ignore[arg-type]
    try:
        disc._check_interfaces()
        assert calls == [] and not refreshed.is_set()         # nothing changed
        fake_netifaces.table["eth1"] = ["203.0.113.9"]       # a cable was plugged in
        disc._check_interfaces()
        assert refreshed.wait(5)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
        assert calls == [["192.0.2.7", "198.51.100.3", "203.0.113.9"]]
    finally:
        disc.closed = True
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# ---- a provider bound to every interface: the address this machine can reach

def test_reachable_uri_picks_the_address_on_a_network_we_share(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress
    networks = [ipaddress.IPv4Network("192.0.2.0/24")]
    monkeypatch.setattr(net, "local_networks", lambda: networks)
    uri = "PYRO:obj_1@10.1.0.5:9000"
    assert net.reachable_uri(uri, ("198.51.100.5", "192.0.2.5")) == "PYRO:obj_1@192.0.2.5:9000"
    assert net.reachable_uri(uri, ()) == uri
    assert net.reachable_uri(uri, ("198.51.100.5",)) == uri     # no shared network: the announced host
    networks.append(ipaddress.IPv4Network("10.1.0.0/16"))
    assert net.reachable_uri(uri, ("192.0.2.5",)) == uri        # the announced host is on one: kept


def test_local_networks_come_from_addresses_and_netmasks(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    class WithNetmasks(FakeNetifaces):
        def ifaddresses(self, name: str) -> dict[int, list[dict[str, str]]]:
            return {self.AF_INET: [{"addr": a, "netmask": m} for a, m in self.table[name]]}

    fake = WithNetmasks({"lo": [("127.0.0.1", "255.0.0.0")], "eth0": [("192.0.2.7", "255.255.255.0")],
                         "wlan0": [("198.51.100.3", "255.255.0.0"), ("203.0.113.9", "")]})
    monkeypatch.setattr(net, "netifaces", fake)
    monkeypatch.setattr(net, "_networks_cache", (-1e9, []))
    assert net.local_networks() == [ipaddress.IPv4Network("192.0.2.0/24"),
                                    ipaddress.IPv4Network("198.51.0.0/16"),
                                    ipaddress.IPv4Network("203.0.113.9/32")]
