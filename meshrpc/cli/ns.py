"""`meshrpc ns`: run the fallback name server (Pyro5-compatible) until Ctrl-C or SIGTERM.

Also runnable as `python -m meshrpc.cli.ns [options]`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..config import config
from ..server.signals import stop_on_signals
from .common import add_realm_option, settings_for
from .output import Output


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ns", help="run the fallback name server (Pyro5-compatible)",
                       description="Run a name server that meshrpc and Pyro5 clients can use "
                                   "(docs/nameserver.md).")
    _add_arguments(p)
    p.set_defaults(run=run)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--host", default=None,
                   help="address to bind (default: MESHRPC_NS_HOST, else MESHRPC_HOST, localhost)")
    p.add_argument("-p", "--port", type=int, default=None,
                   help=f"TCP port, 0 for any free one (default: MESHRPC_NS_PORT, {config.NS_PORT})")
    p.add_argument("--bcport", type=int, default=None,
                   help=f"UDP port of the broadcast responder, 0 for any free one "
                        f"(default: MESHRPC_NS_BCPORT, {config.NS_BCPORT})")
    p.add_argument("-s", "--storage", default="memory", metavar="memory|sql:PATH",
                   help="where entries live: memory (default) or an sqlite file that survives restarts")
    p.add_argument("-x", "--no-broadcast", action="store_true", help="do not answer broadcast discovery")
    p.add_argument("--autoclean", type=float, default=None, metavar="SECONDS",
                   help="probe registered daemons this often and drop those that stay unreachable (default: off)")
    p.add_argument("--mesh", action="store_true", help="also announce the name server on the mesh (mDNS)")
    p.add_argument("--bridge", action="store_true",
                   help="mirror the services heard on the mesh into the name server, for clients that "
                        "reach only the name server")
    add_realm_option(p)
    p.add_argument("--json", action="store_true", help="print the URI as JSON")


def run(args: argparse.Namespace, out: Output) -> int:
    from ..naming import start_ns
    uri, daemon, bcserver = start_ns(args.host, args.port, args.bcport, storage=args.storage,
                                     settings=settings_for(args.realm),
                                     enable_broadcast=not args.no_broadcast, autoclean=args.autoclean,
                                     announce=args.mesh, bridge=args.bridge)
    try:
        if bcserver is not None:
            bcserver.run_in_thread()
        with stop_on_signals(daemon):  # before saying ready: a SIGTERM right after it must say goodbye
            count = daemon.nameserver.count()
            if out.json_mode:
                out.json({"uri": str(uri), "broadcast": bcserver.locationStr if bcserver else None,
                          "storage": args.storage, "entries": count})
            else:
                out.line(f"name server ready: {uri}")
                if bcserver is not None:
                    where = ", ".join(f"{address or '0.0.0.0'}:{bcserver.port}" for address in bcserver.addresses)
                    broadcast = f"broadcast responder on {where}"
                else:
                    broadcast = "no broadcast responder"
                out.status(f"storage {args.storage}, {count} entries; {broadcast}")
                out.status("Ctrl-C or SIGTERM stops it")
            try:
                daemon.requestLoop()
            except KeyboardInterrupt:
                pass  # Ctrl-C is how a name server is meant to stop
    finally:
        daemon.close()
        if bcserver is not None:
            bcserver.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m meshrpc.cli.ns`: the sub-command on its own (same options, same error handling)."""
    from . import main as cli_main
    args = list(sys.argv[1:] if argv is None else argv)
    debug = ["--debug"] if "--debug" in args else []
    return cli_main([*debug, "ns", *(a for a in args if a != "--debug")])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
