"""Daemon and Proxy over real loopback sockets."""

from __future__ import annotations

import copy
import os
import select
import socket
import tempfile
import threading
import time

import pytest

import meshrpc
from meshrpc import errors
from support import wait_until
from meshrpc.wire import frame as wire

pytestmark = pytest.mark.timeout(60)


@meshrpc.expose
class Calculator:
    def __init__(self) -> None:
        self.events: list = []
        self.oneway_done = threading.Event()
        self._value = 1

    def add(self, a, b=0):
        return a + b

    def fail(self, message):
        raise ValueError(message)

    def fail_custom(self):
        raise errors.NamingError("no such name", )

    def squares(self, n):
        return (i * i for i in range(n))

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    @meshrpc.oneway
    def record(self, item):
        self.events.append(item)
        self.oneway_done.set()

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, new):
        self._value = new

    def context_info(self):
        ctx = meshrpc.current_context
        return {"addr": list(ctx.client_sock_addr), "seq": ctx.seq}

    def _private(self):
        return "secret"


class Partial:
    @meshrpc.expose
    def visible(self):
        return "yes"

    def hidden(self):
        return "no"


@pytest.fixture
def calc_uri(start_daemon):
    running = start_daemon()
    calc = Calculator()
    uri = running.register(calc, "calc")
    return uri, calc, running


def test_call_with_args_and_kwargs(calc_uri):
    uri, _, _ = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        assert proxy.add(2, 3) == 5
        assert proxy.add(2, b=40) == 42


def test_metadata_from_handshake_drives_attributes(calc_uri):
    uri, _, _ = calc_uri
    proxy = meshrpc.Proxy(uri)
    assert proxy._pyroBind() is True
    assert "add" in proxy._pyroMethods and "record" in proxy._pyroOneway and "value" in proxy._pyroAttrs
    assert "_private" not in proxy._pyroMethods
    assert hasattr(proxy, "add") and not hasattr(proxy, "nope")
    with pytest.raises(AttributeError, match="no exposed attribute or method 'nope'"):
        proxy.nope
    assert proxy.value == 1
    proxy.value = 99
    assert proxy.value == 99
    with pytest.raises(AttributeError, match="no exposed attribute 'other'"):
        proxy.other = 1
    proxy._pyroRelease()


def test_only_exposed_members_are_callable(start_daemon):
    running = start_daemon()
    uri = running.register(Partial())
    with meshrpc.Proxy(uri) as proxy:
        assert proxy.visible() == "yes"
        assert proxy._pyroMethods == {"visible"}
        # even bypassing the proxy's metadata, the daemon refuses unexposed methods
        with pytest.raises(AttributeError, match="no exposed method 'hidden'"):
            proxy._pyroInvoke("hidden", (), {})


def test_remote_exception_has_class_and_traceback(calc_uri):
    uri, _, _ = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        with pytest.raises(ValueError, match="broken") as info:
            proxy.fail("broken")
        remote_tb = errors.get_remote_traceback(info.value)
        assert "in fail" in remote_tb and "ValueError: broken" in remote_tb
        with pytest.raises(errors.NamingError, match="no such name"):
            proxy.fail_custom()
        assert proxy.add(1, 1) == 2  # the connection is still fine


def test_excepthook_prints_remote_traceback(calc_uri, capsys):
    uri, _, _ = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        try:
            proxy.fail("shown")
        except ValueError as exc:
            errors.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "remote traceback" in err and "in fail" in err


def test_oneway_does_not_wait(calc_uri):
    uri, calc, _ = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        assert proxy.record("x") is None
        assert calc.oneway_done.wait(5)
        assert calc.events == ["x"]


def test_batch_calls_stop_at_first_error(calc_uri):
    uri, _, _ = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        batch = meshrpc.BatchProxy(proxy)
        batch.add(1, 2)
        batch.fail("third")
        batch.add(5, 5)
        results = batch()
        assert next(results) == 3
        with pytest.raises(ValueError, match="third"):
            next(results)
        with pytest.raises(StopIteration):
            next(results)
        batch.add(1, 1)
        assert list(batch()) == [2]


