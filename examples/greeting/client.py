"""Calls the greeting service by name: the mesh finds it (start server.py first).

    python3 examples/greeting/client.py [NAME]
"""

import sys

import meshrpc


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "world"
    with meshrpc.Proxy("PYRONAME:example.greeting") as greeting:
        print(greeting.hello(name))
        print(f"(served by {greeting._pyroUri})")


if __name__ == "__main__":
    main()
