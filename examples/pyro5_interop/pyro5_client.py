"""A plain Pyro5 client: calls whatever daemon URI it is given (meshrpc's or Pyro5's).

    python3 examples/pyro5_interop/pyro5_client.py PYRO:calculator@localhost:PORT
"""

import sys

import Pyro5.api


def main() -> None:
    with Pyro5.api.Proxy(sys.argv[1]) as calculator:
        print(f"Pyro5 client -> {calculator.served_by()} daemon: 2 + 3 = {calculator.add(2, 3)}")
        try:
            calculator.divide(1, 0)
        except ZeroDivisionError as exc:
            print(f"Pyro5 client got the remote ZeroDivisionError: {exc}")


if __name__ == "__main__":
    main()
