"""`meshrpc echo`: a test server (like Pyro's echo server) with echo, error, slow and generator."""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any, Iterator

from .. import Daemon, expose, oneway
from ..server.signals import stop_on_signals
from .common import add_realm_option, settings_for
from .output import Output


@expose
class EchoServer:
    """Answers what it is sent; useful to try clients and the mesh."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.daemon: Daemon | None = None  # stopped at once by shutdown()

    def echo(self, message: Any) -> Any:
        return message

    def error(self) -> None:
        raise ValueError("this is the error you asked for")

    def slow(self, seconds: float = 1.0) -> str:
        time.sleep(min(float(seconds), 60.0))
        return "slept %.1f s" % seconds

    def generator(self, count: int = 5) -> Iterator[int]:
        return iter(range(int(count)))

    @oneway
    def oneway_echo(self, message: Any) -> None:
        pass

    @oneway
    def shutdown(self) -> None:
        self.stopped.set()
        if self.daemon is not None:
            self.daemon.shutdown()  # wakes the request loop now, not at its next poll


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("echo", help="run a test server with echo, error, slow and generator methods")
    p.add_argument("--host", default=None, help="address to bind (default: MESHRPC_HOST, localhost)")
    p.add_argument("--port", type=int, default=0, help="port (default: any free port)")
    p.add_argument("--name", default="meshrpc.echo", help="name to advertise on the mesh (default: %(default)s)")
    p.add_argument("--tag", action="append", default=[], help="metadata tag to advertise (repeatable)")
    p.add_argument("--no-mesh", action="store_true", help="do not advertise on the mesh")
    add_realm_option(p)
    p.add_argument("--json", action="store_true", help="print the URI as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out: Output) -> int:
    server = EchoServer()
    with Daemon(args.host, args.port, settings=settings_for(args.realm)) as daemon:
        server.daemon = daemon
        if args.no_mesh:
            uri = daemon.register(server, "echo")
        else:
            uri = daemon.register(server, "echo", name=args.name, metadata=set(args.tag) or {"echo"})
        if out.json_mode:
            out.json({"uri": str(uri), "name": None if args.no_mesh else args.name})
        else:
            out.line(f"echo server ready: {uri}" + ("" if args.no_mesh else f"  (PYRONAME:{args.name})"))
            out.status("Ctrl-C, SIGTERM or the oneway call shutdown() stops it")
        try:
            with stop_on_signals(daemon):  # SIGTERM (a service manager's stop) ends it like Ctrl-C: goodbyes sent
                daemon.requestLoop(lambda: not server.stopped.is_set())
        except KeyboardInterrupt:
            pass  # Ctrl-C is how an echo server is meant to stop
    return 0
