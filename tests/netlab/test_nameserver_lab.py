"""The name-server fallback across hosts: a client on a routed subnet, which multicast does not
reach, resolves a service published on the mesh through a bridging name server (network
namespaces, needs root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
from test_netlab import lab_or_skip

pytestmark = [pytest.mark.timeout(90), pytest.mark.netlab]

SERVICE = textwrap.dedent("""
    import sys, meshrpc
    @meshrpc.expose
    class Svc:
        def where(self):
            return "served on h1"
    with meshrpc.Daemon("0.0.0.0") as daemon:
        daemon.register(Svc(), name="lab.svc", metadata={"lab"})
        print("ready", flush=True)
        daemon.requestLoop(lambda: True)
""")

CLIENT = textwrap.dedent("""
    import json, meshrpc
    from meshrpc.mesh import get_registry
    with meshrpc.Proxy("PYRONAME:lab.svc") as proxy:
        answer = proxy.where()
        target = str(proxy._pyroUri)
    print(json.dumps({"answer": answer, "target": target,
                      "mesh_knows": [e.uri for e in get_registry().lookup("lab.svc")]}), flush=True)
""")


def _env(realm: str, **extra: str) -> dict[str, str]:
    return dict(os.environ, MESHRPC_HOST="0.0.0.0", MESHRPC_REALM=realm, PYTHONUNBUFFERED="1", **extra)


def _wait_line(proc: subprocess.Popen, expected: str) -> None:
    line = proc.stdout.readline()
    assert line.strip().startswith(expected), f"expected {expected!r}, got {line!r} (exit {proc.poll()})"


def _route_through(router, host, lab) -> str:
    """Move `host` off the shared segment onto a routed link behind `router`, as a client on another
    subnet would be: unicast reaches the lab through the router, multicast (mDNS) does not.
    Returns the router's address on that link."""
    steps = [
        (router, ["ip", "link", "add", "rt0", "type", "veth", "peer", "name", "rt1"]),
        (router, ["ip", "link", "set", "rt1", "netns", host.netns]),
        (router, ["ip", "addr", "add", "10.99.0.1/30", "dev", "rt0"]),
        (router, ["ip", "link", "set", "rt0", "up"]),
        (router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
        (host, ["ip", "addr", "add", "10.99.0.2/30", "dev", "rt1"]),
        (host, ["ip", "link", "set", "rt1", "up"]),
        (host, ["ip", "addr", "flush", "dev", host.interface]),  # off the shared segment
        (host, ["ip", "route", "add", str(lab.subnet), "via", "10.99.0.1"]),
    ]
    for node, argv in steps:
        node.run(argv, check=True, capture_output=True)
    host.link_down()  # and unplugged: no multicast from the segment reaches the host any more
    for other in lab.hosts:
        if other is not host and other is not router:
            other.run(["ip", "route", "add", "10.99.0.0/30", "via", router.address], check=True, capture_output=True)
    return "10.99.0.1"


@pytest.fixture
def lab():
    with lab_or_skip(3) as lab:
        yield lab


def test_client_without_multicast_resolves_mesh_service_through_bridging_name_server(lab):
    h1, h2, h3 = lab.hosts
    realm = "lab-" + uuid.uuid4().hex[:10]
    service = h1.popen([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE, text=True, env=_env(realm))
    _wait_line(service, "ready")
    ns = h2.popen([sys.executable, "-m", "meshrpc", "ns", "--host", "0.0.0.0", "--port", "9090", "--bcport", "9091",
                   "--bridge", "--json"], stdout=subprocess.PIPE, text=True, env=_env(realm))
    _wait_line(ns, "{")
    router_address = _route_through(h2, h3, lab)
    client = h3.run([sys.executable, "-c", CLIENT], capture_output=True, text=True, timeout=60,
                    env=_env(realm, MESHRPC_NS_HOST=router_address, MESHRPC_RESOLVE="mesh,ns", MESHRPC_LOOKUP_TIMEOUT="1",
                             MESHRPC_REBIND_TIMEOUT="20"))
    assert client.returncode == 0, client.stderr
    result = json.loads(client.stdout.strip().splitlines()[-1])
    assert result["answer"] == "served on h1"
    assert f"@{h1.address}:" in result["target"]
    assert result["mesh_knows"] == [], "h3's own registry must not have heard the mesh (multicast does not route)"


PYRO5_LOCATE = textwrap.dedent("""
    import Pyro5.api
    with Pyro5.api.locate_ns() as ns:
        print(ns._pyroUri, flush=True)
""")


def test_a_pyro5_client_on_the_lan_finds_a_meshrpc_name_server_by_its_default_broadcast(lab):
    """Pyro5 clients locate a name server by broadcasting to 255.255.255.255 ("<broadcast>"): a meshrpc
    name server serving its LAN address answers them (and only askers on that LAN)."""
    h1, h2, _ = lab.hosts
    realm = "lab-" + uuid.uuid4().hex[:10]
    ns = h1.popen([sys.executable, "-m", "meshrpc", "ns", "--host", h1.address, "--port", "9090", "--bcport", "9091",
                   "--json"], stdout=subprocess.PIPE, text=True, env={**_env(realm), "MESHRPC_HOST": h1.address})
    try:
        _wait_line(ns, "{")
        # a LAN host with a default route (where "<broadcast>" leaves), Pyro5's settings untouched
        h2.run(["ip", "route", "add", "default", "dev", h2.interface], check=True, capture_output=True)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PYRO_", "MESHRPC_"))}
        client = h2.run([sys.executable, "-c", PYRO5_LOCATE], capture_output=True, text=True, timeout=60, env=env)
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == f"PYRO:Pyro.NameServer@{h1.address}:9090"
    finally:
        ns.terminate()
        ns.wait(10)
