"""Out-of-band bytes over loopback: negotiated between meshrpc peers only (serpent and json), never
with Pyro5 peers, who keep getting serpent's base64 dicts."""

from __future__ import annotations

import threading
from typing import Any

import Pyro5.api
import pytest

import meshrpc
from meshrpc import errors

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
TEN_MB = bytes(range(256)) * (10 * 1024 * 1024 // 256)


class Service:
    def echo(self, value: Any) -> Any:
        return value

    def kinds(self, value: Any) -> list[str]:
        return [type(v).__name__ for v in value]

    def negotiated(self) -> bool:
        return bool(meshrpc.current_context.client.oob)

    def chunks(self, n: int, size: int) -> Any:
        for i in range(n):
            yield bytes([i % 256]) * size

    def blob(self, size: int) -> bytes:
        return b"b" * size


meshrpc.expose(Service)


def settings(**changes: Any) -> meshrpc.Settings:
    return meshrpc.Settings().copy(**{"HOST": HOST, "COMMTIMEOUT": 10.0, **changes})


@pytest.fixture
def mesh_uri(start_daemon: Any) -> meshrpc.URI:
    running = start_daemon(settings=settings())
    return running.register(Service(), "service")


@pytest.fixture
def pyro5_uri() -> Any:
    daemon = Pyro5.api.Daemon(host=HOST)
    uri = daemon.register(Pyro5.api.expose(Service)(), "service")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    yield uri
    daemon.shutdown()
    thread.join(10)


def mesh_proxy(uri: Any, serializer: str, **changes: Any) -> meshrpc.Proxy:
    proxy = meshrpc.Proxy(str(uri), settings=settings(**changes))
    proxy._pyroSerializer = serializer
    return proxy


@pytest.mark.parametrize("serializer", ["serpent", "json"])
def test_meshrpc_peers_carry_bytes_out_of_band(mesh_uri: Any, serializer: str) -> None:
    with mesh_proxy(mesh_uri, serializer) as proxy:
        result = proxy.echo(TEN_MB)
        assert type(result) is bytes and result == TEN_MB
        assert proxy._pyroConnection.oob and proxy.negotiated()
        assert proxy.echo(b"x") == b"x"
        assert proxy.echo({"k": [b"", bytearray(b"ba")]}) == {"k": [b"", b"ba"]}
        assert proxy.kinds([b"a", bytearray(b"b"), memoryview(b"c")]) == ["bytes", "bytes", "bytes"]
        assert "MROB" not in meshrpc.current_context.response_annotations


@pytest.mark.parametrize("serializer", ["marshal", "msgpack"])
def test_native_bytes_serializers_unchanged(mesh_uri: Any, serializer: str) -> None:
    with mesh_proxy(mesh_uri, serializer) as proxy:
        assert proxy.echo(TEN_MB) == TEN_MB
        assert proxy.echo([b"a", b""]) == [b"a", b""]


@pytest.mark.parametrize("serializer", ["serpent", "json"])
def test_streams_of_bytes(mesh_uri: Any, serializer: str) -> None:
    with mesh_proxy(mesh_uri, serializer) as proxy:
        items = list(proxy.chunks(5, 1024 * 1024))
        assert [type(i) for i in items] == [bytes] * 5
        assert items == [bytes([i]) * (1024 * 1024) for i in range(5)]


def test_pyro5_proxy_to_meshrpc_daemon_gets_base64(mesh_uri: Any) -> None:
    with Pyro5.api.Proxy(str(mesh_uri)) as proxy:
        proxy._pyroSerializer = "serpent"
        result = proxy.echo(b"abc")
        assert result == {"data": "YWJj", "encoding": "base64"}
        assert proxy.negotiated() is False


def test_meshrpc_proxy_to_pyro5_daemon_gets_base64(pyro5_uri: Any) -> None:
    with mesh_proxy(pyro5_uri, "serpent") as proxy:
        assert proxy.echo(b"abc") == {"data": "YWJj", "encoding": "base64"}
        assert proxy._pyroConnection.oob is False
        assert proxy.kinds([b"a"]) == ["dict"]  # Pyro5 saw serpent's base64 dict, not a marker


def test_max_message_size_with_blobs(start_daemon: Any) -> None:
    running = start_daemon(settings=settings(MAX_MESSAGE_SIZE=1024 * 1024))
    uri = running.register(Service(), "service")
    with mesh_proxy(uri, "serpent", MAX_MESSAGE_SIZE=1024 * 1024) as proxy:
        with pytest.raises(errors.MessageTooLargeError):
            proxy.echo(b"y" * (2 * 1024 * 1024))  # refused before it is sent
        with pytest.raises(errors.CommunicationError):
            proxy.blob(2 * 1024 * 1024)  # the daemon cannot send it either
        assert proxy.echo(b"small") == b"small"
    # a proxy with the default limit sends it: the daemon refuses it
    with mesh_proxy(uri, "serpent") as proxy, pytest.raises(errors.CommunicationError):
        proxy.echo(b"y" * (2 * 1024 * 1024))
