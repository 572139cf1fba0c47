"""`meshrpc gateway`: the HTTP+JSON gateway and the live web page of the mesh (docs/gateway.md)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from typing import Any

from ..config import config
from .output import Output
from .common import add_lan_option, seconds, settings_for


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="serve HTTP+JSON calls and a live web page of the mesh (needs meshrpc[web])",
                       description="An HTTP gateway compatible with Pyro5's (GET/POST /pyro/<name>/<method>), "
                                   "with the mesh as JSON (/mesh), as an event stream (/events), a health "
                                   "endpoint (/health) and a web page (/). Binds localhost unless told otherwise.")
    p.add_argument("-H", "--host", default="localhost",
                   help="address to listen on (default %(default)s; any other needs --key or TLS)")
    p.add_argument("-p", "--port", type=int, default=config.GATEWAY_PORT,
                   help="port (default: MESHRPC_GATEWAY_PORT, now %(default)s; 0 picks a free one)")
    p.add_argument("-e", "--expose", default=config.GATEWAY_EXPOSE,
                   help="regex of the names that may be called (default: MESHRPC_GATEWAY_EXPOSE, now %(default)r)")
    p.add_argument("-g", "--key", "--gatewaykey", dest="key", default=None,
                   help="gateway key clients must send (default: MESHRPC_GATEWAY_KEY; prefer it, a command "
                        "line is visible to other users)")
    p.add_argument("-c", "--cors", default="*", help="Access-Control-Allow-Origin value (default %(default)s; "
                                                     "empty: no CORS headers)")
    p.add_argument("-t", "--timeout", type=seconds, default=config.GATEWAY_CALL_TIMEOUT,
                   help="seconds to wait for a service's reply (default %(default)s)")
    p.add_argument("--realm", action="append", default=[],
                   help=f"mesh realm to show and call (repeatable; default: MESHRPC_REALM, now {config.REALM!r})")
    add_lan_option(p, "the mesh on every network interface (as MESHRPC_HOST=0.0.0.0): show and call the LAN's "
                      "services (HTTP stays on --host)")
    p.add_argument("--tls-cert", default="", help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    p.add_argument("--json", action="store_true", help='print {"url": ...} as JSON once listening')
    p.set_defaults(run=run)


def tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def run(args: argparse.Namespace, out: Output) -> int:
    from .browse import quiet_foreign_records
    try:
        from ..gateway import Gateway, check_bind
    except ImportError as exc:
        out.err(str(exc))
        return 1
    key = config.GATEWAY_KEY if args.key is None else args.key
    context = tls_context(args.tls_cert, args.tls_key)
    check_bind(args.host, key, context is not None)          # before anything starts
    quiet_foreign_records(args)
    settings = settings_for(None, args.lan).copy(GATEWAY_CALL_TIMEOUT=args.timeout)
    gateway = Gateway(settings, realms=args.realm, expose=args.expose, key=key, cors=args.cors)
    return asyncio.run(_serve(gateway, args, context, out))


async def _serve(gateway: Any, args: argparse.Namespace, context: ssl.SSLContext | None, out: Output) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        host, port = await gateway.start(args.host, args.port, context)
        shown = f"[{host}]" if ":" in host else host
        url = f"{'https' if context else 'http'}://{shown}:{port}/"
        if out.json_mode:
            out.json({"url": url, "realms": gateway.realms, "expose": args.expose})
        else:
            out.line(f"gateway ready: {url}")
            out.status(f"realms {', '.join(gateway.realms)}; names callable: {args.expose or 'all'}"
                       f"{'; gateway key required' if gateway.key else ''}. Ctrl-C stops it")
        await stop.wait()
    finally:
        await gateway.stop()
    return 0