def test_streamed_generator(calc_uri):
    uri, _, running = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        assert list(proxy.squares(5)) == [0, 1, 4, 9, 16]
        partial = proxy.squares(1000)
        assert next(partial) == 0
        partial.close()
        assert proxy.add(1, 2) == 3
    wait_until(lambda: len(running.daemon._streams) == 0, message="the closed stream to be dropped")


def test_stream_limit_per_connection(start_daemon):
    settings = meshrpc.config.copy(MAX_STREAMS_PER_CONNECTION=2)
    running = start_daemon(settings=settings)
    uri = running.register(Calculator())
    with meshrpc.Proxy(uri) as proxy:
        first, second = proxy.squares(3), proxy.squares(3)  # both stay open
        with pytest.raises(errors.DaemonError, match="too many open streams"):
            proxy.squares(3)
        assert list(first) == [0, 1, 4] and list(second) == [0, 1, 4]


def test_instance_modes(start_daemon):
    created = []

    @meshrpc.behavior(instance_mode="percall")
    @meshrpc.expose
    class PerCall:
        def __init__(self):
            created.append(self)

        def ident(self):
            return id(self)

    @meshrpc.behavior(instance_mode="single")
    @meshrpc.expose
    class Single(PerCall):
        pass

    @meshrpc.behavior(instance_mode="session")
    @meshrpc.expose
    class Session(PerCall):
        pass

    running = start_daemon()
    uris = {cls.__name__: running.register(cls) for cls in (PerCall, Single, Session)}
    with meshrpc.Proxy(uris["PerCall"]) as p:
        assert p.ident() != p.ident()
    with meshrpc.Proxy(uris["Single"]) as p1, meshrpc.Proxy(uris["Single"]) as p2:
        assert p1.ident() == p2.ident()
    with meshrpc.Proxy(uris["Session"]) as p1, meshrpc.Proxy(uris["Session"]) as p2:
        assert p1.ident() == p1.ident()
        assert p1.ident() != p2.ident()


def test_instance_creator(start_daemon):
    @meshrpc.behavior("single", instance_creator=lambda cls: cls("made"))
    @meshrpc.expose
    class Made:
        def __init__(self, how):
            self.how = how

        def get(self):
            return self.how

    running = start_daemon()
    with meshrpc.Proxy(running.register(Made)) as proxy:
        assert proxy.get() == "made"


def test_autoproxy_and_callback(start_daemon):
    @meshrpc.expose
    class Child:
        def name(self):
            return "child"

    @meshrpc.expose
    class Parent:
        def __init__(self, daemon):
            self.child = Child()
            daemon.register(self.child)

        def get_child(self):
            return self.child

        def call_me_back(self, listener, value):
            return listener.notify(value * 2)

    running = start_daemon()
    uri = running.register(Parent(running.daemon))
    # the client side runs a daemon of its own for the callback object
    client_side = start_daemon()

    class Listener:
        def __init__(self):
            self.seen = []

        @meshrpc.expose
        @meshrpc.callback
        def notify(self, value):
            self.seen.append(value)
            return value + 1

    listener = Listener()
    client_side.register(listener)
    with meshrpc.Proxy(uri) as proxy:
        child = proxy.get_child()
        assert isinstance(child, meshrpc.Proxy)
        assert child.name() == "child"
        assert proxy.call_me_back(listener, 20) == 41
        assert listener.seen == [40]


def test_handshake_validation_hook(start_daemon):
    class Guarded(meshrpc.Daemon):
        def validateHandshake(self, conn, data):
            if data != "open sesame":
                raise ValueError("wrong password")
            return "welcome"

    daemon = Guarded(host="127.0.0.1")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    try:
        uri = daemon.register(Calculator())
        with pytest.raises(errors.CommunicationError, match="wrong password"):
            meshrpc.Proxy(uri)._pyroBind()

        class Friendly(meshrpc.Proxy):
            def _pyroValidateHandshake(self, response):
                self.answer = response

        proxy = Friendly(uri)
        proxy._pyroHandshake = "open sesame"
        assert proxy.add(1, 2) == 3
        assert proxy.answer == "welcome"
        proxy._pyroRelease()
    finally:
        daemon.shutdown()
        thread.join(5)


