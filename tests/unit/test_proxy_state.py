"""The threaded proxy's call path reads its state from the proxy's __dict__ and keeps known remote
methods there (issue 15, sixth pass): every rule a program may rely on still holds. Real daemon, real
sockets (a daemon in this process)."""

from __future__ import annotations

import copy
import pickle
import threading
from unittest import mock

import pytest
from support import wait_until

from meshrpc import Proxy, current_context, errors, expose
from meshrpc.wire.session import TAKE_EVENT, ClientSession

WAIT = 10.0


@expose
class Service:
    def echo(self, value):
        return value

    def other(self):
        return "other"

    def sent_annotations(self):
        return {key: bytes(value) for key, value in current_context.annotations.items() if key == "XTRA"}


@pytest.fixture
def uri(start_daemon):
    return start_daemon(host="127.0.0.1").register(Service(), "service")


def lane_counter(monkeypatch) -> list[int]:
    """[replies the lane took] (ClientSession.receive_result gave a payload)."""
    taken = [0]
    original = ClientSession.receive_result

    def counted(session, data):
        payload = original(session, data)
        taken[0] += payload is not TAKE_EVENT
        return payload
    monkeypatch.setattr(ClientSession, "receive_result", counted)
    return taken


def test_a_known_method_is_found_by_plain_lookup_afterwards(uri, monkeypatch):
    with Proxy(uri) as proxy:
        method = proxy.echo
        assert proxy.__dict__["echo"] is method and proxy.echo is method
        monkeypatch.setattr(Proxy, "__getattr__", lambda self, name: pytest.fail(f"__getattr__({name})"))
        assert proxy.echo(1) == 1 and proxy.echo(2) == 2


def test_new_metadata_forgets_the_methods_it_no_longer_names(uri):
    with Proxy(uri) as proxy:
        assert proxy.echo(1) == 1
        proxy._pyroProcessMetadata({"methods": ["other"]})
        assert "echo" not in proxy.__dict__
        with pytest.raises(AttributeError, match="no exposed attribute or method 'echo'"):
            proxy.echo
        assert proxy.other() == "other"
        proxy._pyroGetMetadata()  # the daemon's own metadata again: echo is back
        assert proxy.echo(3) == 3


def test_an_invoke_override_on_the_class_or_the_instance_is_called(uri):
    calls = []

    class Logged(Proxy):
        def _pyroInvoke(self, methodname, vargs, kwargs, flags=0, object_id=None):
            calls.append(methodname)
            return super()._pyroInvoke(methodname, vargs, kwargs, flags, object_id)

    with Logged(uri) as proxy:
        assert proxy.echo(1) == 1 and proxy.echo(2) == 2
    assert calls.count("echo") == 2
    with Proxy(uri) as proxy:
        assert proxy.echo(1) == 1  # the method is made (and kept) before the patch
        with mock.patch.object(proxy, "_pyroInvoke", return_value="patched") as patched:
            assert proxy.echo(2) == "patched"
        patched.assert_called_once_with("echo", (2,), {}, 0)
        assert proxy.echo(3) == 3  # the patch is gone: the real call again


def test_changes_of_the_oneway_set_are_seen_by_methods_already_made(uri):
    with Proxy(uri) as proxy:
        echo = proxy.echo
        assert echo(1) == 1
        proxy._pyroOneway.add("echo")
        assert echo(2) is None  # oneway: no reply waited for
        proxy._pyroOneway = set()
        assert echo(3) == 3


@pytest.mark.parametrize("twin_of", [copy.copy, copy.deepcopy, lambda p: pickle.loads(pickle.dumps(p))],
                         ids=["copy", "deepcopy", "pickle"])
def test_a_copy_calls_on_its_own_connection(uri, twin_of):
    with Proxy(uri) as proxy:
        assert proxy.echo(1) == 1
        seq = proxy._pyroSeq
        with twin_of(proxy) as twin:
            assert twin.echo(2) == 2
            assert twin._pyroConnection is not None and twin._pyroConnection is not proxy._pyroConnection
            assert twin.echo._proxy is twin
        assert proxy._pyroSeq == seq  # nothing went over the original's connection
        assert proxy.echo(3) == 3


def test_a_thread_that_never_touched_the_call_context_takes_the_lane(uri, monkeypatch):
    taken = lane_counter(monkeypatch)
    results: list = []

    def calls() -> None:
        try:
            with Proxy(uri) as proxy:
                proxy._pyroBind()  # the metadata first: it replaces the oneway set
                proxy._pyroOneway.add("other")
                results.append(proxy.other())  # oneway first: no context to clear
                results.append(proxy.echo(1))
                current_context.annotations = {"XTRA": b"1"}  # from now on: the general path
                results.append(proxy.sent_annotations())
        except BaseException as exc:  # reported by the test thread
            results.append(exc)

    thread = threading.Thread(target=calls)
    thread.start()
    thread.join(WAIT)
    assert results == [None, 1, {"XTRA": b"1"}]
    assert taken[0] == 1  # echo(1) only


def test_a_proxy_sends_without_the_connection_send_lock_or_clock(uri):
    with Proxy(uri) as proxy:
        assert proxy.echo(1) == 1
        conn = proxy._pyroConnection
        conn.send_lock = None  # the proxy's own lock serializes its sends
        conn.last_active = -1.0
        assert proxy.echo(2) == 2
        assert conn.last_active == -1.0


def count_checks(conn) -> list[int]:
    """[peer checks made] on `conn` from now on."""
    seen = [0]
    real = conn.peer_closed

    def counted() -> bool:
        seen[0] += 1
        return real()
    conn.peer_closed = counted
    return seen


def test_every_call_asks_whether_the_daemon_closed_the_connection(uri):
    """Also right after an answer: a daemon may drop a connection at once (test_idle_check), and only the
    check turns that into a safe retry."""
    with Proxy(uri) as proxy:
        proxy._pyroBind()
        checks = count_checks(proxy._pyroConnection)
        for value in range(5):
            assert proxy.echo(value) == value
        assert checks[0] == 5


def test_a_daemon_that_went_away_after_its_answer_is_not_delivered_to(start_daemon):
    """The daemon goes away after answering: the next call is not delivered there (checked), and nobody
    serves it now: NotDeliveredError, not "maybe run"."""
    first = start_daemon(host="127.0.0.1")
    uri = first.register(Service(), "service")
    with Proxy(uri) as proxy:
        assert proxy.echo(1) == 1
        conn = proxy._pyroConnection
        first.stop()
        wait_until(conn.peer_closed, timeout=WAIT, message="the daemon closing the connection")
        with pytest.raises(errors.NotDeliveredError):
            proxy.echo(2)  # unchecked, it would be a ReplyLostError
