"""`meshrpc browse`: everything on the mesh, as a table, JSON, or a live watch (with a handler to run
on every change, like `consul watch`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..config import config
from ..limits import CLI_BROWSE_SETTLE, CLI_BROWSE_TIMEOUT, CLI_EXEC_TIMEOUT
from .common import add_lan_option, add_realm_option, seconds, settings_for
from .output import Output

# the environment a --exec handler gets (MESH_*, not MESHRPC_*: those are settings, checked at start)
EXEC_VARIABLES = ("event", "cause", "name", "uri", "host", "tags", "realm")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("browse", help="list the services on the mesh (or --watch them come and go)",
                       description="List what the mesh announces. With --watch: the services there now (=), "
                                   "an 'all for now' line, then every change: + arrival, - departure with "
                                   "its cause (goodbye, expiry, unreachable, restart), ~ update.")
    p.add_argument("--watch", action="store_true", help="keep listening and show arrivals and departures")
    p.add_argument("--json", action="store_true", help="a JSON array (with --watch: one JSON event per line)")
    p.add_argument("--exec", dest="exec_cmd", default=None, metavar="CMD",
                   help="with --watch: run CMD (a shell command) for every service listed and every change; "
                        "the event is on its stdin as one JSON line and in MESH_EVENT, MESH_CAUSE, MESH_NAME, "
                        "MESH_URI, MESH_HOST, MESH_TAGS (comma separated), MESH_REALM")
    p.add_argument("--prefix", default=None, help="only names starting with this")
    p.add_argument("--tag", action="append", default=[], help="only entries with this tag (repeatable: all must match)")
    add_realm_option(p)
    p.add_argument("--all-realms", action="store_true", help="every realm heard (a REALM column is added)")
    add_lan_option(p)
    p.add_argument("--source", choices=("mesh", "etcd"), default="mesh",
                   help="the mesh (mDNS, default) or the etcd cluster MESHRPC_RESOLVE names")
    p.add_argument("--timeout", type=seconds, default=CLI_BROWSE_TIMEOUT,
                   help="seconds to listen at most before printing (default %(default)s)")
    p.set_defaults(run=run, parser=p)


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


def registry_for(realm: str | None, args: argparse.Namespace | None = None, source: str = "mesh") -> Any:
    """The process's mesh registry of realm (default: MESHRPC_REALM); --lan listens on every interface.
    source "etcd": the process's mirror of the realm in the etcd cluster RESOLVE names (docs/etcd.md)."""
    quiet_foreign_records(args)
    if source == "etcd":
        from ..etcd import get_mirror
        return get_mirror(settings_for(realm))
    from ..mesh import get_registry
    return get_registry(settings_for(realm, getattr(args, "lan", False)))


def realms_heard() -> list[str]:
    """The realms whose announcements this process heard so far (any realm, not only its own)."""
    from ..mesh import discovery
    instance = discovery._instance
    return sorted(instance.realms_heard) if instance is not None else []


def gather(registry: Any, timeout: float, select: Callable[[], list[Any]], wait_for_any: bool = False) -> list[Any]:
    """What select() returns once the mesh's answers have settled, listening timeout seconds at most.

    Answers have settled after CLI_BROWSE_SETTLE seconds without news, once select() found something (or, unless
    wait_for_any, once CLI_BROWSE_SETTLE * 3 seconds passed: a fresh registry hears every daemon's answer to its
    first query well within that on a LAN)."""
    if getattr(registry, "complete", False):   # an etcd mirror knows everything once synced: nothing to await
        return select()
    news = threading.Event()
    unsubscribe = registry.subscribe(lambda event, entry: news.set())
    try:
        started = time.monotonic()
        while True:
            remaining = timeout - (time.monotonic() - started)
            if remaining <= 0:
                break
            quiet = not news.wait(min(CLI_BROWSE_SETTLE, remaining))
            if quiet and (select() or (not wait_for_any and time.monotonic() - started > CLI_BROWSE_SETTLE * 3)):
                break
            news.clear()
    finally:
        unsubscribe()
    return select()


def entry_row(entry: Any, now: float) -> dict[str, Any]:
    return {"name": entry.name, "uri": entry.uri, "metadata": sorted(entry.metadata), "host": entry.host,
            "other_hosts": list(entry.other_hosts), "realm": entry.realm,
            "age": round(max(0.0, now - entry.last_seen), 1) if entry.last_seen else None}


