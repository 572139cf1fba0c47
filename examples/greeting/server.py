"""A greeting service, announced on the mesh as `example.greeting`: no name server anywhere.

    python3 examples/greeting/server.py          # serves until Ctrl-C
"""

import meshrpc


@meshrpc.expose
class Greeting:
    def hello(self, name: str) -> str:
        return f"hello, {name}!"


def main() -> None:
    with meshrpc.Daemon() as daemon:  # binds MESHRPC_HOST: localhost by default, so nothing leaves this machine
        uri = daemon.register(Greeting(), name="example.greeting")
        print(f"ready: {uri} (PYRONAME:example.greeting, realm {meshrpc.config.REALM!r})", flush=True)
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass  # leaving the `with` closes the daemon and says goodbye on the mesh


if __name__ == "__main__":
    main()
