"""The mesh key (KEY / MESHRPC_KEY) over real sockets and real zeroconf, on loopback only."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import meshrpc
from support import wait_until
from meshrpc import errors
from meshrpc.config import Settings
from meshrpc.mesh import Registry, reset_for_tests
from meshrpc.naming import forget_located, locate_ns, start_ns

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
KEY = "s3cret-" + uuid.uuid4().hex

# Raw zeroconf announcing `name` in `realm` with a forged (unsigned, or bogus) meshrpc TXT record.
FORGER = r"""
import json, sys
from zeroconf import ServiceInfo, Zeroconf
from meshrpc.mesh import records
from meshrpc.wire import constants
realm, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
zc = Zeroconf(interfaces=["127.0.0.1"])
uris = []
for node, auth in (("rogue-a", b""), ("rogue-b", b"\x00" * 16)):
    entry = records.make_entry(realm=realm, name=name, uri="PYRO:%s@127.0.0.1:%d" % (node, port),
                               metadata=set(), node=node, incarnation=2 ** 62, version=1)
    txt = records.encode_entry(entry)
    if auth:
        txt += bytes([2 + 24]) + b"a=" + __import__("base64").b64encode(auth)
    zc.register_service(ServiceInfo(constants.MESH_SERVICE_TYPE, records.service_name(records.instance_label(entry)),
                                    port=port, properties=txt, server="rogue.local.",
                                    parsed_addresses=["127.0.0.1"]), cooperating_responders=True)
    uris.append(entry.uri)
