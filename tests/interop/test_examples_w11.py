"""What running Pyro5's own example programs with one side on meshrpc found (session 11, w11-examples),
each as a test of its own: the programs themselves are compared in test_pyro5_examples.py; these pin
the behaviour underneath, with real sockets and real Pyro5.
"""

from __future__ import annotations

import select
import socket
import threading
import time

import Pyro5.api
import Pyro5.errors
import pytest

import meshrpc
import meshrpc.errors
from meshrpc.naming.broadcast import BroadcastServer

HOST = "127.0.0.1"
WAIT = 10.0  # seconds: a bound on every wait here


@meshrpc.expose
class Gate:
    """hold() runs until the test opens the gate: a call in progress while the daemon shuts down."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self) -> str:
        self.entered.set()
        self.opened.wait(WAIT)
        return "held"

    def ping(self) -> str:
        return "pong"


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=WAIT).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.timeout(30)
def test_a_pyro5_proxy_calling_a_daemon_that_shuts_down_gets_connection_closed() -> None:
    """Pyro5's distributed-computing example with a meshrpc dispatcher: when the dispatcher stops (SIGTERM),
    a Pyro5 worker's call that arrives while the daemon drains its calls in progress got DaemonError "the
    daemon is shutting down; the call was not run". A Pyro5 daemon that stops closes the connection:
    Pyro5 programs expect ConnectionClosedError there and reconnect on it (autoreconnect, messagebus's
    publisher, disconnects: `except ConnectionClosedError` / `except CommunicationError`), while
    DaemonError is neither and ends them. meshrpc proxies, which understand the "not run" answer, keep it."""
    gate = Gate()
    daemon = meshrpc.Daemon(host=HOST)
    uri = str(daemon.register(gate, "gate"))
    port = int(daemon.locationStr.rsplit(":", 1)[1])
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    loop.start()
    holder_result: list[object] = []
    try:
        with Pyro5.api.Proxy(uri) as caller:
            caller.ping()  # connected before the shutdown

            def hold() -> None:
                with Pyro5.api.Proxy(uri) as holder:
                    holder_result.append(holder.hold())

            holding = threading.Thread(target=hold, daemon=True)
            holding.start()
            assert gate.entered.wait(WAIT), "the call in progress did not start"
            stopping = threading.Thread(target=daemon.shutdown, daemon=True)
            stopping.start()
            deadline = time.monotonic() + WAIT
            while not _refuses_connections(port):  # the drain has begun: it closes the listener first
                assert time.monotonic() < deadline, "the daemon did not start shutting down"
            with pytest.raises(Pyro5.errors.ConnectionClosedError):
                caller.ping()
    finally:
        gate.opened.set()
        loop.join(WAIT)
        daemon.close()
    assert holder_result == ["held"], "the call in progress must still finish"


@pytest.mark.timeout(30)
def test_process_request_answers_one_query_per_call_as_pyro5s() -> None:
    """Pyro5's eventloop example selects on the broadcast server next to its daemons and calls
    processRequest() each time it is readable, printing a line per call: Pyro5 answers one waiting
    query per call (the next one keeps the server readable). meshrpc's answered every waiting query at
    once, so two clients asking at the same moment printed one line, not two."""
    with BroadcastServer(f"PYRO:Pyro.NameServer@{HOST}:9090", HOST, 0) as responder:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
            asker.settimeout(WAIT)
            for _ in range(2):
                asker.sendto(b"GET_NSURI", (responder.addresses[0], responder.port))
            answered = 0
            while answered < 2:
                readable, _, _ = select.select([responder], [], [], WAIT)
                assert readable == [responder], f"select() on the broadcast server did not wake ({answered} answered)"
                responder.processRequest()
                answered += 1
                assert asker.recvfrom(1000)[0] == f"PYRO:Pyro.NameServer@{HOST}:9090".encode()
                asker.setblocking(False)
                with pytest.raises(BlockingIOError):
                    asker.recvfrom(1000)  # one answer per processRequest(): the other query still waits
                asker.setblocking(True)
                asker.settimeout(WAIT)


def test_a_class_with_double_underscores_is_refused_in_pyro5s_words() -> None:
    """Pyro5's chatbox example passes its callback object to join() while another thread registers it in
    the client's daemon; when join() wins, the object goes as a plain dict of class __main__.Chatter, and
    the server refuses it. The refusal must read as Pyro5's (the guide: error texts are Pyro5's where
    programs see them)."""
    data = {"__class__": "__main__.Chatter", "nick": "bob"}
    with pytest.raises(Pyro5.errors.SecurityError) as pyro5s:
        Pyro5.api.SerializerBase.dict_to_class(data)
    with pytest.raises(meshrpc.errors.SecurityError) as ours:
        meshrpc.SerializerBase.dict_to_class(data)
    assert str(ours.value) == str(pyro5s.value)
