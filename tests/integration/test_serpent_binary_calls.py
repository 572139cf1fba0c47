"""Plain serpent values in binary form, over loopback: used between meshrpc peers (both directions,
calls and batches and streams), never with Pyro5 peers in either direction, off with SERPENT_BINARY=0
on either side. A relay between proxy and daemon decodes every frame header, so the tests see what
really went over the wire, not what an API says it did."""

from __future__ import annotations

import datetime
import socket
import threading
from typing import Any

import Pyro5.api
import pytest

import meshrpc
from meshrpc.wire import frame as wire
from meshrpc.wire.serializers import SerpentBinary

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
TEXT, BINARY = 1, SerpentBinary.id


class Service:
    def echo(self, value: Any) -> Any:
        return value

    def now(self) -> datetime.datetime:
        return datetime.datetime(2026, 11, 22, 3, 4, 5)

    def context(self) -> list:
        ctx = meshrpc.current_context
        return [ctx.serializer_id, bool(ctx.client.binary)]

    def count(self, n: int) -> Any:
        yield from range(n)

    def fail(self) -> None:
        raise ValueError("no")


meshrpc.expose(Service)


class Relay:
    """A TCP relay that records (direction, message type, serializer id) of every frame it passes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frames: list[tuple[str, int, int]] = []
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for source, sink, direction in ((client, server, "request"), (server, client, "reply")):
                threading.Thread(target=self._pump, args=(source, sink, direction), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        reader = wire.FrameReader()
        try:
            while data := source.recv(65536):
                reader.feed(data)
                while (frame := reader.next_frame()) is not None:
                    self.frames.append((direction, frame.type, frame.serializer_id))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def ids(self, direction: str, msg_type: int) -> list[int]:
        return [ser for d, t, ser in self.frames if d == direction and t == msg_type]

    def close(self) -> None:
        self.listener.close()


def settings(**changes: Any) -> meshrpc.Settings:
    return meshrpc.Settings().copy(**{"HOST": HOST, "COMMTIMEOUT": 10.0, **changes})


@pytest.fixture
def relayed(start_daemon: Any):
    """(daemon settings) -> the URI of a meshrpc daemon's Service, reached through a Relay."""
    relays: list[Relay] = []

    def make(**daemon_settings: Any) -> tuple[str, Relay]:
        running = start_daemon(settings=settings(**daemon_settings))
        uri = running.register(Service(), "service")
        relay = Relay((uri.host, uri.port))
        relays.append(relay)
        return f"PYRO:service@{HOST}:{relay.port}", relay

    yield make
    for relay in relays:
        relay.close()


def test_plain_values_travel_in_binary_form_both_ways(relayed: Any) -> None:
    uri, relay = relayed()
    with meshrpc.Proxy(uri, settings=settings()) as proxy:
        value = {"name": "x", "list": [1, 2.5, None, True], "tuple": (1, ("a",)), "set": {1, 2}}
        assert proxy.echo(value) == value
        assert type(proxy.echo((1, 2))) is tuple
        # a context the method sees is serpent's, not the encoding's
        assert proxy.context() == [TEXT, True]
    assert relay.ids("request", wire.MSG_CONNECT) == [TEXT]
    assert relay.ids("reply", wire.MSG_CONNECTOK) == [TEXT]
    assert relay.ids("request", wire.MSG_INVOKE) == [BINARY] * 3
    assert relay.ids("reply", wire.MSG_RESULT) == [BINARY] * 3


def test_other_values_still_travel_as_serpent_text(relayed: Any) -> None:
    uri, relay = relayed()
    with meshrpc.Proxy(uri, settings=settings()) as proxy:
        assert proxy.now() == "2026-11-22T03:04:05"       # serpent's form of a datetime
        assert proxy.echo(datetime.date(2026, 1, 2)) == "2026-01-02"
        assert proxy.echo(set()) == ()                     # serpent's form of an empty set
        assert proxy.echo(b"raw") == b"raw"                 # out of band, with text
        with pytest.raises(ValueError, match="no"):
            proxy.fail()
    assert relay.ids("request", wire.MSG_INVOKE) == [BINARY, TEXT, TEXT, TEXT, BINARY]
    # the date and the empty set arrived as a str and a tuple, which go back in binary form
    assert relay.ids("reply", wire.MSG_RESULT) == [TEXT, BINARY, BINARY, TEXT, TEXT]


