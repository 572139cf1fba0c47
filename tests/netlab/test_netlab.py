"""Tests of tools/netlab.py, the namespace-based network lab (needs root)."""

from __future__ import annotations

import importlib.util
import ipaddress
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

NETLAB_PATH = Path(__file__).resolve().parents[2] / "tools" / "netlab.py"


def _load_netlab():
    # tools/ is not a package; load the file by path, once per session.
    name = "meshrpc_tools_netlab"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, NETLAB_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look the module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


netlab = _load_netlab()


def _require_netlab() -> None:
    ok, reason = netlab.available()
    if not ok:
        pytest.skip(reason)


def _netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


@pytest.fixture
def lab():
    _require_netlab()
    with netlab.Lab(3) as lab:
        yield lab


@pytest.mark.timeout(60)
def test_hosts_get_distinct_addresses(lab):
    addresses = [h.address for h in lab.hosts]
    assert len(set(addresses)) == 3
    for host in lab.hosts:
        assert ipaddress.IPv4Address(host.address) in lab.subnet
        assert host.addresses() == [host.address]  # what the kernel really has
        assert len(host.interface) <= 15
        assert host.netns in _netns_list()
    assert len({h.netns for h in lab.hosts}) == 3


@pytest.mark.timeout(60)
def test_root_namespace_gets_no_interfaces():
    _require_netlab()
    before = _root_links()
    with netlab.Lab(3):
        assert _root_links() == before
    assert _root_links() == before


@pytest.mark.timeout(60)
def test_h1_can_ping_h3(lab):
    h1, _, h3 = lab.hosts
    assert h1.ping(h3, timeout=5)


@pytest.mark.timeout(60)
def test_multicast_from_h1_reaches_h2_and_h3(lab):
    h1, h2, h3 = lab.hosts
    received = netlab.multicast_probe(h1, [h2, h3], timeout=10)
    assert received == {"h2": True, "h3": True}


@pytest.mark.timeout(60)
def test_link_down_partitions_and_link_up_heals(lab):
    h1, h2, h3 = lab.hosts
    assert h1.ping(h2, timeout=5)

    h2.link_down()
    assert not h2.link_is_up()
    assert not h1.ping(h2, timeout=1)
    assert not h2.ping(h1, timeout=1)
    assert h1.ping(h3, timeout=5)  # only h2 is cut off
    received = netlab.multicast_probe(h1, [h2, h3], timeout=2)
    assert received == {"h2": False, "h3": True}

    h2.link_up()
    assert h2.link_is_up()
    assert netlab.wait_for(lambda: h1.ping(h2, timeout=1), timeout=15)
    assert h2.ping(h1, timeout=5)


@pytest.mark.timeout(60)
def test_move_address_at_runtime(lab):
    h1, h2, _ = lab.hosts
    old = h2.address
    new = h2.move_address()
    assert new != old and h2.address == new
    assert h2.addresses() == [new]
    assert h1.ping(new, timeout=5)
    assert not h1.ping(old, timeout=1)
    # Multicast still works: the route survived the renumbering.
    assert netlab.multicast_probe(h2, [h1], timeout=10) == {"h1": True}


@pytest.mark.timeout(60)
def test_add_and_remove_secondary_address(lab):
    h1, h2, _ = lab.hosts
    extra = h2.add_address()
    assert set(h2.addresses()) == {h2.address, extra}
    assert h1.ping(extra, timeout=5)
    h2.remove_address(extra)
    assert h2.addresses() == [h2.address]


@pytest.mark.timeout(60)
def test_set_loss_blocks_and_clears(lab):
    h1, h2, _ = lab.hosts
    try:
        h2.set_loss(100)
    except netlab.Unsupported as exc:
        pytest.skip(str(exc))
    assert not h1.ping(h2, timeout=1)
    h2.set_loss(0)
    assert netlab.wait_for(lambda: h1.ping(h2, timeout=1), timeout=15)


@pytest.mark.timeout(60)
def test_run_and_popen_execute_inside_the_host(lab):
    h1 = lab.hosts[0]
    out = h1.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True)
    assert h1.address in out.stdout
    proc = h1.popen(["sleep", "60"])
    lab.teardown()
    assert proc.poll() is not None  # teardown stops what the lab started


@pytest.mark.timeout(60)
def test_teardown_on_exception_leaves_no_namespaces():
    _require_netlab()
    lab = netlab.Lab(3)
    names = set(lab.namespaces)
    with pytest.raises(RuntimeError, match="boom"), lab:
        assert names <= _netns_list()
        raise RuntimeError("boom")
    assert not names & _netns_list()


@pytest.mark.timeout(60)
def test_failed_setup_is_cleaned_up():
    _require_netlab()
    lab = netlab.Lab(3)
    lab.hosts[2].address = "not-an-address"  # makes the last host's ip batch fail
    with pytest.raises(netlab.NetlabError):
        lab.setup()
    assert not set(lab.namespaces) & _netns_list()


@pytest.mark.timeout(60)
def test_cleanup_stale_removes_crashed_labs_only():
    _require_netlab()
    # A child builds a lab and dies without any cleanup (os._exit skips atexit).
    crashed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import importlib.util, os, sys
            spec = importlib.util.spec_from_file_location("netlab", {str(NETLAB_PATH)!r})
            netlab = importlib.util.module_from_spec(spec)
            sys.modules["netlab"] = netlab
            spec.loader.exec_module(netlab)
            lab = netlab.Lab(2).setup()
            print(lab.prefix, flush=True)
            os._exit(0)
        """)], capture_output=True, text=True, check=True)
    stale_prefix = crashed.stdout.strip()
    stale = {f"{stale_prefix}-sw", f"{stale_prefix}-h1", f"{stale_prefix}-h2"}
    assert stale <= _netns_list()

    with netlab.Lab(2) as live:
        removed = netlab.cleanup_stale()
        assert stale <= set(removed)
        assert not stale & _netns_list()
        assert set(live.namespaces) <= _netns_list()  # owner alive: kept
        assert not set(live.namespaces) & set(removed)


@pytest.mark.timeout(60)
def test_prefix_validation():
    with pytest.raises(ValueError):
        netlab.Lab(3, prefix="much-too-long-prefix")
    with pytest.raises(ValueError):
        netlab.Lab(3, prefix="bad/name")
    a, b = netlab.Lab(3), netlab.Lab(3)
    assert a.prefix != b.prefix
    assert all(len(h.interface) <= 15 for h in a.hosts)
