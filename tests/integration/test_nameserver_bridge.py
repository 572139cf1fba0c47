"""The name server and the mesh together, on loopback: daemons register in a configured name server,
the name server mirrors the mesh (bridge), and the resolution chain names what it tried."""

from __future__ import annotations

import threading
import uuid

import pytest
from support import wait_until
from test_nameserver import HOST, RunningNS, ns_settings

import meshrpc
from meshrpc import errors

pytestmark = pytest.mark.timeout(60)


@meshrpc.expose
class Thing:
    def where(self):
        return "here"


def _serve(daemon: meshrpc.Daemon) -> threading.Thread:
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    return thread


def test_daemon_registers_named_objects_in_configured_name_server_and_withdraws_them():
    ns = RunningNS(broadcast=False)
    try:
        settings = ns_settings(NS_PORT=ns.port, REALM="t-" + uuid.uuid4().hex[:10])
        daemon = meshrpc.Daemon(HOST, settings=settings)
        thread = _serve(daemon)
        uri = daemon.register(Thing(), name="bridge.thing", metadata={"thing"})
        lookup = ns.daemon.nameserver.lookup
        found = wait_until(lambda: _try(lambda: lookup("bridge.thing", return_metadata=True)), 10,
                           message="the daemon's registration in the name server")
        assert found == (uri, {"thing"})
        # a client that resolves through the name server only
        with meshrpc.Proxy("PYRONAME:bridge.thing", settings=settings) as proxy:
            assert proxy.where() == "here"
        daemon.unregister(uri.object)
        wait_until(lambda: _try(lambda: lookup("bridge.thing")) is None, 10, message="the withdrawal")
        daemon.register(Thing(), name="bridge.other")
        wait_until(lambda: _try(lambda: lookup("bridge.other")), 10, message="the second registration")
        daemon.shutdown()
        thread.join(10)
        assert _try(lambda: lookup("bridge.other")) is None, "shutdown withdraws the names"
    finally:
        ns.stop()


def test_autoregister_can_be_turned_off():
    ns = RunningNS(broadcast=False)
    try:
        settings = ns_settings(NS_PORT=ns.port, NS_AUTOREGISTER=False, REALM="t-" + uuid.uuid4().hex[:10])
        with meshrpc.Daemon(HOST, settings=settings) as daemon:
            daemon.register(Thing(), name="bridge.quiet")
            assert "nameserver" not in daemon._announcers.active
        assert ns.daemon.nameserver.count() == 1  # only the name server itself
    finally:
        ns.stop()


def test_name_server_mirrors_the_mesh():
    realm = "t-" + uuid.uuid4().hex[:10]
    ns = RunningNS(broadcast=False, settings=ns_settings(REALM=realm), bridge=True)
    try:
        publisher_settings = meshrpc.config.copy(HOST=HOST, REALM=realm, NS_HOST="")  # mesh only
        daemon = meshrpc.Daemon(HOST, settings=publisher_settings)
        thread = _serve(daemon)
        uri = daemon.register(Thing(), name="mesh.only", metadata={"a", "b"})
        lookup = ns.daemon.nameserver.lookup
        found = wait_until(lambda: _try(lambda: lookup("mesh.only", return_metadata=True)), 10,
                           message="the mesh entry mirrored into the name server")
        assert found == (uri, {"a", "b"})
        # a client that reaches only the name server resolves the mesh service
        client_settings = ns_settings(NS_PORT=ns.port, REALM="other-" + realm)
        with meshrpc.Proxy("PYRONAME:mesh.only", settings=client_settings) as proxy:
            assert proxy.where() == "here"
        with meshrpc.Proxy("PYROMETA:a,b", settings=client_settings) as proxy:
            assert proxy.where() == "here"
        # a direct registration is never overwritten by the bridge
        ns.daemon.nameserver.register("direct.name", "PYRO:x@127.0.0.1:1")
        daemon.register(Thing(), name="direct.name")
        daemon.unregister(uri.object)
        wait_until(lambda: _try(lambda: lookup("mesh.only")) is None, 10, message="the mirrored entry removed")
        assert str(lookup("direct.name")) == "PYRO:x@127.0.0.1:1"
        daemon.shutdown()
        thread.join(10)
    finally:
        ns.stop()


def test_resolution_errors_name_the_sources_tried():
    settings = ns_settings(RESOLVE="mesh,ns", LOOKUP_TIMEOUT=0.3, REALM="t-" + uuid.uuid4().hex[:10],
                           REBIND_TIMEOUT=0.5)
    with pytest.raises(errors.NamingError) as info:
        meshrpc.Proxy("PYRONAME:no.such.service", settings=settings).where()
    text = str(info.value)
    assert "mesh:" in text and "ns:" in text and "no.such.service" in text


def _try(call):
    try:
        return call()
    except errors.NamingError:
        return None
