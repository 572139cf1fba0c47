"""The HTTP gateway against real daemons over real HTTP: Pyro5's gateway API (the compatibility cases),
what meshrpc adds (JSON bodies, tag queries, /mesh, /events, /health), and bad input."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from gateway_support import GatewayThread, post_json, request
from subprocs import Runner, runner_for

import meshrpc
from support import wait_until

KEY = "s3cret-key"


@meshrpc.expose
class Thermostat:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self._target = 20.5

    def echo(self, message: Any) -> Any:
        return message

    def add(self, a: Any, b: Any = 0) -> Any:
        return a + b

    def fail(self) -> None:
        raise ValueError("too cold")

    def slow(self, seconds: Any) -> str:
        time.sleep(float(seconds))
        return "done"

    def numbers(self, count: Any = 3) -> Any:
        return iter(range(int(count)))

    @property
    def target(self) -> float:
        return self._target

    @meshrpc.oneway
    def note(self, text: str) -> None:
        self.notes.append(text)


def settings_for(realm: str, **changes: Any) -> meshrpc.Settings:
    base = dict(HOST="127.0.0.1", REALM=realm, NS_AUTOREGISTER=False, RESOLVE="mesh", GATEWAY_LOOKUP_WAIT=0.5)
    return meshrpc.config.copy(**{**base, **changes})


@pytest.fixture
def thermostat() -> Thermostat:
    return Thermostat()


@pytest.fixture
def backend(realm: str, start_daemon: Any, thermostat: Thermostat) -> Any:
    running = start_daemon(settings=settings_for(realm))
    running.register(thermostat, name="http.thermo", metadata={"thermo", "kitchen"})
    running.register(Thermostat(), name="private.thermo", metadata={"thermo", "cellar"})
    return running


@pytest.fixture
def gateways() -> Iterator[Any]:
    started: list[GatewayThread] = []

    def start(settings: meshrpc.Settings, **options: Any) -> GatewayThread:
        started.append(GatewayThread(settings, **options))
        return started[-1]
    yield start
    for g in started:
        g.stop()


@pytest.fixture(params=["aio", "threaded"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def gw(backend_kind: str, realm: str, backend: Any, gateways: Any) -> GatewayThread:
    """A gateway on each backend: meshrpc.aio proxies (the default) and threaded proxies."""
    settings = settings_for(realm)
    if backend_kind == "threaded":
        from meshrpc.gateway.threaded import ThreadedBackend
        gateway = gateways(settings, backend=ThreadedBackend(settings))
    else:
        gateway = gateways(settings)
    # the mesh has heard both objects before tests start asserting
    wait_until(lambda: len(request(gateway.url + "/mesh").json()["entries"]) == 2, 20, message="both entries on /mesh")
    return gateway


# ---------------------------------------------------------------- Pyro5's gateway API

def test_get_call_with_query_parameters(gw: GatewayThread) -> None:
    reply = request(gw.url + "/pyro/http.thermo/echo?message=hello")
    assert reply.status == 200, reply
    assert reply.json() == "hello"
    assert reply.headers["Content-Type"].startswith("application/json")
    uuid.UUID(reply.headers["X-Pyro-Correlation-Id"])      # a fresh one when none was sent
    assert reply.headers["Access-Control-Allow-Origin"] == "*"


def test_post_with_query_parameters_and_correlation_id_echoed(gw: GatewayThread) -> None:
    corr = str(uuid.uuid4())
    reply = request(gw.url + "/pyro/http.thermo/add?a=4&b=2", "POST", headers={"X-Pyro-Correlation-Id": corr})
    assert reply.status == 200, reply
    assert reply.json() == "42"          # query values are strings, as with Pyro5
    assert reply.headers["X-Pyro-Correlation-Id"] == corr


def test_meta_lists_methods_and_attributes(gw: GatewayThread) -> None:
    meta = request(gw.url + "/pyro/http.thermo/$meta").json()
    assert set(meta["methods"]) >= {"echo", "add", "fail", "note", "numbers"}
    assert meta["attributes"] == ["target"]
    assert meta["oneway"] == ["note"]


def test_attribute_read(gw: GatewayThread) -> None:
    assert request(gw.url + "/pyro/http.thermo/target").json() == 20.5
    reply = request(gw.url + "/pyro/http.thermo/target?x=1")
    assert reply.status == 400 and "attribute" in reply.json()["args"][0]


def test_oneway_option(gw: GatewayThread, thermostat: Thermostat) -> None:
    reply = request(gw.url + "/pyro/http.thermo/echo?message=x", headers={"X-Pyro-Options": "oneway"})
    assert reply.status == 200 and reply.body == b""
    reply = request(gw.url + "/pyro/http.thermo/note?text=hi")     # declared @oneway: no reply either
    assert reply.status == 200 and reply.body == b""
    wait_until(lambda: thermostat.notes == ["hi"], 10, message="the oneway call ran")


def test_remote_exception_is_500_with_the_exception_as_json(gw: GatewayThread) -> None:
    reply = request(gw.url + "/pyro/http.thermo/fail")
    assert reply.status == 500
    error = reply.json()
    assert error["__class__"] == "builtins.ValueError" and error["__exception__"] is True
    assert error["args"] == ["too cold"]
    assert "raise ValueError" in "".join(error["attributes"]["_pyroTraceback"])


def test_not_exposed_name_is_403(gw: GatewayThread) -> None:
    reply = request(gw.url + "/pyro/private.thermo/echo?message=x")
    assert reply.status == 403
    assert "not exposed" in reply.json()["args"][0]
    assert "--expose REGEX" in reply.json()["args"][0]   # says what to do (w11-newcomer)


def test_unknown_name_method_and_path_are_404(gw: GatewayThread) -> None:
    reply = request(gw.url + "/pyro/http.nobody/echo")
    assert reply.status == 404 and reply.json()["__class__"] == "Pyro5.errors.NamingError"
    reply = request(gw.url + "/pyro/http.thermo/nosuch")
    assert reply.status == 404 and "nosuch" in reply.json()["args"][0]
    assert request(gw.url + "/pyro/justaname").status == 404
    assert request(gw.url + "/nothing/here").status == 404


def test_options_preflight_answers_cors(gw: GatewayThread) -> None:
    reply = request(gw.url + "/pyro/http.thermo/echo", "OPTIONS")
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    assert "X-Pyro-Gateway-Key" in reply.headers["Access-Control-Allow-Headers"]


def test_gateway_key(realm: str, backend: Any, gateways: Any) -> None:
    gw = gateways(settings_for(realm), key=KEY)
    url = gw.url + "/pyro/http.thermo/echo?message=k"
    wait_until(lambda: request(url, headers={"X-Pyro-Gateway-Key": KEY}).status == 200, 20, message="a keyed call")
    assert request(url).status == 403
    assert request(url, headers={"X-Pyro-Gateway-Key": "wrong"}).status == 403
    reply = request(url + "&$key=" + KEY)
    assert reply.status == 200 and reply.json() == "k"     # $key is not passed on as an argument
    assert request(gw.url + "/mesh").status == 403
    assert request(gw.url + "/events").status == 403
    assert request(gw.url + "/health").status == 200       # monitoring needs no key


def test_expose_pattern_option(realm: str, backend: Any, gateways: Any) -> None:
    gw = gateways(settings_for(realm), expose=r"private\.")
    assert request(gw.url + "/pyro/http.thermo/echo?message=x").status == 403
    wait_until(lambda: request(gw.url + "/pyro/private.thermo/echo?message=x").status == 200, 20,
               message="the exposed name answers")


# ---------------------------------------------------------------- beyond Pyro5's gateway

def test_json_body_positional_and_keyword_arguments(gw: GatewayThread) -> None:
    assert post_json(gw.url + "/pyro/http.thermo/add", {"args": [40], "kwargs": {"b": 2}}).json() == 42
    assert post_json(gw.url + "/pyro/http.thermo/add", [1.5, 2.5]).json() == 4.0
    assert post_json(gw.url + "/pyro/http.thermo/echo", {"args": [{"nested": [1, None, True]}]}).json() == \
        {"nested": [1, None, True]}
    form = request(gw.url + "/pyro/http.thermo/add", "POST", "a=x&b=y",
                   {"Content-Type": "application/x-www-form-urlencoded"})
    assert form.json() == "xy"


def test_streamed_result_is_a_list(gw: GatewayThread) -> None:
    assert request(gw.url + "/pyro/http.thermo/numbers?count=4").json() == [0, 1, 2, 3]


def test_tag_query(gw: GatewayThread) -> None:
    reply = request(gw.url + "/pyro/PYROMETA:thermo,kitchen/echo?message=tags")
    assert reply.status == 200 and reply.json() == "tags"
    assert request(gw.url + "/pyro/PYROMETA:cellar/echo?message=x").status == 403   # only private.thermo
    assert request(gw.url + "/pyro/PYROMETA:nosuchtag/echo").status == 404


def test_mesh_listing_and_health(gw: GatewayThread, realm: str) -> None:
    listing = request(gw.url + "/mesh").json()
    names = {e["name"]: e for e in listing["entries"]}
    assert set(names) == {"http.thermo", "private.thermo"}
    assert names["http.thermo"]["exposed"] and not names["private.thermo"]["exposed"]
    assert names["http.thermo"]["tags"] == ["kitchen", "thermo"] and names["http.thermo"]["realm"] == realm
    assert [e["name"] for e in request(gw.url + "/mesh?tag=cellar").json()["entries"]] == ["private.thermo"]
    request(gw.url + "/pyro/http.thermo/echo?message=x")
    calls = request(gw.url + "/mesh").json()["calls"]
    assert calls["http.thermo"]["ok"] is True and calls["http.thermo"]["latency_ms"] > 0
    health = request(gw.url + "/health").json()
    assert health["status"] == "ok" and health["realms"] == [realm] and health["entries"] == 2


class EventReader:
    """Reads a Server-Sent Events stream in a thread: events as (name, data) as they come."""

    def __init__(self, url: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])), 10)
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        self.events: list[tuple[str, Any, float]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        self.sock.settimeout(None)
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.decode().splitlines()
                              if ": " in line and not line.startswith("HTTP/"))
                if "event" in fields:
                    with self.changed:
                        self.events.append((fields["event"], json.loads(fields["data"]), time.monotonic()))
                        self.changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> tuple[str, Any, float]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for event in self.events:
                    if predicate(event[0], event[1]):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no such event within {timeout} s; got {[e[0] for e in self.events]}")
                self.changed.wait(remaining)

    def close(self) -> None:
        self.sock.close()


def test_event_stream_sees_arrivals_and_departures(gw: GatewayThread, realm: str, start_daemon: Any) -> None:
    events = EventReader(gw.url)
    try:
        snapshot = events.wait_for(lambda e, d: e == "snapshot", 20)[1]
        assert {e["name"] for e in snapshot["entries"]} == {"http.thermo", "private.thermo"}
        newcomer = start_daemon(settings=settings_for(realm))
        newcomer.register(Thermostat(), name="http.newcomer", metadata={"new"})
        added = events.wait_for(lambda e, d: e == "added" and d["name"] == "http.newcomer", 20)[1]
        assert added["tags"] == ["new"] and added["exposed"] is True
        request(gw.url + "/pyro/http.newcomer/echo?message=x")
        call = events.wait_for(lambda e, d: e == "call" and d["name"] == "http.newcomer", 20)[1]
        assert call["ok"] is True
        newcomer.stop()                     # a goodbye: removed at once
        events.wait_for(lambda e, d: e == "removed" and d["name"] == "http.newcomer", 20)
        events.wait_for(lambda e, d: e == "tick", 20)
    finally:
        events.close()


@pytest.fixture
def runner(realm: str) -> Iterator[Runner]:
    yield from runner_for(realm)


def test_event_stream_reports_a_killed_daemon_with_the_mesh(gw: GatewayThread, realm: str, runner: Runner) -> None:
    """kill -9 sends no goodbye: the mesh notices the silence (liveness window); the event stream must
    carry the departure within 0.5 s of the registry noticing it."""
    from meshrpc.mesh import get_registry
    registry = get_registry(settings_for(realm))          # the gateway's own (one per realm and process)
    noticed: list[float] = []
    unsubscribe = registry.subscribe(
        lambda event, entry: noticed.append(time.monotonic()) if event == "removed" and entry.name == "http.victim"
        else None)
    events = EventReader(gw.url)
    try:
        victim = runner.meshrpc("echo", "--name", "http.victim")
        victim.expect("echo server ready")
        events.wait_for(lambda e, d: e == "added" and d["name"] == "http.victim", 20)
        killed = time.monotonic()
        victim.kill()
        streamed = events.wait_for(lambda e, d: e == "removed" and d["name"] == "http.victim", 30)[2]
        wait_until(lambda: noticed, 10, message="the registry's removal")
        print(f"\n[gateway] kill -9 -> registry removed {noticed[0] - killed:.2f} s, "
              f"-> SSE removed {streamed - killed:.2f} s")
        assert streamed - noticed[0] <= 0.5
    finally:
        unsubscribe()
        events.close()


# ---------------------------------------------------------------- bad input and fairness

def test_bad_bodies_get_clear_errors(realm: str, backend: Any, gateways: Any) -> None:
    gw = gateways(settings_for(realm, GATEWAY_MAX_BODY=1000), expose="http\\.")
    url = gw.url + "/pyro/http.thermo/echo"
    reply = request(url, "POST", "hello", {"Content-Type": "text/plain"})
    assert reply.status == 415 and "application/json" in reply.json()["args"][0]
    reply = request(url, "POST", "{not json", {"Content-Type": "application/json"})
    assert reply.status == 400 and "malformed JSON" in reply.json()["args"][0]
    reply = post_json(url, {"args": [1], "extra": 2})
    assert reply.status == 400
    reply = post_json(url, {"args": "x" * 2000})
    assert reply.status == 413 and "GATEWAY_MAX_BODY" in reply.json()["args"][0]
    reply = request(url, "GET", headers={"X-Pyro-Correlation-Id": "not-a-uuid"})
    assert reply.status == 400
    # a chunked body (no Content-Length) over the limit
    with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), 10) as sock:
        chunk = b"[" + b"1," * 600 + b"1]"
        sock.sendall(b"POST /pyro/http.thermo/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    wait_until(lambda: request(url + "?message=still").status == 200, 20, message="the gateway still serves")


def test_slow_loris_connections_are_cut_and_others_are_served(realm: str, backend: Any, gateways: Any) -> None:
    gw = gateways(settings_for(realm, GATEWAY_HEADER_TIMEOUT=1.0, GATEWAY_BODY_TIMEOUT=1.0))
    port = int(gw.url.rsplit(":", 1)[1])
    lorises = []
    for _ in range(40):
        sock = socket.create_connection(("127.0.0.1", port), 10)
        sock.sendall(b"GET /pyro/http.thermo/echo?message=x HTTP/1.1\r\nHost: x\r\n")   # never finished
        lorises.append(sock)
    try:
        started = time.monotonic()
        reply = wait_until(lambda: request(gw.url + "/pyro/http.thermo/echo?message=ok"), 20)
        assert reply.status == 200 and time.monotonic() - started < 10
        for sock in lorises:                  # each is closed after GATEWAY_HEADER_TIMEOUT
            sock.settimeout(15)
            assert sock.recv(1000) == b""
        # a body that never completes: 408
        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            sock.sendall(b"POST /pyro/http.thermo/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n[1")
            sock.settimeout(15)
            assert sock.recv(100).startswith(b"HTTP/1.1 408")
        health = request(gw.url + "/health").json()
        assert health["slow_connections_closed"] >= 40
    finally:
        for sock in lorises:
            sock.close()


def test_rate_limit_per_client_address(realm: str, backend: Any, gateways: Any) -> None:
    gw = gateways(settings_for(realm, GATEWAY_RATE=2.0, GATEWAY_BURST=5))
    url = gw.url + "/health"
    statuses = [request(url).status for _ in range(8)]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    limited = next(r for r in (request(url) for _ in range(3)) if r.status == 429)
    assert int(limited.headers["Retry-After"]) >= 1 and "requests per second" in limited.json()["args"][0]
    assert request(url, source="127.0.0.2").status == 200       # another client is not affected


def test_one_slow_backend_does_not_stall_the_others(realm: str, backend: Any, gateways: Any,
                                                     start_daemon: Any) -> None:
    slow_daemon = start_daemon(settings=settings_for(realm))
    slow_daemon.register(Thermostat(), name="http.slow")
    gw = gateways(settings_for(realm, GATEWAY_BACKEND_CONCURRENCY=2, GATEWAY_WORKERS=6, GATEWAY_QUEUE_TIMEOUT=1.0))
    wait_until(lambda: request(gw.url + "/pyro/http.slow/echo?message=x").status == 200, 20, message="http.slow")
    with ThreadPoolExecutor(8) as pool:
        slow = [pool.submit(request, gw.url + "/pyro/http.slow/slow?seconds=4") for _ in range(6)]
        time.sleep(0.3)  # not synchronisation: lets the slow calls take their slots before we measure
        started = time.monotonic()
        fast = [request(gw.url + f"/pyro/http.thermo/echo?message={i}") for i in range(20)]
        elapsed = time.monotonic() - started
        statuses = sorted(f.result(30).status for f in slow)
    assert all(r.status == 200 for r in fast) and elapsed < 3.0, elapsed
    assert statuses.count(200) == 2 and statuses.count(503) == 4, statuses   # 2 slots; the rest were told busy


def test_many_concurrent_clients(realm: str, backend: Any, gateways: Any) -> None:
    """200 HTTP clients at once (each its own connection, 5 calls each): no errors. They all come from
    one address, so the per-address rate limit is off here."""
    import asyncio

    import aiohttp
    gw = gateways(settings_for(realm, GATEWAY_RATE=0))
    wait_until(lambda: request(gw.url + "/pyro/http.thermo/echo?message=x").status == 200, 20, message="a call")

    async def client(session: aiohttp.ClientSession, i: int) -> list[int]:
        statuses = []
        for j in range(5):
            async with session.get(f"{gw.url}/pyro/http.thermo/echo", params={"message": f"{i}.{j}"}) as r:
                assert await r.json() == f"{i}.{j}"
                statuses.append(r.status)
        return statuses

    async def main() -> list[int]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            results = await asyncio.gather(*(client(session, i) for i in range(200)))
        return [s for r in results for s in r]

    statuses = asyncio.run(main())
    assert statuses == [200] * 1000


def test_unprotected_bind_beyond_localhost_is_refused(realm: str) -> None:
    from meshrpc.gateway import UnsafeBind, check_bind
    with pytest.raises(UnsafeBind, match="gateway key"):
        check_bind("0.0.0.0", "", False)
    check_bind("0.0.0.0", "key", False)
    check_bind("0.0.0.0", "", True)
    check_bind("localhost", "", False)
    check_bind("127.0.0.1", "", False)
    check_bind("::1", "", False)


def test_connection_limit(realm: str, backend: Any, gateways: Any) -> None:
    gw = gateways(settings_for(realm, GATEWAY_MAX_CONNECTIONS=4))
    port = int(gw.url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), 10) for _ in range(4)]
    try:
        guard = gw.gateway.guard
        wait_until(lambda: len(guard.server.connections) == 4, 20, message="the four idle connections open")
        with socket.create_connection(("127.0.0.1", port), 10) as extra:
            extra.settimeout(5)
            try:
                assert extra.recv(10) == b""                # closed on arrival
            except ConnectionResetError:
                pass
        assert guard.refused == 1
    finally:
        for sock in idle:
            sock.close()
    def served() -> bool:
        try:
            return request(gw.url + "/health").status == 200
        except OSError:            # refused while the server has not yet seen the idle ones close
            return False
    wait_until(served, 20, message="served again once they closed")
    assert request(gw.url + "/health").json()["connections_refused"] >= 1


def test_several_realms(realm: str, backend: Any, gateways: Any, start_daemon: Any) -> None:
    other = realm + "-b"
    start_daemon(settings=settings_for(other)).register(Thermostat(), name="http.other", metadata={"b"})
    gw = gateways(settings_for(realm), realms=[realm, other])
    wait_until(lambda: len(request(gw.url + "/mesh").json()["entries"]) == 3, 20, message="entries of both realms")
    assert [e["name"] for e in request(gw.url + f"/mesh?realm={other}").json()["entries"]] == ["http.other"]
    reply = wait_until(lambda: request(gw.url + "/pyro/http.other/echo?message=b"), 20)
    assert reply.status == 200 and reply.json() == "b"


def test_https(realm: str, backend: Any, gateways: Any, tmp_path: Any) -> None:
    import shutil
    import ssl
    import subprocess
    import urllib.request
    if not shutil.which("openssl"):
        pytest.skip("needs openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    import asyncio

    from meshrpc.cli.gateway import tls_context
    from meshrpc.gateway import Gateway
    gateway = Gateway(settings_for(realm))
    loop = asyncio.new_event_loop()
    try:
        host, port = loop.run_until_complete(gateway.start("127.0.0.1", 0, tls_context(str(cert), str(key))))
        client = ssl.create_default_context(cafile=str(cert))
        client.check_hostname = False

        def fetch() -> Any:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/pyro/http.thermo/echo?message=tls",
                                        context=client, timeout=20) as response:
                return json.loads(response.read())
        result = loop.run_until_complete(asyncio.wait_for(loop.run_in_executor(None, fetch), 60))
        assert result == "tls"
    finally:
        loop.run_until_complete(gateway.stop())
        loop.close()


def test_cli_starts_serves_and_stops_cleanly(runner: Runner) -> None:
    from subprocs import assert_clean_exit
    gateway = runner.meshrpc("gateway", "--port", "0", "--json")
    url = json.loads(gateway.expect(r'"url"'))["url"]
    assert url.startswith("http://127.0.0.1:") or url.startswith("http://localhost:") or "[::1]" in url
    assert request(url + "health").json()["status"] == "ok"
    assert gateway.stop() == 0
    assert_clean_exit(gateway)
    refused = runner.run("gateway", "--host", "0.0.0.0", "--port", "0")
    assert refused.proc.returncode == 1
    assert "refusing to listen on '0.0.0.0'" in refused.stderr and "gateway key" in refused.stderr
