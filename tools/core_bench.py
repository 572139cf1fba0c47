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

`--side proxy` measures a real `Proxy.echo(1)` as a program makes it (issue 15's sixth pass): the
remote method, the proxy's call path, the session's request and reply lanes, the connection's send,
read and liveness check, against a fake peer. A thread of this process makes the handshake and
answers the first call over loopback TCP with the wire core; then the connection's `_sendall` and
`_recv` (its two I/O seams) are replaced: the request is dropped and the first reply comes back with
the request's seq, so each call costs no system call but the liveness check's getsockopt (the
socket stays connected). The same valgrind recipe, e.g.

    MESHRPC_SPIN_WAIT=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null python3 \
        tools/core_bench.py --side proxy --serializers serpent --rounds 1 --warmup 200 --calls 0
    (the same with --calls 3000)

`--side daemon` measures a real Daemon's whole request path instead (issue 15's fifth pass): the
selector loop, the worker's read, next_event, dispatch, context, hooks, the reply's send, over a
loopback TCP connection. A client in a separate process (not traced by valgrind: it is exec'd)
makes the handshake with the wire core, then sends one pre-encoded request per round trip
(`--burst K`: K at a time, so the worker finds them queued and never sleeps between them). Reported:
the daemon process's CPU per call (user + system, all its threads, from getrusage); instructions
per call the same way as above, e.g.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python3 tools/core_bench.py --side daemon \
        --serializers serpent --rounds 1 --warmup 200 --calls 0
    (the same with --calls 3000)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from meshrpc.config import Settings
from meshrpc.context import current_context, current_state
from meshrpc.wire.serializers import BY_ID, by_name
from meshrpc.wire.session import NEED_DATA, ClientSession, ServerSession

THIS = os.path.abspath(__file__)


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


# ---------------------------------------------------------------- a real daemon (--side daemon)

def pinger_main(port: int, serializer: str, binary: bool, warmup: int, calls: int, burst: int) -> int:
    """The client process of --side daemon: handshake with the wire core, then echo(1) requests, pre-encoded
    (the daemon does not check a request's seq), `burst` per write; "ready" after the warm-up, waits for
    a line on stdin, then "done" after the calls."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = ClientSession(by_name(serializer), Settings(SERPENT_BINARY=binary))
    sock.sendall(b"".join(client.connect_request("bench", "hello", {}, None)))
    while (event := client.next_event()) is NEED_DATA:
        client.receive_data(sock.recv(65536))
    request = b"".join(client.call_request("bench", "echo", (1,), None, 0, {}, None))
    sock.sendall(request)
    reply_size = 0  # every reply to this request has the size of the first
    while (event := client.next_event()) is NEED_DATA:
        data = sock.recv(65536)
        reply_size += len(data)
        client.receive_data(data)
    if client.reply_value(event, client.take_blobs(event)) != 1:
        raise SystemExit("the daemon did not echo 1")
    requests = request * burst
    expect = reply_size * burst
    recv_into = sock.recv_into
    scratch = bytearray(max(expect, 65536))
    view = memoryview(scratch)

    def run(rounds: int) -> None:
        for _ in range(rounds):
            sock.sendall(requests)
            got = 0
            while got < expect:
                count = recv_into(view[got:expect])
                if not count:
                    raise SystemExit("the daemon closed the connection")
                got += count

    run(warmup // burst)
    print("ready", flush=True)
    sys.stdin.readline()
    run(calls // burst)
    print("done", flush=True)
    sys.stdin.readline()  # the daemon side reads its clock before this connection goes
    sock.close()
    return 0


def daemon_side(serializer: str, binary: bool, warmup: int, calls: int, burst: int) -> dict[str, float]:
    """A real Daemon (default settings) serving echo(value), driven by a pinger process: the daemon
    process's CPU microseconds per call (user, system) and the calls/s."""
    import meshrpc

    @meshrpc.expose
    class Bench:
        def echo(self, value: Any) -> Any:
            return value

    daemon = meshrpc.Daemon(host="127.0.0.1", port=0)
    daemon.register(Bench(), "bench")
    loop = threading.Thread(target=daemon.requestLoop, name="request-loop", daemon=True)
    loop.start()
    pinger = subprocess.Popen([sys.executable, THIS, "--pinger", str(daemon.locationStr.rsplit(":", 1)[1]),
                               "--serializers", serializer, "--warmup", str(warmup), "--calls", str(calls),
                               "--burst", str(burst), *([] if binary else ["--text-serpent"])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert pinger.stdin is not None and pinger.stdout is not None
        if pinger.stdout.readline().strip() != "ready":
            raise SystemExit("the pinger failed")
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        pinger.stdin.write("go\n")
        pinger.stdin.flush()
        if pinger.stdout.readline().strip() != "done":
            raise SystemExit("the pinger failed")
        after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
        pinger.stdin.write("bye\n")
        pinger.stdin.close()
        pinger.wait(30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
        daemon.shutdown()
        loop.join(30)
    per_call = 1e6 / calls if calls else 0.0
    return {"user": round((after.ru_utime - before.ru_utime) * per_call, 2),
            "system": round((after.ru_stime - before.ru_stime) * per_call, 2),
            "calls_per_s": round(calls / elapsed) if calls else 0}


# ---------------------------------------------------------------- a real Proxy (--side proxy)

def proxy_loop(serializer: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(run, close): run(calls) makes `calls` echo(1) calls on a real Proxy whose peer is faked after
    the handshake and one real call (see the module's doc)."""
    import meshrpc

    listener = socket.create_server(("127.0.0.1", 0))
    finished = threading.Event()
    replies: list[bytes] = []

    def serve() -> None:
        sock, _ = listener.accept()
        server = ServerSession(Settings(), pipelining=False)
        answered = 0
        while answered < 2:
            while (event := server.next_event()) is NEED_DATA:
                server.receive_data(sock.recv(65536))
            if not answered:
                sock.sendall(b"".join(server.accept_connect(event, "hello", {"methods": ["echo"]})))
            else:
                reply = b"".join(server.result_reply(event, server.decode_call(event)[2][0], {}))
                replies.append(reply)
                sock.sendall(reply)
            answered += 1
        finished.wait()
        sock.close()

    serving = threading.Thread(target=serve, name="fake-peer", daemon=True)
    serving.start()
    proxy = meshrpc.Proxy(f"PYRO:bench@127.0.0.1:{listener.getsockname()[1]}")
    proxy._pyroSerializer = serializer
    if proxy.echo(1) != 1:
        raise SystemExit("the fake peer did not echo 1")
    conn = proxy._pyroConnection
    head, tail = replies[0][:10], replies[0][12:]  # the reply, less its seq (bytes 10-11)
    sent = [b""]

    def fake_sendall(part: Any) -> None:
        sent[0] = part

    def fake_recv(size: int) -> bytes:
        return head + sent[0][10:12] + tail

    conn._sendall, conn._recv = fake_sendall, fake_recv
    echo = proxy.echo

    def run(calls: int) -> None:
        for _ in range(calls):
            echo(1)

    def close() -> None:
        proxy._pyroConnection = None  # the fake connection is not closed by a goodbye
        finished.set()
        serving.join(30)
        listener.close()
        conn.sock.close()

    return run, close


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
    parser.add_argument("--side", choices=["both", "client", "server", "daemon", "proxy"], default="both",
                        help="daemon: a real Daemon's request path, with a client process; proxy: a real "
                             "Proxy's call against a fake peer (neither is in 'both')")
    parser.add_argument("--burst", type=int, default=1, help="daemon: requests per write (1: ping-pong)")
    parser.add_argument("--text-serpent", action="store_true",
                        help="daemon: serpent as text, as Pyro5 proxies send it (no binary form agreed)")
    parser.add_argument("--pinger", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serializers", default="serpent,marshal", help="comma-separated names")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    if args.pinger:
        return pinger_main(args.pinger, args.serializers, not args.text_serpent, args.warmup, args.calls, args.burst)
    if args.side == "daemon":
        for name in args.serializers.split(","):
            runs = [daemon_side(name, not args.text_serpent, args.warmup, args.calls, args.burst)
                    for _ in range(args.rounds)]
            results[name] = min(runs, key=lambda r: r["user"] + r["system"])
        if args.json:
            print(json.dumps(results))
        else:
            for name, r in results.items():
                print(f"{name}: daemon {r['user'] + r['system']:.2f} us/call (user {r['user']:.2f}, "
                      f"system {r['system']:.2f}), {r['calls_per_s']} calls/s")
        return 0
    if args.side == "proxy":
        for name in args.serializers.split(","):
            run, close = proxy_loop(name)
            try:
                run(args.warmup)
                results[name] = {"proxy": round(best_us(run, args.calls, args.rounds), 2)}
            finally:
                close()
        if args.json:
            print(json.dumps(results))
        else:
            for name, sides in results.items():
                print(f"{name}: proxy {sides['proxy']:.2f} us/call")
        return 0
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
