"""Calls `example.failover` again and again through one proxy; kill the replica that answers and
watch the same proxy carry on with another one.

    python3 examples/failover/client.py [--count N] [--pause SECONDS]     # Ctrl-C stops it
"""

import argparse
import time

import meshrpc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=0, help="calls to make (default: until Ctrl-C)")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between calls")
    args = parser.parse_args()
    proxy = meshrpc.Proxy("PYRONAME:example.failover")
    n = 0
    try:
        while not args.count or n < args.count:
            n += 1
            try:
                answer = proxy.square(n)
                print(f"call {n}: {answer['result']} from replica {answer['replica']}", flush=True)
            except meshrpc.errors.CommunicationError as exc:  # only when no replica is left
                print(f"call {n}: failed: {exc}", flush=True)
            time.sleep(args.pause)
    except KeyboardInterrupt:
        pass
    finally:
        proxy._pyroRelease()


if __name__ == "__main__":
    main()