print(json.dumps(uris), flush=True)
sys.stdin.read()
zc.close()
"""


@meshrpc.expose
class Where:
    def __init__(self, label: str) -> None:
        self.label = label

    def where(self) -> str:
        return self.label


def settings_for(realm: str, key: str = "", **changes: Any) -> Settings:
    base: dict[str, Any] = {"REALM": realm, "INTERFACES": LOOPBACK, "HOST": LOOPBACK, "RESOLVE": "mesh",
                            "KEY": key, "LOOKUP_TIMEOUT": 5.0, "REBIND_TIMEOUT": 0.0}
    base.update(changes)
    return Settings().copy(**base)


@pytest.fixture
def mesh_cleanup() -> Iterator[None]:
    yield
    reset_for_tests()


@pytest.fixture
def served(start_daemon, realm: str, mesh_cleanup: None):
    """A keyed daemon in its own realm serving Where("genuine") as PYRONAME:key.where."""
    running = start_daemon(host=LOOPBACK, settings=settings_for(realm, KEY))
    uri = running.register(Where("genuine"), name="key.where")
    return running, uri


def test_keyed_proxy_and_keyed_daemon_pyro_and_pyroname(served, realm: str) -> None:
    _, uri = served
    settings = settings_for(realm, KEY)
    with meshrpc.Proxy(uri, settings=settings) as proxy:
        assert proxy.where() == "genuine"
    with meshrpc.Proxy("PYRONAME:key.where", settings=settings) as proxy:
        for _ in range(5):
            assert proxy.where() == "genuine"


def test_keyless_proxy_is_refused_clearly_and_the_daemon_keeps_serving(served, realm: str) -> None:
    _, uri = served
    with meshrpc.Proxy(uri, settings=settings_for(realm)) as proxy, \
            pytest.raises(errors.SecurityError, match=r"this daemon requires the mesh key \(MESHRPC_KEY\)"):
        proxy.where()
    with meshrpc.Proxy(uri, settings=settings_for(realm, KEY)) as proxy:
        assert proxy.where() == "genuine"


def test_wrong_key_is_refused(served, realm: str) -> None:
    _, uri = served
    with meshrpc.Proxy(uri, settings=settings_for(realm, "not-" + KEY)) as proxy, \
            pytest.raises(errors.SecurityError, match="mesh key check failed"):
        proxy.where()
    with meshrpc.Proxy(uri, settings=settings_for(realm, KEY)) as proxy:
        assert proxy.where() == "genuine"


def test_keyed_proxy_refuses_a_keyless_daemon(start_daemon, realm: str) -> None:
    running = start_daemon(host=LOOPBACK, settings=settings_for(realm))
    uri = running.register(Where("keyless"))
    with meshrpc.Proxy(uri, settings=settings_for(realm, KEY)) as proxy, \
            pytest.raises(errors.SecurityError, match="did not prove it holds the mesh key"):
        proxy.where()
    with meshrpc.Proxy(uri, settings=settings_for(realm)) as proxy:   # keyless clients are unaffected
        assert proxy.where() == "keyless"


def test_a_forged_announcement_is_ignored_by_a_keyed_registry(served, realm: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="meshrpc.mesh")
    _, uri = served
    keyed, keyless = Registry(settings_for(realm, KEY)), Registry(settings_for(realm))
    forger = subprocess.Popen([sys.executable, "-c", FORGER, realm, "key.where", str(uri.port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    try:
        assert forger.stdout is not None
        forged = json.loads(forger.stdout.readline())
        wanted = {str(uri), *forged}
        deadline = time.monotonic() + 10
        while {e.uri for e in keyless.lookup("key.where")} != wanted and time.monotonic() < deadline:
            keyless.wait_for("key.where", 0.2)
            time.sleep(0.05)
        assert {e.uri for e in keyless.lookup("key.where")} == wanted
        assert [e.uri for e in keyed.resolve("key.where", 5)] == [str(uri)]
        # the keyed registry heard the forgeries too (same process Zeroconf) and refused them
        assert [e.uri for e in keyed.lookup("key.where")] == [str(uri)]
        # the keyed registry may still be working through what it heard when resolve() returned with
        # the genuine entry: wait for both refusals to be logged (once each) rather than assume they were
        def refusals() -> list[str]:
            return [r.getMessage() for r in caplog.records if "authenticator" in r.getMessage()]

        def both_refused() -> bool:
            seen = refusals()
            return (any("rogue-a" in m and "no mesh key authenticator" in m for m in seen)
                    and any("rogue-b" in m and "bad mesh key authenticator" in m for m in seen))

        wait_until(both_refused, 10, message=f"both forgeries refused in the log: {refusals()}")
        assert [e.uri for e in keyed.lookup("key.where")] == [str(uri)]  # and still not accepted
        with meshrpc.Proxy("PYRONAME:key.where", settings=settings_for(realm, KEY)) as proxy:
            assert {proxy.where() for _ in range(5)} == {"genuine"}
    finally:
        keyed.close()
        keyless.close()
        if forger.stdin is not None:
            forger.stdin.close()
        forger.wait(10)


def test_keyed_name_server_end_to_end(start_daemon, realm: str, mesh_cleanup: None) -> None:
    """locate_ns, NameServerRegistrar (daemon autoregistration) and the bridge, all keyed."""
    forget_located()
    settings = settings_for(realm, KEY, RESOLVE="ns", NS_HOST=LOOPBACK, NS_PORT=1, NS_BCPORT=1)
    uri, ns_daemon, _ = start_ns(LOOPBACK, 0, 0, "memory", settings, False, bridge=True)
    thread = threading.Thread(target=ns_daemon.requestLoop, daemon=True)
    thread.start()
    settings = settings.copy(NS_PORT=uri.port)
    nameserver = ns_daemon.nameserver
    try:
        with locate_ns(LOOPBACK, uri.port, settings=settings) as ns:
            assert ns.ping() is None
        # a keyed daemon registers its names in the name server through a keyed registrar proxy,
        # and announces them on the mesh, which the keyed bridge mirrors
        running = start_daemon(host=LOOPBACK, settings=settings)
        obj_uri = running.register(Where("via-ns"), name="key.ns.where")
        wait_until(lambda: _lookup(nameserver, "key.ns.where") == obj_uri, 10, message="registrar")
        with meshrpc.Proxy("PYRONAME:key.ns.where", settings=settings) as proxy:
            assert proxy.where() == "via-ns"
        # mesh only (no name server registration): mirrored by the keyed bridge...
        mesh_only = start_daemon(host=LOOPBACK, settings=settings.copy(NS_HOST="", RESOLVE="mesh"))
        mirrored = mesh_only.register(Where("mesh-only"), name="key.mesh.only")
        wait_until(lambda: _lookup(nameserver, "key.mesh.only") == mirrored, 10, message="the bridge")
        # ...but a keyless publisher in the same realm is not
        keyless = start_daemon(host=LOOPBACK, settings=settings.copy(NS_HOST="", RESOLVE="mesh", KEY=""))
        keyless.register(Where("keyless"), name="key.keyless")
        time.sleep(1.0)
        assert _lookup(nameserver, "key.keyless") is None
        forget_located()
        with pytest.raises(errors.NamingError, match=r"requires the mesh key \(MESHRPC_KEY\)"):
            locate_ns(LOOPBACK, uri.port, settings=settings.copy(KEY=""))
        with pytest.raises(errors.NamingError, match="mesh key check failed"):
            locate_ns(LOOPBACK, uri.port, settings=settings.copy(KEY="wrong"))
    finally:
        forget_located()
        ns_daemon.shutdown()
        thread.join(10)


def _lookup(nameserver: Any, name: str) -> Any:
    try:
        return nameserver.lookup(name)
    except errors.NamingError:
        return None
