"""What Pyro5's example programs rely on, found by running them with their imports renamed (issue 16):
remote dunder methods and Pyro5's text for private names (attributes), ConnectionClosedError when the
daemon went away (autoreconnect), a Daemon subclass's annotations() and a oneway call's empty response
annotations, the first call's seq (callcontext), and a name only a name server knows resolving without
waiting for the mesh's LOOKUP_TIMEOUT (every PYRONAME example against a Pyro5 name server). Real
sockets; the real Pyro5 as the peer where a program would have one."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import Pyro5.api
import Pyro5.errors
import Pyro5.nameserver
import pytest
from test_pyro5_api import serving

import meshrpc
from meshrpc import errors

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
WAIT = 10.0  # seconds: bound of every wait for another thread


class Thingy:
    """The attributes example's object: a remote dunder method, and private names it does not expose."""

    def __init__(self) -> None:
        self._value = 1
        self.__value = 2

    def __dunder__(self) -> str:
        return "yep"

    def ping(self) -> str:
        return "pong"


@pytest.mark.parametrize("library", ["meshrpc", "pyro5"])
def test_a_proxy_calls_remote_dunder_methods_and_says_pyro5s_text_for_private_names(library: str) -> None:
    """p.__dunder__() runs remotely (Pyro5 exposes dunder methods); p.__value and p._value raise
    AttributeError with Pyro5's text; pickling and copying a proxy still ask nothing remote."""
    lib = meshrpc if library == "meshrpc" else Pyro5.api
    with lib.Daemon(host=HOST) as daemon, serving(daemon):
        uri = str(daemon.register(lib.expose(Thingy), "thingy"))
        with meshrpc.Proxy(uri) as proxy:
            assert proxy.__dunder__() == "yep"
            assert proxy._pyroConnection.objectId == "thingy"  # distributed-computing3 prints it
            for private in ("__value", "_value"):
                with pytest.raises(AttributeError) as refused:
                    getattr(proxy, private)
                assert str(refused.value) == f"remote object '{uri}' has no exposed attribute or method '{private}'"
            assert pickle.loads(pickle.dumps(proxy))._pyroUri == proxy._pyroUri
            with copy.copy(proxy) as other:
                assert other.ping() == "pong"


def test_a_daemon_that_went_away_raises_connection_closed_and_the_proxy_reconnects_when_it_is_back() -> None:
    """The autoreconnect example: `except ConnectionClosedError: proxy._pyroReconnect()` around calls on a
    PYRO URI, the daemon restarted on the same port with the same object id."""
    first = meshrpc.Daemon(host=HOST)
    port = first.locationStr.rsplit(":", 1)[1]
    with first, serving(first):
        uri = first.register(meshrpc.expose(Thingy), "fixed")
        proxy = meshrpc.Proxy(uri)
        assert proxy.ping() == "pong"
    for _ in range(2):  # the first call after the loss and the next one: the same class
        with pytest.raises(errors.ConnectionClosedError) as lost:
            proxy.ping()
        assert type(lost.value) is errors.ConnectionLostError  # it did not run, and meshrpc says so too
    with meshrpc.Daemon(host=HOST, port=int(port)) as second, serving(second):
        second.register(meshrpc.expose(Thingy), "fixed")
        proxy._pyroReconnect()
        assert proxy.ping() == "pong"
    proxy._pyroRelease()


class Echo:
    def echo(self, text: str) -> str:
        return text

    @meshrpc.oneway
    def forget(self, text: str) -> None:
        pass

    def seq(self) -> int:
        return meshrpc.current_context.seq


class AnnotatingDaemon(meshrpc.Daemon):
    def annotations(self) -> dict[str, bytes]:
        return {"DDAA": b"set by the daemon"}


