"""The wire core's work for one small call, per side, without sockets (issue 15's lean path).

Client: call_request + the reply's receive_data/next_event/reply_value. Server: receive_data,
next_event, decode_call, current_context.begin, result_reply (what a daemon's worker asks the
session for, per request). Reported as CPU microseconds per call (process time, best of --rounds):
machine noise moves it far less than a socket benchmark, but it still moves on a shared machine.
For a figure that does not move at all, count instructions (valgrind is deterministic):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python3 tools/core_bench.py --side server \
        --serializers serpent --rounds 1 --warmup 0 --calls 0
    (the same with --calls 3000)

and divide the difference of the two "Collected" totals by 3000 (instructions per call).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from meshrpc.config import Settings
from meshrpc.context import current_context, current_state
from meshrpc.wire.serializers import BY_ID, by_name
from meshrpc.wire.session import ClientSession, ServerSession


def connected(serializer: str, settings: Settings) -> tuple[ClientSession, ServerSession]:
    """A client and a server session after a real handshake (capabilities agreed as between meshrpc peers)."""
    client = ClientSession(by_name(serializer), settings)
    server = ServerSession(settings, pipelining=False)
    server.receive_data(b"".join(client.connect_request("obj", "hello", {}, None)))
    client.receive_data(b"".join(server.accept_connect(server.next_event(), "hello", {"methods": {"echo"}})))
    client.next_event()
    return client, server


class _Peer:
    addr = ("127.0.0.1", 1)


def loops(serializer: str) -> dict[str, Callable[[int], None]]:
    """The per-side loops of `calls` echo(i) calls; each side answers itself from a canned message."""
    client, server = connected(serializer, Settings())
    request = b"".join(client.call_request("obj", "echo", (1,), None, 0, {}, None))
    server.receive_data(request)
    frame = server.next_event()
    reply = b"".join(server.result_reply(frame, 1, {}))
    client.receive_data(reply)
    event = client.next_event()
    client.reply_value(event, client.take_blobs(event))
    state = current_state()
    peer = _Peer()

    def client_side(calls: int) -> None:
        call_request, receive, next_event = client.call_request, client.receive_data, client.next_event
        take_blobs, reply_value = client.take_blobs, client.reply_value
        for i in range(calls):
            call_request("obj", "echo", (i,), None, 0, state.annotations, None)
            receive(reply[:10] + client.last_seq.to_bytes(2, "big") + reply[12:])  # the reply to this seq
            event = next_event()
            reply_value(event, take_blobs(event))

    def server_side(calls: int) -> None:
        receive, next_event, decode_call, result_reply = (server.receive_data, server.next_event,
                                                          server.decode_call, server.result_reply)
        begin = current_context.begin
        for _ in range(calls):
            receive(request)
            frame = next_event()
            call = decode_call(frame)
            begin(peer, peer.addr, frame.seq, frame.flags, BY_ID[frame.serializer_id].values.id, frame.annotations,
                  frame.correlation_id)
            result_reply(frame, call[2][0], current_state().response_annotations, 0)
            next_event()  # NEED_DATA, as a worker sees after each request

    return {"client": client_side, "server": server_side}


def best_us(run: Callable[[int], None], calls: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        run(calls)
        best = min(best, time.process_time() - started)
    return best / calls * 1e6 if calls else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=30000, help="calls per round (0: set up only)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is reported")
    parser.add_argument("--warmup", type=int, default=200, help="calls before the measured rounds")
    parser.add_argument("--side", choices=["both", "client", "server"], default="both")
    parser.add_argument("--serializers", default="serpent,marshal", help="comma-separated names")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for name in args.serializers.split(","):
        sides = loops(name)
        for side in ("client", "server"):
            if args.side in ("both", side):
                sides[side](args.warmup)
                results.setdefault(name, {})[side] = round(best_us(sides[side], args.calls, args.rounds), 2)
    if args.json:
        print(json.dumps(results))
    else:
        for name, sides in results.items():
            print(f"{name}: " + ", ".join(f"{side} {us:.2f} us/call" for side, us in sides.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