def test_unknown_object_is_refused(calc_uri):
    uri, _, _ = calc_uri
    other = meshrpc.URI(str(uri).replace("calc@", "missing@"))
    with pytest.raises(errors.CommunicationError, match="unknown object"):
        meshrpc.Proxy(other)._pyroBind()


def test_nat_address_in_uris(start_daemon):
    running = start_daemon(nathost="gateway.example", natport=4242)
    uri = running.register(Calculator(), "natted")
    assert str(uri) == "PYRO:natted@gateway.example:4242"
    assert running.daemon.uriFor("natted", nat=False).port == running.daemon.sock.getsockname()[1]


def test_unix_socket(start_daemon):
    path = os.path.join(tempfile.mkdtemp(), "meshrpc.sock")
    running = start_daemon(unixsocket=path)
    uri = running.register(Calculator(), "calc")
    assert str(uri) == f"PYRO:calc@./u:{path}"
    with meshrpc.Proxy(str(uri)) as proxy:
        assert proxy.add(1, 2) == 3


def test_ipv6_loopback(start_daemon):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback address")
    running = start_daemon(host="::1")
    uri = running.register(Calculator(), "calc")
    assert str(uri).startswith("PYRO:calc@[::1]:")
    with meshrpc.Proxy(str(uri)) as proxy:
        assert proxy.add(2, 2) == 4


@pytest.mark.parametrize("serializer", ["serpent", "marshal", "json", "msgpack"])
def test_per_proxy_serializer(calc_uri, serializer):
    uri, _, _ = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        proxy._pyroSerializer = serializer
        assert proxy.add(20, 22) == 42
        with pytest.raises(ValueError):
            proxy.fail("x")
        assert list(proxy.squares(3)) == [0, 1, 4]


def test_unsafe_serializer_is_refused(calc_uri):
    uri, _, _ = calc_uri
    proxy = meshrpc.Proxy(uri)
    proxy._pyroSerializer = "pickle"
    with pytest.raises(errors.SerializeError, match="unsafe"):
        proxy.add(1, 2)


def test_timeout(calc_uri):
    uri, _, _ = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        proxy._pyroTimeout = 0.2
        started = time.monotonic()
        with pytest.raises(errors.TimeoutError):
            proxy.sleep(2)
        assert time.monotonic() - started < 1.5
        assert isinstance(errors.TimeoutError("x"), TimeoutError)  # also the builtin
        proxy._pyroTimeout = None
        assert proxy.add(1, 1) == 2  # reconnects on a fresh connection


def test_proxy_shared_between_threads(calc_uri):
    uri, _, _ = calc_uri
    proxy = meshrpc.Proxy(uri)
    failures = []

    def hammer(n):
        try:
            for i in range(200):
                assert proxy.add(n, i) == n + i
        except Exception as exc:  # collected: a failure in a thread must fail the test
            failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    proxy._pyroRelease()


def test_copy_gives_independent_connection(calc_uri):
    uri, _, _ = calc_uri
    proxy = meshrpc.Proxy(uri)
    proxy._pyroTimeout = 5
    assert proxy.add(1, 1) == 2
    twin = copy.copy(proxy)
    assert twin._pyroConnection is None and twin._pyroTimeout == 5
    assert twin.add(2, 2) == 4
    assert twin._pyroConnection is not proxy._pyroConnection
    proxy._pyroRelease()
    assert twin.add(3, 3) == 6
    twin._pyroRelease()


def test_reconnect_after_daemon_restart_on_same_port(start_daemon):
    first = start_daemon()
    port = first.daemon.sock.getsockname()[1]
    uri = first.register(Calculator(), "calc")
    proxy = meshrpc.Proxy(uri)
    assert proxy.add(1, 1) == 2
    first.stop()
    second = start_daemon(port=port)
    second.register(Calculator(), "calc")
    proxy._pyroReconnect(tries=5)
    assert proxy.add(2, 2) == 4
    proxy._pyroRelease()


def test_current_context(calc_uri):
    uri, _, _ = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        info = proxy.context_info()
        assert info["addr"][0] == "127.0.0.1"
        assert info["seq"] > 0


