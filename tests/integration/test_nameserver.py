"""The name server over real sockets (loopback, free ports): its API through meshrpc proxies in every
serializer, hostile input, resolution of PYRONAME/PYROMETA, locate_ns, autoclean.

`RunningNS` and `ns_settings` are shared with the other test_nameserver_* modules."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import wait_until

import meshrpc
from meshrpc import URI, errors
from meshrpc.naming import forget_located, locate_ns, resolve_ns, start_ns
from meshrpc.naming.server import probe_daemon

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
PROXY_TIMEOUT = 10.0


def ns_settings(**changes: Any) -> meshrpc.Settings:
    """Loopback only, the name server as the only resolver, short rebinding; never the default ports
    9090/9091 (port 1 refuses TCP and has no broadcast responder)."""
    base: dict[str, Any] = {"HOST": HOST, "NS_HOST": HOST, "NS_PORT": 1, "NS_BCPORT": 1, "RESOLVE": "ns",
                            "REBIND_TIMEOUT": 1.0}
    base.update(changes)
    return meshrpc.Settings().copy(**base)


def refused_port() -> socket.socket:
    """A bound, not listening TCP socket: connecting to its port is refused while it is open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    return sock


class RunningNS:
    """A name server serving from a background thread (and its broadcast responder, if any)."""

    def __init__(self, storage: str = "memory", broadcast: bool = True, settings: meshrpc.Settings | None = None,
                 **options: Any) -> None:
        self.settings = settings or ns_settings()
        self.uri, self.daemon, self.bcserver = start_ns(HOST, 0, 0, storage, self.settings, broadcast, **options)
        if self.bcserver is not None:
            self.bcserver.run_in_thread()
        self.thread = threading.Thread(target=self.daemon.requestLoop, name="test-ns", daemon=True)
        self.thread.start()
        self._proxies: list[meshrpc.Proxy] = []

    @property
    def port(self) -> int:
        return self.uri.port

    def proxy(self, serializer: str | None = None) -> meshrpc.Proxy:
        proxy = meshrpc.Proxy(self.uri, settings=self.settings)
        proxy._pyroTimeout = PROXY_TIMEOUT
        if serializer:
            proxy._pyroSerializer = serializer
        self._proxies.append(proxy)
        return proxy

    def stop(self) -> None:
        for proxy in self._proxies:
            proxy._pyroRelease()
        self.daemon.shutdown()
        self.thread.join(10)
        if self.bcserver is not None:
            self.bcserver.close()
        assert not self.thread.is_alive(), "name server loop did not stop"


def running_nameservers() -> Iterator[Callable[..., RunningNS]]:
    """Body of the `start_nameserver` fixture (also used by the other test_nameserver_* modules):
    start(**options) -> RunningNS; all are stopped at the end."""
    running: list[RunningNS] = []

    def start(**kwargs: Any) -> RunningNS:
        ns = RunningNS(**kwargs)
        running.append(ns)
        return ns

    forget_located()
    yield start
    for ns in running:
        ns.stop()
    forget_located()


@pytest.fixture
def start_nameserver() -> Iterator[Callable[..., RunningNS]]:
    yield from running_nameservers()


@meshrpc.expose
class Echo:
    def echo(self, value: Any) -> Any:
        return value


# ----------------------------------------------------------------------------- the API
@pytest.mark.parametrize("serializer", ["serpent", "json", "marshal", "msgpack"])
def test_api_over_sockets(start_nameserver: Callable[..., RunningNS], serializer: str) -> None:
    running = start_nameserver()
    ns = running.proxy(serializer)
    ns.ping()
    assert ns.count() == 1
    assert ns.lookup("Pyro.NameServer") == running.uri
    ns.register("shop.cart", "PYRO:cart@127.0.0.1:5001", metadata=["shop", "cart"])
    ns.register("shop.till", URI("PYRO:till@127.0.0.1:5001"), False, ["shop"])
    ns.register("other", "PYRO:other@127.0.0.1:5002")
    assert ns.count() == 4
    assert ns.lookup("shop.cart") == URI("PYRO:cart@127.0.0.1:5001")
    uri, meta = ns.lookup("shop.cart", return_metadata=True)
    assert uri == URI("PYRO:cart@127.0.0.1:5001") and set(meta) == {"shop", "cart"}
    assert ns.list(prefix="shop.") == {"shop.cart": "PYRO:cart@127.0.0.1:5001", "shop.till": "PYRO:till@127.0.0.1:5001"}
    assert ns.list(regex=r"shop\.t.*") == {"shop.till": "PYRO:till@127.0.0.1:5001"}
    listed = ns.list(return_metadata=True)
    assert set(listed) == {"Pyro.NameServer", "shop.cart", "shop.till", "other"}
    assert listed["shop.till"][0] == "PYRO:till@127.0.0.1:5001" and set(listed["shop.till"][1]) == {"shop"}
    assert set(ns.yplookup(meta_all=["shop"])) == {"shop.cart", "shop.till"}
    assert ns.yplookup(meta_any=["cart"], return_metadata=False) == {"shop.cart": "PYRO:cart@127.0.0.1:5001"}
    ns.set_metadata("other", ["misc"])
    assert set(ns.lookup("other", True)[1]) == {"misc"}
    assert ns.remove("other") == 1
    assert ns.remove(prefix="shop.") == 2
    assert ns.remove("Pyro.NameServer") == 0
    assert ns.list() == {"Pyro.NameServer": str(running.uri)}


