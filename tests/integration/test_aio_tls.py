"""TLS in meshrpc.aio (docs/security.md, docs/asyncio.md): the asyncio proxy and daemon speak TLS with
the threaded ones, with each other and with Pyro5, with the same certificate rules and error texts
(transport/tls.py), over asyncio's SSL transports. The driver's fast paths (reads and writes straight
on the socket) must stay off under TLS: the large, pipelined and streamed calls below would come
back as garbage otherwise. Certificates are made at test time (test_tls.make_certs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import wait_until
from test_tls import HOST, Certs, Echo, client_settings, make_certs, serve, server_settings

import meshrpc
import meshrpc.aio
from meshrpc import errors
from meshrpc.transport import tls

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with tempfile.TemporaryDirectory(prefix="meshrpc-aio-tls-") as root:
        yield make_certs(Path(root))


@meshrpc.expose
class AsyncEcho(Echo):
    async def aecho(self, value: Any) -> Any:
        return value


@contextlib.contextmanager
def aio_daemon(settings: meshrpc.Settings, daemon_class: type = meshrpc.aio.Daemon,
               **kwargs: Any) -> Iterator[tuple[Any, meshrpc.URI]]:
    """An aio.Daemon serving AsyncEcho on a loop of its own (a thread), for blocking clients."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-aio-tls", daemon=True)
    thread.start()

    async def start() -> tuple[Any, meshrpc.URI]:
        daemon = daemon_class(host=HOST, settings=settings, **kwargs)
        uri = daemon.register(AsyncEcho(), "echo")
        await daemon.start()
        return daemon, uri
    daemon, uri = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield daemon, uri
    finally:
        asyncio.run_coroutine_threadsafe(daemon.aclose(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_aio_proxy_to_a_threaded_tls_daemon(certs: Certs, start_daemon: Any) -> None:
    running, uri = serve(start_daemon, server_settings(certs))
    big = os.urandom(3 * 1024 * 1024)

    async def main() -> None:
        async with meshrpc.aio.Proxy(uri, settings=client_settings(certs, SERIALIZER="marshal")) as proxy:
            assert await proxy.echo("hello") == "hello"
            assert await proxy.echo(big) == big  # many TLS records each way
            assert [n async for n in await proxy.numbers(5)] == [0, 1, 2, 3, 4]  # a stream over TLS
            assert await asyncio.gather(*(proxy.echo(i) for i in range(200))) == list(range(200))
            assert await proxy.peer() is None  # one-way TLS
        by_name = str(uri).replace(HOST, "localhost")  # the certificate names localhost too
        async with meshrpc.aio.Proxy(by_name, settings=client_settings(certs)) as proxy:
            assert await proxy.echo(1) == 1
    asyncio.run(main())


def test_aio_proxy_and_aio_daemon_over_tls_pipelined_large_and_two_way(certs: Certs) -> None:
    async def main() -> None:
        daemon = meshrpc.aio.Daemon(host=HOST, settings=server_settings(certs, SSL_REQUIRECLIENTCERT=True))
        uri = daemon.register(AsyncEcho(), "echo")
        known = client_settings(certs, SSL_CLIENTCERT=certs.client, SSL_CLIENTKEY=certs.client_key,
                                SERIALIZER="marshal")
        big = os.urandom(2 * 1024 * 1024)
        async with daemon:
            async with meshrpc.aio.Proxy(uri, settings=known) as proxy:
                assert await proxy.aecho("hi") == "hi"
                assert await proxy.echo("plain method") == "plain method"
                assert await proxy.aecho(big) == big
                calls = [proxy.aecho(b"x" * 70000 + bytes([i % 256])) for i in range(100)]
                assert await asyncio.gather(*calls) == [b"x" * 70000 + bytes([i % 256]) for i in range(100)]
                assert [n async for n in await proxy.numbers(3)] == [0, 1, 2]
                assert await proxy.peer() == {"commonName": "meshrpc test client"}  # conn.getpeercert()
            with pytest.raises(errors.CommunicationError, match="client certificate"):
                async with meshrpc.aio.Proxy(uri, settings=client_settings(certs)) as anonymous:
                    await anonymous.aecho(1)
            with pytest.raises(errors.CommunicationError):
                intruder = client_settings(certs, SSL_CLIENTCERT=certs.other_client,
                                           SSL_CLIENTKEY=certs.other_client_key)
                async with meshrpc.aio.Proxy(uri, settings=intruder) as proxy:
                    await proxy.aecho(1)
            async with meshrpc.aio.Proxy(uri, settings=known) as proxy:  # the refusals left it serving
                assert await proxy.aecho("still") == "still"
            assert await wait_for(lambda: not daemon._aio_connections), "refused connections were kept"
    asyncio.run(main())


async def wait_for(condition: Any, bound: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + bound
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def test_threaded_and_pyro5_proxies_to_an_aio_tls_daemon(certs: Certs) -> None:
    pytest.importorskip("Pyro5")
    import Pyro5.api
    import Pyro5.socketutil

    with aio_daemon(server_settings(certs)) as (daemon, uri):
        with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
            assert proxy.aecho("threaded") == "threaded"
            assert list(proxy.numbers(4)) == [0, 1, 2, 3]
        saved = {name: getattr(Pyro5.config, name) for name in ("SSL", "SSL_CACERTS", "COMMTIMEOUT")}
        Pyro5.config.SSL, Pyro5.config.SSL_CACERTS, Pyro5.config.COMMTIMEOUT = True, certs.ca, 10.0
        Pyro5.socketutil.__dict__["__ssl_client_context"] = None  # Pyro5 caches its context per process
        try:
            with Pyro5.api.Proxy(str(uri)) as proxy:
                assert proxy.aecho([1, "two"]) == [1, "two"]
                assert proxy.echo({"k": 3}) == {"k": 3}
        finally:
            for name, value in saved.items():
                setattr(Pyro5.config, name, value)
            Pyro5.socketutil.__dict__["__ssl_client_context"] = None


def test_refusals_say_why_and_never_retry(certs: Certs, start_daemon: Any) -> None:
    """A certificate the aio proxy refuses (another CA, a host it does not name) is a TLSError with the
    reason, at once; a plain daemon gets 'does it serve TLS'; a plain client of an aio TLS daemon fails
    and the daemon goes on."""
    running, uri = serve(start_daemon, server_settings(certs, SSL_SERVERCERT=certs.other_server,
                                                       SSL_SERVERKEY=certs.other_server_key))
    running2, uri2 = serve(start_daemon, server_settings(certs, SSL_SERVERCERT=certs.server_dnsonly,
                                                         SSL_SERVERKEY=certs.server_dnsonly_key))
    plain = start_daemon()
    plain_uri = plain.register(Echo(), "echo")

    async def main() -> None:
        with pytest.raises(tls.TLSError, match="unable to get local issuer|self-signed"):
            async with meshrpc.aio.Proxy(uri, settings=client_settings(certs)) as proxy:
                await proxy.echo(1)
        with pytest.raises(tls.TLSError, match="mismatch"):
            async with meshrpc.aio.Proxy(uri2, settings=client_settings(certs)) as proxy:
                await proxy.echo(1)
        async with meshrpc.aio.Proxy(str(uri2).replace(HOST, "localhost"), settings=client_settings(certs)) as proxy:
            assert await proxy.echo(6) == 6
        with pytest.raises(errors.CommunicationError, match="does it serve TLS"):
            async with meshrpc.aio.Proxy(plain_uri, settings=client_settings(certs)) as proxy:
                await proxy.echo(1)

    asyncio.run(main())
    wait_until(lambda: not running.daemon._connections and not running2.daemon._connections,
               message="refused connections dropped")


def test_aio_tls_over_a_unix_socket_and_validate_handshake(certs: Certs) -> None:
    class Picky(meshrpc.aio.Daemon):
        def validateHandshake(self, conn: Any, data: Any) -> Any:
            subject = dict(x[0] for x in conn.getpeercert()["subject"])
            if subject["commonName"] != "meshrpc test client":
                raise errors.SecurityError("not you")
            return "welcome"

    path = os.path.join(tempfile.mkdtemp(prefix="meshrpc-"), "aio-tls.sock")
    known = client_settings(certs, SSL_CLIENTCERT=certs.client, SSL_CLIENTKEY=certs.client_key)

    async def main() -> None:
        daemon = Picky(unixsocket=path, settings=server_settings(certs, SSL_REQUIRECLIENTCERT=True))
        uri = daemon.register(AsyncEcho(), "echo")
        async with daemon:
            async with meshrpc.aio.Proxy(uri, settings=known) as proxy:  # the chain checked, no host to match
                assert await proxy.aecho("unix") == "unix"
            with pytest.raises(tls.TLSError):
                async with meshrpc.aio.Proxy(uri, settings=client_settings(
                        certs, SSL_CACERTS=certs.other_ca, SSL_CLIENTCERT=certs.client,
                        SSL_CLIENTKEY=certs.client_key)) as proxy:
                    await proxy.aecho(1)
    asyncio.run(main())


def test_futures_of_an_ssl_proxy_run_over_tls(certs: Certs, start_daemon: Any) -> None:
    """`meshrpc.asyncproxy` runs its calls on meshrpc.aio: with TLS now too (it refused SSL proxies)."""
    running, uri = serve(start_daemon, server_settings(certs))
    with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
        with meshrpc.asyncproxy(proxy) as calls:
            futures = [calls.echo(i) for i in range(20)]
            assert [future.value for future in futures] == list(range(20))
            assert calls.peer().value is None


def test_the_gateways_aio_backend_calls_a_tls_daemon(certs: Certs, start_daemon: Any) -> None:
    """The gateway's default backend (meshrpc.aio proxies) with SSL on: it fell back to threaded
    proxies before meshrpc.aio spoke TLS."""
    pytest.importorskip("aiohttp")
    from meshrpc.gateway.aio_backend import AioBackend
    from meshrpc.gateway.backend import Call, make_backend

    running, uri = serve(start_daemon, server_settings(certs))
    settings = client_settings(certs)

    async def main() -> None:
        backend = make_backend(settings)
        assert isinstance(backend, AioBackend)
        try:
            assert await backend.invoke(Call(str(uri), settings.REALM, "echo", ("over tls",))) == "over tls"
        finally:
            backend.close()
    asyncio.run(main())


def test_an_aio_tls_daemon_tells_plain_clients_why_and_keeps_serving(certs: Certs,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """As the threaded TLS daemon: a plain meshrpc or Pyro5 client is refused in the clear with the reason;
    junk, a client that never starts its handshake (HANDSHAKE_TIMEOUT) and a failed handshake are logged
    and closed; TLS clients are served all along."""
    pytest.importorskip("Pyro5")
    import Pyro5.api
    import Pyro5.errors

    caplog.set_level(logging.INFO, logger="meshrpc.aio")
    with aio_daemon(server_settings(certs, HANDSHAKE_TIMEOUT=1.0)) as (daemon, uri):
        stalled = socket.create_connection((HOST, uri.port), timeout=10)  # connects, never says a word
        with pytest.raises(errors.CommunicationError, match="accepts TLS connections only"):
            with meshrpc.Proxy(uri, settings=meshrpc.Settings().copy(COMMTIMEOUT=5.0)) as plain:
                plain.aecho(1)

        async def aio_plain() -> None:
            async with meshrpc.aio.Proxy(uri, settings=meshrpc.Settings().copy(COMMTIMEOUT=5.0)) as proxy:
                await proxy.aecho(1)
        with pytest.raises(errors.CommunicationError, match="accepts TLS connections only"):
            asyncio.run(aio_plain())
        with pytest.raises(Pyro5.errors.CommunicationError, match="accepts TLS connections only"):
            with Pyro5.api.Proxy(str(uri)) as proxy:
                proxy.aecho(1)
        for junk in (b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01" + os.urandom(300)):
            with socket.create_connection((HOST, uri.port), timeout=5) as raw:
                raw.sendall(junk)
                raw.shutdown(socket.SHUT_WR)
                with contextlib.suppress(OSError):
                    while raw.recv(4096):  # the daemon closes it
                        pass
        with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
            assert proxy.aecho("still serving") == "still serving"
        stalled.settimeout(10)
        assert stalled.recv(1) == b"", "a connection that never started its TLS handshake was kept"
        stalled.close()
    text = caplog.text
    assert "refused a plain (non-TLS) client" in text and "TLS handshake with" in text, text
    assert "no TLS handshake within HANDSHAKE_TIMEOUT" in text, text


def test_handshakes_pending_are_bounded_by_max_connections(certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    """Connections that never start their TLS handshake hold at most MAX_CONNECTIONS slots; the next
    is closed at once, and once HANDSHAKE_TIMEOUT closed the stalled ones, TLS clients are served."""
    caplog.set_level(logging.INFO, logger="meshrpc.aio")
    with aio_daemon(server_settings(certs, HANDSHAKE_TIMEOUT=1.0, MAX_CONNECTIONS=2)) as (daemon, uri):
        stalled = [socket.create_connection((HOST, uri.port), timeout=10) for _ in range(2)]
        wait_until(lambda: len(daemon._acceptor._admitting) == 2, message="two handshakes pending")
        with socket.create_connection((HOST, uri.port), timeout=10) as third:
            assert third.recv(1) == b"", "a connection beyond MAX_CONNECTIONS pending handshakes was kept"
        assert "TLS handshakes pending (MAX_CONNECTIONS)" in caplog.text
        for sock in stalled:
            assert sock.recv(1) == b""  # HANDSHAKE_TIMEOUT
            sock.close()
        with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
            assert proxy.aecho("served") == "served"