def test_many_idle_proxies_and_active_ones(start_daemon):
    """500 connected idle proxies hold no workers: active proxies are still served at once."""
    running = start_daemon(settings=meshrpc.config.copy(THREADPOOL_SIZE=16))
    uri = running.register(Calculator(), "calc")
    idle = []
    for _ in range(500):
        proxy = meshrpc.Proxy(uri)
        proxy._pyroBind()
        idle.append(proxy)
    try:
        assert len(running.daemon._connections) >= 500
        results = []

        def active(k):
            with meshrpc.Proxy(uri) as p:
                results.append(sum(p.add(k, i) for i in range(20)))

        threads = [threading.Thread(target=active, args=(k,)) for k in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 40
        # and every idle proxy still works
        assert all(p.add(1, 2) == 3 for p in idle[::25])
    finally:
        for proxy in idle:
            proxy._pyroRelease()


def test_request_loop_condition_and_shutdown_from_a_call(start_daemon):
    daemon = meshrpc.Daemon(host="127.0.0.1")

    @meshrpc.expose
    class Stopper:
        def stop(self):
            daemon.shutdown()
            return "stopping"

    uri = daemon.register(Stopper())
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    with meshrpc.Proxy(uri) as proxy:
        assert proxy.stop() == "stopping"
    thread.join(10)
    assert not thread.is_alive()

    daemon2 = meshrpc.Daemon(host="127.0.0.1")
    flag = threading.Event()
    thread2 = threading.Thread(target=daemon2.requestLoop, args=(lambda: not flag.is_set(),), daemon=True)
    thread2.start()
    flag.set()
    daemon2._connection_server._wake()
    thread2.join(10)
    assert not thread2.is_alive()
    daemon2.close()


def test_shutdown_before_the_request_loop_makes_the_loop_return_at_once():
    # a SIGTERM (stop_on_signals) can land between a program's start-up and its requestLoop()
    daemon = meshrpc.Daemon(host="127.0.0.1")
    daemon.register(Calculator(), "calc")
    daemon.shutdown()
    daemon.requestLoop()  # returns (pytest-timeout bounds it) instead of failing on the closed listener
    with pytest.raises(meshrpc.errors.CommunicationError):
        with meshrpc.Proxy(f"PYRO:calc@{daemon.locationStr}") as proxy:
            proxy._pyroBind()


def test_external_select_loop():
    daemon = meshrpc.Daemon(host="127.0.0.1")
    uri = daemon.register(Calculator(), "calc")
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            ready, _, _ = select.select(daemon.sockets, [], [], 0.1)
            daemon.events(ready)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        with meshrpc.Proxy(uri) as proxy:
            assert proxy.add(5, 6) == 11
            assert proxy.add(1, 1) == 2
    finally:
        stop.set()
        thread.join(5)
        daemon.close()


def test_daemon_context_manager_closes_socket():
    with meshrpc.Daemon(host="127.0.0.1") as daemon:
        port = daemon.sock.getsockname()[1]
    probe = socket.socket()
    with pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))
    probe.close()


def test_daemon_object(calc_uri):
    uri, _, _ = calc_uri
    daemon_uri = meshrpc.URI(str(uri).replace("calc@", "Pyro.Daemon@"))
    with meshrpc.Proxy(daemon_uri) as proxy:
        assert "calc" in proxy.registered()
        assert proxy.ping() is None
        meta = proxy.get_metadata("calc")
        assert "add" in meta["methods"] and "value" in meta["attrs"]
        assert "meshrpc daemon" in proxy.info()


def _raw_connect(uri):
    sock = socket.create_connection((uri.host, uri.port), timeout=5)
    return sock


def _recv_frame(sock):
    reader = wire.FrameReader()
    while True:
        frame = reader.next_frame()
        if frame is not None:
            return frame
        data = sock.recv(65536)
        if not data:
            return None
        reader.feed(data)


