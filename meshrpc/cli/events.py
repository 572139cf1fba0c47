"""`meshrpc events pub|sub|serve`: publish an event, print a live stream of events, run an event server."""

from __future__ import annotations

import argparse
import json
import threading
import time

from ..config import config
from .common import VALUE_RULE, add_lan_option, add_realm_option, parse_value, seconds, settings_for
from .output import Output


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("events", help="publish and subscribe to events; run an event server",
                       description="Events on the mesh without a broker, or through `events serve` (docs/events.md).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    pub = actions.add_parser("pub", help="publish one event")
    pub.add_argument("subject", help="dotted subject, e.g. home.hall.door")
    pub.add_argument("message", help="the message: " + VALUE_RULE.split(";")[0])
    pub.add_argument("--retain", action="store_true", help="keep it as the subject's last value for later subscribers")
    pub.add_argument("--wait", type=seconds, default=1.0, metavar="SECONDS",
                     help="wait this long for a first subscriber to be found (default: %(default)s)")
    pub.add_argument("--json", action="store_true", help="print the outcome as JSON")
    _common(pub)
    pub.set_defaults(run=run_pub)

    sub_p = actions.add_parser("sub", help="print the events matching patterns as they come")
    sub_p.add_argument("patterns", nargs="+", metavar="PATTERN", help="home.*.door (one token), home.> (the tail)")
    sub_p.add_argument("--regex", action="store_true", help="patterns are Pyro3-style regexes (re.match, any case)")
    sub_p.add_argument("--count", type=int, default=0, help="exit after this many events (default: run until Ctrl-C)")
    sub_p.add_argument("--delay", type=seconds, default=0.0, metavar="SECONDS",
                       help="pause this long after each event (to see how a slow subscriber is treated)")
    sub_p.add_argument("--json", action="store_true", help="one JSON object per event (and per loss)")
    _common(sub_p)
    sub_p.set_defaults(run=run_sub)

    serve = actions.add_parser("serve", help="run a central event server (Pyro3 Event Server API) for "
                                             "networks without multicast")
    serve.add_argument("--host", default=None, help="address to bind (default: MESHRPC_HOST, localhost)")
    serve.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    serve.add_argument("--no-mesh", action="store_true", help="do not announce it on the mesh")
    serve.add_argument("--json", action="store_true", help="print the URI as JSON")
    add_realm_option(serve)
    serve.set_defaults(run=run_serve)


def _common(p: argparse.ArgumentParser) -> None:
    add_realm_option(p)
    add_lan_option(p)
    p.add_argument("--server", default=None, metavar="URI|HOST:PORT",
                   help="use this event server instead of the mesh (default: MESHRPC_EVENTS_SERVER)")


def run_pub(args: argparse.Namespace, out: Output) -> int:
    from ..events import EventBus, check_subject
    check_subject(args.subject)
    message = parse_value(args.message)
    with EventBus(settings_for(args.realm, args.lan), server=args.server) as bus:
        if args.wait > 0:
            out.status(f"looking for subscribers of {args.subject} (up to {args.wait:g} s)...")
            bus.wait_for_subscribers(args.subject, 1, args.wait)
        count = bus.publish(args.subject, message, retain=args.retain)
        flushed = bus.flush(config.EVENTS_DELIVER_TIMEOUT)
        stats = bus.stats()
    if out.json_mode:
        out.json({"subject": args.subject, "subscribers": count, "delivered": stats["delivered"],
                  "dropped": stats["dropped"], "complete": flushed})
    else:
        out.line(f"published {args.subject} to {count} subscriber{'s' if count != 1 else ''}")
    if not flushed:
        late = [f"{s['uri']} ({s['failures']} failed attempts)" for s in stats["subscribers"] if s["queued"]
                or s["delivered"] == 0]
        out.err(f"not delivered within {config.EVENTS_DELIVER_TIMEOUT:g} s to: {', '.join(late) or '?'}")
    return 0 if flushed else 1


def run_sub(args: argparse.Namespace, out: Output) -> int:
    from ..events import Event, EventBus
    done = threading.Event()
    lock = threading.Lock()
    seen = 0

    def show(event: Event) -> None:
        nonlocal seen
        with lock:
            if done.is_set():
                return
            if out.json_mode:
                out.json(event.as_dict())
            else:
                when = time.strftime("%H:%M:%S", time.localtime(event.time))
                extra = "  (retained)" if event.retained else ""
                out.line(f"{when} {event.subject} {json.dumps(event.msg, default=str)}{extra}")
            seen += 1
            if args.count and seen >= args.count:
                done.set()
        if args.delay > 0:
            time.sleep(args.delay)

    def lost(publisher: str, count: int) -> None:
        with lock:
            if out.json_mode:
                out.json({"lost": count, "publisher": publisher})
            else:
                out.status(f"lost {count} event(s) from publisher {publisher}")

    with EventBus(settings_for(args.realm, args.lan), server=args.server, on_loss=lost) as bus:
        bus.subscribe(args.patterns, show, regex=args.regex)
        out.status(f"ready: subscribed to {' '.join(args.patterns)} (inbox {bus.stats()['inbox']}); Ctrl-C stops")
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
        stats = bus.stats()
    received = stats["received"]
    out.status(f"{received} event{'' if received == 1 else 's'} received, {stats['lost']} lost")
    return 0


def run_serve(args: argparse.Namespace, out: Output) -> int:
    from ..events.server import serve
    serve(args.host, args.port, announce=not args.no_mesh, settings=settings_for(args.realm), out=out)
    return 0