def test_errors_over_the_wire(start_nameserver: Callable[..., RunningNS]) -> None:
    ns = start_nameserver().proxy()
    with pytest.raises(errors.NamingError, match="unknown name: nope"):
        ns.lookup("nope")
    ns.register("a", "PYRO:a@127.0.0.1:1")
    with pytest.raises(errors.NamingError, match="name already registered: a"):
        ns.register("a", "PYRO:b@127.0.0.1:1", safe=True)
    with pytest.raises(ValueError):
        ns.list(prefix="a", regex="a")
    with pytest.raises(TypeError):
        ns.register("b", "PYRO:b@127.0.0.1:1", metadata="tag")
    with pytest.raises(TypeError):
        ns.register(12345, "PYRO:b@127.0.0.1:1")
    with pytest.raises(TypeError):
        ns.register("b", 3.5)
    with pytest.raises(errors.NamingError, match="invalid uri"):
        ns.register("b", "PYRO:no-port@host")
    with pytest.raises(errors.NamingError, match="invalid regex"):
        ns.list(regex="(unclosed")
    assert ns.count() == 2  # still serving, nothing half-done


def test_hostile_input_keeps_serving(start_nameserver: Callable[..., RunningNS]) -> None:
    running = start_nameserver()
    ns = running.proxy()
    with pytest.raises(errors.NamingError, match="name too long"):
        ns.register("x" * 1_000_000, "PYRO:a@127.0.0.1:1")
    with pytest.raises(errors.NamingError, match="too many"):
        ns.register("a", "PYRO:a@127.0.0.1:1", metadata=[f"tag{i}" for i in range(100_000)])
    with pytest.raises(errors.NamingError, match="tag too long"):
        ns.register("a", "PYRO:a@127.0.0.1:1", metadata=["t" * 100_000])
    with pytest.raises(errors.NamingError, match="longer than"):
        ns.list(regex="a" * 100_000)
    with pytest.raises(errors.NamingError, match="backreferences"):
        ns.remove(regex=r"(a+)\1")
    for i in range(20):
        ns.register("a" * 1000 + str(i), f"PYRO:o{i}@127.0.0.1:1")
    assert ns.count() == 21


def test_regex_bomb_does_not_stall_others(start_nameserver: Callable[..., RunningNS]) -> None:
    running = start_nameserver()
    ns = running.proxy()
    for i in range(200):
        ns.register("a" * 1000 + f"!{i}", f"PYRO:o{i}@127.0.0.1:1")
    outcome: dict[str, Any] = {}

    def bomb() -> None:
        bomber = running.proxy()
        started = time.monotonic()
        try:
            outcome["result"] = bomber.list(regex=r"(a+)+$")
        except errors.NamingError as exc:  # the time budget, on a very busy machine
            outcome["result"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=bomb)
    thread.start()
    other = running.proxy()
    for _ in range(20):
        other.ping()  # served meanwhile
        assert other.lookup("Pyro.NameServer") == running.uri
    thread.join(30)
    assert not thread.is_alive()
    # with Python's re this call would never end; here it is linear in the names' length
    assert outcome["result"] == {} or "took longer" in str(outcome["result"])
    assert outcome["seconds"] < 15
    assert ns.remove(regex=r"(a+)+!1$") in (0, 1)  # anchored at the start: 'aaa...!1' matches
    assert ns.count() in (200, 201)


def test_concurrent_safe_registrations(start_nameserver: Callable[..., RunningNS]) -> None:
    running = start_nameserver()
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        proxy = running.proxy()
        proxy.ping()
        barrier.wait(10)
        try:
            proxy.register("contested", f"PYRO:o@127.0.0.1:{1000 + i}", safe=True)
            winners.append(i)
        except errors.NamingError:
            pass

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(winners) == 1
    assert running.proxy().lookup("contested") == URI(f"PYRO:o@127.0.0.1:{1000 + winners[0]}")


