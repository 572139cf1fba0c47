"""`meshrpc browse`: everything on the mesh, as a table, JSON, or a live watch."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..config import config
from .output import Output

SETTLE = 0.3  # seconds without news after which a one-shot browse stops listening
DEFAULT_TIMEOUT = 2.0  # seconds a one-shot browse (or list, yplookup) listens at most


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("browse", help="list the services on the mesh (or --watch them come and go)")
    p.add_argument("--watch", action="store_true", help="keep listening and show arrivals and departures")
    p.add_argument("--json", action="store_true", help="a JSON array (with --watch: one JSON event per line)")
    p.add_argument("--prefix", default=None, help="only names starting with this")
    p.add_argument("--tag", action="append", default=[], help="only entries with this tag (repeatable: all must match)")
    p.add_argument("--realm", default=None, help=f"mesh realm (default: MESHRPC_REALM, now {config.REALM!r})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds to listen at most before printing (default %(default)s)")
    p.set_defaults(run=run)


class _ForeignRecordFilter(logging.Filter):
    """Hides the mesh's notes about malformed records heard from other programs (shown with --debug):
    they are about someone else's announcements, not about what the command was asked."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("mesh: ignoring record")


_FOREIGN_RECORD_FILTER = _ForeignRecordFilter()


def quiet_foreign_records(args: argparse.Namespace | None) -> None:
    """Unless --debug: no warnings about other programs' malformed mesh records on stderr."""
    if not getattr(args, "debug", False):
        logging.getLogger("meshrpc.mesh").addFilter(_FOREIGN_RECORD_FILTER)


def registry_for(realm: str | None, args: argparse.Namespace | None = None) -> Any:
    """The process's mesh registry of realm (default: MESHRPC_REALM)."""
    from ..mesh import get_registry
    quiet_foreign_records(args)
    settings = config.copy(REALM=realm) if realm else config
    return get_registry(settings)


def gather(registry: Any, timeout: float, select: Callable[[], list[Any]], wait_for_any: bool = False) -> list[Any]:
    """What select() returns once the mesh's answers have settled, listening timeout seconds at most.

    Answers have settled after SETTLE seconds without news, once select() found something (or, unless
    wait_for_any, once SETTLE * 3 seconds passed: a fresh registry hears every daemon's answer to its
    first query well within that on a LAN)."""
    news = threading.Event()
    unsubscribe = registry.subscribe(lambda event, entry: news.set())
    try:
        started = time.monotonic()
        while True:
            remaining = timeout - (time.monotonic() - started)
            if remaining <= 0:
                break
            quiet = not news.wait(min(SETTLE, remaining))
            if quiet and (select() or (not wait_for_any and time.monotonic() - started > SETTLE * 3)):
                break
            news.clear()
    finally:
        unsubscribe()
    return select()


def entry_row(entry: Any, now: float) -> dict[str, Any]:
    return {"name": entry.name, "uri": entry.uri, "metadata": sorted(entry.metadata), "host": entry.host,
            "other_hosts": list(entry.other_hosts),
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


def why_empty(realm: str | None = None) -> str:
    host = config.HOST
    realm = realm or config.REALM
    if host in ("localhost", "") or host.startswith("127.") or host == "::1":
        return (f"Discovery is on loopback only (MESHRPC_HOST is {host!r}): it sees daemons on this machine in "
                f"realm {realm!r}. Set MESHRPC_HOST=0.0.0.0 on the daemons (and here) to reach the LAN.")
    return (f"Nothing heard on the interfaces of {host!r} in realm {realm!r}. Are the daemons in the same realm "
            f"(MESHRPC_REALM) and is multicast allowed on this network?")


def run(args: argparse.Namespace, out: Output) -> int:
    registry = registry_for(args.realm, args)
    if args.watch:
        return watch(registry, args, out)
    if not out.json_mode:
        out.status(f"listening for meshrpc services (realm {registry.realm!r}) ...")
    entries = gather(registry, args.timeout, lambda: matching(registry.list(), args.prefix, args.tag))
    if out.json_mode:
        now = time.monotonic()
        out.json([entry_row(e, now) for e in entries])
    elif entries:
        print_table(out, entries)
    else:
        out.status("nothing found. " + why_empty(registry.realm))
    return 0


def watch(registry: Any, args: argparse.Namespace, out: Output) -> int:
    events: list[tuple[str, Any]] = []
    arrived = threading.Condition()

    def on_event(event: str, entry: Any) -> None:
        with arrived:
            events.append((event, entry))
            arrived.notify()

    shown: set[tuple[str, str]] = set()  # (name, uri) of what is on screen now
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
                    # an update may take an entry out of the filter: that is a departure from the view
                    if event == "updated" and entry.key in shown:
                        shown.discard(entry.key)
                        show_event(out, "removed", entry)
                    continue
                if event in ("added", "present"):
                    if entry.key in shown:
                        continue  # listed at the start and announced again: already on screen
                    shown.add(entry.key)
                elif event == "removed":
                    if entry.key not in shown:
                        continue
                    shown.discard(entry.key)
                elif event == "updated" and entry.key not in shown:
                    shown.add(entry.key)
                    event = "added"  # an update brought it into the filter
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