def test_a_daemon_subclass_annotations_go_with_every_reply_and_a_oneway_call_has_none() -> None:
    """The callcontext example: a Daemon subclass's annotations() reach meshrpc and Pyro5 clients in
    current_context.response_annotations; after a oneway call they are empty (no reply came); the first
    call on a connection has seq 1, as Pyro5's."""
    with AnnotatingDaemon(host=HOST) as daemon, serving(daemon):
        uri = str(daemon.register(meshrpc.expose(Echo), "echo"))
        for lib in (meshrpc, Pyro5.api):
            with lib.Proxy(uri) as proxy:
                assert proxy.seq() == 1
                assert proxy.echo("hi") == "hi"
                assert bytes(lib.current_context.response_annotations["DDAA"]) == b"set by the daemon"
                proxy.forget("hi")
                assert dict(lib.current_context.response_annotations) == {}


@pytest.fixture
def pyro5_name_server() -> Iterator[str]:
    """A real Pyro5 name server in this process, on loopback, without broadcast: its URI."""
    ns_uri, ns_daemon, _ = Pyro5.nameserver.start_ns(host=HOST, port=0, enableBroadcast=False)
    with ns_daemon, serving(ns_daemon):
        yield str(ns_uri)


def test_a_name_only_a_pyro5_name_server_knows_resolves_without_waiting_the_lookup_timeout(
        realm: str, pyro5_name_server: str) -> None:
    """Pyro5 programs register names in a name server only: a meshrpc client with the default RESOLVE
    (mesh, then the name server) takes the name server's answer once the mesh has had
    RESOLVE_PREFER_WAIT, not after the mesh's whole LOOKUP_TIMEOUT."""
    ns_location = pyro5_name_server.rsplit("@", 1)[1]
    settings = meshrpc.config.copy(REALM=realm, NS_HOST=HOST, NS_PORT=int(ns_location.rsplit(":", 1)[1]),
                                   LOOKUP_TIMEOUT=8.0)
    with Pyro5.api.Daemon(host=HOST) as daemon, serving(daemon):
        uri = daemon.register(Pyro5.api.expose(Thingy), "thingy")
        with Pyro5.api.Proxy(pyro5_name_server) as ns:
            ns.register("example.only.in.ns", uri)
        started = time.monotonic()
        with meshrpc.Proxy("PYRONAME:example.only.in.ns", settings=settings) as proxy:
            assert proxy.ping() == "pong"
        took = time.monotonic() - started
        assert took < 5.0, f"resolving took {took:.1f} s: it waited for the mesh's LOOKUP_TIMEOUT (8 s)"
        with pytest.raises(errors.UnknownNameError):  # an unknown name still waits for every source
            meshrpc.Proxy("PYRONAME:example.nowhere", settings=settings.copy(LOOKUP_TIMEOUT=1.0))._pyroBind()


class GatekeeperDaemon(meshrpc.Daemon):
    """The handshake example's daemon: refuses a wrong secret, and asks a leaving client's socket its peer."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.left: list[Any] = []
        self.gone = threading.Event()

    def validateHandshake(self, conn: Any, data: Any) -> Any:
        if data != "pancakes":
            raise ValueError("wrong secret code, connection refused")
        return "welcome"

    def clientDisconnect(self, conn: Any) -> None:
        self.left.append(conn.sock.getpeername())
        self.gone.set()


@pytest.mark.parametrize("library", ["meshrpc", "pyro5"])
def test_a_refused_handshake_says_the_hooks_words_and_client_disconnect_sees_the_open_socket(library: str) -> None:
    """validateHandshake's exception text is the refusal the proxy shows (Pyro5's wording: no prefix);
    clientDisconnect runs once per accepted client, before its socket closes (conn.sock.getpeername()
    works), and not for a client whose handshake was refused."""
    lib = meshrpc if library == "meshrpc" else Pyro5.api
    with GatekeeperDaemon(host=HOST) as daemon, serving(daemon):
        uri = str(daemon.register(meshrpc.expose(Echo), "echo"))
        refused = lib.Proxy(uri)
        refused._pyroHandshake = "waffles"
        with pytest.raises((errors.CommunicationError, Pyro5.errors.CommunicationError)) as denied:
            refused._pyroBind()
        assert str(denied.value).endswith(" rejected: wrong secret code, connection refused"), denied.value
        refused._pyroRelease()
        with lib.Proxy(uri) as proxy:
            proxy._pyroHandshake = "pancakes"
            assert proxy.echo("hi") == "hi"
            address = proxy._pyroConnection.sock.getsockname()
        assert daemon.gone.wait(WAIT), "clientDisconnect was not called"
        assert daemon.left == [address]


def test_meshrpc_echo_serves_what_pyro5s_echo_server_serves() -> None:
    """The echoserver example runs against `meshrpc echo` as against `python -m Pyro5.utils.echoserver`:
    the same results and error texts for what Pyro5's echo object offers."""
    from Pyro5.utils.echoserver import EchoServer as Pyro5Echo

    from meshrpc.cli.echo import EchoServer

    def answers(uri: str) -> list[str]:
        seen = []
        with meshrpc.Proxy(uri) as echo:
            seen += [repr(echo.echo([1, "two"])), repr(list(echo.generator())), repr(echo.nan()),
                     repr(echo.inf()), echo.__dunder__()]
            for method in (echo.error, echo.error_with_text):
                with pytest.raises(ValueError) as raised:
                    method()
                seen.append(str(raised.value))
            echo.oneway_echo("ignored")
        return seen

    with Pyro5.api.Daemon(host=HOST) as pyro5_daemon, serving(pyro5_daemon):
        reference = answers(str(pyro5_daemon.register(Pyro5Echo(), "echo")))
    with meshrpc.Daemon(host=HOST) as daemon, serving(daemon):
        assert answers(str(daemon.register(EchoServer(), "echo"))) == reference