# ----------------------------------------------------------------------------- resolution
def test_resolve_ns(start_nameserver: Callable[..., RunningNS]) -> None:
    running = start_nameserver()
    ns = running.proxy()
    ns.register("svc", "PYRO:svc@127.0.0.1:4000", metadata={"red", "round"})
    ns.register("svc2", "PYRO:svc2@127.0.0.1:4000", metadata={"red"})
    ns.register("alias", "PYRONAME:svc")
    at = f"@{HOST}:{running.port}"
    settings = running.settings
    assert resolve_ns(URI("PYRONAME:svc" + at), settings) == URI("PYRO:svc@127.0.0.1:4000")
    assert resolve_ns(URI("PYRONAME:alias" + at), settings) == URI("PYRO:svc@127.0.0.1:4000")
    assert resolve_ns(URI("PYRONAME:missing" + at), settings) is None
    assert resolve_ns(URI("PYROMETA:red,round" + at), settings) == URI("PYRO:svc@127.0.0.1:4000")
    assert resolve_ns(URI("PYROMETA:red" + at), settings) in {URI("PYRO:svc@127.0.0.1:4000"),
                                                                URI("PYRO:svc2@127.0.0.1:4000")}
    assert resolve_ns(URI("PYROMETA:blue" + at), settings) is None
    assert resolve_ns(URI("PYRO:x@h:1"), settings) == URI("PYRO:x@h:1")
    # without a location: the configured name server
    configured = ns_settings(NS_PORT=running.port)
    assert resolve_ns(URI("PYRONAME:svc"), configured) == URI("PYRO:svc@127.0.0.1:4000")
    ns.register("loop", "PYRONAME:loop" + at)
    with pytest.raises(errors.NamingError, match="hops"):
        resolve_ns(URI("PYRONAME:loop" + at), settings)


def test_resolve_ns_without_a_name_server() -> None:
    closed = refused_port()
    try:
        port = closed.getsockname()[1]
        with pytest.raises(errors.NamingError, match="failed to locate the name server"):
            resolve_ns(URI(f"PYRONAME:svc@{HOST}:{port}"), ns_settings())
    finally:
        closed.close()


def test_pyroname_proxy_through_the_name_server(start_nameserver: Callable[..., RunningNS],
                                                start_daemon: Any) -> None:
    running = start_nameserver()
    served = start_daemon()
    uri = served.register(Echo(), "echo")
    running.proxy().register("test.echo", uri, metadata={"echo-tag"})
    settings = ns_settings(NS_PORT=running.port)
    with meshrpc.Proxy("PYRONAME:test.echo", settings=settings) as proxy:
        assert proxy.echo("by name") == "by name"
    with meshrpc.Proxy(f"PYROMETA:echo-tag@{HOST}:{running.port}", settings=settings) as proxy:
        assert proxy.echo("by tag") == "by tag"


# ----------------------------------------------------------------------------- locate_ns
def test_locate_ns_direct_and_configured(start_nameserver: Callable[..., RunningNS]) -> None:
    running = start_nameserver(broadcast=False)
    with locate_ns(HOST, running.port, settings=running.settings) as ns:
        assert ns.count() == 1
    with locate_ns(settings=ns_settings(NS_PORT=running.port), broadcast=False) as ns:
        assert ns._pyroUri == running.uri
    closed = refused_port()
    try:
        with pytest.raises(errors.NamingError, match=r"direct 127\.0\.0\.1:\d+"):
            locate_ns(HOST, closed.getsockname()[1], settings=running.settings)
    finally:
        closed.close()


def test_locate_ns_reports_what_it_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = refused_port()
    try:
        settings = ns_settings(NS_PORT=closed.getsockname()[1], NS_BCPORT=closed.getsockname()[1],
                               RESOLVE="mesh,ns")
        import meshrpc.naming.locate as locate_module
        original = locate_module.broadcast_locate
        monkeypatch.setattr(locate_module, "broadcast_locate",
                            lambda host, port, timeout=None: original(host, port, tries=1, interval=0.2))
        fake_mesh(monkeypatch, [])
        with pytest.raises(errors.NamingError) as info:
            locate_ns(settings=settings)
        text = str(info.value)
        assert "mesh: no name server announced" in text
        assert "broadcast on port" in text
        assert "direct 127.0.0.1" in text
    finally:
        closed.close()


class _Entry:
    def __init__(self, uri: str) -> None:
        self.uri = uri


def fake_mesh(monkeypatch: pytest.MonkeyPatch, uris: list[str]) -> None:
    """The mesh registry answers lookup("Pyro.NameServer") with these URIs."""
    import meshrpc.mesh

    class FakeRegistry:
        def lookup(self, name: str) -> list[_Entry]:
            assert name == "Pyro.NameServer"
            return [_Entry(uri) for uri in uris]

    monkeypatch.setattr(meshrpc.mesh, "get_registry", lambda settings=None: FakeRegistry(), raising=False)


