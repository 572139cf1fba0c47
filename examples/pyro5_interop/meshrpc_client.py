"""A meshrpc client: calls whatever daemon URI it is given (Pyro5's or meshrpc's).

    python3 examples/pyro5_interop/meshrpc_client.py PYRO:calculator@localhost:PORT
"""

import sys

import meshrpc


def main() -> None:
    with meshrpc.Proxy(sys.argv[1]) as calculator:
        print(f"meshrpc client -> {calculator.served_by()} daemon: 2 + 3 = {calculator.add(2, 3)}")
        try:
            calculator.divide(1, 0)
        except ZeroDivisionError as exc:
            print(f"meshrpc client got the remote ZeroDivisionError: {exc}")
            remote = meshrpc.errors.get_remote_traceback(exc) or ""
            print(f"with the remote traceback attached ({len(remote.splitlines())} lines)")


if __name__ == "__main__":
    main()
