"""A meshrpc daemon that Pyro5 programs call like any Pyro5 daemon (try pyro5_client.py on it).

    python3 examples/pyro5_interop/meshrpc_server.py     # prints its URI; serves until Ctrl-C
"""

import meshrpc


@meshrpc.expose
class Calculator:
    def add(self, a: float, b: float) -> float:
        return a + b

    def divide(self, a: float, b: float) -> float:
        return a / b  # b == 0: ZeroDivisionError, raised in the caller too

    def served_by(self) -> str:
        return "meshrpc"


def main() -> None:
    with meshrpc.Daemon() as daemon:
        uri = daemon.register(Calculator(), "calculator", name="example.calculator")
        print(uri, flush=True)
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
