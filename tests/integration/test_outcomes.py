"""One documented exception per outcome, whatever the timing (docs/resilience.md, issue 17): unknown
name, known name with no reachable provider, refused for credentials, not delivered, maybe delivered.
Real daemons (threads and subprocesses) on loopback, each test in a realm of its own."""

from __future__ import annotations

import os
import signal
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from subprocs import Runner, free_port, runner_for
from test_tls import client_settings, make_certs, server_settings

import meshrpc
from meshrpc import errors

pytestmark = pytest.mark.timeout(120)

SERVER = textwrap.dedent('''
    import os, sys
    import meshrpc

    @meshrpc.expose
    class Service:
        def hello(self):
            return os.getpid()

        def die(self):
            os._exit(3)            # the request arrived; the reply never leaves

    with meshrpc.Daemon(host="127.0.0.1") as daemon:
        daemon.register(Service(), name=sys.argv[1])
        print("ready", flush=True)
        daemon.requestLoop()
''')


@pytest.fixture
def runner(realm: str) -> Iterator[Runner]:
    yield from runner_for(realm)


@pytest.fixture
def server_script(tmp_path: Path) -> Path:
    path = tmp_path / "service.py"
    path.write_text(SERVER)
    return path


def settings(realm: str, **changes: Any) -> meshrpc.Settings:
    base = {"REALM": realm, "HOST": "127.0.0.1", "LOOKUP_TIMEOUT": 1.5, "REBIND_TIMEOUT": 2.0,
            "NS_PORT": free_port(), "NS_BCPORT": free_port()}
    base.update(changes)
    return meshrpc.config.copy(**base)


def timed(call: Any) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(errors.MeshError) as info:
        call()
    return info.value, time.monotonic() - started


def test_unknown_name_is_quick_and_blames_no_unconfigured_source(realm: str) -> None:
    s = settings(realm)
    for _ in range(2):  # the same outcome every time
        exc, took = timed(lambda: meshrpc.Proxy("PYRONAME:nobody.here", settings=s).hello())
        assert type(exc) is errors.UnknownNameError and isinstance(exc, errors.NamingError), exc
        assert took < s.LOOKUP_TIMEOUT + 1.5, took   # the mesh listened LOOKUP_TIMEOUT; the name server in parallel
        text = str(exc)
        assert "nobody.here" in text and "connection refused" not in text and f":{s.NS_PORT}" not in text, text
        assert "realm" in text and "meshrpc browse --all-realms" in text, text
        # a newcomer's client on a second machine forgot MESHRPC_HOST: the error says so (w11-newcomer)
        assert "loopback only (MESHRPC_HOST is '127.0.0.1')" in text and "MESHRPC_HOST=0.0.0.0" in text, text


def test_a_name_server_that_cannot_be_reached_is_not_blamed_on_the_spelling(realm: str) -> None:
    # PYRONAME:x@host:port asks that name server only; with none running, nobody could say whether the
    # name exists, so the advice is to start one, not to check the spelling (w11-newcomer)
    s = settings(realm)
    exc, _ = timed(lambda: meshrpc.Proxy(f"PYRONAME:nobody.here@127.0.0.1:{s.NS_PORT}", settings=s).hello())
    assert type(exc) is errors.UnknownNameError, exc
    assert "connection refused" in str(exc) and "start the name server" in str(exc), exc
    assert "Check the spelling" not in str(exc), exc


def test_the_loopback_hint_is_only_for_a_mesh_on_loopback() -> None:
    from meshrpc.mesh import net
    from meshrpc.resolve import _loopback_note
    on_lan = meshrpc.config.copy(HOST="0.0.0.0")   # no traffic: only which interfaces it would use
    assert _loopback_note(["mesh"], on_lan) == "" or not net.ipv4_addresses(include_loopback=False)
    assert _loopback_note(["etcd"], meshrpc.config.copy(HOST="localhost")) == ""
    assert "MESHRPC_HOST=0.0.0.0" in _loopback_note(["mesh", "etcd"], meshrpc.config.copy(HOST="localhost"))


def test_known_name_without_providers_is_one_error_every_time(runner: Runner, server_script: Path,
                                                              realm: str) -> None:
    name = "svc.gone"
    server = runner.python(server_script, name)
    server.expect("^ready")
    s = settings(realm)
    proxy = meshrpc.Proxy(f"PYRONAME:{name}", settings=s)
    assert proxy.hello() == server.pid
    server.proc.send_signal(signal.SIGKILL)
    server.wait(10)
    outcomes = [timed(proxy.hello) for _ in range(2)]
    for exc, took in outcomes:   # the first call after the loss and the next one: the same class
        # a NoProviderError; the daemon had closed the proxy's connection, so also Pyro5's ConnectionClosedError
        assert type(exc) is errors.ProviderLostError, exc
        assert isinstance(exc, errors.NoProviderError) and isinstance(exc, errors.ConnectionClosedError)
        assert isinstance(exc, errors.NotDeliveredError) and isinstance(exc, errors.CommunicationError)
        assert s.REBIND_TIMEOUT - 0.5 <= took < s.REBIND_TIMEOUT + 3.0, took
        assert "the call did not run" in str(exc)


