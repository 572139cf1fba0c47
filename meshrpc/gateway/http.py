"""The gateway's HTTP side on aiohttp: Pyro5's gateway API, JSON bodies, tag queries, the mesh as JSON
and as an event stream, health, and the web page. docs/gateway.md describes every route."""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import ipaddress
import json
import logging
import random
import re
import ssl
import time
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .. import __version__ as meshrpc_version
from ..config import Settings
from ..errors import CommunicationError, NamingError, TimeoutError as CallTimeout
from ..limits import GATEWAY_LOOKUP_CONCURRENCY
from ..resolve import resolve_with_source
from ..uri import URI
from ..wire.serializers import by_name, exception_to_dict
from .backend import META, NO_REPLY, Backend, Call, make_backend
from .errors import (BadRequest, BodyTooLarge, Forbidden, GatewayError, RequestTimeout, TooManyRequests,
                     UnsafeBind, UnsupportedMediaType)
from .limits import ConnectionGuard, RateLimiter
from .meshwatch import MeshWatch

log = logging.getLogger("meshrpc.gateway")

JSON_TYPE = "application/json"
CORRELATION_HEADER = "X-Pyro-Correlation-Id"
KEY_HEADER = "X-Pyro-Gateway-Key"
OPTIONS_HEADER = "X-Pyro-Options"
KEY_PARAM = "$key"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png",
                ".svg": "image/svg+xml"}


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, key: str, tls: bool) -> None:
    """Refuse to serve beyond this machine without a gateway key or TLS."""
    if not is_loopback(host) and not key and not tls:
        raise UnsafeBind(f"refusing to listen on {host!r} without protection: anyone who can reach it could call "
                         "your services. Give a gateway key (--key or MESHRPC_GATEWAY_KEY) or TLS (--tls-cert and "
                         "--tls-key), or bind localhost")


