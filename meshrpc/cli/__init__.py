"""The `meshrpc` command: one module per sub-command, each with `add_parser(subparsers)` and `run(args)`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from .common import ArgumentValueError
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
    "get": "call",
    "set": "call",
    "ping": "call",
    "describe": "describe",
    "config": "config_cmd",
    "version": "config_cmd",
    "events": "events",
    "gateway": "gateway",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshrpc", description="Python remote objects on a zero-config service mesh.",
        epilog="Start with `meshrpc demo`. `meshrpc COMMAND --help` describes a command. Settings come from "
               "MESHRPC_* variables (`meshrpc config` shows them; MESHRPC_REALM picks the mesh). Exit codes: 0 "
               "success, 1 an error (or nothing found by lookup), 2 a usage error, 130 Ctrl-C. docs/cli.md has it all.")
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
    from ..config import ENV_PROBLEMS
    if ENV_PROBLEMS:  # checked before anything runs: one line, no traceback
        Output().err("ConfigError: " + "; ".join(ENV_PROBLEMS))
        return 2
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
    except BrokenPipeError:  # `meshrpc browse --watch --json | head`: the reader is gone, a normal end
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not fail again
        return 0
    except ArgumentValueError as exc:  # a value the typed-argument rule refuses: a usage error
        out.err(str(exc))
        return 2
    except Exception as exc:  # one clear line; the traceback only with --debug
        if args.debug:
            raise
        notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))  # e.g. which target timed out
        if getattr(args, "lan", None) is False and _LAN_HINT in str(exc):  # the library's hint, in this command's words
            notes += " (on this command: --lan)"
        out.err(f"{type(exc).__name__}: {exc}{notes}")
        return 1


_LAN_HINT = "MESHRPC_HOST=0.0.0.0"  # what an error says when the mesh listened on loopback only (resolve._loopback_note)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
