"""Review of session 13's TLS in meshrpc.aio, meshrpc.mesh.use_zeroconf and the CLI's --lan: what the
review settled, kept as cheap tests (real sockets, real TLS, real Pyro5, real zeroconf on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import wait_until
from test_aio_tls import aio_daemon
from test_tls import HOST, Certs, client_settings, make_certs, server_settings

import meshrpc
import meshrpc.aio
from meshrpc.wire import frame as wire
from meshrpc.wire.serializers import by_name

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with tempfile.TemporaryDirectory(prefix="meshrpc-w13b-") as root:
        yield make_certs(Path(root))


@meshrpc.expose
class Guarded:
    """Records every call that ran: a refused client must leave `ran` empty."""

    def __init__(self) -> None:
        self.ran: list[Any] = []

    def hit(self, value: Any) -> Any:
        self.ran.append(value)
        return value

    @meshrpc.oneway
    def hit_oneway(self, value: Any) -> None:
        self.ran.append(value)

    def where(self) -> Any:
        return meshrpc.current_context.client_sock_addr

    async def ahit(self, value: Any) -> Any:
        self.ran.append(value)
        return value


# ----------------------------------------------------------------------------- TLS: client certificates
_SERPENT = by_name("serpent")


def _connect_frame(seq: int = 1) -> bytes:
    return wire.encode(wire.Frame(wire.MSG_CONNECT, _SERPENT.id, seq,
                                  _SERPENT.dumps({"handshake": "hi", "object": "guarded"})))


def _invoke_frame(seq: int, method: str = "hit", flags: int = 0, compressed: bool = False) -> bytes:
    payload = _SERPENT.dumps_call("guarded", method, (f"intruder-{seq}",), {})
    if compressed:
        import zlib
        return wire.encode(wire.Frame(wire.MSG_INVOKE, _SERPENT.id, seq, zlib.compress(payload),
                                      flags | wire.FLAG_COMPRESSED))
    return wire.encode(wire.Frame(wire.MSG_INVOKE, _SERPENT.id, seq, payload, flags))


def _read_all(sock: ssl.SSLSocket) -> list[wire.Frame]:
    """Every frame the daemon sends until it closes the connection (bounded by the socket's timeout)."""
    reader, frames = wire.FrameReader(), []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, TimeoutError, OSError):
            data = b""
        if not data:
            return frames
        reader.feed(data)
        while (frame := reader.next_frame()) is not None:
            frames.append(frame)


def _no_cert_client(certs: Certs, port: int, version: ssl.TLSVersion) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, port), timeout=10)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.ca)
    context.maximum_version = version
    return context.wrap_socket(raw, server_hostname=HOST)


_ATTEMPTS = {
    "invoke without connect": lambda: _invoke_frame(2),
    "oneway invoke without connect": lambda: _invoke_frame(2, "hit_oneway", wire.FLAG_ONEWAY),
    "compressed invoke without connect": lambda: _invoke_frame(2, compressed=True),
    "connect then invoke in one write": lambda: _connect_frame() + _invoke_frame(2) + _invoke_frame(3, "ahit"),
    "connect then oneway and compressed": lambda: (_connect_frame() + _invoke_frame(2, "hit_oneway", wire.FLAG_ONEWAY)
                                                   + _invoke_frame(3, compressed=True)),
    "two connects then invoke": lambda: _connect_frame(1) + _connect_frame(2) + _invoke_frame(3),
}


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_no_request_of_a_client_without_certificate_runs_on_an_aio_daemon(certs: Certs, version: Any) -> None:
    """SSL_REQUIRECLIENTCERT on an aio.Daemon lets a client without a certificate through the TLS handshake
    (CERT_OPTIONAL, so that it can be told why in meshrpc's handshake). Whatever such a client sends (calls
    before or without CONNECT, oneway or compressed ones, calls pipelined right behind a CONNECT, a second
    CONNECT), nothing runs, and it gets no CONNECTOK; a client with a certificate still calls."""
    served = Guarded()
    settings = server_settings(certs, SSL_REQUIRECLIENTCERT=True)
    with aio_daemon(settings) as (daemon, _):
        loop = daemon._loop
        uri = asyncio.run_coroutine_threadsafe(_register(daemon, served), loop).result(10)
        for name, attempt in _ATTEMPTS.items():
            sock = _no_cert_client(certs, uri.port, version)
            with sock:
                sock.sendall(attempt())
                frames = _read_all(sock)
            types = [frame.type for frame in frames]
            assert wire.MSG_CONNECTOK not in types and wire.MSG_RESULT not in types, (name, types)
        known = client_settings(certs, SSL_CLIENTCERT=certs.client, SSL_CLIENTKEY=certs.client_key)
        with meshrpc.Proxy(uri, settings=known) as proxy:
            assert proxy.hit("known") == "known"
        assert served.ran == ["known"]