@pytest.mark.parametrize("library", ["meshrpc", "pyro5"])
def test_protocol_ping_on_a_proxys_connection_answers_and_then_says_it_closed(library: str) -> None:
    """The disconnects example pings `proxy._pyroConnection` with protocol.SendingMessage.ping before
    each call, and reconnects on ConnectionClosedError."""
    import meshrpc.protocol
    lib = meshrpc if library == "meshrpc" else Pyro5.api
    with lib.Daemon(host=HOST) as daemon, serving(daemon):
        uri = str(daemon.register(lib.expose(Thingy), "thingy"))
        proxy = meshrpc.Proxy(uri)
        assert proxy.ping() == "pong"
        meshrpc.protocol.SendingMessage.ping(proxy._pyroConnection)
        assert proxy.ping() == "pong"  # the connection is still in step
    if library == "meshrpc":  # (a stopped Pyro5 daemon's worker may still answer its open connection)
        with pytest.raises(errors.ConnectionClosedError):
            meshrpc.protocol.SendingMessage.ping(proxy._pyroConnection)
    proxy._pyroRelease()


COMBINED_SERVER = """
import meshrpc
settings = meshrpc.config.copy(SERVERTYPE="multiplex", HOST="127.0.0.1")
with meshrpc.Daemon(settings=settings) as main, meshrpc.Daemon(settings=settings) as other:
    main.combine(other)
    print(other.register(meshrpc.expose(type("Thing", (), {"ping": lambda self: "pong"})), "thing"), flush=True)
    main.requestLoop()
print("done", flush=True)
"""