def test_batches_and_streams(relayed: Any) -> None:
    uri, relay = relayed()
    with meshrpc.Proxy(uri, settings=settings()) as proxy:
        batch = meshrpc.BatchProxy(proxy)
        for i in range(200):
            batch.echo([i, str(i)])
        assert list(batch()) == [[i, str(i)] for i in range(200)]
        assert list(proxy.count(3)) == [0, 1, 2]
    requests = relay.ids("request", wire.MSG_INVOKE)
    assert requests and set(requests) == {BINARY}
    replies = relay.ids("reply", wire.MSG_RESULT)
    assert replies[0] == BINARY                        # the batch's results
    assert replies[1] == TEXT                          # "this is a stream": an exception, as text
    assert replies[2:] == [BINARY] * 3 + [TEXT]         # the items, then the end of the stream (an exception)


@pytest.mark.parametrize("side", ["proxy", "daemon"])
def test_serpent_binary_off_on_either_side_means_text(relayed: Any, side: str) -> None:
    uri, relay = relayed(**({"SERPENT_BINARY": False} if side == "daemon" else {}))
    proxy_settings = settings(**({"SERPENT_BINARY": False} if side == "proxy" else {}))
    with meshrpc.Proxy(uri, settings=proxy_settings) as proxy:
        assert proxy.echo([1, "a"]) == [1, "a"]
        assert proxy.context() == [TEXT, False]
    assert set(relay.ids("request", wire.MSG_INVOKE)) == {TEXT}
    assert set(relay.ids("reply", wire.MSG_RESULT)) == {TEXT}


def test_pyro5_proxy_gets_serpent_text(relayed: Any) -> None:
    uri, relay = relayed()
    with Pyro5.api.Proxy(uri) as proxy:
        assert proxy.echo([1, (2, "x")]) == [1, (2, "x")]
        batch = Pyro5.api.BatchProxy(proxy)
        batch.echo(1)
        batch.echo({"k": 2})
        assert list(batch()) == [1, {"k": 2}]
    assert set(relay.ids("request", wire.MSG_INVOKE)) == {TEXT}
    assert set(relay.ids("reply", wire.MSG_RESULT)) == {TEXT}


def test_meshrpc_proxy_to_pyro5_daemon_sends_serpent_text() -> None:
    daemon = Pyro5.api.Daemon(host=HOST)
    uri = daemon.register(Pyro5.api.expose(Service)(), "service")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    relay = Relay((uri.host, uri.port))
    try:
        with meshrpc.Proxy(f"PYRO:service@{HOST}:{relay.port}", settings=settings()) as proxy:
            assert proxy.echo([1, (2, "x"), {"k": None}]) == [1, (2, "x"), {"k": None}]
            batch = meshrpc.BatchProxy(proxy)
            batch.echo(1)
            batch.echo(2)
            assert list(batch()) == [1, 2]
    finally:
        relay.close()
        daemon.shutdown()
        thread.join(10)
    assert set(relay.ids("request", wire.MSG_INVOKE)) == {TEXT}
    assert set(relay.ids("reply", wire.MSG_RESULT)) == {TEXT}


def test_a_binary_call_with_a_hostile_payload_gets_an_error_and_the_daemon_serves_on(relayed: Any) -> None:
    uri, _ = relayed()
    host, port = HOST, int(uri.rsplit(":", 1)[1])
    with meshrpc.Proxy(uri, settings=settings()) as proxy:
        proxy._pyroBind()
        conn = proxy._pyroConnection
        bomb = b"[" + (2 ** 31 - 1).to_bytes(4, "little")       # a list "of 2**31 items"
        conn.send(wire.Frame(wire.MSG_INVOKE, BINARY, 999, bomb))
        reply = conn.recv()
        assert reply.flags & wire.FLAG_EXCEPTION
        assert b"declares a size" in reply.payload
        assert proxy.echo("still here") == "still here"
    with meshrpc.Proxy(f"PYRO:service@{host}:{port}", settings=settings()) as other:
        assert other.echo(1) == 1
