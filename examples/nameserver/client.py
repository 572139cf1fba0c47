"""Resolves a name through the name server only (start `meshrpc ns` and server.py first).

    MESHRPC_RESOLVE=ns python3 examples/nameserver/client.py
"""

import meshrpc


def main() -> None:
    if meshrpc.config.RESOLVE != "ns":
        print(f"note: MESHRPC_RESOLVE is {meshrpc.config.RESOLVE!r}: the mesh is asked first (and waits "
              f"{meshrpc.config.LOOKUP_TIMEOUT:g} s for a name it never hears of)")
    with meshrpc.locate_ns() as ns:
        for name, (uri, tags) in sorted(ns.list(prefix="example.", return_metadata=True).items()):
            print(f"in the name server: {name} -> {uri} {sorted(tags)}")
    with meshrpc.Proxy("PYRONAME:example.ns.greeting") as greeting:
        print(greeting.hello("world"))


if __name__ == "__main__":
    main()