async def _register(daemon: Any, served: Any) -> meshrpc.URI:
    return daemon.register(served, "guarded")


# ----------------------------------------------------------------------------- TLS: is the connection kept?
@meshrpc.expose
class Where:
    """Which client connection a call came on (`context`: meshrpc's current_context or Pyro5's)."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.oneways = 0

    def where(self) -> Any:
        return tuple(self.context.client_sock_addr)

    @meshrpc.oneway
    def note(self) -> None:
        self.oneways += 1


@contextlib.contextmanager
def _tls_daemon(kind: str, certs: Certs, start_daemon: Any) -> Iterator[str]:
    if kind == "pyro5":
        pytest.importorskip("Pyro5")
        import Pyro5.api
        from test_pyro5_api import serving
        saved = {name: getattr(Pyro5.config, name) for name in ("SSL", "SSL_SERVERCERT", "SSL_SERVERKEY",
                                                                 "SSL_CACERTS")}
        Pyro5.config.SSL, Pyro5.config.SSL_SERVERCERT, Pyro5.config.SSL_SERVERKEY = True, certs.server, certs.server_key
        Pyro5.config.SSL_CACERTS = certs.ca
        import Pyro5.socketutil
        Pyro5.socketutil.__dict__["__ssl_server_context"] = None  # Pyro5 caches its context per process
        try:
            daemon = Pyro5.api.Daemon(host=HOST)
            uri = daemon.register(Where(Pyro5.api.current_context), "where")
            with daemon, serving(daemon):
                yield str(uri)
        finally:
            for name, value in saved.items():
                setattr(Pyro5.config, name, value)
            Pyro5.socketutil.__dict__["__ssl_server_context"] = None
    elif kind == "threaded":
        yield str(start_daemon(settings=server_settings(certs)).register(Where(meshrpc.current_context), "where"))
    else:
        with aio_daemon(server_settings(certs)) as (daemon, _):
            async def register() -> meshrpc.URI:
                return daemon.register(Where(meshrpc.current_context), "where")
            yield str(asyncio.run_coroutine_threadsafe(register(), daemon._loop).result(10))


@pytest.mark.parametrize("kind", ["pyro5", "threaded", "aio"])
def test_tls_session_tickets_never_look_like_a_closed_connection(certs: Certs, start_daemon: Any, kind: str) -> None:
    """A TLS 1.3 daemon sends its session tickets after the handshake: bytes on the socket that no call
    asked for. Neither proxy's peer_closed check before a call (poll on TLS sockets, TCP state on the aio
    proxy's) may take them for the daemon's close: every call, two-way and oneway alternating, goes on
    the first connection."""
    with _tls_daemon(kind, certs, start_daemon) as uri:
        settings = client_settings(certs)
        with meshrpc.Proxy(uri, settings=settings) as proxy:
            first = proxy.where()
            seen = set()
            for _ in range(10):
                proxy.note()
                seen.add(proxy.where())
            assert seen == {first}

        async def main() -> set:
            async with meshrpc.aio.Proxy(uri, settings=settings) as proxy:
                addresses = {await proxy.where()}
                for _ in range(10):
                    await proxy.note()
                    addresses.add(await proxy.where())
                return addresses
        assert len(asyncio.run(main())) == 1


# ----------------------------------------------------------------------------- TLS: stalled and silent clients
def _eof_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the daemon closed `sock` within `seconds` (whatever it sent before: a ServerHello)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


def test_stalled_tls_handshakes_on_an_aio_daemon_block_nobody_and_are_closed(certs: Certs) -> None:
    """Clients that connect and stall (silent, half a ClientHello, a whole one and no more, a finished TLS
    handshake and no CONNECT) hold up neither a TLS proxy's connect and call nor the daemon's loop;
    HANDSHAKE_TIMEOUT closes every one of them."""
    from test_tls import _client_hello, _tls_raw
    hello = _client_hello()
    with aio_daemon(server_settings(certs, HANDSHAKE_TIMEOUT=1.0)) as (daemon, uri):
        stalled: list[Any] = []
        try:
            for i in range(40):
                if i % 4 == 3:
                    stalled.append(_tls_raw(certs, uri.port))  # TLS done, no CONNECT
                    continue
                raw = socket.create_connection((HOST, uri.port), timeout=10)
                if i % 4 == 1:
                    raw.sendall(hello[: len(hello) // 2])
                elif i % 4 == 2:
                    raw.sendall(hello)
                stalled.append(raw)
            for _ in range(3):
                with meshrpc.Proxy(uri, settings=client_settings(certs, COMMTIMEOUT=0.9)) as proxy:
                    assert proxy.echo("through") == "through"
            assert all(_eof_within(sock, 4.0) for sock in stalled)
            with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
                assert proxy.echo("after") == "after"
        finally:
            for sock in stalled:
                sock.close()


def test_an_aio_tls_daemon_drops_a_client_that_reads_nothing_after_send_timeout(certs: Certs) -> None:
    """SEND_TIMEOUT on an aio TLS daemon: the replies of a client that sends calls for large results and
    never reads wait in the SSL transport's buffer (not the socket's); the daemon sees no progress and
    closes the connection, and serves others meanwhile."""
    from test_tls import _tls_raw
    with aio_daemon(server_settings(certs, SEND_TIMEOUT=0.5)) as (daemon, uri):
        sock = _tls_raw(certs, uri.port)
        try:
            sock.sendall(wire.encode(wire.Frame(wire.MSG_CONNECT, _SERPENT.id, 1,
                                                _SERPENT.dumps({"handshake": "hi", "object": "echo"}))))
            reader = wire.FrameReader()
            while (frame := reader.next_frame()) is None:
                reader.feed(sock.recv(65536))
            assert frame.type == wire.MSG_CONNECTOK
            for seq in range(2, 10):
                sock.sendall(wire.encode(wire.Frame(wire.MSG_INVOKE, _SERPENT.id, seq,
                                                    _SERPENT.dumps_call("echo", "big", (4 * 1024 * 1024,), {}))))
            with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
                assert proxy.echo("served meanwhile") == "served meanwhile"
            wait_until(lambda: not daemon._aio_connections, timeout=10.0, message="the non-reading client dropped")
        finally:
            sock.close()


# ----------------------------------------------------------------------------- TLS: closing a client's connection
_TCP_CLOSE_WAIT = 8  # (linux/tcp_states.h: the peer sent its FIN)


def _tcp_closed_by_peer(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE_WAIT


def _connected_raw(certs: Certs, port: int, object_id: str) -> ssl.SSLSocket:
    """A TLS client that made its CONNECT (accepted) and then reads only when the test says: as a
    blocking proxy between calls, it never answers the daemon's close_notify by itself."""
    from test_tls import _tls_raw
    sock = _tls_raw(certs, port)
    sock.sendall(wire.encode(wire.Frame(wire.MSG_CONNECT, _SERPENT.id, 1,
                                        _SERPENT.dumps({"handshake": "hi", "object": object_id}))))
    reader = wire.FrameReader()
    while (frame := reader.next_frame()) is None:
        reader.feed(sock.recv(65536))
    assert frame.type == wire.MSG_CONNECTOK
    return sock


