"""`meshrpc lookup`, `list` and `yplookup` (on the mesh and/or a name server), `register` and `remove`
(a name server's entries).

The mesh is asked through this process's registry (`meshrpc.mesh.get_registry`), which listens for
announcements for up to --timeout seconds; the name server is found with `meshrpc.locate_ns` (or at
--ns-host/--ns-port) and asked with Pyro5's name-server API.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..config import config
from ..errors import MeshError, NamingError
from ..limits import CLI_BROWSE_TIMEOUT, CLI_NS_TIMEOUT
from ..uri import URI
from ..wire.constants import NAMESERVER_NAME
from . import browse
from .common import add_lan_option, add_realm_option, seconds
from .output import Output

SOURCES = ("mesh", "etcd", "ns", "all")


# ---------------------------------------------------------------- the parsers

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lookup", help="find the providers of a name (exit 1 when there is none)",
                       description="Print the URIs that provide NAME, on the mesh and/or in a name server. "
                                   "Exits 1 when nothing provides it within --timeout.")
    p.add_argument("name", help="the logical name, as in PYRONAME:<name>")
    _query_options(p, config.LOOKUP_TIMEOUT, "seconds to wait for a provider to be heard (default %(default)s)")
    p.set_defaults(run=run_lookup, parser=p)

    p = sub.add_parser("list", help="list names on the mesh and/or in a name server",
                       description="List the registered names, optionally filtered. Exits 0 when nothing "
                                   "matches (with a hint on stderr).")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prefix", default=None, help="only names starting with this")
    group.add_argument("--regex", default=None, help="only names matching this regular expression (anchored at the "
                                                     "start, as Pyro5's re.match)")
    _query_options(p, CLI_BROWSE_TIMEOUT, "seconds to listen on the mesh at most (default %(default)s)")
    p.set_defaults(run=run_list, parser=p)

    p = sub.add_parser("yplookup", help="find objects by metadata tags",
                       description="List the objects that have every tag given (as arguments or with --all) "
                                   "and at least one of --any (Pyro5's yplookup; on a name server both filters "
                                   "may be combined too).")
    p.add_argument("tags", nargs="*", metavar="TAG", help="tags that must all be present, as --all")
    p.add_argument("--all", action="append", default=[], metavar="TAG[,TAG...]",
                   help="tags that must all be present (comma separated, repeatable)")
    p.add_argument("--any", action="append", default=[], metavar="TAG[,TAG...]",
                   help="tags of which at least one must be present (comma separated, repeatable)")
    _query_options(p, CLI_BROWSE_TIMEOUT, "seconds to listen on the mesh at most (default %(default)s)")
    p.set_defaults(run=run_yplookup, parser=p)

    p = sub.add_parser("register", help="register a name in the name server",
                       description="Register NAME -> URI in a name server (the mesh needs no registration: "
                                   "a daemon announces what it serves).")
    p.add_argument("name")
    p.add_argument("uri", help="usually a PYRO: URI (`meshrpc echo` and daemons print theirs)")
    p.add_argument("--tag", action="append", default=[], help="metadata tag (repeatable)")
    p.add_argument("--safe", action="store_true", help="fail if the name is registered already (default: replace)")
    _ns_options(p)
    p.set_defaults(run=run_register, parser=p)

    p = sub.add_parser("remove", help="remove a name (or names by --prefix/--regex) from the name server",
                       description="Remove NAME from a name server (exit 1 when it is not registered), or "
                                   "every name with --prefix or matching --regex (exit 0 however many).")
    p.add_argument("name", nargs="?", default=None)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prefix", default=None, help="remove every name starting with this")
    group.add_argument("--regex", default=None, help="remove every name matching this regular expression")
    _ns_options(p)
    p.set_defaults(run=run_remove, parser=p)


def _query_options(p: argparse.ArgumentParser, timeout: float, timeout_help: str) -> None:
    p.add_argument("--source", choices=SOURCES, default="mesh",
                   help="where to look: the mesh (default), the etcd cluster MESHRPC_RESOLVE names (etcd), a name "
                        "server (ns), or all of them (all)")
    add_realm_option(p)
    add_lan_option(p)
    p.add_argument("--timeout", type=seconds, default=timeout, help=timeout_help)
    _ns_location(p)
    p.add_argument("--json", action="store_true", help="a JSON array of {name, uri, metadata, host, source}")


def _ns_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=seconds, default=CLI_NS_TIMEOUT,
                   help="seconds to find the name server (broadcast included) and for each call to it "
                        "(default %(default)s)")
    _ns_location(p)
    p.add_argument("--json", action="store_true", help="print the outcome as one JSON object")


def _ns_location(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ns-host", default=None,
                   help="name server host (default: located on the mesh, on MESHRPC_NS_HOST or by broadcast)")
    p.add_argument("--ns-port", type=int, default=None, help=f"name server port (default: MESHRPC_NS_PORT, "
                                                             f"now {config.NS_PORT})")


# ---------------------------------------------------------------- rows: what every query prints

def row(name: str, uri: Any, metadata: Iterable[str], source: str) -> dict[str, Any]:
    text = str(uri)
    try:
        parsed = URI(text)
        host = parsed.host or ("localhost" if parsed.sockname else None)
    except ValueError:
        host = None
    return {"name": name, "uri": text, "metadata": sorted(metadata), "host": host, "source": source}


def merge(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (name, uri); a pair found in both places gets source "mesh,ns"."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["name"], r["uri"])
        if key in merged:
            seen = merged[key]
            seen["source"] = ",".join(sorted(set(seen["source"].split(",")) | {r["source"]}))
            seen["metadata"] = sorted(set(seen["metadata"]) | set(r["metadata"]))
        else:
            merged[key] = dict(r)
    return sorted(merged.values(), key=lambda r: (r["name"], r["uri"]))


def print_rows(out: Output, rows: list[dict[str, Any]], with_source: bool) -> None:
    headers = ["NAME", "TAGS", "URI"] + (["SOURCE"] if with_source else [])
    out.table(headers, [[r["name"], ",".join(r["metadata"]) or "-", r["uri"]] + ([r["source"]] if with_source else [])
                        for r in rows])


# ---------------------------------------------------------------- asking the mesh and the name server

class Sources:
    """Runs one query against the sources args.source names; collects rows and per-source failures."""

    def __init__(self, args: argparse.Namespace, out: Output) -> None:
        self.args, self.out = args, out
        self.rows: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.realm: str | None = None

    def run(self, mesh: Callable[[Any], Iterable[Any]] | None, ns: Callable[[Any], dict] | None) -> None:
        """Ask the sources; the name server at the same time as the mesh, so that --timeout bounds the
        whole command rather than each source in turn."""
        source = self.args.source
        asking_ns = None
        if source in ("ns", "all") and ns is not None:
            asking_ns = _Background(lambda: self._ask_ns(ns))
        if source in ("mesh", "all") and mesh is not None:
            registry = browse.registry_for(self.args.realm, self.args)
            self.realm = registry.realm
            self.rows += [row(e.name, e.uri, e.metadata, "mesh") for e in mesh(registry)]
        if mesh is not None and (source == "etcd" or (source == "all" and etcd_configured())):
            mirror = browse.registry_for(self.args.realm, self.args, "etcd")
            self.realm = mirror.realm
            self.rows += [row(e.name, e.uri, e.metadata, "etcd") for e in mesh(mirror)]
        if asking_ns is not None:
            try:
                found = asking_ns.result()
            except MeshError as exc:  # no name server, or it failed: an error unless the mesh answered
                if source == "ns":
                    raise
                if not self.rows:
                    raise type(exc)(f"nothing found on the mesh (realm {self.realm!r}), and {exc}") from None
                self.failures.append(f"name server: {exc}")  # the mesh answered: a note, not an error
            else:
                self.rows += [row(name, uri, tags, "ns") for name, (uri, tags) in found.items()]
        self.rows = merge(self.rows)
        for failure in self.failures:
            self.out.status("note: " + failure)

    def _ask_ns(self, ns: Callable[[Any], dict]) -> dict:
        with locate(self.args, self.out) as proxy:
            return ns(proxy)

    def where(self) -> str:
        places = []
        if self.args.source in ("mesh", "all"):
            places.append(f"on the mesh (realm {self.realm!r})")
        if self.args.source == "etcd" or (self.args.source == "all" and etcd_configured()):
            places.append(f"in etcd (realm {self.realm!r})")
        if self.args.source in ("ns", "all"):
            places.append("in the name server")
        return " or ".join(places)


class _Background:
    """A function run on a thread of its own; result() waits for it and returns (or raises) what it did."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self._function = function
        self._outcome: tuple[bool, Any] = (False, None)
        self._thread = threading.Thread(target=self._run, name="meshrpc-cli-ns", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome = (True, self._function())
        except BaseException as exc:  # handed to result()'s caller
            self._outcome = (False, exc)

    def result(self) -> Any:
        self._thread.join()
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def etcd_configured() -> bool:
    from ..resolve import split_sources
    return any(name == "etcd" for name, _ in split_sources(config.RESOLVE))


def progress(out: Output, text: str) -> None:
    """What the command is waiting for, on stderr (left out in JSON mode)."""
    if not out.json_mode:
        out.status(text)


def ns_settings(args: argparse.Namespace) -> Any:
    """Settings whose COMMTIMEOUT bounds connecting to and every call of the name server."""
    return config.copy(COMMTIMEOUT=args.timeout) if args.timeout and args.timeout > 0 else config


def ns_search_places(settings: Any) -> str:
    """Where locate_ns looks for a name server, for the progress line."""
    host = settings.NS_HOST or settings.HOST
    return f"the mesh, {host}:{settings.NS_PORT} and UDP broadcast on port {settings.NS_BCPORT}"


def locate(args: argparse.Namespace, out: Output) -> Any:
    """A connected proxy for the name server (NamingError with a hint when there is none); --timeout
    bounds the whole search, the broadcast's rounds included."""
    from ..naming import locate_ns
    browse.quiet_foreign_records(args)  # locate_ns may ask the mesh
    settings = ns_settings(args)
    if args.ns_host:
        where = f"the name server at {args.ns_host}:{args.ns_port or settings.NS_PORT}"
    else:
        where = f"a name server ({ns_search_places(settings)})"
    bound = f" for up to {args.timeout:g} s" if args.timeout and args.timeout > 0 else ""
    progress(out, f"locating {where}{bound} ...")
    try:
        proxy = locate_ns(args.ns_host, args.ns_port, settings=settings,
                          timeout=args.timeout if args.timeout and args.timeout > 0 else None)
    except NamingError as exc:
        raise NamingError(f"no name server answered (start one with `meshrpc ns`, or point to it with --ns-host/"
                          f"--ns-port or MESHRPC_NS_HOST/MESHRPC_NS_PORT): {exc}") from None
    return proxy


def ns_location(proxy: Any) -> str:
    return URI(proxy._pyroUri).location or str(proxy._pyroUri)


def tags_of(values: Iterable[str]) -> set[str]:
    return {t.strip() for value in values for t in value.split(",") if t.strip()}


# ---------------------------------------------------------------- the commands

def run_lookup(args: argparse.Namespace, out: Output) -> int:
    name = args.name

    def mesh(registry: Any) -> list[Any]:
        progress(out, f"looking for {name!r} on the mesh (realm {registry.realm!r}) ...")
        return browse.gather(registry, args.timeout, lambda: registry.lookup(name), wait_for_any=True)

    def ns(proxy: Any) -> dict:
        try:
            uri, tags = proxy.lookup(name, return_metadata=True)
        except NamingError as exc:
            if str(exc).startswith("unknown name"):
                return {}
            raise
        return {name: (uri, tags)}

    sources = Sources(args, out)
    sources.run(mesh, ns)
    if not sources.rows:
        if out.json_mode:
            out.json([])
        out.err(f"{name!r} not found {sources.where()}" +
                (f" within {args.timeout:g} s" if args.source != "ns" else "") +
                ("; " + browse.why_empty(sources.realm, lan=args.lan) if args.source in ("mesh", "all") else ""))
        return 1
    show(out, args, sources.rows)
    return 0


def run_list(args: argparse.Namespace, out: Output) -> int:
    def mesh(registry: Any) -> list[Any]:
        progress(out, f"listening for meshrpc services (realm {registry.realm!r}) ...")
        return browse.gather(registry, args.timeout, lambda: registry.list(args.prefix, args.regex))

    def ns(proxy: Any) -> dict:
        return proxy.list(prefix=args.prefix, regex=args.regex, return_metadata=True)

    sources = Sources(args, out)
    sources.run(mesh, ns)
    if not sources.rows:
        if out.json_mode:
            out.json([])
        else:
            what = "matching" if args.prefix or args.regex else "registered"
            out.status(f"nothing {what} {sources.where()}." +
                       (" " + browse.why_empty(sources.realm, lan=args.lan) if args.source in ("mesh", "all") else ""))
        return 0
    show(out, args, sources.rows)
    return 0


def run_yplookup(args: argparse.Namespace, out: Output) -> int:
    meta_all, meta_any = tags_of([*args.tags, *args.all]), tags_of(args.any)
    if not meta_all and not meta_any:
        args.parser.error("give at least one tag (`meshrpc yplookup TAG...`, --all or --any)")

    def matches(tags: Iterable[str]) -> bool:
        tags = set(tags)
        return meta_all <= tags and (not meta_any or not meta_any.isdisjoint(tags))

    def mesh(registry: Any) -> list[Any]:
        progress(out, f"listening for meshrpc services (realm {registry.realm!r}) ...")
        return browse.gather(registry, args.timeout, lambda: registry.yplookup(meta_all, meta_any))

    def ns(proxy: Any) -> dict:
        # Pyro5's name server takes one filter at a time: ask with one, apply both here
        if meta_all:
            found = proxy.yplookup(meta_all=sorted(meta_all), return_metadata=True)
        else:
            found = proxy.yplookup(meta_any=sorted(meta_any), return_metadata=True)
        return {name: (uri, tags) for name, (uri, tags) in found.items() if matches(tags)}

    sources = Sources(args, out)
    sources.run(mesh, ns)
    if not sources.rows:
        if out.json_mode:
            out.json([])
        else:
            wanted = " and ".join(filter(None, [f"all of {','.join(sorted(meta_all))}" if meta_all else "",
                                                f"any of {','.join(sorted(meta_any))}" if meta_any else ""]))
            out.status(f"nothing with {wanted} {sources.where()}." +
                       (" " + browse.why_empty(sources.realm, lan=args.lan) if args.source in ("mesh", "all") else ""))
        return 0
    show(out, args, sources.rows)
    return 0


def show(out: Output, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if out.json_mode:
        out.json(rows)
    else:
        print_rows(out, rows, with_source=args.source == "all")


def run_register(args: argparse.Namespace, out: Output) -> int:
    uri = URI(args.uri)  # InvalidURIError before any network traffic
    tags = sorted(set(args.tag))
    with locate(args, out) as ns:
        started = time.monotonic()
        try:
            ns.register(args.name, str(uri), safe=args.safe, metadata=tags)
        except NamingError as exc:
            if str(exc).startswith("name already registered"):
                out.err(f"{args.name!r} is registered already in the name server at {ns_location(ns)} "
                        f"(without --safe, register replaces it)")
                return 1
            raise
        where = ns_location(ns)
    if out.json_mode:
        out.json({"registered": args.name, "uri": str(uri), "metadata": tags, "nameserver": where,
                  "ms": round((time.monotonic() - started) * 1000, 2)})
    else:
        out.line(f"registered {args.name} -> {uri}" + (f"  [{','.join(tags)}]" if tags else "")
                 + f"  (name server {where})")
    return 0


def run_remove(args: argparse.Namespace, out: Output) -> int:
    given = [x for x in (args.name, args.prefix, args.regex) if x is not None]
    if len(given) != 1:
        args.parser.error("give exactly one of NAME, --prefix or --regex")
    if args.name == NAMESERVER_NAME:
        args.parser.error(f"{NAMESERVER_NAME} is the name server's own entry; it cannot be removed")
    with locate(args, out) as ns:
        removed = ns.remove(name=args.name, prefix=args.prefix, regex=args.regex)
        where = ns_location(ns)
    if out.json_mode:
        out.json({"removed": removed, "name": args.name, "prefix": args.prefix, "regex": args.regex,
                  "nameserver": where})
    elif removed or args.name is None:
        out.line(f"removed {removed} {'entry' if removed == 1 else 'entries'} from the name server at {where}")
    if args.name is not None and not removed:
        out.err(f"{args.name!r} is not registered in the name server at {where}")
        return 1
    return 0