def matching(entries: Iterable[Any], prefix: str | None, tags: Iterable[str]) -> list[Any]:
    wanted = set(tags)
    return sorted((e for e in entries if (not prefix or e.name.startswith(prefix)) and wanted <= set(e.metadata)),
                  key=lambda e: (e.realm, e.name, e.uri))


def print_table(out: Output, entries: list[Any], with_realm: bool = False) -> None:
    now = time.monotonic()
    rows = []
    for entry in entries:
        row = entry_row(entry, now)
        seen = "live" if row["age"] is None or row["age"] < 5 else f"seen {row['age']:.0f}s ago"
        rows.append(([row["realm"]] if with_realm else []) +
                    [row["name"], ",".join(row["metadata"]) or "-", row["uri"], row["host"], seen])
    out.table((["REALM"] if with_realm else []) + ["NAME", "TAGS", "URI", "HOST", "LIVENESS"], rows)


def why_empty(realm: str | None = None, heard_here: int = 0, lan: bool = False) -> str:
    """A hint that matches what was heard: other realms, entries that the filters left out, or nothing."""
    realm = realm or config.REALM
    if heard_here:
        return (f"{heard_here} service(s) in realm {realm!r}, none matching the filters (--prefix/--tag); "
                f"`meshrpc browse --realm {realm}` lists them all.")
    others = [r for r in realms_heard() if r != realm]
    if others:
        shown = ", ".join(repr(r) for r in others[:5]) + (" ..." if len(others) > 5 else "")
        return (f"Nothing in realm {realm!r}, but services were heard in realm(s) {shown}: use "
                f"--realm {others[0]} (or MESHRPC_REALM), or --all-realms.")
    host = "0.0.0.0" if lan else config.HOST
    if host in ("localhost", "") or host.startswith("127.") or host == "::1":
        return (f"Nothing heard in any realm. Discovery is on loopback only (MESHRPC_HOST is {host!r}): it sees "
                f"daemons on this machine. Use --lan here and MESHRPC_HOST=0.0.0.0 on the daemons to reach the LAN.")
    return (f"Nothing heard in any realm on the interfaces of {host!r}. Are daemons running, bound to "
            f"the LAN (MESHRPC_HOST=0.0.0.0), and is multicast allowed on this network?")


