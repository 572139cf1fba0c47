"""`meshrpc gateway`: HTTP+JSON access to the mesh and a live web page of it (docs/gateway.md).

    gateway = Gateway(settings, realms=["default"], expose=r"http\\.", key="")
    host, port = await gateway.start("localhost", 8080); ...; await gateway.stop()

Needs the `web` extra (`pip install 'meshrpc[web]'`: aiohttp); the core install does not.

Modules: http.py (routes, on aiohttp), backend.py (how calls reach services), meshwatch.py (registry
events onto the event loop, fan-out to event streams), limits.py (rates, slow clients, connection
cap), errors.py (one exception per refusal, with its HTTP status), static/ (the page).
"""

from __future__ import annotations

from typing import Any

from .errors import (BadRequest, BodyTooLarge, Busy, Forbidden, GatewayError, NoSuchMember, RequestTimeout,
                     TooManyRequests, UnsafeBind, UnsupportedMediaType)

__all__ = ["BadRequest", "BodyTooLarge", "Busy", "Forbidden", "Gateway", "GatewayError", "NoSuchMember",
           "RequestTimeout", "TooManyRequests", "UnsafeBind", "UnsupportedMediaType", "check_bind"]

MISSING_EXTRA = "the gateway needs aiohttp: pip install 'meshrpc[web]'"


def __getattr__(name: str) -> Any:
    if name in ("Gateway", "check_bind"):      # imports aiohttp: only when asked for
        try:
            from . import http
        except ModuleNotFoundError as exc:
            if exc.name == "aiohttp" or (exc.name or "").startswith("aiohttp."):
                raise ImportError(MISSING_EXTRA) from exc
            raise
        return getattr(http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