def test_locate_ns_asks_the_mesh_first(start_nameserver: Callable[..., RunningNS],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    running = start_nameserver(broadcast=False)
    closed = refused_port()
    try:
        settings = ns_settings(RESOLVE="mesh,ns", NS_PORT=closed.getsockname()[1])
        fake_mesh(monkeypatch, ["PYRO:Pyro.NameServer@127.0.0.1:1", str(running.uri)])
        with locate_ns(settings=settings, broadcast=False) as proxy:
            assert proxy._pyroUri == running.uri
            assert proxy.count() == 1
        fake_mesh(monkeypatch, [])
        # located once: found again without the mesh
        with locate_ns(settings=settings, broadcast=False) as again:
            assert again._pyroUri == running.uri
    finally:
        closed.close()


def test_locate_ns_without_the_mesh_package(monkeypatch: pytest.MonkeyPatch,
                                            start_nameserver: Callable[..., RunningNS]) -> None:
    import meshrpc.mesh
    running = start_nameserver(broadcast=False)
    monkeypatch.delattr(meshrpc.mesh, "get_registry")  # as while the mesh package is being written
    with locate_ns(settings=ns_settings(RESOLVE="mesh,ns", NS_PORT=running.port), broadcast=False) as proxy:
        assert proxy._pyroUri == running.uri


# ----------------------------------------------------------------------------- autoclean
def test_autoclean_removes_entries_of_dead_daemons(start_nameserver: Callable[..., RunningNS],
                                                   start_daemon: Any) -> None:
    running = start_nameserver(broadcast=False, autoclean=0.1, autoclean_misses=2)
    ns = running.proxy()
    alive = start_daemon()
    doomed = start_daemon()
    ns.register("alive", alive.register(Echo(), "e1"))
    ns.register("doomed", doomed.register(Echo(), "e2"))
    closed = refused_port()
    try:
        ns.register("never", f"PYRO:x@{HOST}:{closed.getsockname()[1]}")
        wait_until(lambda: "never" not in ns.list(), timeout=20, message="autoclean of an unreachable entry")
        doomed.stop()
        wait_until(lambda: "doomed" not in ns.list(), timeout=20, message="autoclean of a stopped daemon")
        assert set(ns.list()) == {"Pyro.NameServer", "alive"}
    finally:
        closed.close()


def test_probe_counts_a_refused_handshake_as_alive(start_daemon: Any) -> None:
    class Picky(meshrpc.Daemon):
        def validateHandshake(self, conn: Any, data: Any) -> Any:
            raise ValueError("go away")

    picky = Picky(host=HOST)
    thread = threading.Thread(target=picky.requestLoop, daemon=True)
    thread.start()
    try:
        assert probe_daemon(picky.uriFor("Pyro.Daemon"), 5.0)
        plain = start_daemon()
        assert probe_daemon(plain.daemon.uriFor("Pyro.Daemon"), 5.0)
        closed = refused_port()
        try:
            assert not probe_daemon(URI(f"PYRO:x@{HOST}:{closed.getsockname()[1]}"), 5.0)
        finally:
            closed.close()
    finally:
        picky.shutdown()
        thread.join(10)


def test_resolve_ns_with_a_hung_name_server(start_daemon: Any) -> None:
    @meshrpc.expose
    class StuckNameServer:
        def lookup(self, name: str, return_metadata: bool = False) -> Any:
            time.sleep(2)
            return "PYRO:late@127.0.0.1:1"

    stuck = start_daemon()
    uri = stuck.register(StuckNameServer(), "Pyro.NameServer")
    started = time.monotonic()
    with pytest.raises(errors.NamingError, match="failed"):
        resolve_ns(URI(f"PYRONAME:x@{HOST}:{uri.port}"), ns_settings(LOOKUP_TIMEOUT=0.3))
    assert time.monotonic() - started < 1.9


def test_announced_on_the_mesh(start_nameserver: Callable[..., RunningNS], realm: str) -> None:
    """start_ns(announce=True) publishes the name server on the mesh (loopback mDNS, own realm), and
    locate_ns finds it there before anything else."""
    mesh = pytest.importorskip("meshrpc.mesh")
    if not hasattr(mesh, "get_registry"):
        pytest.skip("the mesh package offers no registry yet")
    settings = ns_settings(RESOLVE="mesh,ns", REALM=realm)
    running = start_nameserver(broadcast=False, settings=settings, announce=True)
    entries = mesh.get_registry(settings).resolve("Pyro.NameServer", timeout=10)
    assert [e.uri for e in entries] == [str(running.uri)]
    with locate_ns(settings=settings, broadcast=False) as ns:  # NS_PORT=1: only the mesh knows it
        assert ns._pyroUri == running.uri