def _serve_then_signal(program: str, args: list[str], signum: int) -> tuple[int, str, str]:
    """Run a server program (it prints a URI whose object answers ping()), check that it serves, send it
    signum: (exit code, the output after the URI, stderr). SIGINT as in a terminal (not ignored)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-c", program, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        uri = server.stdout.readline().strip()  # bounded by the test's timeout
        with Pyro5.api.Proxy(uri) as proxy:
            assert proxy.ping() == "pong"  # the loop runs
        server.send_signal(signum)
        out, err = server.communicate(timeout=WAIT)
    finally:
        if server.poll() is None:
            server.kill()  # our own child, by its handle
            server.wait(WAIT)
    return server.returncode, out, err


def test_sigterm_ends_a_combined_request_loop_cleanly() -> None:
    """The eventloop example (multiplexed): one daemon's requestLoop serves another combined with it;
    SIGTERM while it waits in select ends it (the daemons close) without an error."""
    returncode, out, err = _serve_then_signal(COMBINED_SERVER, [], signal.SIGTERM)
    assert returncode == 0 and out.strip() == "done", err


def test_a_select_loop_on_the_broadcast_server_hears_queries_on_each_of_its_addresses() -> None:
    """The eventloop example (threads) selects on the BroadcastServer object itself and calls
    processRequest(): a query sent to its broadcast address (not its first socket) must wake it."""
    import select
    import socket

    from meshrpc.naming.broadcast import BroadcastServer

    with BroadcastServer(f"PYRO:Pyro.NameServer@{HOST}:9090", HOST, 0) as responder:
        assert len(responder.sockets) > 1, responder.addresses
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
            asker.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            asker.settimeout(WAIT)
            asker.sendto(b"GET_NSURI", (responder.addresses[-1], responder.port))
            readable, _, _ = select.select([responder], [], [], WAIT)
            assert readable == [responder], "select() on the broadcast server did not wake"
            responder.processRequest()
            assert asker.recvfrom(1000)[0] == f"PYRO:Pyro.NameServer@{HOST}:9090".encode()


def test_transport_server_gives_the_listening_socket() -> None:
    """The filetransfer example binds its blob socket next to `self.transportServer.sock`."""
    with meshrpc.Daemon(host=HOST) as daemon:
        assert daemon.transportServer.sock.getsockname() == (HOST, int(daemon.locationStr.rsplit(":", 1)[1]))


@meshrpc.expose
class Turnstile:
    """The oneway example's server2, made observable: each oneway call says it started, then waits to be
    let through, so the test sees which calls overlap without timing them."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.changed = threading.Condition()
        self.gate = threading.Event()

    @meshrpc.oneway
    def enter(self, number: int) -> None:
        with self.changed:
            self.started.append(number)
            self.changed.notify_all()
        self.gate.wait(WAIT)

    def count(self) -> int:
        with self.changed:
            return len(self.started)

    def wait_for(self, count: int) -> list[int]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.started) >= count, WAIT), self.started
            return list(self.started)


@pytest.mark.parametrize("library", ["meshrpc", "pyro5"])
def test_oneway_calls_of_one_proxy_run_in_order_and_other_proxies_overlap_them(library: str) -> None:
    """The guide's difference: a meshrpc daemon runs one connection's oneway calls one after another
    (Pyro5's start a thread each), without holding up that proxy's normal calls; oneway calls from
    separate proxies run at the same time. The same for a meshrpc and a Pyro5 client."""
    lib = meshrpc if library == "meshrpc" else Pyro5.api
    turnstile = Turnstile()
    with meshrpc.Daemon(host=HOST) as daemon, serving(daemon):
        uri = str(daemon.register(turnstile, "turnstile"))
        with lib.Proxy(uri) as first, lib.Proxy(uri) as second:
            first.enter(1)
            first.enter(2)
            assert turnstile.wait_for(1) == [1]
            assert first.count() == 1  # a normal call is answered while the oneway calls wait
            second.enter(3)  # another connection: runs beside call 1
            assert turnstile.wait_for(2) == [1, 3]
            assert first.count() == 2  # call 2 still waits for call 1
            turnstile.gate.set()
            assert turnstile.wait_for(3) == [1, 3, 2]


CTRL_C_SERVER = """
import sys
if sys.argv[1] == "meshrpc":
    import meshrpc as api
else:
    import Pyro5.api as api

@api.expose
class Pinger:
    def ping(self):
        return "pong"

with api.Daemon(host="127.0.0.1") as daemon:
    print(daemon.register(Pinger, "pinger"), flush=True)
    daemon.requestLoop()
    print("after the loop", flush=True)
print("closed", flush=True)
"""


@pytest.mark.parametrize("library", ["meshrpc", "pyro5"])
def test_ctrl_c_ends_request_loop_and_the_program_goes_on_after_it(library: str) -> None:
    """Pyro5's requestLoop returns on Ctrl-C, so code after it (cleanup, a last print) runs and the program
    exits 0; a meshrpc daemon's did raise KeyboardInterrupt out of the loop (a traceback, exit by signal)."""
    returncode, out, err = _serve_then_signal(CTRL_C_SERVER, [library], signal.SIGINT)
    assert (returncode, out.split(), "Traceback" in err) == (0, ["after", "the", "loop", "closed"], False), err
