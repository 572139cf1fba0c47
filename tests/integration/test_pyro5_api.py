"""Pyro5 API pieces of issue 16 that Pyro5's own suite does not reach here (it tests them through its
socket-server internals, or not at all), on real sockets, with the real Pyro5 as the peer where a
program would have one: Daemon.combine, Daemon.housekeeping, Daemon.serveSimple, the timeout of a
call waiting for another thread's call on a shared proxy, and the client-side getpeercert() of the
connection in _pyroValidateHandshake over TLS."""

from __future__ import annotations

import contextlib
import io
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import Pyro5.api
import Pyro5.errors
import pytest
from support import wait_until
from test_tls import client_settings, make_certs, server_settings

import meshrpc
import meshrpc.nameserver
from meshrpc import errors

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
WAIT = 10.0  # seconds: bound of every wait for another thread or process


@meshrpc.expose
class Where:
    def __init__(self, label: str = "") -> None:
        self.label = label

    def name(self) -> str:
        return self.label


@contextlib.contextmanager
def serving(daemon: Any) -> Iterator[threading.Thread]:
    """daemon.requestLoop() in a thread, shut down and joined at the end."""
    thread = threading.Thread(target=daemon.requestLoop, name="test-requestLoop", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        daemon.shutdown()
        thread.join(WAIT)
        assert not thread.is_alive(), "the request loop did not stop"


def test_combine_serves_another_daemon_and_a_broadcast_server_from_one_loop(realm: str) -> None:
    """Pyro5's eventloop pattern: one request loop serves a second daemon (which never runs a loop of its
    own) and the name server's broadcast responder; a Pyro5 proxy calls the combined daemon."""
    settings = meshrpc.config.copy(REALM=realm, HOST=HOST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        bcport = probe.getsockname()[1]
    ns_uri, ns_daemon, bcserver = meshrpc.nameserver.start_ns(HOST, 0, True, bcport=bcport, settings=settings)
    assert bcserver is not None
    second = meshrpc.Daemon(HOST, settings=settings)
    with ns_daemon, second, contextlib.closing(bcserver):
        second_uri = second.register(Where("second"), "where")
        ns_daemon.combine(second)
        ns_daemon.combine(bcserver)
        with pytest.raises(TypeError):
            ns_daemon.combine(object())
        with serving(ns_daemon):
            with Pyro5.api.Proxy(str(second_uri)) as where:  # the second daemon, served by the first's loop
                where._pyroTimeout = WAIT
                assert where.name() == "second"
            with meshrpc.Proxy(ns_uri, settings=settings) as ns:
                ns._pyroTimeout = WAIT
                ns.register("combined.where", str(second_uri))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # the broadcast protocol, on loopback
                udp.settimeout(WAIT)
                udp.sendto(b"GET_NSURI", (HOST, bcport))
                answer, _ = udp.recvfrom(1000)
            assert answer.decode() == str(ns_uri)


def test_housekeeping_runs_on_the_request_loop_while_idle() -> None:
    calls: list[float] = []
    twice = threading.Event()

    class Tidy(meshrpc.Daemon):
        def housekeeping(self) -> None:  # Pyro5's hook: called by the request loop about every second
            calls.append(time.monotonic())
            if len(calls) >= 2:
                twice.set()

    daemon = Tidy(HOST)
    uri = daemon.register(Where("tidy"), "where")
    with daemon, serving(daemon):
        assert twice.wait(WAIT), f"housekeeping() ran {len(calls)} times in {WAIT} s"
        with Pyro5.api.Proxy(str(uri)) as where:
            where._pyroTimeout = WAIT
            assert where.name() == "tidy"  # the hook does not stand in the way of calls
    assert calls[1] - calls[0] < WAIT / 2  # about every second, not once in a while


def test_serve_simple_registers_announces_and_serves_until_shutdown(realm: str) -> None:
    """Pyro4's Daemon.serveSimple (as serve with ns= for use_ns): objects and classes get their names as
    object ids, on the mesh; it prints them; it returns when the daemon is shut down."""
    settings = meshrpc.config.copy(REALM=realm, HOST=HOST)
    daemon = meshrpc.Daemon(HOST, settings=settings)
    printed = io.StringIO()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with contextlib.redirect_stdout(printed):
                meshrpc.Daemon.serveSimple({Where("instance"): "simple.instance", Where: "simple.class"},
                                           daemon=daemon, ns=False, verbose=True)
        except BaseException as exc:  # shown by the assertion below
            failure.append(exc)

    thread = threading.Thread(target=run, name="serveSimple", daemon=True)
    thread.start()
    try:
        wait_until(lambda: "simple.class" in daemon.objectsById, WAIT, message="serveSimple's registrations")
        uri = daemon.uriFor("simple.instance")
        with Pyro5.api.Proxy(str(uri)) as instance:  # the name is the object id, as in Pyro5
            instance._pyroTimeout = WAIT
            assert instance.name() == "instance"
        with meshrpc.Proxy("PYRONAME:simple.class", settings=settings) as by_name:  # announced on the mesh
            by_name._pyroTimeout = WAIT
            assert by_name.name() == ""
    finally:
        daemon.shutdown()
        thread.join(WAIT)
    assert not thread.is_alive() and not failure, failure
    assert f"serving simple.instance as {uri}" in printed.getvalue(), printed.getvalue()


def test_a_call_waiting_for_another_threads_call_on_a_shared_proxy_waits_at_most_the_timeout(
        start_daemon: Any) -> None:
    """The first thread's call holds the proxy longer than its timeout (an idempotent call is re-sent
    after each timeout, until REBIND_TIMEOUT); a second thread's call on the same proxy gives up after
    the proxy's timeout, without being sent."""
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    @meshrpc.expose
    class Slow:
        @meshrpc.idempotent
        def hold(self) -> str:
            calls.append("hold")
            entered.set()
            release.wait(WAIT)
            return "held"

        def quick(self) -> str:
            calls.append("quick")
            return "quick"

    uri = start_daemon().register(Slow())
    settings = meshrpc.config.copy(REBIND_TIMEOUT=WAIT, COMMTIMEOUT=0.5)
    with meshrpc.Proxy(uri, settings=settings) as shared:
        first: list[Any] = []
        holder = threading.Thread(target=lambda: first.append(shared.hold()), name="holder")
        holder.start()
        try:
            assert entered.wait(WAIT), "the first call did not arrive"
            started = time.monotonic()
            with pytest.raises(TimeoutError) as info:  # what a Pyro5 program catches
                shared.quick()
            took = time.monotonic() - started
        finally:
            release.set()
            holder.join(WAIT + 5)
    assert type(info.value) is errors.NotSentTimeoutError, info.value
    assert isinstance(info.value, errors.NotDeliveredError) and "busy with another thread's call" in str(info.value)
    assert 0.4 <= took < 5.0, took  # the proxy's timeout, not the other call's length
    assert "quick" not in calls and first == ["held"]  # the waiting call never ran; the first one ended well


def test_a_call_without_a_correlation_id_gets_a_fresh_one_as_in_pyro5(start_daemon: Any) -> None:
    """Pyro5 daemons give every request a correlation id (uuid4) when the client sent none; it is the
    same throughout the call, and a proxy used inside the call passes it on."""
    import uuid

    @meshrpc.expose
    class Ids:
        def twice(self) -> list:
            return [str(meshrpc.current_context.correlation_id), str(meshrpc.current_context.correlation_id)]

        def passed_on(self, uri: str) -> list:
            with meshrpc.Proxy(uri) as inner:
                return [str(meshrpc.current_context.correlation_id), inner.twice()[0]]

    running = start_daemon()
    uri = running.register(Ids(), "ids")
    for proxy_class in (meshrpc.Proxy, Pyro5.api.Proxy):
        with proxy_class(str(uri)) as ids:
            first, again = ids.twice()
            assert first == again and uuid.UUID(first).version == 4
            assert ids.twice()[0] != first  # a fresh one per request
    with meshrpc.Proxy(uri) as ids:
        outer, inner = ids.passed_on(str(uri))
        assert outer == inner
        given = uuid.uuid4()
        meshrpc.current_context.correlation_id = given
        try:
            assert ids.twice() == [str(given)] * 2  # one the client sends is kept
        finally:
            meshrpc.current_context.correlation_id = None


# ----------------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def certs() -> Iterator[Any]:
    with tempfile.TemporaryDirectory(prefix="meshrpc-pyro5-tls-") as root:
        yield make_certs(Path(root))


class CheckingProxy(meshrpc.Proxy):
    """The pattern of Pyro5's ssl example: the client checks the daemon's certificate in the handshake."""

    expected_cn = "localhost"
    seen: list[dict] = []

    def _pyroValidateHandshake(self, response: Any) -> None:
        cert = self._pyroConnection.getpeercert()
        subject = dict(entry[0] for entry in cert["subject"])
        CheckingProxy.seen.append(subject)
        if subject.get("commonName") != self.expected_cn:
            raise errors.CommunicationError(f"the daemon is {subject.get('commonName')!r}, not {self.expected_cn!r}")


@contextlib.contextmanager
def pyro5_tls_daemon(certs: Any) -> Iterator[str]:
    """A real Pyro5 daemon with TLS (Pyro5's settings are process-wide: set for it, then put back)."""
    saved = {name: getattr(Pyro5.config, name) for name in ("SSL", "SSL_SERVERCERT", "SSL_SERVERKEY", "SSL_CACERTS")}
    Pyro5.config.SSL, Pyro5.config.SSL_SERVERCERT, Pyro5.config.SSL_SERVERKEY = True, certs.server, certs.server_key
    Pyro5.config.SSL_CACERTS = certs.ca
    Pyro5.socketutil.__dict__["__ssl_server_context"] = None  # Pyro5 caches its context per process (certs of its own)
    try:
        daemon = Pyro5.api.Daemon(host=HOST)
        uri = daemon.register(Where("pyro5 over tls"), "where")
        with daemon, serving(daemon):
            yield str(uri)
    finally:
        for name, value in saved.items():
            setattr(Pyro5.config, name, value)
        Pyro5.socketutil.__dict__["__ssl_server_context"] = None  # (the next Pyro5 TLS daemon's are other certs)


@pytest.mark.parametrize("peer", ["meshrpc", "pyro5"])
def test_client_side_getpeercert_in_validate_handshake_over_tls(certs: Any, start_daemon: Any, peer: str) -> None:
    with contextlib.ExitStack() as stack:
        if peer == "meshrpc":
            uri = str(start_daemon(settings=server_settings(certs)).register(Where("meshrpc over tls"), "where"))
        else:
            uri = stack.enter_context(pyro5_tls_daemon(certs))
        CheckingProxy.seen.clear()
        with CheckingProxy(uri, settings=client_settings(certs)) as proxy:
            assert proxy.name() == f"{peer} over tls"
        assert CheckingProxy.seen == [{"commonName": "localhost"}]  # the daemon's certificate, in the handshake
        picky = CheckingProxy(uri, settings=client_settings(certs))
        picky.expected_cn = "someone else"
        with picky, pytest.raises(errors.CommunicationError, match="not 'someone else'"):
            picky.name()