class Gateway:
    """One HTTP gateway. `await start(host, port)`, then `await stop()`."""

    def __init__(self, settings: Settings, *, realms: Iterable[str] = (), expose: str | None = None,
                 key: str = "", cors: str = "*", backend: Backend | None = None, registries: Any = None) -> None:
        self.settings = settings
        self.realms = list(realms) or [settings.REALM]
        pattern = settings.GATEWAY_EXPOSE if expose is None else expose
        try:
            self.expose = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise ValueError(f"invalid expose pattern {pattern!r}: {exc}") from None
        self.key = key
        self.cors = cors
        self._backend = backend
        self._registries = registries
        self.watch: MeshWatch | None = None
        self.limiter = RateLimiter(settings.GATEWAY_RATE, settings.GATEWAY_BURST)
        self.guard: ConnectionGuard | None = None
        self.started = time.monotonic()
        self.requests = 0
        self.app = self._make_app()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._lookups: asyncio.Semaphore | None = None
        self._json = by_name("json")
        self._static = _load_static()

    # ------------------------------------------------------------------ life

    @property
    def backend(self) -> Backend:
        assert self._backend is not None, "the gateway is not started"
        return self._backend

    async def start(self, host: str = "localhost", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> tuple[str, int]:
        """Listen; the (host, port) bound. Raises UnsafeBind for an unprotected non-loopback address."""
        check_bind(host, self.key, ssl_context is not None)
        if self._backend is None:
            self._backend = make_backend(self.settings)
        self._lookups = asyncio.Semaphore(GATEWAY_LOOKUP_CONCURRENCY)
        if self._registries is None:
            from ..mesh import get_registry
            self._registries = [get_registry(self.settings.copy(REALM=realm)) for realm in self.realms]
        self.watch = MeshWatch(self._registries, self.is_exposed, self.settings.GATEWAY_SSE_QUEUE)
        self.watch.start()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        self.guard = ConnectionGuard(server, self.settings.GATEWAY_HEADER_TIMEOUT,
                                     self.settings.GATEWAY_MAX_CONNECTIONS)
        self.guard.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.guard.factory, host, port, ssl=ssl_context,
                                                reuse_address=True, backlog=1024)
        bound = self._server.sockets[0].getsockname()
        log.info("gateway listening on %s:%d", bound[0], bound[1])
        return bound[0], bound[1]

    async def stop(self) -> None:
        if self.guard is not None:
            self.guard.stop()
        if self._server is not None:
            self._server.close()
        if self.watch is not None:
            self.watch.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._backend is not None:
            self._backend.close()

    def is_exposed(self, name: str) -> bool:
        return self.expose is None or self.expose.match(name) is not None

    # ------------------------------------------------------------------ routes

    def _make_app(self) -> web.Application:
        # the body limit is enforced by _read_body (with a JSON error); aiohttp's own is a backstop
        app = web.Application(middlewares=[self._middleware], client_max_size=self.settings.GATEWAY_MAX_BODY + 1)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{file}", self._static_file)
        app.router.add_get("/health", self._health)
        app.router.add_get("/mesh", self._mesh)
        app.router.add_get("/events", self._events)
        app.router.add_route("*", "/pyro", self._to_index)
        app.router.add_route("*", "/pyro/", self._to_index)
        app.router.add_route("*", "/pyro/{path:.+}", self._pyro)
        app.on_response_prepare.append(self._add_cors)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        guard, protocol = self.guard, request.protocol
        if guard is not None:
            guard.started(protocol)
        try:
            self.requests += 1
            if request.method == "OPTIONS":        # CORS preflight (Pyro5 answers 200 too)
                return web.Response(text="200 OK")
            wait = self.limiter.allow(request.remote or "")
            if wait:
                return self._error(TooManyRequests(f"more than {self.settings.GATEWAY_RATE:g} requests per second "
                                                   f"from {request.remote}; retry after {max(wait, 0.01):.2f} s"),
                                   headers={"Retry-After": str(max(1, round(wait)))})
            try:
                return await handler(request)
            except GatewayError as exc:
                return self._error(exc)
            except NamingError as exc:       # no provider of the name or tags
                return self._error(exc, 404)
            except web.HTTPException as exc:
                if exc.status == 413:
                    return self._error(BodyTooLarge(f"the body is larger than {self.settings.GATEWAY_MAX_BODY} bytes "
                                                    "(GATEWAY_MAX_BODY)"))
                raise
            except Exception as exc:
                log.exception("gateway: %s %s failed", request.method, request.path)
                return self._error(exc, 500)
        finally:
            if guard is not None:
                guard.finished(protocol)

    async def _add_cors(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.cors:
            response.headers["Access-Control-Allow-Origin"] = self.cors
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = \
                f"Content-Type, {KEY_HEADER}, {OPTIONS_HEADER}, {CORRELATION_HEADER}"
            response.headers["Access-Control-Expose-Headers"] = f"{CORRELATION_HEADER}, X-Meshrpc-Provider"

    def _error(self, exc: BaseException, status: int | None = None, headers: dict[str, str] | None = None) -> web.Response:
        if isinstance(exc, GatewayError):
            body = json.dumps({"__class__": f"meshrpc.gateway.{type(exc).__name__}", "__exception__": True,
                               "args": [str(exc)], "attributes": {}}).encode()
        else:
            body = self._json.dumps(exception_to_dict(exc))
        return web.Response(body=body, status=status or getattr(exc, "status", 500), headers=headers,
                            content_type=JSON_TYPE, charset="utf-8")

    def _check_key(self, request: web.Request) -> None:
        if not self.key:
            return
        given = request.headers.get(KEY_HEADER) or request.query.get(KEY_PARAM, "")
        if not hmac.compare_digest(given.encode(), self.key.encode()):
            raise Forbidden("incorrect gateway key: send it in the X-Pyro-Gateway-Key header or the $key parameter")

    # ------------------------------------------------------------------ the page and the mesh

    async def _index(self, request: web.Request) -> web.Response:
        return self._static_response("index.html")

    async def _to_index(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/")

    async def _static_file(self, request: web.Request) -> web.Response:
        return self._static_response(request.match_info["file"])

    def _static_response(self, name: str) -> web.Response:
        body = self._static.get(name)
        if body is None:
            raise web.HTTPNotFound(text="no such file")
        kind = STATIC_TYPES.get(name[name.rfind("."):], "application/octet-stream")
        return web.Response(body=body, content_type=kind, charset="utf-8" if kind.startswith("text") else None,
                            headers={"Cache-Control": "no-cache"})

    async def _health(self, request: web.Request) -> web.Response:
        assert self.watch is not None
        guard = self.guard
        return web.json_response({
            "status": "ok", "version": meshrpc_version, "realms": self.realms,
            "uptime_s": round(time.monotonic() - self.started, 1), "entries": len(self.watch.rows()),
            "subscribers": self.watch.subscriber_count, "requests": self.requests,
            "connections": len(guard.server.connections) if guard else 0,
            "slow_connections_closed": guard.closed_slow if guard else 0,
            "connections_refused": guard.refused if guard else 0})

    def _listing(self, request: web.Request) -> dict[str, Any]:
        assert self.watch is not None
        return {"realms": self.realms, "expose": self.expose.pattern if self.expose else "",
                "entries": self.watch.rows(request.query.getall("tag", []), request.query.get("realm") or None),
                "calls": {name: stat.as_dict() for name, stat in self.watch.calls.items()}}

    async def _mesh(self, request: web.Request) -> web.Response:
        self._check_key(request)
        return web.json_response(self._listing(request))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: `snapshot` first, then `added`/`updated`/`removed`, `call`, and `tick`."""
        self._check_key(request)
        assert self.watch is not None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        subscriber = self.watch.subscribe()
        try:
            await response.write(b"retry: 1000\n" + _sse("snapshot", self._listing(request)))
            tick = self.settings.GATEWAY_SSE_TICK
            while not subscriber.overflowed:
                try:
                    event, data = await asyncio.wait_for(subscriber.queue.get(), tick)
                except asyncio.TimeoutError:
                    event, data = "tick", self.watch.tick()
                await response.write(_sse(event, data))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watch.unsubscribe(subscriber)
        return response

    # ------------------------------------------------------------------ calls

    async def _pyro(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        name, slash, member = path.rpartition("/")
        if not slash or not name or not member:
            return web.Response(status=404, text="Error 404: Not Found (use /pyro/<name>/<method>)")
        correlation = request.headers.get(CORRELATION_HEADER, "")
        try:
            correlation_id = uuid.UUID(correlation) if correlation else uuid.uuid4()
        except ValueError:
            raise BadRequest(f"{CORRELATION_HEADER} must be a UUID, got {correlation[:80]!r}") from None
        echo = {CORRELATION_HEADER: str(correlation_id)}
        self._check_key(request)
        args, kwargs = await self._arguments(request)
        options = {o.strip().lower() for o in request.headers.get(OPTIONS_HEADER, "").split(",")}
        realm, locator, service = await self._target(name)
        echo["X-Meshrpc-Provider"] = locator
        call = Call(locator, realm, member, tuple(args), kwargs, "oneway" in options, correlation_id.bytes)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            result = await self.backend.invoke(call)
        except GatewayError:
            raise
        except NamingError as exc:
            return self._error(exc, 404, echo)
        except CallTimeout as exc:
            error = exc
            return self._error(exc, 504, echo)
        except CommunicationError as exc:
            error = exc
            return self._error(exc, 502, echo)
        except Exception as exc:          # raised by the service: Pyro5's 500 with the exception as JSON
            error = exc
            return self._error(exc, 500, echo)
        finally:
            if member != META and self.watch is not None:
                self.watch.record_call(service, (time.perf_counter() - started) * 1000, error)
        if result is NO_REPLY:                # oneway: Pyro5 answers 200 with an empty body
            return web.Response(status=200, headers=echo, content_type=JSON_TYPE, charset="utf-8")
        return web.Response(body=self._json.dumps(result), headers=echo, content_type=JSON_TYPE, charset="utf-8")

    async def _target(self, name: str) -> tuple[str, str, str]:
        """(realm, locator, service name) for a name or a PYROMETA:tag,tag query; checks exposure."""
        if name.startswith("PYROMETA:"):
            return await self._tag_target(name)
        if name.startswith("PYRONAME:"):
            name = name[len("PYRONAME:"):]
        if not self.is_exposed(name):
            assert self.expose is not None  # without a pattern every name is exposed
            raise Forbidden(f"{name!r} is not exposed by this gateway (expose pattern {self.expose.pattern!r}): "
                            f"names matching `meshrpc gateway --expose REGEX` (or MESHRPC_GATEWAY_EXPOSE) can be "
                            f"called, the others are view only")
        try:
            uri = URI("PYRONAME:" + name)
        except ValueError as exc:
            raise BadRequest(f"invalid name {name!r}: {exc}") from None
        for registry in self._registries or ():
            if registry.lookup(name):
                return registry.realm, str(uri), name
        # not heard on the mesh (yet): wait for an announcement, then the rest of the chain
        assert self._lookups is not None
        realm = self.realms[0]
        settings = self.settings.copy(REALM=realm)
        async with self._lookups:
            await self.backend.run_blocking(
                lambda: resolve_with_source(uri, settings, wait=self.settings.GATEWAY_LOOKUP_WAIT))
        return realm, str(uri), name

    async def _tag_target(self, query: str) -> tuple[str, str, str]:
        """Tag queries look on the mesh: a provider whose name is exposed, this machine's first."""
        try:
            tags = URI(query).tags
        except ValueError as exc:
            raise BadRequest(f"invalid tag query {query!r}: {exc}") from None
        found = [(r, e) for r in self._registries or () for e in r.yplookup(tags)]
        if not found:
            wait = self.settings.GATEWAY_LOOKUP_WAIT
            for registry in self._registries or ():
                entries = await self.backend.run_blocking(
                    lambda: registry.resolve_meta(tags, timeout=wait))
                found.extend((registry, e) for e in entries)
                if found:
                    break
        if not found:
            raise NamingError(f"no provider with the tags {', '.join(sorted(tags))} on the mesh "
                              f"(realms {', '.join(self.realms)})")
        allowed = [(r, e) for r, e in found if self.is_exposed(e.name)]
        if not allowed:
            raise Forbidden(f"no provider with the tags {', '.join(sorted(tags))} has an exposed name")
        local = [(r, e) for r, e in allowed if r.is_local(e.host)]
        registry, entry = random.choice(local or allowed)
        from ..mesh import net
        return registry.realm, net.reachable_uri(entry.uri, entry.other_hosts), entry.name

    async def _arguments(self, request: web.Request) -> tuple[list[Any], dict[str, Any]]:
        """Positional and keyword arguments: the query string, plus a JSON or form body."""
        kwargs: dict[str, Any] = {}
        for key in set(request.query.keys()):
            if key == KEY_PARAM:
                continue
            values = request.query.getall(key)
            kwargs[key] = values[0] if len(values) == 1 else values
        args: list[Any] = []
        if request.method not in ("POST", "PUT") or not request.can_read_body:
            return args, kwargs
        body = await self._read_body(request)
        if not body.strip():
            return args, kwargs
        kind = request.content_type
        if kind == JSON_TYPE or kind.endswith("+json"):
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest(f"malformed JSON body: {exc}") from None
            if isinstance(data, list):
                return data, kwargs
            if not isinstance(data, dict) or not set(data) <= {"args", "kwargs"}:
                raise BadRequest('a JSON body is a list of arguments or {"args": [...], "kwargs": {...}}')
            if not isinstance(data.get("args", []), list) or not isinstance(data.get("kwargs", {}), dict):
                raise BadRequest('"args" must be a JSON array and "kwargs" a JSON object')
            return list(data.get("args", [])), {**kwargs, **data.get("kwargs", {})}
        if kind == "application/x-www-form-urlencoded":
            from urllib.parse import parse_qs
            try:
                form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                raise BadRequest("the form body is not UTF-8") from None
            for key, values in form.items():
                if key != KEY_PARAM:
                    kwargs[key] = values[0] if len(values) == 1 else values
            return args, kwargs
        raise UnsupportedMediaType(f"cannot take a body of type {kind!r}: send application/json "
                                   "(a list of arguments, or {\"args\": [...], \"kwargs\": {...}}) or a form")

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.GATEWAY_MAX_BODY
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge(f"the body is {request.content_length} bytes; at most {limit} (GATEWAY_MAX_BODY)")
        async def read_all() -> bytes:
            chunks, size = [], 0
            while chunk := await request.content.read(65536):
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"the body is larger than {limit} bytes (GATEWAY_MAX_BODY)")
                chunks.append(chunk)
            return b"".join(chunks)
        try:
            return await asyncio.wait_for(read_all(), self.settings.GATEWAY_BODY_TIMEOUT)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the body did not arrive within {self.settings.GATEWAY_BODY_TIMEOUT:g} s") from None


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _load_static() -> dict[str, bytes]:
    folder = importlib.resources.files(__package__) / "static"
    return {item.name: item.read_bytes() for item in folder.iterdir() if item.is_file()}
