"""The name-server fallback: where multicast cannot go, a daemon registers its objects in a name
server (Pyro5's API) instead of, or as well as, announcing them on the mesh.

    meshrpc ns                                    # a name server on localhost:9090 (another terminal)
    python3 examples/nameserver/server.py         # serves until Ctrl-C

The name server is found by meshrpc.locate_ns(): MESHRPC_NS_HOST/MESHRPC_NS_PORT, the mesh, or broadcast.
"""

import meshrpc

NAME = "example.ns.greeting"


@meshrpc.expose
class Greeting:
    def hello(self, name: str) -> str:
        return f"hello, {name}, via the name server!"


def main() -> None:
    with meshrpc.Daemon() as daemon:
        uri = daemon.register(Greeting())  # no name=: not announced on the mesh
        with meshrpc.locate_ns() as ns:
            ns.register(NAME, uri, metadata={"greeting", "example"})
            where = ns._pyroUri.location
        print(f"ready: {uri} registered as {NAME} in the name server at {where}", flush=True)
        try:
            daemon.requestLoop()
        except KeyboardInterrupt:
            pass
        finally:
            with meshrpc.locate_ns() as ns:  # tidy up: the name server does not know we left
                ns.remove(NAME)


if __name__ == "__main__":
    main()
