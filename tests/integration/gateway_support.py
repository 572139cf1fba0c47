"""A meshrpc gateway served from a background thread (its own event loop), and plain HTTP helpers."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the gateway needs the web extra (aiohttp)")

import meshrpc  # noqa: E402
from meshrpc.gateway import Gateway  # noqa: E402


class GatewayThread:
    """Gateway(settings, **options) on 127.0.0.1, port 0, in a thread; `url` once started."""

    def __init__(self, settings: meshrpc.Settings, **options: Any) -> None:
        self.gateway = Gateway(settings, **options)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.url = ""
        self.thread = threading.Thread(target=self._run, name="test-gateway", daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise AssertionError("the gateway did not start within 30 s")
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            host, port = self.loop.run_until_complete(self.gateway.start("127.0.0.1", 0))
            self.url = f"http://{host}:{port}"
        except BaseException as exc:  # reported to the starting thread
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.gateway.stop())
        self.loop.close()

    def call_soon(self, function: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(function, *args)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)
        assert not self.thread.is_alive(), "the gateway thread did not stop"


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HTTP {self.status} {self.body[:300]!r}>"


def request(url: str, method: str = "GET", body: bytes | str | None = None, headers: dict[str, str] | None = None,
            timeout: float = 30.0, source: str | None = None) -> Reply:
    """One HTTP request on a fresh connection (from address `source`, e.g. 127.0.0.2)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body.encode() if isinstance(body, str) else body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def post_json(url: str, value: Any, **kwargs: Any) -> Reply:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return request(url, "POST", json.dumps(value), headers, **kwargs)
