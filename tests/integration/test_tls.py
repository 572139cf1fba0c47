"""TLS (docs/security.md) over loopback: daemons, proxies and the name server with certificates made at
test time (by the `openssl` command, or the `cryptography` package when it is installed; otherwise the
module is skipped and says why)."""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from support import wait_until

import meshrpc
from meshrpc import errors
from meshrpc.transport import tls

pytestmark = pytest.mark.timeout(90)

HOST = "127.0.0.1"


# ----------------------------------------------------------------------------------- certificates
class Certs:
    """PEM files: a CA; a server certificate for localhost and 127.0.0.1; a client certificate; the
    same from another CA; a server certificate naming localhost only; an encrypted server key."""

    PASSWORD = "s3cret"

    def __init__(self, root: Path) -> None:
        self.root = root

    def __getattr__(self, name: str) -> str:
        path = self.root / (name.replace("_", "-") + ".pem")
        if not path.exists():
            raise AttributeError(name)
        return str(path)


def _openssl(root: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]

    def ca(name: str, cn: str) -> None:
        run("req", "-x509", *ec, "-nodes", "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def leaf(name: str, ca_name: str, cn: str, san: str | None, usage: str, password: str | None = None) -> None:
        key_opts = ["-passout", f"pass:{password}"] if password else ["-nodes"]
        run("req", *ec, *key_opts, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        ext = root / f"{name}.ext"
        ext.write_text((f"subjectAltName={san}\n" if san else "") + "basicConstraints=CA:FALSE\n"
                       f"keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca_name}.pem", "-CAkey", f"{ca_name}-key.pem",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name)

    ca("ca", "meshrpc test CA")
    ca("other-ca", "some other CA")
    leaf("server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth")
    leaf("server-dnsonly", "ca", "localhost", "DNS:localhost", "serverAuth")
    leaf("server-enc", "ca", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth", Certs.PASSWORD)
    leaf("client", "ca", "meshrpc test client", None, "clientAuth")
    leaf("other-server", "other-ca", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth")
    leaf("other-client", "other-ca", "intruder", None, "clientAuth")


def _cryptography(root: Path) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    made: dict[str, tuple[Any, Any]] = {}

    def write(name: str, cert: Any, key: Any, password: str | None = None) -> None:
        made[name] = (cert, key)
        (root / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        enc = (serialization.BestAvailableEncryption(password.encode()) if password
               else serialization.NoEncryption())
        (root / f"{name}-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))

    def build(cn: str, issuer: str | None, san: list | None, usage: Any, is_ca: bool) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        issuer_cert, issuer_key = made[issuer] if issuer else (None, key)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer_cert.subject if issuer_cert else subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
        if is_ca:
            builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                            critical=True)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if issuer_cert is not None:
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_cert.public_key()), critical=False)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        return builder.sign(issuer_key, hashes.SHA256()), key

    both = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    write("ca", *build("meshrpc test CA", None, None, None, True))
    write("other-ca", *build("some other CA", None, None, None, True))
    write("server", *build("localhost", "ca", both, server, False))
    write("server-dnsonly", *build("localhost", "ca", [x509.DNSName("localhost")], server, False))
    write("server-enc", *build("localhost", "ca", both, server, False), password=Certs.PASSWORD)
    write("client", *build("meshrpc test client", "ca", None, client, False))
    write("other-server", *build("localhost", "other-ca", both, server, False))
    write("other-client", *build("intruder", "other-ca", None, client, False))


def make_certs(root: Path) -> Certs:
    if shutil.which("openssl"):
        _openssl(root)
    else:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            pytest.skip("cannot make test certificates: neither the `openssl` command nor the `cryptography` "
                        "package is available")
        _cryptography(root)
    return Certs(root)


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    with tempfile.TemporaryDirectory(prefix="meshrpc-tls-") as root:
        yield make_certs(Path(root))


def server_settings(certs: Certs, **changes: Any) -> meshrpc.Settings:
    base: dict[str, Any] = {"HOST": HOST, "SSL": True, "SSL_SERVERCERT": certs.server,
                            "SSL_SERVERKEY": certs.server_key, "SSL_CACERTS": certs.ca}
    base.update(changes)
    return meshrpc.Settings().copy(**base)


def client_settings(certs: Certs, **changes: Any) -> meshrpc.Settings:
    base: dict[str, Any] = {"SSL": True, "SSL_CACERTS": certs.ca, "COMMTIMEOUT": 10.0}
    base.update(changes)
    return meshrpc.Settings().copy(**base)


# ----------------------------------------------------------------------------------- served objects
@meshrpc.expose
class Echo:
    def echo(self, value: Any) -> Any:
        return value

    def peer(self) -> Any:
        cert = meshrpc.current_context.client.getpeercert()
        return dict(x[0] for x in cert["subject"]) if cert else None

    def numbers(self, n: int) -> Any:
        return iter(range(n))

    def big(self, n: int) -> str:
        return "x" * n


def serve(start_daemon: Any, settings: meshrpc.Settings, **kwargs: Any) -> tuple[Any, meshrpc.URI]:
    running = start_daemon(settings=settings, **kwargs)
    return running, running.register(Echo(), "echo")


def live_connections(running: Any) -> int:
    return len(running.daemon._connections)


# ----------------------------------------------------------------------------------- tests
def test_call_over_tls(certs: Certs, start_daemon: Any) -> None:
    running, uri = serve(start_daemon, server_settings(certs))
    with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
        assert proxy.echo("hello") == "hello"
        assert proxy._pyroConnection.getpeercert()["subjectAltName"] == (("DNS", "localhost"), ("IP Address", HOST))
        assert list(proxy.numbers(5)) == [0, 1, 2, 3, 4]  # streams go over the same TLS connection
        assert proxy.peer() is None  # one-way TLS: the daemon asked for no client certificate
    by_name = str(uri).replace(HOST, "localhost")  # the certificate names localhost too
    with meshrpc.Proxy(by_name, settings=client_settings(certs)) as proxy:
        assert proxy.echo(1) == 1


def test_large_payloads_and_many_calls_over_tls(certs: Certs, start_daemon: Any) -> None:
    """Messages of many TLS records (non-blocking daemon writes that fill the socket buffer, reads
    that leave decrypted bytes pending) arrive whole, in order, on one connection."""
    running, uri = serve(start_daemon, server_settings(certs))
    big = os.urandom(6 * 1024 * 1024)
    with meshrpc.Proxy(uri, settings=client_settings(certs, SERIALIZER="marshal")) as proxy:  # bytes stay bytes
        for _ in range(3):
            assert proxy.echo(big) == big
        for i in range(300):
            assert proxy.echo(i) == i
    threads_ok: list[bool] = []

    def caller() -> None:
        with meshrpc.Proxy(uri, settings=client_settings(certs, SERIALIZER="marshal")) as proxy:
            threads_ok.append(all(proxy.echo(b"x" * 70000 + bytes([i])) == b"x" * 70000 + bytes([i])
                                  for i in range(20)))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert threads_ok == [True] * 8


def test_plain_client_gets_a_clear_refusal_and_the_daemon_goes_on(certs: Certs, start_daemon: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshrpc.server")
    running, uri = serve(start_daemon, server_settings(certs))
    with pytest.raises(errors.CommunicationError, match="accepts TLS connections only"):
        with meshrpc.Proxy(uri, settings=meshrpc.Settings().copy(COMMTIMEOUT=5.0)) as plain:
            plain.echo(1)
    for junk in (b"GET / HTTP/1.0\r\n\r\n", os.urandom(300), b"PYRO"):
        with socket.create_connection((HOST, uri.port), timeout=5) as raw:
            try:
                raw.sendall(junk)
                raw.shutdown(socket.SHUT_WR)
                while raw.recv(4096):  # the daemon closes it (a refusal may come first)
                    pass
            except (ConnectionError, OSError) as exc:  # it may close before we are done: that is fine
                assert not isinstance(exc, TimeoutError), "the daemon left a junk connection open"
    with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
        assert proxy.echo("still serving") == "still serving"
    wait_until(lambda: live_connections(running) == 0, message="refused connections dropped")
    assert "accepts TLS only" in caplog.text  # the daemon's side says it too


def test_tls_client_to_a_plain_daemon_fails_clearly(certs: Certs, start_daemon: Any) -> None:
    running = start_daemon()
    uri = running.register(Echo(), "echo")
    with pytest.raises(errors.CommunicationError, match="does it serve TLS"):
        with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
            proxy.echo(1)
    with meshrpc.Proxy(uri) as plain:
        assert plain.echo(2) == 2


def test_two_way_tls(certs: Certs, start_daemon: Any) -> None:
    running, uri = serve(start_daemon, server_settings(certs, SSL_REQUIRECLIENTCERT=True))
    with pytest.raises(errors.CommunicationError, match="client certificate"):
        with meshrpc.Proxy(uri, settings=client_settings(certs)) as anonymous:
            anonymous.echo(1)
    with pytest.raises(errors.CommunicationError):
        intruder = client_settings(certs, SSL_CLIENTCERT=certs.other_client, SSL_CLIENTKEY=certs.other_client_key)
        with meshrpc.Proxy(uri, settings=intruder) as proxy:
            proxy.echo(1)
    known = client_settings(certs, SSL_CLIENTCERT=certs.client, SSL_CLIENTKEY=certs.client_key)
    with meshrpc.Proxy(uri, settings=known) as proxy:
        assert proxy.echo(3) == 3
        assert proxy.peer() == {"commonName": "meshrpc test client"}  # Pyro5's conn.getpeercert()
    wait_until(lambda: live_connections(running) == 0, message="refused connections dropped")


def test_validate_handshake_can_check_the_client_certificate(certs: Certs, start_daemon: Any) -> None:
    class Picky(meshrpc.Daemon):
        def validateHandshake(self, conn: Any, data: Any) -> Any:
            subject = dict(x[0] for x in conn.getpeercert()["subject"])
            if subject["commonName"] != "meshrpc test client":
                raise errors.SecurityError("not you")
            return "welcome"

    daemon = Picky(HOST, settings=server_settings(certs, SSL_REQUIRECLIENTCERT=True))
    uri = daemon.register(Echo(), "echo")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    try:
        known = client_settings(certs, SSL_CLIENTCERT=certs.client, SSL_CLIENTKEY=certs.client_key)
        with meshrpc.Proxy(uri, settings=known) as proxy:
            assert proxy.echo(4) == 4
    finally:
        daemon.shutdown()
        thread.join(10)


def test_wrong_ca_and_wrong_host_are_refused(certs: Certs, start_daemon: Any) -> None:
    running, uri = serve(start_daemon, server_settings(certs, SSL_SERVERCERT=certs.other_server,
                                                       SSL_SERVERKEY=certs.other_server_key))
    with pytest.raises(tls.TLSError, match="unable to get local issuer|self-signed"):
        with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
            proxy.echo(1)
    # no SSL_CACERTS: the system's trust store, which knows no test CA
    with pytest.raises(tls.TLSError, match="was refused"):
        with meshrpc.Proxy(uri, settings=client_settings(certs, SSL_CACERTS="")) as proxy:
            proxy.echo(1)
    # trusting the other CA works: the chain is what counts
    with meshrpc.Proxy(uri, settings=client_settings(certs, SSL_CACERTS=certs.other_ca)) as proxy:
        assert proxy.echo(5) == 5

    running2, uri2 = serve(start_daemon, server_settings(certs, SSL_SERVERCERT=certs.server_dnsonly,
                                                         SSL_SERVERKEY=certs.server_dnsonly_key))
    with pytest.raises(tls.TLSError, match="mismatch"):  # the URI says 127.0.0.1, the certificate does not
        with meshrpc.Proxy(uri2, settings=client_settings(certs)) as proxy:
            proxy.echo(1)
    with meshrpc.Proxy(str(uri2).replace(HOST, "localhost"), settings=client_settings(certs)) as proxy:
        assert proxy.echo(6) == 6
    # the refusals left both daemons serving
    with meshrpc.Proxy(uri, settings=client_settings(certs, SSL_CACERTS=certs.other_ca)) as proxy:
        assert proxy.echo(7) == 7
    with meshrpc.Proxy(str(uri2).replace(HOST, "localhost"), settings=client_settings(certs)) as proxy:
        assert proxy.echo(7) == 7
    wait_until(lambda: live_connections(running) + live_connections(running2) == 0, message="all dropped")


def test_tls_over_a_unix_socket(certs: Certs, start_daemon: Any) -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="meshrpc-"), "tls.sock")
    running, uri = serve(start_daemon, server_settings(certs), unixsocket=path)
    with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:  # chain checked, no host to match
        assert proxy.echo("unix") == "unix"
    with pytest.raises(tls.TLSError):
        with meshrpc.Proxy(uri, settings=client_settings(certs, SSL_CACERTS=certs.other_ca)) as proxy:
            proxy.echo(1)


def test_encrypted_key_and_bad_configuration(certs: Certs, start_daemon: Any) -> None:
    running, uri = serve(start_daemon, server_settings(certs, SSL_SERVERCERT=certs.server_enc,
                                                       SSL_SERVERKEY=certs.server_enc_key,
                                                       SSL_SERVERKEYPASSWD=Certs.PASSWORD))
    with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
        assert proxy.echo(8) == 8
    with pytest.raises(errors.SecurityError, match="encrypted: set SSL_SERVERKEYPASSWD"):  # never a prompt
        meshrpc.Daemon(HOST, settings=server_settings(certs, SSL_SERVERCERT=certs.server_enc,
                                                      SSL_SERVERKEY=certs.server_enc_key))
    with pytest.raises(errors.SecurityError, match="SSL_SERVERCERT is not set"):
        meshrpc.Daemon(HOST, settings=server_settings(certs, SSL_SERVERCERT=""))
    with pytest.raises(errors.SecurityError, match="needs SSL_CACERTS"):
        meshrpc.Daemon(HOST, settings=server_settings(certs, SSL_CACERTS="", SSL_REQUIRECLIENTCERT=True))
    with pytest.raises(errors.SecurityError, match="no such file"):
        meshrpc.Daemon(HOST, settings=server_settings(certs, SSL_SERVERCERT="/nonexistent/cert.pem"))
    with pytest.raises(errors.SecurityError, match="SSL_CACERTS"):
        with meshrpc.Proxy(uri, settings=client_settings(certs, SSL_CACERTS="/nonexistent/ca.pem")) as proxy:
            proxy.echo(1)


def test_name_server_over_tls(certs: Certs, start_daemon: Any) -> None:
    from meshrpc.naming import locate_ns, start_ns

    settings = server_settings(certs, SSL_CLIENTCERT=certs.client, SSL_CLIENTKEY=certs.client_key,
                               SSL_REQUIRECLIENTCERT=True, NS_HOST=HOST, NS_PORT=1, NS_BCPORT=1,
                               RESOLVE="ns", REBIND_TIMEOUT=1.0, COMMTIMEOUT=10.0)
    ns_uri, ns_daemon, _ = start_ns(HOST, 0, 0, "memory", settings, enable_broadcast=False)
    thread = threading.Thread(target=ns_daemon.requestLoop, daemon=True)
    thread.start()
    try:
        settings = settings.copy(NS_PORT=ns_uri.port)
        running, uri = serve(start_daemon, settings)
        with locate_ns(HOST, ns_uri.port, settings=settings) as ns:
            ns.register("test.echo", uri)
            assert ns.lookup("test.echo") == uri
        with meshrpc.Proxy("PYRONAME:test.echo", settings=settings) as proxy:  # resolved over TLS too
            assert proxy.echo("named") == "named"
        with pytest.raises(errors.CommunicationError):  # the name server wants a client certificate
            with meshrpc.Proxy(ns_uri, settings=client_settings(certs)) as anonymous:
                anonymous.count()
        with pytest.raises(errors.CommunicationError, match="accepts TLS connections only"):
            with meshrpc.Proxy(ns_uri, settings=meshrpc.Settings().copy(COMMTIMEOUT=5.0)) as plain:
                plain.count()
    finally:
        ns_daemon.shutdown()
        thread.join(10)


def _client_hello() -> bytes:
    """The first flight of a real TLS client, to send only part of it."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_stalled_tls_handshakes_block_nobody(certs: Certs, start_daemon: Any) -> None:
    """60 clients that connect and stall (silent, half a ClientHello, a ClientHello and no more) while
    a TLS proxy connects and calls at once; HANDSHAKE_TIMEOUT then closes the stalled ones."""
    running, uri = serve(start_daemon, server_settings(certs, HANDSHAKE_TIMEOUT=2.0, THREADPOOL_SIZE=8))
    hello = _client_hello()
    stalled = []
    for i in range(60):
        raw = socket.create_connection((HOST, uri.port), timeout=10)
        if i % 3 == 1:
            raw.sendall(hello[: len(hello) // 2])
        elif i % 3 == 2:
            raw.sendall(hello)
        stalled.append(raw)
    try:
        wait_until(lambda: live_connections(running) >= 60, message="stalled connections accepted")
        latencies = []
        for _ in range(5):
            started = time.perf_counter()
            with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
                assert proxy.echo("through") == "through"
            latencies.append(time.perf_counter() - started)
        print(f"\nconnect + call with 60 stalled handshakes: {', '.join(f'{x * 1000:.1f}' for x in latencies)} ms")
        assert max(latencies) < 1.0, latencies
        wait_until(lambda: live_connections(running) == 0, timeout=6.0, message="HANDSHAKE_TIMEOUT closing them")
        for raw in stalled:
            raw.settimeout(5)
            try:
                while raw.recv(4096):
                    pass  # a ServerHello for those that sent a whole ClientHello, then the close
            except ConnectionResetError:
                pass
    finally:
        for raw in stalled:
            raw.close()


def _tls_raw(certs: Certs, port: int) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, port), timeout=10)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return tls.client_context(client_settings(certs)).wrap_socket(raw, server_hostname=HOST)


def test_tls_client_that_never_reads_is_dropped(certs: Certs, start_daemon: Any) -> None:
    from meshrpc.wire import frame as wire
    from meshrpc.wire.serializers import by_name

    running, uri = serve(start_daemon, server_settings(certs, SEND_TIMEOUT=1.0, THREADPOOL_SIZE=2))
    serpent = by_name("serpent")
    stuck = []
    for _ in range(2):  # one per worker
        sock = _tls_raw(certs, uri.port)
        sock.sendall(wire.encode(wire.Frame(wire.MSG_CONNECT, serpent.id, 1,
                                            serpent.dumps({"handshake": "hi", "object": "echo"}))))
        reader = wire.FrameReader()
        while (frame := reader.next_frame()) is None:
            reader.feed(sock.recv(65536))
        assert frame.type == wire.MSG_CONNECTOK
        for seq in range(2, 8):
            sock.sendall(wire.encode(wire.Frame(wire.MSG_INVOKE, serpent.id, seq,
                                                serpent.dumps_call("echo", "big", (4 * 1024 * 1024,), {}))))
        stuck.append(sock)
    try:
        wait_until(lambda: live_connections(running) == 0, timeout=15.0, message="non-reading TLS clients dropped")
        with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
            assert proxy.echo("free") == "free"
    finally:
        for sock in stuck:
            sock.close()


def test_tls_daemon_survives_garbage(certs: Certs, start_daemon: Any) -> None:
    """Random bytes, mutated and truncated ClientHellos, and TLS followed by garbage, on 16 connections
    at a time, while a TLS client keeps calling."""
    import random

    running, uri = serve(start_daemon, server_settings(certs))
    hello = _client_hello()
    failures: list[str] = []
    stop = threading.Event()
    calls = [0]

    def good() -> None:
        with meshrpc.Proxy(uri, settings=client_settings(certs)) as proxy:
            while not stop.is_set():
                try:
                    assert proxy.echo(calls[0]) == calls[0]
                    calls[0] += 1
                except Exception as exc:  # noqa: BLE001
                    failures.append(repr(exc))
                    return

    def case(number: int) -> None:
        rng = random.Random(number)
        kind = number % 4
        try:
            if kind == 3:
                sock = _tls_raw(certs, uri.port)  # a proper TLS session that then sends junk
                sock.sendall(rng.randbytes(rng.randrange(1, 3000)))
            else:
                sock = socket.create_connection((HOST, uri.port), timeout=10)
                data = (rng.randbytes(rng.randrange(600)) if kind == 0 else
                        hello[: rng.randrange(len(hello))] if kind == 1 else
                        bytes(b ^ (rng.random() < 0.02) * rng.randrange(256) for b in hello))
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            with sock:
                sock.settimeout(10)
                while sock.recv(65536):
                    pass
        except (OSError, ssl.SSLError):
            pass  # the daemon closing on us, one way or another

    caller = threading.Thread(target=good, daemon=True)
    caller.start()
    numbers = iter(range(400))
    lock = threading.Lock()

    def fuzzer() -> None:
        while True:
            with lock:
                number = next(numbers, None)
            if number is None:
                return
            case(number)

    fuzzers = [threading.Thread(target=fuzzer, daemon=True) for _ in range(16)]
    for thread in fuzzers:
        thread.start()
    for thread in fuzzers:
        thread.join(60)
    stop.set()
    caller.join(10)
    assert not failures, failures
    assert calls[0] > 0
    wait_until(lambda: live_connections(running) == 0, timeout=10.0, message="garbage connections dropped")


def test_pyro5_client_over_tls(certs: Certs, start_daemon: Any) -> None:
    pytest.importorskip("Pyro5")
    import Pyro5.api
    import Pyro5.socketutil

    running, uri = serve(start_daemon, server_settings(certs))
    saved = {name: getattr(Pyro5.config, name) for name in ("SSL", "SSL_CACERTS", "COMMTIMEOUT")}
    Pyro5.config.SSL, Pyro5.config.SSL_CACERTS, Pyro5.config.COMMTIMEOUT = True, certs.ca, 10.0
    Pyro5.socketutil.__dict__["__ssl_client_context"] = None  # Pyro5 caches its context per process
    try:
        with Pyro5.api.Proxy(str(uri)) as proxy:
            assert proxy.echo([1, "two"]) == [1, "two"]
    finally:
        for name, value in saved.items():
            setattr(Pyro5.config, name, value)
        Pyro5.socketutil.__dict__["__ssl_client_context"] = None


def test_plaintext_warning_once_for_exposed_daemons(start_daemon: Any, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from meshrpc.server import connections as daemon_module

    monkeypatch.setattr(daemon_module, "_warned_plaintext", False)
    caplog.set_level(logging.WARNING, logger="meshrpc.security")
    start_daemon(host="127.0.0.1")
    assert "without TLS" not in caplog.text  # loopback: nothing to say
    start_daemon(host="0.0.0.0")
    start_daemon(host="0.0.0.0")
    warnings = [r for r in caplog.records if r.name == "meshrpc.security" and "without TLS" in r.getMessage()]
    assert len(warnings) == 1


def test_no_plaintext_warning_with_a_mesh_key(start_daemon: Any, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from meshrpc.server import connections as daemon_module

    monkeypatch.setattr(daemon_module, "_warned_plaintext", False)
    caplog.set_level(logging.WARNING, logger="meshrpc.security")
    start_daemon(host="0.0.0.0", settings=meshrpc.config.copy(KEY="a shared secret"))
    assert "without TLS" not in caplog.text  # callers must prove the key: nothing to warn about
