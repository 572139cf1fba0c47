"""`meshrpc describe URI`: what a remote object offers (methods with signatures and docstrings,
properties, oneway/idempotent flags) and, for objects on the mesh, its name, tags and host."""

from __future__ import annotations

import argparse
from typing import Any

from ..limits import CLI_CALL_TIMEOUT
from ..wire.constants import DAEMON_OBJECT_ID
from .call import open_proxy
from .common import add_lan_option, add_realm_option, seconds
from .output import Output


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", help="show the methods, properties, tags and host of a remote object",
                       description="Show what the object at URI exposes: methods with their signatures, "
                                   "docstrings and oneway/idempotent flags, properties, and its mesh name, "
                                   "tags and host when it is announced.")
    p.add_argument("uri", help="PYRO:, PYRONAME: or PYROMETA: URI")
    p.add_argument("--timeout", type=seconds, default=CLI_CALL_TIMEOUT,
                   help="seconds to wait on the network: a name's lookup, connecting, the reply; 0: no limit "
                        "(default %(default)s)")
    add_realm_option(p)
    add_lan_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(run=run)


def mesh_entry(args: argparse.Namespace, target: str) -> Any:
    """The mesh entry announcing target (a PYRO URI), if this process's registry heard one."""
    if "meshrpc.mesh" not in __import__("sys").modules:
        return None  # the URI was direct: the mesh was not asked, and waiting for it here is not worth it
    from ..mesh import net
    from . import browse
    registry = browse.registry_for(args.realm, args)
    for entry in registry.list():
        if target in (entry.uri, str(net.reachable_uri(entry.uri, entry.other_hosts))):
            return entry
    return None


def run(args: argparse.Namespace, out: Output) -> int:
    with open_proxy(args, out=out) as proxy:
        proxy._pyroBind()
        target = proxy._pyroUri
        try:
            meta = proxy._pyroInvoke("get_metadata", (target.object, True, True), None, object_id=DAEMON_OBJECT_ID)
        except TypeError:  # a Pyro5 daemon: get_metadata(objectId) only, and the handshake told us the names
            meta = {"methods": proxy._pyroMethods, "oneway": proxy._pyroOneway, "attrs": proxy._pyroAttrs}
    details = meta.get("details")
    if details is None:  # a Pyro5 daemon (or an older meshrpc): names and flags only
        details = {"class": None, "doc": "", "attrs": {name: {"doc": "", "writable": None} for name in meta["attrs"]},
                   "methods": {name: {"signature": "(...)", "doc": "", "oneway": name in meta["oneway"],
                                      "idempotent": name in meta.get("idempotent", ())} for name in meta["methods"]}}
    try:
        entry = mesh_entry(args, str(target))
    except Exception:  # the mesh is extra information here, never a reason to fail
        entry = None
    result = {"uri": str(target), "host": target.host or target.sockname, "name": entry.name if entry else None,
              "metadata": sorted(entry.metadata) if entry else [], **details}
    if out.json_mode:
        out.json(result)
        return 0
    head = f"{result['class'] or 'object'} at {result['uri']}"
    if result["name"]:
        head += f"  (PYRONAME:{result['name']})"
    out.line(head, "bold")
    out.line(f"host: {result['host']}" + (f"   tags: {', '.join(result['metadata'])}" if result["metadata"] else ""))
    if result["doc"]:
        out.line(_indent(result["doc"], 2))
    out.line()
    out.line("methods:", "bold")
    for name, method in result["methods"].items():
        flags = [flag for flag in ("oneway", "idempotent") if method.get(flag)]
        out.line(f"  {name}{method['signature']}" + (f"   [{', '.join(flags)}]" if flags else ""))
        if method["doc"]:
            out.line(_indent(method["doc"], 6), "dim")
    if result["attrs"]:
        out.line("properties:", "bold")
        for name, attr in result["attrs"].items():
            mode = {True: "read/write", False: "read-only", None: ""}[attr["writable"]]
            out.line(f"  {name}" + (f"   [{mode}]" if mode else ""))
            if attr["doc"]:
                out.line(_indent(attr["doc"], 6), "dim")
    return 0


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())