def test_not_delivered_by_pyro_uri(realm: str) -> None:
    exc, took = timed(lambda: meshrpc.Proxy(f"PYRO:obj@127.0.0.1:{free_port()}", settings=settings(realm)).hello())
    assert type(exc) is errors.NotDeliveredError and took < 5, (exc, took)
    assert "connection refused" in str(exc) and "did not run" in str(exc)


def test_a_handshake_timeout_did_not_run_and_is_a_timeout_for_pyro5_programs(realm: str) -> None:
    """A daemon that accepts connections but never answers: the call did not run (NotDeliveredError),
    and a Pyro5 program's `except TimeoutError` catches it with Pyro5's text."""
    import socket
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens; nobody ever answers the handshake
        proxy = meshrpc.Proxy(f"PYRO:obj@127.0.0.1:{silent.getsockname()[1]}", settings=settings(realm))
        proxy._pyroTimeout = 0.3
        exc, took = timed(lambda: proxy.hello())
    assert type(exc) is errors.NotSentTimeoutError and took < 5, (exc, took)
    assert isinstance(exc, errors.NotDeliveredError) and isinstance(exc, errors.TimeoutError)
    assert isinstance(exc, TimeoutError) and str(exc) == "receiving: timeout"
    assert any("did not run" in note for note in exc.__notes__), exc.__notes__


def test_a_provider_by_name_that_never_answers_the_handshake_is_no_provider_and_a_timeout(realm: str) -> None:
    """Pyro5's timeout example by name: a daemon that registered its name but runs no loop (the kernel
    accepts connections, nobody answers). NoProviderError after the proxy's timeout (the call did not run), and
    the TimeoutError Pyro5 raises there, so a Pyro5 program's `except TimeoutError` catches it."""
    s = settings(realm)
    with meshrpc.Daemon(host="127.0.0.1", settings=s) as daemon:  # its request loop never runs
        daemon.register(meshrpc.expose(type("Service", (), {"hello": lambda self: 1})), name="svc.silent")
        proxy = meshrpc.Proxy("PYRONAME:svc.silent", settings=s)
        proxy._pyroTimeout = 0.5
        exc, took = timed(lambda: proxy.hello())
    assert type(exc) is errors.ProviderTimeoutError, exc
    assert isinstance(exc, errors.NoProviderError) and isinstance(exc, errors.NotDeliveredError)
    assert isinstance(exc, errors.TimeoutError) and isinstance(exc, TimeoutError)
    assert "the call did not run" in str(exc) and "svc.silent" in str(exc)
    assert took < s.REBIND_TIMEOUT + 3.0, took


def test_maybe_delivered_reply_lost_and_timeout(runner: Runner, server_script: Path, realm: str,
                                                start_daemon: Any) -> None:
    server = runner.python(server_script, "svc.dies")
    server.expect("^ready")
    proxy = meshrpc.Proxy("PYRONAME:svc.dies", settings=settings(realm))
    exc, _ = timed(proxy.die)
    assert type(exc) is errors.ReplyLostError, exc
    assert isinstance(exc, errors.MaybeDeliveredError) and isinstance(exc, errors.ConnectionClosedError)

    @meshrpc.expose
    class Slow:
        def nap(self) -> None:
            time.sleep(2)

    running = start_daemon()
    uri = running.register(Slow())
    with meshrpc.Proxy(uri, settings=settings(realm)) as slow:
        slow._pyroTimeout = 0.3
        exc, _ = timed(slow.nap)
    assert type(exc) is errors.TimeoutError and isinstance(exc, errors.MaybeDeliveredError)
    assert isinstance(exc, TimeoutError) and str(exc) == "receiving: timeout"  # Pyro5's text
    assert any("to nap within 0.3 s" in note and "may have run" in note for note in exc.__notes__), exc.__notes__


def test_refused_for_credentials_by_name_is_said_at_once(realm: str, start_daemon: Any) -> None:
    with tempfile.TemporaryDirectory(prefix="meshrpc-tls-") as root:
        certs = make_certs(Path(root))
        running = start_daemon(settings=server_settings(certs, SSL_REQUIRECLIENTCERT=True, REALM=realm))

        @meshrpc.expose
        class Thing:
            def hello(self) -> str:
                return "hi"

        running.register(Thing(), name="svc.tls")
        anonymous = client_settings(certs, REALM=realm, HOST="127.0.0.1", LOOKUP_TIMEOUT=3.0, REBIND_TIMEOUT=10.0)
        exc, took = timed(lambda: meshrpc.Proxy("PYRONAME:svc.tls", settings=anonymous).hello())
        assert isinstance(exc, errors.SecurityError), exc
        assert "client certificate" in str(exc), exc
        assert took < 5.0, took   # not REBIND_TIMEOUT, not "no provider"
