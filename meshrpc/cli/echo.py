"""`meshrpc echo`: a test server with the methods of Pyro5's echo server (Pyro5.utils.echoserver), the
same results and error texts, and a few parameters of its own (slow(seconds), generator(count))."""

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
        raise ValueError("this is the generated error from echoserver echo() method")  # Pyro5's text

    def error_with_text(self) -> None:
        raise ValueError("the message of the error")

    def slow(self, seconds: float | None = None) -> str:
        """Pyro5's slow(): 5 s, then its answer; slow(seconds): that long (at most a minute)."""
        if seconds is None:
            time.sleep(5)
            return "Finally, an answer!"
        time.sleep(min(float(seconds), 60.0))
        return "slept %.1f s" % seconds

    def generator(self, count: int | None = None) -> Iterator[Any]:
        """Pyro5's generator(): "one", "two", "three"; generator(count): 0 .. count-1."""
        return iter(("one", "two", "three") if count is None else range(int(count)))

    def nan(self) -> float:
        return float("nan")

    def inf(self) -> float:
        return float("inf")

    def __dunder__(self) -> str:
        return "should be allowed (dunder)"

    @oneway
    def oneway_echo(self, message: Any) -> None:
        pass

    @oneway
    def oneway_slow(self) -> None:
        time.sleep(5)

    @oneway
    def shutdown(self) -> None:
        self.stopped.set()
        if self.daemon is not None:
            self.daemon.shutdown()  # wakes the request loop now, not at its next poll


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("echo", help="run a test server with echo, error, slow and generator methods",
                       description="Serve a test object (echo, error, slow, generator ...) and announce it on the "
                                   "mesh; prints its URI and serves until Ctrl-C. Try it with `meshrpc call`.")
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
