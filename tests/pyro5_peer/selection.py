"""Which of Pyro5's own tests the peer suite runs against meshrpc, and what is expected of them.

Every test in Pyro5's suite is run, except:
- NOT_PUBLIC: tests of Pyro5 internals or utilities outside the public API meshrpc maps (its thread
  pool, its socket servers, private helper functions, its HTTP gateway and CLI entry points);
- OFF_MACHINE: tests that send broadcasts to the real network (this project's rule: discovery traffic
  never leaves the machine; tests/integration/test_nameserver_broadcast.py covers broadcast lookup
  on loopback).
DIFFERENCES are public-API tests that fail on purpose: each is a deliberate difference, listed with
its reason in docs/migrating-from-pyro5.md. They run as strict xfails, so a test that starts to pass
fails the run until it is taken off the list.

Keys are pytest node ids relative to Pyro5's tests/ directory, or prefixes of them (a file, a class).
"""

from __future__ import annotations

NOT_PUBLIC: dict[str, str] = {
    "test_threadpool.py": "Pyro5's thread-pool server internals (svr_threads)",
    "test_httpgateway.py": "Pyro5.utils.httpgateway's WSGI function; meshrpc's gateway is `meshrpc gateway`",
    "test_pyro4compat.py": "Pyro5.compatibility.Pyro4; the migration guide has a table of Pyro4 names instead",
    "test_echoserver.py": "Pyro5.utils.echoserver's class and main(); meshrpc has `meshrpc echo` (CLI)",
    "test_socketutil.py::TestSocketServer": "Pyro5's socket server classes (svr_threads, svr_multiplex)",
    "test_socketutil.py::TestServerDOS_multiplex": "Pyro5's socket server classes (svr_multiplex)",
    "test_socketutil.py::TestServerDOS_threading": "Pyro5's socket server classes (svr_threads)",
    "test_naming.py::TestOfflineNameServer::testNSmain": "pyro5-ns command line; meshrpc has `meshrpc ns`",
    "test_naming.py::TestOfflineNameServer::testNSCmain": "pyro5-nsc command line; meshrpc has `meshrpc list/lookup/...`",
    "test_naming.py::TestOfflineNameServer::testNSCfunctions": "Pyro5.nsc internals (handle_command)",
    "test_naming.py::TestOfflineNameServerTestsSqlStorage::testNSmain": "pyro5-ns command line",
    "test_naming.py::TestOfflineNameServerTestsSqlStorage::testNSCmain": "pyro5-nsc command line",
    "test_naming.py::TestOfflineNameServerTestsSqlStorage::testNSCfunctions": "Pyro5.nsc internals (handle_command)",
    "test_server.py::TestMetaAndExpose::testBasic": "private helper Pyro5.server._get_exposed_members",
    "test_server.py::TestMetaAndExpose::testGetExposedCacheWorks": "private helper _get_exposed_members",
    "test_server.py::TestMetaAndExpose::testPrivateNotExposed": "private helper _get_exposed_members",
    "test_server.py::TestMetaAndExpose::testNotOnlyExposed": "private helper _get_exposed_members",
    "test_server.py::TestMetaAndExpose::testPartlyExposedSubclass": "private helper _get_exposed_members",
    "test_server.py::TestMetaAndExpose::testExposedSubclass": "private helper _get_exposed_members",
    "test_server.py::TestMetaAndExpose::testGetExposedProperty": "private helper _get_exposed_property_value",
    "test_server.py::TestMetaAndExpose::testGetExposedPropertyFromPartiallyExposed": "private helper _get_exposed_property_value",
    "test_server.py::TestMetaAndExpose::testSetExposedProperty": "private helper _set_exposed_property_value",
    "test_server.py::TestMetaAndExpose::testSetExposedPropertyFromPartiallyExposed": "private helper _set_exposed_property_value",
    "test_server.py::TestMetaAndExpose::testResolveAttr": "private helper Pyro5.server._get_attribute",
    "test_daemon.py::TestDaemon::testSimpleHandshake": "private method Daemon._handshake with a mock connection",
    "test_daemon.py::TestDaemon::testHandshakeDenied": "private method Daemon._handshake with a mock connection",
    "test_daemon.py::TestDaemon::testCustomHandshake": "private method Daemon._handshake with a mock connection",
    "test_daemon.py::TestDaemon::testInstanceCreationSingle": "private method Daemon._getInstance",
    "test_daemon.py::TestDaemon::testInstanceCreationSession": "private method Daemon._getInstance",
    "test_daemon.py::TestDaemon::testInstanceCreationPerCall": "private method Daemon._getInstance",
    "test_daemon.py::TestDaemon::testInstanceCreationWrongType": "private method Daemon._getInstance",
    "test_daemon.py::TestDaemon::testBehaviorDefaultsIsSession": "private method Daemon._getInstance",
    "test_daemon.py::TestDaemon::testSerializerAccepted": "Daemon.handleRequest on a mock connection (Pyro5's loop internals)",
    "test_daemon.py::TestDaemon::testDaemonConnectedSocket": "Daemon.transportServer (Pyro5's socket server object)",
    "test_daemon.py::TestDaemon::testDaemonWithStmt": "Daemon.transportServer (Pyro5's socket server object)",
    "test_daemon.py::TestDaemon::testCombine": "Daemon.transportServer.selector (Pyro5's socket server object)",
    "test_daemon.py::TestDaemon::testClientDisconnectLockIsPerDaemon": "Daemon._clientDisconnect and transportServer.conn",
    "test_daemon.py::TestDaemon::testDaemonConnectedSocketLog": "the text of a log message of Pyro5's internal server",
    "test_daemon.py::TestDaemon::testDaemonLogsProtocolVersion": "the text of a log message of Pyro5's daemon",
    "test_server.py::TestServerBrokenHandshake::testDaemonConnectFail": "overrides the private Daemon._handshake",
    "test_server.py::TestServerOnce::testPingMessage": "writes raw bytes on proxy._pyroConnection (Pyro5's SocketConnection)",
    "test_serialize.py::TestSerializer2_serpent::testAutoProxyPartlyExposed": "private helper _pyro_obj_to_auto_proxy",
    "test_serialize.py::TestSerializer2_serpent::testAutoProxyFullExposed": "private helper _pyro_obj_to_auto_proxy",
    "test_serialize.py::TestSerializer2_json::testAutoProxyPartlyExposed": "private helper _pyro_obj_to_auto_proxy",
    "test_serialize.py::TestSerializer2_json::testAutoProxyFullExposed": "private helper _pyro_obj_to_auto_proxy",
    "test_serialize.py::TestSerializer2_marshal::testAutoProxyPartlyExposed": "private helper _pyro_obj_to_auto_proxy",
    "test_serialize.py::TestSerializer2_marshal::testAutoProxyFullExposed": "private helper _pyro_obj_to_auto_proxy",
    "test_serialize.py::TestSerializer2_msgpack::testAutoProxyPartlyExposed": "private helper _pyro_obj_to_auto_proxy",
    "test_serialize.py::TestSerializer2_msgpack::testAutoProxyFullExposed": "private helper _pyro_obj_to_auto_proxy",
    "test_serialize.py::TestMsgpackExtHookLoadsCall": "subclasses Pyro5's msgpack serializer internals (default/ext_hook)",
    "test_server.py::TestServerOnce::testProxyAttrsMetadataOn": "private class Pyro5.client._RemoteMethod",
}