class View:
    """The registries browsed (one realm, or every realm heard) and the filters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.registries: dict[str, Any] = {}
        self.home = registry_for(args.realm, args, getattr(args, "source", "mesh"))
        self.registries[self.home.realm] = self.home

    def add_new_realms(self, subscribe: Callable[[Any], None] | None = None) -> None:
        if not self.args.all_realms:
            return
        for realm in realms_heard():
            if realm not in self.registries:
                registry = self.registries[realm] = registry_for(realm, self.args)
                if subscribe is not None:
                    subscribe(registry)

    def entries(self) -> list[Any]:
        self.add_new_realms()
        return matching((e for r in self.registries.values() for e in r.list()), self.args.prefix, self.args.tag)

    def gather(self) -> list[Any]:
        return gather(self.home, self.args.timeout, self.entries)

    def heard_here(self) -> int:
        return len(self.home.list())


def run(args: argparse.Namespace, out: Output) -> int:
    if args.exec_cmd and not args.watch:
        args.parser.error("--exec runs a handler on changes: use it with --watch")
    view = View(args)
    if args.watch:
        return watch(view, args, out)
    if not out.json_mode:
        out.status(f"listening for meshrpc services ({_where(view)}) ...")
    entries = view.gather()
    if out.json_mode:
        now = time.monotonic()
        rows = [entry_row(e, now) for e in entries]
        if hasattr(view.home, "stale"):         # the etcd mirror: True while etcd is out of reach
            for row in rows:
                row["stale"] = view.home.stale
        out.json(rows)
    elif entries:
        print_table(out, entries, with_realm=args.all_realms)
    else:
        out.status("nothing found. " + why_empty(view.home.realm, view.heard_here(), args.lan))
    return 0


def _where(view: View) -> str:
    where = "every realm" if view.args.all_realms else f"realm {view.home.realm!r}"
    return where + (", every interface" if view.args.lan else "")


def watch(view: View, args: argparse.Namespace, out: Output) -> int:
    """The services there now (event "present"), an "all for now" marker, then every change with its cause."""
    events: list[tuple[str, Any, str]] = []
    arrived = threading.Condition()
    unsubscribes: list[Callable[[], None]] = []

    def subscribe(registry: Any) -> None:
        def on_event(event: str, entry: Any) -> None:
            # the cause is read now, right after the change (later the entry may be back, or forgotten)
            cause = {"added": "announce", "updated": "update"}.get(event) or registry.removal_cause(entry) or "hidden"
            with arrived:
                events.append((event, entry, cause))
                arrived.notify()
        unsubscribes.append(registry.subscribe(on_event))

    handler = Handler(args.exec_cmd, out) if args.exec_cmd else None
    shown: set[tuple[str, str, str]] = set()  # (realm, name, uri) of what is on screen now

    def emit(event: str, entry: Any, cause: str) -> None:
        show_event(out, event, entry, cause)
        if handler is not None:
            handler.run(event_record(event, entry, cause))

    try:
        subscribe(view.home)
        if not out.json_mode:
            out.status(f"watching the mesh ({_where(view)}); Ctrl-C to stop")
        initial = view.gather()
        with arrived:
            view.add_new_realms(subscribe)
            events.clear()  # what happened while gathering is in the list already
        for entry in initial:
            shown.add(_key(entry))
            emit("present", entry, "")
        show_marker(out, len(initial))
        while True:
            with arrived:
                if not events:
                    arrived.wait(1.0)
                batch, events[:] = list(events), []
            out.check_reader()
            if args.all_realms:
                with arrived:
                    view.add_new_realms(subscribe)
            for event, entry, cause in batch:
                key = _key(entry)
                if not matching([entry], args.prefix, args.tag):
                    # an update may take an entry out of the filter: that is a departure from the view
                    if event == "updated" and key in shown:
                        shown.discard(key)
                        emit("removed", entry, "update")
                    continue
                if event == "added":
                    if key in shown:
                        continue  # listed at the start and announced again: already on screen
                    shown.add(key)
                elif event == "removed":
                    if key not in shown:
                        continue
                    shown.discard(key)
                elif event == "updated" and key not in shown:
                    shown.add(key)
                    event = "added"  # an update brought it into the filter
                emit(event, entry, cause)
    except KeyboardInterrupt:
        return 0
    finally:
        for unsubscribe in unsubscribes:
            unsubscribe()


def _key(entry: Any) -> tuple[str, str, str]:
    return (entry.realm, entry.name, entry.uri)


def event_record(event: str, entry: Any, cause: str) -> dict[str, Any]:
    return {"event": event, "cause": cause, "name": entry.name, "uri": entry.uri, "metadata": sorted(entry.metadata),
            "host": entry.host, "realm": entry.realm, "time": time.time()}


_MARKS = {"present": ("=", "dim"), "added": ("+", "green"), "removed": ("-", "red"), "updated": ("~", "yellow")}
_CAUSE_TEXT = {"goodbye": "goodbye", "expiry": "expired: no longer heard", "unreachable": "unreachable",
               "restart": "replaced: its daemon restarted", "update": "changed", "hidden": "hidden"}


def show_event(out: Output, event: str, entry: Any, cause: str) -> None:
    if out.json_mode:
        out.json(event_record(event, entry, cause))
        return
    mark, style = _MARKS.get(event, ("?", ""))
    stamp = time.strftime("%H:%M:%S")
    tags = ",".join(sorted(entry.metadata)) or "-"
    why = f"  ({_CAUSE_TEXT.get(cause, cause)})" if event in ("removed", "updated") and cause else ""
    out.line(f"{stamp} {mark} {entry.name}  [{tags}]  {entry.uri}  {entry.host}{why}", style)


def show_marker(out: Output, count: int) -> None:
    if out.json_mode:
        out.json({"event": "all-for-now", "count": count, "time": time.time()})
    else:
        out.line(f"--- all for now: {count} service(s); changes follow ---", "bold")


class Handler:
    """--exec: a shell command run for every event, one at a time, with the event on stdin and in MESH_*."""

    def __init__(self, command: str, out: Output) -> None:
        self.command = command
        self.out = out

    def run(self, record: dict[str, Any]) -> None:
        env = dict(os.environ)
        for key in EXEC_VARIABLES:
            value = record.get(key, "")
            env["MESH_" + key.upper()] = str(value)
        env["MESH_TAGS"] = ",".join(record["metadata"])
        try:
            done = subprocess.run(self.command, shell=True, input=json.dumps(record, sort_keys=True) + "\n",
                                  text=True, env=env, timeout=CLI_EXEC_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            self.out.status(f"note: --exec handler still running after {CLI_EXEC_TIMEOUT:g} s: stopped")
            return
        if done.returncode != 0:
            self.out.status(f"note: --exec handler exited {done.returncode} for {record['event']} {record['name']}")