def test_bad_input_does_not_disturb_other_clients(calc_uri):
    uri, _, running = calc_uri
    good = meshrpc.Proxy(uri)
    assert good.add(1, 1) == 2
    garbage = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"PYRO" + b"\x00" * 100,
        wire.encode(wire.Frame(wire.MSG_INVOKE, 1, 1, b"(")),  # INVOKE before CONNECT
        wire.encode(wire.Frame(wire.MSG_CONNECT, 99, 1, b"x")),  # unknown serializer
        wire.HEADER.pack(b"PYRO", 502, 4, 1, 0, 1, 2 ** 31, 0, bytes(16), 0, 0x4DC5),  # huge size
    ]
    for blob in garbage:
        sock = _raw_connect(uri)
        sock.sendall(blob)
        sock.settimeout(5)
        try:
            while sock.recv(65536):
                pass  # the daemon closes the connection
        except ConnectionResetError:
            pass
        sock.close()
        assert good.add(2, 3) == 5
    # a malformed call after a valid handshake gets an error reply, and the connection lives on
    serializer = meshrpc.wire.serializers.by_name("serpent")
    sock = _raw_connect(uri)
    handshake = serializer.dumps({"handshake": "hello", "object": "calc"})
    sock.sendall(wire.encode(wire.Frame(wire.MSG_CONNECT, 1, 1, handshake)))
    assert _recv_frame(sock).type == wire.MSG_CONNECTOK
    sock.sendall(wire.encode(wire.Frame(wire.MSG_INVOKE, 1, 2, b"# serpent utf-8 python3.2\n[1,2")))
    reply = _recv_frame(sock)
    assert reply.type == wire.MSG_RESULT and reply.flags & wire.FLAG_EXCEPTION
    assert isinstance(serializer.loads(reply.payload), errors.SerializeError)
    sock.sendall(wire.encode(wire.Frame(wire.MSG_PING, 42, 3, b"ping")))
    pong = _recv_frame(sock)
    assert (pong.type, pong.seq, pong.payload) == (wire.MSG_PING, 3, b"pong")
    sock.close()
    assert good.add(3, 4) == 7
    good._pyroRelease()


def test_message_size_limit(start_daemon):
    running = start_daemon(settings=meshrpc.config.copy(MAX_MESSAGE_SIZE=10_000))
    uri = running.register(Calculator(), "calc")
    with meshrpc.Proxy(uri) as proxy:
        assert proxy.add("a" * 100, "b") == "a" * 100 + "b"
    big = meshrpc.Proxy(uri, settings=meshrpc.config.copy(MAX_MESSAGE_SIZE=10_000_000))
    with pytest.raises(errors.ConnectionClosedError):
        big.add("a" * 50_000, "b")  # the daemon refuses the frame and closes the connection
    local = meshrpc.Proxy(uri, settings=meshrpc.config.copy(MAX_MESSAGE_SIZE=10_000))
    with pytest.raises(errors.MessageTooLargeError):
        local.add("a" * 50_000, "b")  # refused before sending


def test_compression(start_daemon):
    settings = meshrpc.config.copy(COMPRESSION=True)
    running = start_daemon(settings=settings)
    uri = running.register(Calculator(), "calc")
    with meshrpc.Proxy(uri, settings=settings) as proxy:
        text = "meshrpc " * 10_000
        assert proxy.add(text, "!") == text + "!"


def test_serializedblob_passthrough(start_daemon):
    @meshrpc.expose
    class Sink:
        def take(self, blob):
            assert isinstance(blob, meshrpc.SerializedBlob)
            return [blob.info, blob.deserialized()]

    running = start_daemon()
    uri = running.register(Sink(), "sink")
    with meshrpc.Proxy(uri) as proxy:
        info, data = proxy.take(meshrpc.SerializedBlob("blob-1", {"a": [1, 2]}))
        assert info == "blob-1" and data == {"a": [1, 2]}


def test_class_hooks(start_daemon):
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    @meshrpc.expose
    class Geo:
        def shift(self, p):
            return Point(p.x + 1, p.y + 1)

    meshrpc.register_class_to_dict(Point, lambda p: {"__class__": "geo.Point", "x": p.x, "y": p.y})
    meshrpc.register_dict_to_class("geo.Point", lambda name, d: Point(d["x"], d["y"]))
    try:
        running = start_daemon()
        uri = running.register(Geo(), "geo")
        with meshrpc.Proxy(uri) as proxy:
            moved = proxy.shift(Point(1, 2))
            assert isinstance(moved, Point) and (moved.x, moved.y) == (2, 3)
    finally:
        meshrpc.unregister_class_to_dict(Point)
        meshrpc.unregister_dict_to_class("geo.Point")