OFF_MACHINE: dict[str, str] = {
    "test_socketutil.py::TestSocketutil::testBroadcast": "sends UDP broadcasts to the real network",
    "test_naming.py::TestNameServer0000": "binds the name server and its broadcast responder on every interface",
}

_REPR = "repr()/str() name meshrpc's classes, not Pyro5's"
DIFFERENCES: dict[str, str] = {
    "test_core.py::TestCore::testConfigDefaults": "NS_HOST defaults to empty: the mesh, then broadcast, then HOST",
    "test_core.py::TestCore::testUriStrAndRepr": _REPR,
    "test_core.py::TestCore::testUriUnicode": _REPR,
    "test_daemon.py::TestDaemon::testDaemon": _REPR,
    "test_daemon.py::TestDaemon::testDaemonUnixSocket": _REPR,
    "test_daemon.py::TestDaemon::testDaemonUnixSocketAbstractNS": _REPR,
    "test_serialize.py::TestSerializer2_serpent::testPyroClasses": _REPR,
    "test_serialize.py::TestSerializer2_json::testPyroClasses": _REPR,
    "test_serialize.py::TestSerializer2_marshal::testPyroClasses": _REPR,
    "test_serialize.py::TestSerializer2_msgpack::testPyroClasses": _REPR,
    "test_serialize.py::TestSerializer2_serpent::testSerDaemonHack": _REPR,
    "test_serialize.py::TestSerializer2_json::testSerDaemonHack": _REPR,
    "test_serialize.py::TestSerializer2_marshal::testSerDaemonHack": _REPR,
    "test_serialize.py::TestSerializer2_msgpack::testSerDaemonHack": _REPR,
    "test_socketutil.py::TestSSL::testContextAndSock": "requiring client certificates needs SSL_CACERTS (the CAs they must chain to)",
}


def matches(nodeid: str, table: dict[str, str]) -> str | None:
    """The reason for `nodeid` in `table` (its exact id, or its file or class), or None."""
    nodeid = nodeid.removeprefix("tests/")
    for key, reason in table.items():
        if nodeid == key or nodeid.startswith(key + "::") or nodeid.startswith(key + "["):
            return reason
    return None