@meshrpc.expose
class Slow:
    async def slow(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="the TCP state is read from Linux's TCP_INFO")
def test_an_aio_tls_daemon_closes_connections_without_waiting_for_the_clients_close_notify(certs: Certs) -> None:
    """A connection the aio TLS daemon closes (HANDSHAKE_TIMEOUT without CONNECT, its aclose() with a call
    in progress and an idle client) ends at once, as the threaded daemon's and Pyro5's: the replies, the
    close_notify, then the TCP connection, also for a client that is not reading (a blocking proxy between
    calls answers close_notify only at its next read). asyncio's TLS layer waited for the client's
    close_notify up to its ssl_shutdown_timeout (30 s), holding the connection's slot (MAX_CONNECTIONS),
    and for ever once the loop stopped."""
    from test_tls import _tls_raw
    with aio_daemon(server_settings(certs, HANDSHAKE_TIMEOUT=0.5)) as (daemon, uri):
        loop = daemon._loop

        async def register() -> meshrpc.URI:
            return daemon.register(Slow(), "slow")
        asyncio.run_coroutine_threadsafe(register(), loop).result(10)
        silent = _tls_raw(certs, uri.port)  # TLS done, no CONNECT
        with silent:
            wait_until(lambda: _tcp_closed_by_peer(silent), timeout=4.0, message="the silent client's close")
            wait_until(lambda: not daemon._aio_connections, message="its slot freed")
        busy, idle = _connected_raw(certs, uri.port, "slow"), _connected_raw(certs, uri.port, "slow")
        with busy, idle:
            busy.sendall(wire.encode(wire.Frame(wire.MSG_INVOKE, _SERPENT.id, 2,
                                                _SERPENT.dumps_call("slow", "slow", (0.3,), {}))))
            wait_until(lambda: daemon._calls, message="the call running")
            asyncio.run_coroutine_threadsafe(daemon.aclose(), loop).result(10)
            wait_until(lambda: _tcp_closed_by_peer(busy) and _tcp_closed_by_peer(idle), timeout=3.0,
                       message="both connections closed by the daemon")
            frames = _read_all(busy)
            assert [(frame.type, frame.seq) for frame in frames] == [(wire.MSG_RESULT, 2)]


