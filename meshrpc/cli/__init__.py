"""The `meshrpc` command: one module per sub-command, each with `add_parser(subparsers)` and `run(args)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from .output import Output

# sub-command name -> module (loaded only when used, so `meshrpc --help` stays fast)
COMMANDS = {
    "demo": "demo",
    "browse": "browse",
    "lookup": "lookup",
    "list": "lookup",
    "yplookup": "lookup",
    "register": "lookup",
    "remove": "lookup",
    "ns": "ns",
    "echo": "echo",
    "call": "call",
    "ping": "call",
    "config": "config_cmd",
    "version": "config_cmd",
    "events": "events",
    "gateway": "gateway",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshrpc", description="Python remote objects on a zero-config service mesh.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    seen = set()
    for module_name in COMMANDS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ImportError:
            continue  # a sub-command not shipped yet
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    out = Output(json_mode=getattr(args, "json", False))
    try:
        return int(args.run(args, out) or 0)
    except KeyboardInterrupt:
        out.err("interrupted")
        return 130
    except Exception as exc:  # one clear line; the traceback only with --debug
        if args.debug:
            raise
        out.err(f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