def test_next_call_reconnects_after_daemon_restart(start_daemon):
    """A PYRO proxy whose daemon restarted (same id, host, port) goes on with its next call, even a
    non-idempotent one: the closed connection is noticed before sending."""
    first = start_daemon()
    port = first.daemon.sock.getsockname()[1]
    calc = Calculator()
    uri = first.register(calc, "calc")
    proxy = meshrpc.Proxy(uri)
    assert proxy.add(1, 1) == 2
    first.stop()
    second = start_daemon(port=port)
    second.register(calc, "calc", force=True)
    assert proxy.add(2, 2) == 4
    proxy._pyroRelease()


def test_down_daemon_fails_fast_with_clear_error(start_daemon):
    running = start_daemon()
    uri = running.register(Calculator(), "calc")
    running.stop()
    started = time.monotonic()
    with pytest.raises(errors.CommunicationError, match="connection refused"):
        meshrpc.Proxy(uri).add(1, 2)
    assert time.monotonic() - started < 2


def test_stream_lifetime_and_linger(start_daemon):
    """Streams expire after ITER_STREAM_LIFETIME; after a disconnect they linger ITER_STREAM_LINGER
    seconds, during which a reconnected proxy goes on pulling items."""
    settings = meshrpc.config.copy(ITER_STREAM_LIFETIME=0.5, ITER_STREAM_LINGER=0.0)
    running = start_daemon(settings=settings)
    uri = running.register(Calculator(), "calc")
    with meshrpc.Proxy(uri) as proxy:
        stream = proxy.squares(100)
        assert next(stream) == 0
        wait_until(lambda: len(running.daemon._streams) == 0, 5, message="the stream to expire (lifetime)")
        with pytest.raises(errors.DaemonError, match="unknown or expired stream"):
            next(stream)
        # linger 0: a disconnect drops the stream at once
        stream = proxy.squares(100)
        assert next(stream) == 0
        proxy._pyroRelease()
        wait_until(lambda: len(running.daemon._streams) == 0, 5, message="the stream of the closed connection")

    lingering = start_daemon(settings=meshrpc.config.copy(ITER_STREAM_LINGER=30.0))
    uri = lingering.register(Calculator(), "calc")
    with meshrpc.Proxy(uri) as proxy:
        stream = proxy.squares(5)
        assert [next(stream), next(stream)] == [0, 1]
        proxy._pyroConnection.sock.shutdown(socket.SHUT_RDWR)  # the connection breaks under the proxy
        assert list(stream) == [4, 9, 16]  # the proxy reconnects and the stream goes on


def test_oneway_flood_runs_in_order_off_the_reader(calc_uri):
    uri, calc, _ = calc_uri
    with meshrpc.Proxy(uri) as proxy:
        for i in range(2000):
            proxy.record(i)
        assert proxy.add(1, 1) == 2  # answered while the oneways may still be running
        wait_until(lambda: len(calc.events) == 2000, 10, message="all oneway calls to run")
    assert calc.events == list(range(2000))


def test_serve_registers_by_name_and_serves(realm):
    """meshrpc.serve(): objects registered under their names (advertised on the mesh), served until
    the daemon is shut down."""
    settings = meshrpc.config.copy(HOST="127.0.0.1", REALM=realm, NS_HOST="")
    daemon = meshrpc.Daemon("127.0.0.1", settings=settings)
    thread = threading.Thread(target=meshrpc.serve, args=({Calculator: "serve.calc"},),
                              kwargs={"daemon": daemon, "use_ns": False}, daemon=True)
    thread.start()
    try:
        with meshrpc.Proxy("PYRONAME:serve.calc", settings=settings) as proxy:
            assert proxy.add(20, 22) == 42
        with meshrpc.Proxy(f"PYRO:serve.calc@{daemon.locationStr}") as proxy:
            assert proxy.add(1, 2) == 3  # the name is also the object id
    finally:
        daemon.shutdown()
        thread.join(10)
    assert not thread.is_alive()
