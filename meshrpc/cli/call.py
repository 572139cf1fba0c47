"""`meshrpc call URI METHOD [ARGS...]` and `meshrpc ping URI`."""

from __future__ import annotations

import argparse
import ast
import time
from typing import Any

from .. import Proxy
from ..wire.constants import DAEMON_OBJECT_ID
from .output import Output


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("call", help="call a method of a remote object and print the result")
    p.add_argument("uri", help="PYRO:, PYRONAME: or PYROMETA: URI")
    p.add_argument("method")
    p.add_argument("args", nargs="*", help="arguments as Python literals (strings that are not literals pass as is)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default %(default)s)")
    p.add_argument("--serializer", default=None, help="serpent, marshal, json or msgpack")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_call)
    p = sub.add_parser("ping", help="check that a remote object answers, and how fast")
    p.add_argument("uri", help="PYRO:, PYRONAME: or PYROMETA: URI")
    p.add_argument("--count", type=int, default=1, help="round trips to time (default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the timings as JSON")
    p.set_defaults(run=run_ping)


def parse_argument(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_call(args: argparse.Namespace, out: Output) -> int:
    with Proxy(args.uri) as proxy:
        proxy._pyroTimeout = args.timeout
        if args.serializer:
            proxy._pyroSerializer = args.serializer
        result = getattr(proxy, args.method)(*[parse_argument(a) for a in args.args])
        if hasattr(result, "__next__"):
            result = list(result)
    if out.json_mode:
        out.json({"result": result})
    else:
        out.line(repr(result))
    return 0


def run_ping(args: argparse.Namespace, out: Output) -> int:
    times = []
    with Proxy(args.uri) as proxy:
        proxy._pyroTimeout = args.timeout
        started = time.perf_counter()
        proxy._pyroBind()
        connect = time.perf_counter() - started
        for _ in range(max(1, args.count)):
            started = time.perf_counter()
            proxy._pyroInvoke("ping", (), None, object_id=DAEMON_OBJECT_ID)
            times.append(time.perf_counter() - started)
        target = str(proxy._pyroUri)
    result = {"uri": args.uri, "target": target, "connect_ms": connect * 1000,
              "rtt_ms": [t * 1000 for t in times]}
    if out.json_mode:
        out.json(result)
    else:
        out.line(f"{target}: connected in {connect * 1000:.2f} ms, "
                 f"round trip {min(times) * 1000:.3f} ms (min of {len(times)})")
    return 0
