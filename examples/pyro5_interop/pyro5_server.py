"""A plain Pyro5 daemon that meshrpc proxies call (try meshrpc_client.py on it).

    python3 examples/pyro5_interop/pyro5_server.py       # prints its URI; serves until Ctrl-C
"""

import Pyro5.api


@Pyro5.api.expose
class Calculator:
    def add(self, a, b):
        return a + b

    def divide(self, a, b):
        return a / b

    def served_by(self):
        return "Pyro5"


def main() -> None:
    with Pyro5.api.Daemon(host="localhost") as daemon:
        uri = daemon.register(Calculator(), "calculator")
        print(uri, flush=True)
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