def _closed_at_once(port: int, count: int, enough: int, within: float) -> int:
    """Open `count` silent TCP connections to `port`: how many the daemon closed within `within` seconds
    (counted until `enough` are)."""
    import select
    import time
    socks = [socket.create_connection((HOST, port), timeout=5) for _ in range(count)]
    closed: set = set()
    deadline = time.monotonic() + within
    try:
        while len(closed) < enough and time.monotonic() < deadline:
            readable, _, _ = select.select([sock for sock in socks if sock not in closed], [], [], 0.05)
            for sock in readable:
                try:
                    if not sock.recv(4096):
                        closed.add(sock)
                except OSError:
                    closed.add(sock)
    finally:
        for sock in socks:
            sock.close()
    return len(closed)


def test_max_connections_counts_tls_handshakes_on_an_aio_daemon(certs: Certs) -> None:
    """MAX_CONNECTIONS=2: of 6 silent connections, the plain aio daemon and the aio TLS daemon close 4 at
    once (the TLS one held all 6 until HANDSHAKE_TIMEOUT while asyncio's TLS server accepted for it; its
    own acceptor, aio/tlsio.TLSAcceptor, counts those in the handshake)."""
    with aio_daemon(server_settings(certs, MAX_CONNECTIONS=2, SSL=False)) as (daemon, uri):
        assert _closed_at_once(uri.port, 6, 4, 5.0) == 4
    with aio_daemon(server_settings(certs, MAX_CONNECTIONS=2)) as (daemon, uri):
        assert _closed_at_once(uri.port, 6, 4, 0.5) == 4


# ----------------------------------------------------------------------------- the mesh on the program's Zeroconf
@meshrpc.expose
class Lamp:
    def switch(self, on: bool) -> str:
        return "lamp on" if on else "lamp off"


def test_the_mesh_closes_quietly_after_the_program_and_its_loop_are_gone(fresh_mesh: None, realm: str) -> None:
    """A program that ends (its loop closed, its AsyncZeroconf closed or not) while meshrpc still publishes
    on the program's Zeroconf (a daemon never closed): the mesh's close at exit (atexit: Discovery.close)
    sent its heartbeat goodbyes through the closed loop and raised RuntimeError ('Event loop is closed',
    printed as 'Exception ignored in atexit callback')."""
    import meshrpc.mesh
    from zeroconf.asyncio import AsyncZeroconf

    from meshrpc.config import config
    from meshrpc.mesh import discovery
    settings = config.copy(REALM=realm, HOST="127.0.0.1")

    for owner_closes in (True, False):
        async def main() -> None:
            program = AsyncZeroconf(interfaces=["127.0.0.1"])
            meshrpc.mesh.use_zeroconf(program)
            daemon = meshrpc.aio.Daemon(host="127.0.0.1", settings=settings)
            daemon.register(Lamp(), name=f"w13b.lamp.{realm}")
            await daemon.start()  # (never closed: the program forgot)
            async with meshrpc.aio.Proxy(f"PYRONAME:w13b.lamp.{realm}", settings=settings) as lamp:
                assert await lamp.switch(True) == "lamp on"
            if owner_closes:
                await program.async_close()
        asyncio.run(main())
        discovery.get_discovery().close()  # what atexit runs
        meshrpc.mesh.reset_for_tests()


