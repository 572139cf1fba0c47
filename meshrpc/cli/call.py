"""`meshrpc call URI METHOD [ARG...] [NAME=ARG...]`, `get URI PROPERTY`, `set URI PROPERTY VALUE`,
`ping URI`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .. import Proxy
from ..errors import MeshError
from ..limits import CLI_BROWSE_TIMEOUT, CLI_CALL_TIMEOUT
from ..uri import URI
from ..wire.constants import DAEMON_OBJECT_ID
from .common import (VALUE_RULE, add_lan_option, add_realm_option, parse_call_arguments, parse_value, seconds,
                     settings_for)
from .output import Output

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("call", help="call a method of a remote object and print the result",
                       description="Call METHOD of the object at URI and print the result (repr, or JSON with "
                                   "--json). " + VALUE_RULE + ".")
    p.add_argument("uri", help="PYRO:, PYRONAME: or PYROMETA: URI")
    p.add_argument("method")
    p.add_argument("args", nargs="*", metavar="ARG", help="an argument, or NAME=ARG for a keyword argument")
    p.add_argument("--args-json", default=None, metavar="JSON",
                   help="more arguments: a JSON array (positional) or object (keyword)")
    p.add_argument("--all", action="store_true",
                   help="call every provider of a PYRONAME/PYROMETA URI on the mesh and print each result "
                        "(exit 1 when any failed)")
    _common(p, "print the result as JSON")
    p.set_defaults(run=run_call)

    p = sub.add_parser("get", help="read a property of a remote object",
                       description="Print the value of PROPERTY (an exposed property) of the object at URI.")
    p.add_argument("uri", help="PYRO:, PYRONAME: or PYROMETA: URI")
    p.add_argument("property")
    _common(p, "print the value as JSON")
    p.set_defaults(run=run_get)

    p = sub.add_parser("set", help="set a property of a remote object",
                       description="Set PROPERTY (an exposed property with a setter) of the object at URI to "
                                   "VALUE (read by the rule of `meshrpc call`).")
    p.add_argument("uri", help="PYRO:, PYRONAME: or PYROMETA: URI")
    p.add_argument("property")
    p.add_argument("value", metavar="VALUE")
    _common(p, "print the outcome as JSON")
    p.set_defaults(run=run_set)

    p = sub.add_parser("ping", help="check that a remote object answers, and how fast",
                       description="Connect to the daemon of the object at URI and time --count round trips "
                                   "(the daemon's own ping: the object's methods are not called).")
    p.add_argument("uri", help="PYRO:, PYRONAME: or PYROMETA: URI")
    p.add_argument("--count", type=int, default=1, help="round trips to time (default %(default)s)")
    _common(p, "print the timings as JSON", serializer=False)
    p.set_defaults(run=run_ping)


def _common(p: argparse.ArgumentParser, json_help: str, serializer: bool = True) -> None:
    p.add_argument("--timeout", type=seconds, default=CLI_CALL_TIMEOUT,
                   help="seconds to wait on the network: a name's lookup, connecting, the reply; 0: no limit "
                        "(default %(default)s)")
    if serializer:
        p.add_argument("--serializer", default=None, help="serpent, marshal, json or msgpack")
    add_realm_option(p)
    add_lan_option(p)
    p.add_argument("--json", action="store_true", help=json_help)


_PLACES = {"mesh": "the mesh", "etcd": "etcd", "ns": "a name server"}


def open_proxy(args: argparse.Namespace, uri: str | None = None, out: Output | None = None) -> Proxy:
    """A proxy for the command's URI; --timeout bounds the whole command: a name's lookup (the search
    for a name server included) and a provider's recovery wait no longer. With out (and not --json),
    a by-name URI says on stderr where it is looked up."""
    settings = settings_for(getattr(args, "realm", None), getattr(args, "lan", False))
    shorter = {name: args.timeout for name in ("LOOKUP_TIMEOUT", "REBIND_TIMEOUT")
               if 0 < args.timeout < getattr(settings, name)}
    settings = settings.copy(**shorter) if shorter else settings
    target = URI(uri or args.uri)  # InvalidURIError before any network traffic
    if out is not None and not out.json_mode and not target.is_direct:
        from ..resolve import sources_to_ask
        try:
            places = " and ".join(_PLACES.get(s, s) for s in sources_to_ask(target, settings, None))
        except MeshError:
            places = ""  # a bad RESOLVE: the lookup itself says so
        if places:
            out.status(f"looking up {target} on {places} for up to {settings.LOOKUP_TIMEOUT:g} s ...")
    proxy = Proxy(target, settings=settings)
    proxy._pyroTimeout = args.timeout
    if getattr(args, "serializer", None):
        proxy._pyroSerializer = args.serializer
    return proxy


def invoke(proxy: Proxy, method: str, positional: list[Any], keywords: dict[str, Any]) -> Any:
    proxy._pyroBind()  # the metadata first: a property is not called
    if method in proxy._pyroAttrs and method not in proxy._pyroMethods:
        raise MeshError(f"{method} is a property of {proxy._pyroUri}: read it with `meshrpc get`, "
                        f"set it with `meshrpc set`")
    if (proxy._pyroMethods or proxy._pyroAttrs) and method not in proxy._pyroMethods:  # known: no guess
        shown = sorted(m for m in proxy._pyroMethods if not m.startswith("_"))
        raise AttributeError(f"{proxy._pyroUri} has no exposed method {method!r} (its methods: "
                             f"{', '.join(shown) or 'none'}; `meshrpc describe URI` shows their signatures)")
    result = getattr(proxy, method)(*positional, **keywords)
    if hasattr(result, "__next__"):
        result = list(result)
    return result


def show(out: Output, value: Any, key: str = "result") -> None:
    if out.json_mode:
        out.json({key: value})
    else:
        out.line(repr(value))


def run_call(args: argparse.Namespace, out: Output) -> int:
    positional, keywords = parse_call_arguments(args.args, args.args_json)
    if args.all:
        return call_every_provider(args, out, positional, keywords)
    with open_proxy(args, out=out) as proxy:
        result = invoke(proxy, args.method, positional, keywords)
    show(out, result)
    return 0


def call_every_provider(args: argparse.Namespace, out: Output, positional: list[Any],
                        keywords: dict[str, Any]) -> int:
    """--all: the method on each provider the mesh knows, one line (or JSON row) per provider."""
    from ..mesh import net
    from . import browse
    locator = URI(args.uri)
    if locator.is_direct:
        raise MeshError("--all needs a PYRONAME: or PYROMETA: URI (a PYRO: URI names one object)")
    registry = browse.registry_for(args.realm, args)
    if locator.protocol == "PYRONAME":
        def select() -> list[Any]:
            return registry.lookup(locator.object)
    else:
        def select() -> list[Any]:
            return registry.yplookup(set(locator.tags), None)
    if not out.json_mode:
        out.status(f"looking for the providers of {locator} (realm {registry.realm!r}) ...")
    entries = browse.gather(registry, min(args.timeout, CLI_BROWSE_TIMEOUT), select, wait_for_any=True)
    if not entries:
        raise MeshError(f"no provider of {locator} on the mesh (realm {registry.realm!r})")
    rows = []
    for entry in sorted(entries, key=lambda e: e.uri):
        target = str(net.reachable_uri(entry.uri, entry.other_hosts))
        row: dict[str, Any] = {"name": entry.name, "uri": target, "host": entry.host}
        try:
            with open_proxy(args, target) as proxy:
                row["result"] = invoke(proxy, args.method, positional, keywords)
        except Exception as exc:  # one provider's failure is its row, not the end of the command
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        if not out.json_mode:
            shown = repr(row["result"]) if "result" in row else out.style("error: " + row["error"], "red")
            out.line(f"{target}  {shown}")
    if out.json_mode:
        out.json(rows)
    return 1 if any("error" in row for row in rows) else 0


def run_get(args: argparse.Namespace, out: Output) -> int:
    with open_proxy(args, out=out) as proxy:
        proxy._pyroBind()
        if args.property not in proxy._pyroAttrs:
            raise AttributeError(_not_a_property(proxy, args.property))
        value = getattr(proxy, args.property)
    show(out, value, "value")
    return 0


def run_set(args: argparse.Namespace, out: Output) -> int:
    value = parse_value(args.value)
    with open_proxy(args, out=out) as proxy:
        proxy._pyroBind()
        if args.property not in proxy._pyroAttrs:
            raise AttributeError(_not_a_property(proxy, args.property))
        setattr(proxy, args.property, value)
    if out.json_mode:
        out.json({"property": args.property, "value": value})
    else:
        out.status(f"{args.property} = {value!r}")
    return 0


def _not_a_property(proxy: Proxy, name: str) -> str:
    hint = ("it is a method: use `meshrpc call`" if name in proxy._pyroMethods
            else f"its properties: {', '.join(sorted(proxy._pyroAttrs)) or 'none'}")
    return f"{proxy._pyroUri} has no exposed property {name!r} ({hint}; `meshrpc describe URI` lists all)"


def run_ping(args: argparse.Namespace, out: Output) -> int:
    times = []
    with open_proxy(args, out=out) as proxy:
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
