"""`meshrpc config` (the effective settings) and `meshrpc version`."""

from __future__ import annotations

import argparse
import os
import platform

from ..config import ENV_PREFIX, Settings, config, reference_markdown
from .output import Output


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the effective configuration",
                       description="Print every setting with its effective value (defaults, then MESHRPC_* and "
                                   "PYRO_* environment variables). docs/configuration.md says what each means.")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--reference", action="store_true", help="the Markdown reference of every setting")
    p.set_defaults(run=run_config)
    p = sub.add_parser("version", help="print versions",
                       description="Print the versions of meshrpc, its protocol, Python and the libraries it uses.")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(run=run_version)


def run_config(args: argparse.Namespace, out: Output) -> int:
    if args.reference:
        out.stream.write(reference_markdown())
        return 0
    values = config.as_dict()
    if values.get("KEY"):
        values["KEY"] = "<set, not shown>"     # a shared secret: never printed
    if out.json_mode:
        out.json(values)
        return 0
    rows = []
    for name, _, default, _ in Settings.reference():
        source = "env" if ENV_PREFIX + name in os.environ else ("default" if values[name] == default else "set")
        rows.append((name, repr(values[name]), source))
    out.table(["SETTING", "VALUE", "SOURCE"], rows)
    return 0


def run_version(args: argparse.Namespace, out: Output) -> int:
    from .. import __version__
    from ..wire.frame import PROTOCOL_VERSION
    info = {"meshrpc": __version__, "protocol": PROTOCOL_VERSION, "python": platform.python_version()}
    for module in ("serpent", "zeroconf", "msgpack"):
        try:
            info[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            info[module] = None
    if out.json_mode:
        out.json(info)
    else:
        out.line(" ".join(f"{k} {v}" for k, v in info.items() if v is not None))
    return 0