async def _until(condition: Any, bound: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_the_mesh_on_the_programs_loop_never_blocks_it_and_leaves_only_the_programs_own(fresh_mesh: None,
                                                                                          realm: str) -> None:
    """The program's AsyncZeroconf on the program's loop (Home Assistant's): a threaded Daemon publishing from
    the loop thread, an aio.Daemon's start and close, a lookup by name, reset_for_tests() called on the loop
    thread, twice over (the mesh starts again on the same instance): the loop never waits for them (with
    MESH_PUBLISH_TIMEOUT and MESH_GOODBYE_TIMEOUT at 5 s, a wait on the loop would stall it that long), and
    the mesh's close leaves the instance running with the program's own service and browser, and none of
    meshrpc's: services (its index pages too), its record listener, its browser and its threads."""
    import meshrpc.mesh
    from zeroconf import ServiceInfo, ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

    from meshrpc.config import config
    from meshrpc.mesh import discovery
    settings = config.copy(REALM=realm, HOST="127.0.0.1", MESH_PUBLISH_TIMEOUT=5.0, MESH_GOODBYE_TIMEOUT=5.0)

    def mesh_threads() -> list[str]:
        return [thread.name for thread in threading.enumerate()
                if thread.name == "meshrpc-mesh" or "ServiceBrowser-_meshrpc" in thread.name]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gaps: list[float] = []

        async def watch_loop() -> None:
            last = loop.time()
            while True:
                await asyncio.sleep(0.02)
                gaps.append(loop.time() - last)
                last = loop.time()
        watcher = asyncio.create_task(watch_loop())
        program = AsyncZeroconf(interfaces=["127.0.0.1"])
        zc = program.zeroconf
        own = ServiceInfo("_http._tcp.local.", f"{realm}._http._tcp.local.", port=8123,
                          addresses=[socket.inet_aton("127.0.0.1")], server=f"{realm}.local.")
        await program.async_register_service(own, cooperating_responders=True)  # (no 1.5 s of probing)
        heard: list[str] = []

        def on_change(zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange) -> None:
            heard.append(name)
        browser = AsyncServiceBrowser(zc, "_http._tcp.local.", handlers=[on_change])
        meshrpc.mesh.use_zeroconf(program)
        for round_ in range(2):
            threaded = meshrpc.Daemon(host="127.0.0.1", settings=settings)
            threaded.register(Lamp(), name=f"w13b.threaded{round_}.{realm}")  # (a blocking API, on the loop)
            serving = threading.Thread(target=threaded.requestLoop, daemon=True)
            serving.start()
            daemon = meshrpc.aio.Daemon(host="127.0.0.1", settings=settings)
            daemon.register(Lamp(), name=f"w13b.aio{round_}.{realm}")
            async with daemon:
                async with meshrpc.aio.Proxy(f"PYRONAME:w13b.threaded{round_}.{realm}", settings=settings) as lamp:
                    assert await lamp.switch(True) == "lamp on"
                mine = discovery.get_discovery()
                assert mine._zc is zc and mesh_threads()
                assert any(listener is mine._listener for listener in zc.record_manager.listeners)
            threaded.shutdown()
            await loop.run_in_executor(None, serving.join, 10)
            threaded.close()  # (on the loop thread)
            meshrpc.mesh.reset_for_tests()  # (on the loop thread)
            assert await _until(lambda: not [info.name for info in zc.registry.async_get_service_infos()
                                             if info.key != own.key]), "meshrpc left services in the program's"
            assert await _until(lambda: not mesh_threads()), mesh_threads()
            assert await _until(lambda: not any(listener is mine._listener or type(listener).__name__ == "ServiceBrowser"
                                                for listener in zc.record_manager.listeners)), "meshrpc's listeners"
            assert not zc.done and zc.registry.async_get_info_name(own.key) is not None
            assert any(listener is browser for listener in zc.record_manager.listeners), "the program's browser"
        assert own.name in heard
        assert max(gaps) < 2.5, f"the loop stalled {max(gaps):.1f} s"
        watcher.cancel()
        await browser.async_cancel()
        await program.async_close()
    asyncio.run(main())


def test_use_zeroconf_again_same_other_none_and_after_reset(fresh_mesh: None) -> None:
    """The same instance twice: fine. Another one (or None) while the mesh runs on the program's: ConfigError
    that says so (it said the mesh ran 'on a Zeroconf instance of its own'). After reset_for_tests the mesh
    starts on whichever instance was given last."""
    import meshrpc.mesh
    from zeroconf import Zeroconf

    from meshrpc import errors
    from meshrpc.mesh import discovery
    first, second = Zeroconf(interfaces=["127.0.0.1"]), Zeroconf(interfaces=["127.0.0.1"])
    try:
        meshrpc.mesh.use_zeroconf(first)
        assert discovery.get_discovery().zeroconf(object(), lambda: ["127.0.0.1"]) is first
        meshrpc.mesh.use_zeroconf(first)  # (again: nothing changes)
        for other in (second, None):
            with pytest.raises(errors.ConfigError, match=r"already runs on the Zeroconf given to use_zeroconf"):
                meshrpc.mesh.use_zeroconf(other)
        assert discovery.get_discovery()._zc is first
        meshrpc.mesh.reset_for_tests()
        assert not first.done
        meshrpc.mesh.use_zeroconf(second)
        assert discovery.get_discovery().zeroconf(object(), lambda: ["127.0.0.1"]) is second
        meshrpc.mesh.reset_for_tests()
        assert not second.done
    finally:
        first.close()
        second.close()


def test_a_client_that_connects_and_leaves_at_once_costs_an_aio_tls_daemon_nothing(certs: Certs) -> None:
    """A port check (connect, close, not a byte sent: `nc -z`, a monitoring probe) at an aio TLS daemon: its
    acceptor's peek at the first bytes read the end (b"") as 'nothing yet' and waited for the socket to be
    readable again, which it always was: the loop spun for HANDSHAKE_TIMEOUT (for ever with 0), and the
    connection counted against MAX_CONNECTIONS meanwhile."""
    with aio_daemon(server_settings(certs, HANDSHAKE_TIMEOUT=30.0)) as (daemon, uri):
        for _ in range(5):
            socket.create_connection((HOST, uri.port), timeout=5).close()
        with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:  # (accepted after the probes)
            assert proxy.echo("after the probes") == "after the probes"
        wait_until(lambda: not daemon._acceptor._admitting, timeout=3.0, message="the probes' connections dropped")


# ----------------------------------------------------------------------------- the CLI's --lan
def test_a_lookup_that_heard_nothing_on_loopback_names_lan(fresh_mesh: None, realm: str, capsys: Any) -> None:
    """docs/cli.md: 'A lookup that found nothing on loopback says so and names --lan': `list`, `yplookup`,
    `browse` and `call PYRONAME:` do; `lookup NAME` did not (its error line had no hint at all)."""
    import logging

    from meshrpc.cli import main
    mesh_log = logging.getLogger("meshrpc.mesh")  # (main() configures logging, and filters the mesh's)
    handlers, level, filters = logging.root.handlers[:], logging.root.level, mesh_log.filters[:]
    try:
        assert main(["list", "--timeout", "0.3", "--realm", realm]) == 0
        listed = capsys.readouterr()
        assert "--lan" in listed.err or "--realm" in listed.err, listed  # (or: other realms were heard)
        assert main(["lookup", f"nothing.{realm}", "--timeout", "0.3", "--realm", realm]) == 1
        looked = capsys.readouterr()
    finally:
        logging.root.handlers[:], logging.root.level, mesh_log.filters[:] = handlers, level, filters
    assert "--lan" in looked.err or "--realm" in looked.err, looked


def test_a_name_registered_just_before_the_mesh_closes_is_withdrawn_from_the_programs_zeroconf(
        fresh_mesh: None, realm: str) -> None:
    """On the program's loop thread: a daemon registers a name (its announcement is scheduled, not waited
    for), then the mesh closes at once. The close's withdrawal ran before that registration completed and
    missed it: the service stayed announced in the program's Zeroconf, alive, for as long as the program
    ran. It now waits for registrations in progress, as unregister does."""
    import meshrpc.mesh
    from zeroconf.asyncio import AsyncZeroconf

    from meshrpc.config import config
    settings = config.copy(REALM=realm, HOST="127.0.0.1")

    async def main() -> None:
        program = AsyncZeroconf(interfaces=["127.0.0.1"])
        zc = program.zeroconf
        registered: list[str] = []
        register_service = zc.async_register_service

        async def registering(info: Any, *args: Any, **kwargs: Any) -> Any:  # (the program's own, watched)
            try:
                return await register_service(info, *args, **kwargs)
            finally:
                registered.append(info.name)
        zc.async_register_service = registering  # type: ignore[method-assign]
        meshrpc.mesh.use_zeroconf(program)
        daemon = meshrpc.aio.Daemon(host="127.0.0.1", settings=settings)
        daemon.register(Lamp(), name=f"w13b.late.{realm}")
        meshrpc.mesh.reset_for_tests()
        assert await _until(lambda: registered), "the registration never completed"
        assert await _until(lambda: not zc.registry.async_get_service_infos(), bound=3.0), \
            [info.name for info in zc.registry.async_get_service_infos()]
        daemon.close()
        await program.async_close()
    asyncio.run(main())
