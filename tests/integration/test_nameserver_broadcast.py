"""Broadcast discovery on loopback only, on free ports (never 9091): the responder speaks Pyro5's
datagram format, listens only where its name server is, and our locate_ns finds it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from test_nameserver import HOST, RunningNS, ns_settings, refused_port, running_nameservers

from meshrpc import URI, errors
from meshrpc.naming import BroadcastServer, broadcast_locate, forget_located, locate_ns, start_ns

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def start_nameserver() -> Iterator[Callable[..., RunningNS]]:
    yield from running_nameservers()


def ask(address: str, port: int, payload: bytes = b"GET_NSURI", timeout: float = 5.0) -> bytes | None:
    """One query as Pyro5's locate_ns sends it (SO_BROADCAST set); the reply or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.settimeout(timeout)
        sock.sendto(payload, (address, port))
        try:
            return sock.recvfrom(100)[0]
        except TimeoutError:
            return None


def test_responder_answers_pyro5_datagrams(start_nameserver: Callable[..., RunningNS]) -> None:
    running = start_nameserver()
    bcserver = running.bcserver
    assert bcserver is not None
    assert bcserver.addresses == ["127.0.0.1", "127.255.255.255"]  # loopback only
    expected = str(running.uri).encode("iso-8859-1")
    assert ask("127.0.0.1", bcserver.port) == expected
    assert ask("127.255.255.255", bcserver.port) == expected
    # anything but the exact request is ignored, and the responder goes on answering
    assert ask("127.0.0.1", bcserver.port, b"GET_NSURI\n", timeout=0.3) is None
    assert ask("127.0.0.1", bcserver.port, b"x" * 5000, timeout=0.3) is None
    assert ask("127.0.0.1", bcserver.port) == expected


def test_locate_by_broadcast_on_a_custom_port(start_nameserver: Callable[..., RunningNS]) -> None:
    running = start_nameserver()
    closed = refused_port()
    try:
        settings = ns_settings(NS_PORT=closed.getsockname()[1], NS_BCPORT=running.bcserver.port)
        started = time.monotonic()
        with locate_ns(settings=settings) as ns:
            assert ns._pyroUri == running.uri
            assert ns.count() == 1
        assert time.monotonic() - started < 5  # the first round answered
        # located once: found again at once, even without broadcast
        with locate_ns(settings=settings, broadcast=False) as ns:
            assert ns._pyroUri == running.uri
        forget_located()
        with pytest.raises(errors.NamingError, match=r"failed to locate the name server: direct 127\.0\.0\.1"):
            locate_ns(settings=settings, broadcast=False)
    finally:
        closed.close()


def test_broadcast_locate_without_responder_gives_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))  # bound, never answers
        started = time.monotonic()
        assert broadcast_locate(HOST, silent.getsockname()[1], tries=2, interval=0.2) is None
        assert time.monotonic() - started < 5


def test_broadcast_locate_ignores_garbage_answers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as liar:
        liar.bind((HOST, 0))
        import threading

        def answer() -> None:
            liar.settimeout(5)
            try:
                for reply in (b"not a uri", b"PYRONAME:x", b"PYRO:Pyro.NameServer@127.0.0.1:4242"):
                    _, addr = liar.recvfrom(100)
                    liar.sendto(reply, addr)
            except OSError:
                pass

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        found = broadcast_locate(HOST, liar.getsockname()[1], tries=3, interval=1.0)
        thread.join(5)
        assert found == URI("PYRO:Pyro.NameServer@127.0.0.1:4242")


def test_busy_broadcast_port_is_an_error() -> None:
    settings = ns_settings()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        with pytest.raises(errors.CommunicationError, match="broadcast responder"):
            start_ns(HOST, 0, taken.getsockname()[1], settings=settings)
    _uri, daemon, bcserver = start_ns(HOST, 0, 0, settings=settings, enable_broadcast=False)
    try:
        assert bcserver is None
    finally:
        daemon.close()


def test_responder_in_an_external_loop() -> None:
    import select
    uri, daemon, bcserver = start_ns(HOST, 0, 0, settings=ns_settings())
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"GET_NSURI", (HOST, bcserver.port))
            readable, _, _ = select.select(bcserver.sockets, [], [], 5)
            bcserver.events(readable)
            assert client.recvfrom(100)[0] == str(uri).encode()
    finally:
        bcserver.close()
        daemon.close()


def test_wildcard_responder_answers_with_the_facing_address() -> None:
    # a responder for a name server on 0.0.0.0 names the interface that faces the asker; tested on a
    # loopback-bound responder switched to that mode (nothing binds or sends off loopback)
    with BroadcastServer(URI("PYRO:Pyro.NameServer@192.0.2.99:9999"), HOST, 0) as bcserver:
        assert bcserver.reply_for("127.0.0.1") == b"PYRO:Pyro.NameServer@192.0.2.99:9999"
        bcserver.wildcard = True
        assert bcserver.reply_for("127.0.0.1") == b"PYRO:Pyro.NameServer@127.0.0.1:9999"


def test_no_responder_for_ipv6_name_servers() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        uri, daemon, bcserver = start_ns("::1", 0, 0, settings=ns_settings())
    except errors.CommunicationError:
        pytest.skip("cannot bind ::1 here")
    try:
        assert bcserver is None
        assert uri.host == "::1"
    finally:
        daemon.close()
    with pytest.raises(errors.CommunicationError, match="IPv4"):
        BroadcastServer(uri, "::1", 0)


def test_busy_broadcast_address_leaves_direct_queries(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.255.255.255", 0))  # another responder holds the loopback broadcast address
        port = other.getsockname()[1]
        with BroadcastServer(URI("PYRO:Pyro.NameServer@127.0.0.1:4242"), HOST, port) as bcserver:
            assert bcserver.addresses == ["127.0.0.1"]
            assert "answering queries sent to 127.0.0.1" in caplog.text
            bcserver.run_in_thread()
            assert ask("127.0.0.1", port) == b"PYRO:Pyro.NameServer@127.0.0.1:4242"
