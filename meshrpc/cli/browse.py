"""`meshrpc browse`: everything on the mesh, as a table, JSON, or a live watch."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any, Iterable

from ..config import config
from .output import Output

SETTLE = 0.3  # seconds without news after which a one-shot browse stops listening


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("browse", help="list the services on the mesh (or --watch them come and go)")
    p.add_argument("--watch", action="store_true", help="keep listening and show arrivals and departures")
    p.add_argument("--json", action="store_true", help="a JSON array (with --watch: one JSON event per line)")
    p.add_argument("--prefix", default=None, help="only names starting with this")
    p.add_argument("--tag", action="append", default=[], help="only entries with this tag (repeatable: all must match)")
    p.add_argument("--realm", default=None, help=f"mesh realm (default: MESHRPC_REALM, now {config.REALM!r})")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds to listen at most before printing (default %(default)s)")
    p.set_defaults(run=run)


def registry_for(realm: str | None) -> Any:
    from ..mesh import get_registry
    settings = config.copy(REALM=realm) if realm else config
    return get_registry(settings)


def entry_row(entry: Any, now: float) -> dict[str, Any]:
    return {"name": entry.name, "uri": entry.uri, "metadata": sorted(entry.metadata), "host": entry.host,
            "age": round(max(0.0, now - entry.last_seen), 1) if entry.last_seen else None}


def matching(entries: Iterable[Any], prefix: str | None, tags: Iterable[str]) -> list[Any]:
    wanted = set(tags)
    return sorted((e for e in entries if (not prefix or e.name.startswith(prefix)) and wanted <= set(e.metadata)),
                  key=lambda e: (e.name, e.uri))


def print_table(out: Output, entries: list[Any]) -> None:
    now = time.monotonic()
    rows = []
    for entry in entries:
        row = entry_row(entry, now)
        seen = "live" if row["age"] is None or row["age"] < 5 else f"seen {row['age']:.0f}s ago"
        rows.append((row["name"], ",".join(row["metadata"]) or "-", row["uri"], row["host"], seen))
    out.table(["NAME", "TAGS", "URI", "HOST", "LIVENESS"], rows)


def why_empty() -> str:
    host = config.HOST
    if host in ("localhost", "") or host.startswith("127.") or host == "::1":
        return ("nothing found. Discovery is on loopback only (MESHRPC_HOST is %r): it sees daemons on this "
                "machine. Set MESHRPC_HOST=0.0.0.0 on the daemons (and here) to reach the LAN." % host)
    return ("nothing found on the interfaces of %r in realm %r. Are the daemons in the same realm "
            "(MESHRPC_REALM) and is multicast allowed on this network?" % (host, config.REALM))


def run(args: argparse.Namespace, out: Output) -> int:
    registry = registry_for(args.realm)
    news = threading.Event()
    unsubscribe = registry.subscribe(lambda event, entry: news.set())
    try:
        if args.watch:
            return watch(registry, args, out)
        if not out.json_mode:
            out.status(f"listening for meshrpc services (realm {registry.realm!r}) ...")
        started = time.monotonic()
        registry.list()  # starts the browser
        while time.monotonic() - started < args.timeout:
            if not news.wait(SETTLE):
                if registry.list() or time.monotonic() - started > SETTLE * 3:
                    break  # answers have settled
            news.clear()
        entries = matching(registry.list(), args.prefix, args.tag)
    finally:
        unsubscribe()
    if out.json_mode:
        now = time.monotonic()
        out.json([entry_row(e, now) for e in entries])
    elif entries:
        print_table(out, entries)
    else:
        out.status(why_empty())
    return 0


def watch(registry: Any, args: argparse.Namespace, out: Output) -> int:
    events: list[tuple[str, Any]] = []
    arrived = threading.Condition()

    def on_event(event: str, entry: Any) -> None:
        with arrived:
            events.append((event, entry))
            arrived.notify()

    unsubscribe = registry.subscribe(on_event)
    try:
        if not out.json_mode:
            out.status(f"watching the mesh (realm {registry.realm!r}); Ctrl-C to stop")
        for entry in matching(registry.list(), args.prefix, args.tag):
            on_event("present", entry)
        while True:
            with arrived:
                while not events:
                    arrived.wait(1.0)
                batch, events[:] = list(events), []
            for event, entry in batch:
                if not matching([entry], args.prefix, args.tag):
                    continue
                show_event(out, event, entry)
    except KeyboardInterrupt:
        return 0
    finally:
        unsubscribe()


def show_event(out: Output, event: str, entry: Any) -> None:
    if out.json_mode:
        out.json({"event": "added" if event == "present" else event, "name": entry.name, "uri": entry.uri,
                  "metadata": sorted(entry.metadata), "host": entry.host, "time": time.time()})
        return
    mark, style = {"added": ("+", "green"), "present": ("=", "dim"), "removed": ("-", "red"),
                   "updated": ("~", "yellow")}.get(event, ("?", ""))
    stamp = time.strftime("%H:%M:%S")
    tags = ",".join(sorted(entry.metadata)) or "-"
    out.line(f"{stamp} {mark} {entry.name}  [{tags}]  {entry.uri}  ({entry.host})", style)
