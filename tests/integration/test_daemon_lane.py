"""The daemon's lane (issue 15, sixth pass) on a real Daemon: the usual request is answered without a
Frame (ServerSession.receive_request, bare_result; ConnectionServer._take), and what every client sees
is what the general path gives: each scenario runs twice, with the lane and with it switched off
(receive_request made to hand every message to the general path), and the two runs must agree:
results, exceptions and their remote tracebacks, annotations both ways, correlation ids, oneway
calls, batches, streams, meshrpc and Pyro5 clients, every serializer. A call's context never leaks
into the next call on the same worker."""

from __future__ import annotations

import contextvars
import threading
import uuid
from typing import Any

import Pyro5.api
import Pyro5.errors
import pytest

import meshrpc
from meshrpc import current_context, errors
from meshrpc.wire.session import TAKE_EVENT, ServerSession

pytestmark = pytest.mark.timeout(60)

SERIALIZERS = ["serpent", "marshal", "json", "msgpack"]
WAIT = 10.0
RECEIVE_REQUEST = ServerSession.receive_request  # the lane itself, whatever a test patched since


@meshrpc.expose
class Service:
    def __init__(self) -> None:
        self.notes: list[Any] = []
        self.noted = threading.Condition()
        self.captured: list[contextvars.Context] = []

    def echo(self, value: Any) -> Any:
        return value

    def add(self, a: int, b: int = 0) -> int:
        return a + b

    def fail(self) -> None:
        raise KeyError("no such key")

    def context(self) -> dict:
        corr = current_context.correlation_id
        return {"annotations": {k: bytes(v) for k, v in current_context.annotations.items()},
                "seq": current_context.seq, "flags": current_context.msg_flags,
                "serializer": current_context.serializer_id, "response": dict(current_context.response_annotations),
                "correlation": str(corr) if corr is not None else None,
                "client": current_context.client is not None}

    def annotate(self) -> str:
        current_context.response_annotations = {"RESP": b"yes"}
        return "annotated"

    def capture(self) -> str:
        self.captured.append(contextvars.copy_context())
        current_context.annotations["MINE"] = b"changed in place"  # this call's dict: gone with the call
        return str(current_context.correlation_id)

    def numbers(self) -> Any:
        return iter([1, 2, 3])

    @meshrpc.oneway
    def note(self, value: Any) -> None:
        with self.noted:
            self.notes.append(value)
            self.noted.notify_all()

    async def later(self) -> int:
        return 1


class Hooked(meshrpc.Daemon):
    """A daemon that annotates every reply (Pyro5's Daemon.annotations)."""

    def annotations(self) -> dict[str, bytes]:
        return {"DAEM": b"d"}


class Lane:
    """Counts the requests the lane answered; `off()` switches it off (every message to the general path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken = self.refused = 0
        self.monkeypatch = monkeypatch
        original = RECEIVE_REQUEST

        def counted(session: ServerSession, data: bytes) -> Any:
            try:
                call = original(session, data)
            except errors.SerializeError:
                self.refused += 1
                raise
            self.taken += call is not TAKE_EVENT
            return call
        monkeypatch.setattr(ServerSession, "receive_request", counted)

    def off(self) -> None:
        def general(session: ServerSession, data: bytes) -> Any:
            session.receive_data(data)
            return TAKE_EVENT
        self.monkeypatch.setattr(ServerSession, "receive_request", general)


def outcome(call: Any) -> Any:
    """("value", v) or ("raised", type name, text, the remote traceback's last line)."""
    try:
        return ("value", call())
    except Exception as exc:
        lines = getattr(exc, "_pyroTraceback", None) or []
        last = [line for line in "".join(lines).splitlines() if line.strip()][-1:] if lines else []
        return ("raised", type(exc).__name__, str(exc), last)


def wait_for_note(service: Service, value: Any) -> None:
    with service.noted:
        assert service.noted.wait_for(lambda: value in service.notes, WAIT)


def meshrpc_scenario(uri: Any, service: Service, serializer: str) -> list:
    """What a meshrpc client sees of every kind of call."""
    seen: list = []
    with meshrpc.Proxy(uri) as proxy:
        proxy._pyroSerializer = serializer
        for value in [1, "text", None, 2.5, True, 2 ** 70, "x" * 70000, [1, {"a": 2}], b"raw", {"k": (1, 2)}]:
            seen.append(outcome(lambda: proxy.echo(value)))
        seen.append(outcome(lambda: proxy.add(2, b=3)))
        seen.append(outcome(proxy.fail))
        seen.append(outcome(proxy.later))
        first = proxy.context()
        second = proxy.context()
        # a call without a correlation id gets a fresh one, as in Pyro5: never the last call's
        assert first["correlation"] != second["correlation"]
        uuid.UUID(first["correlation"])
        seen.append({k: v for k, v in first.items() if k not in ("correlation", "seq")})
        corr = uuid.uuid4()
        current_context.correlation_id = corr
        try:
            seen.append(outcome(lambda: proxy.context()["correlation"] == str(corr)))
        finally:
            current_context.correlation_id = None
        current_context.annotations = {"XTRA": b"1"}
        try:
            seen.append(outcome(lambda: proxy.context()["annotations"]))
        finally:
            current_context.annotations = {}
        seen.append(outcome(lambda: proxy.context()["annotations"]))  # none: the last call's do not stay
        seen.append(outcome(proxy.annotate))
        seen.append(dict(current_context.response_annotations))
        seen.append(outcome(lambda: proxy.echo(5)))
        seen.append(dict(current_context.response_annotations))  # the reply to echo(5) carries none
        seen.append(outcome(lambda: list(proxy.numbers())))
        proxy.note("a note")
        wait_for_note(service, "a note")
        seen.append(outcome(lambda: proxy.echo("after the oneway")))
        batch = meshrpc.BatchProxy(proxy)
        batch.echo(1)
        batch.add(1, 2)
        batch.fail()
        batch.echo(2)
        seen.append(outcome(lambda: [outcome(lambda r=r: r) for r in batch()]))
        seen.append(outcome(lambda: proxy.echo("after the batch")))
    return seen


def pyro5_scenario(uri: Any, service: Service, serializer: str) -> list:
    """What a Pyro5 client (the real package) sees."""
    seen: list = []
    with Pyro5.api.Proxy(str(uri)) as proxy:
        proxy._pyroSerializer = serializer
        for value in [1, "text", None, 2.5, True, [1, {"a": 2}], {"k": [1, 2]}]:
            seen.append(outcome(lambda: proxy.echo(value)))
        seen.append(outcome(lambda: proxy.add(2, b=3)))
        seen.append(outcome(proxy.fail))
        first = proxy.context()
        uuid.UUID(first["correlation"])
        seen.append({k: v for k, v in first.items() if k not in ("correlation", "seq")})
        corr = uuid.uuid4()
        Pyro5.api.current_context.correlation_id = corr
        try:
            seen.append(outcome(lambda: proxy.context()["correlation"] == str(corr)))
        finally:
            Pyro5.api.current_context.correlation_id = None
        seen.append(outcome(lambda: list(proxy.numbers())))
        proxy.note("pyro5 note")
        wait_for_note(service, "pyro5 note")
        seen.append(outcome(lambda: proxy.echo("after the oneway")))
        if serializer != "marshal":  # Pyro5 5.17 cannot send a batch over marshal (test_pyro5_interop)
            batch = Pyro5.api.BatchProxy(proxy)
            batch.echo(1)
            batch.fail()
            seen.append(outcome(lambda: [outcome(lambda r=r: r) for r in batch()]))
    return seen


def both_ways(monkeypatch: pytest.MonkeyPatch, scenario: Any, serializer: str, daemon_class: type = meshrpc.Daemon,
              **settings: Any) -> tuple[list, list, int]:
    """The scenario against a daemon with the lane, then against one without: (with, without, lane count)."""
    lane = Lane(monkeypatch)
    runs = []
    for _ in range(2):
        service = Service()
        with daemon_class(host="127.0.0.1", settings=meshrpc.Settings().copy(**settings)) as daemon:
            uri = daemon.register(service, "service")
            loop = threading.Thread(target=daemon.requestLoop, daemon=True)
            loop.start()
            try:
                runs.append(scenario(uri, service, serializer))
            finally:
                daemon.shutdown()
                loop.join(WAIT)
        if len(runs) == 1:
            taken = lane.taken
            lane.off()
    return runs[0], runs[1], taken


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_a_meshrpc_client_sees_what_the_general_path_gives(monkeypatch, serializer):
    with_lane, without, taken = both_ways(monkeypatch, meshrpc_scenario, serializer)
    assert with_lane == without
    assert taken >= 20  # the usual requests went through the lane


@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_a_pyro5_client_sees_what_the_general_path_gives(monkeypatch, serializer):
    with_lane, without, taken = both_ways(monkeypatch, pyro5_scenario, serializer)
    assert with_lane == without
    assert taken >= 10


def test_daemon_annotations_and_settings_that_change_replies(monkeypatch):
    with_lane, without, taken = both_ways(monkeypatch, meshrpc_scenario, "serpent", Hooked)
    assert with_lane == without and taken >= 20
    assert {"DAEM": b"d"} in with_lane  # the daemon's annotations came with every reply
    with_lane, without, taken = both_ways(monkeypatch, meshrpc_scenario, "marshal", COMPRESSION=True,
                                          COMPRESSION_MIN_SIZE=64)
    assert with_lane == without and taken >= 20
    with_lane, without, taken = both_ways(monkeypatch, meshrpc_scenario, "serpent", SERPENT_BINARY=False)
    assert with_lane == without and taken >= 20


def test_logwire_takes_the_general_path(monkeypatch):
    with_lane, without, taken = both_ways(monkeypatch, meshrpc_scenario, "serpent", LOGWIRE=True)
    assert with_lane == without and taken == 0


def test_a_call_never_sees_the_last_calls_context_on_the_same_worker(start_daemon, monkeypatch):
    """One connection, so one worker thread answers every call: a call with annotations, a correlation id
    and response annotations, then plain ones (the lane). The plain calls see none of the first call's
    facts, and a context the first call captured keeps seeing them after the later calls ran."""
    lane = Lane(monkeypatch)
    service = Service()
    uri = start_daemon().register(service, "service")
    with meshrpc.Proxy(uri) as proxy:
        proxy.echo(0)
        corr = uuid.uuid4()
        current_context.correlation_id = corr
        current_context.annotations = {"XTRA": b"first"}
        try:
            assert proxy.capture() == str(corr)
        finally:
            current_context.correlation_id = None
            current_context.annotations = {}
        assert proxy.capture() != str(corr)  # through the lane: its dict changed in place
        assert proxy.annotate() == "annotated"
        taken = lane.taken
        later = [proxy.context() for _ in range(3)]
        assert lane.taken == taken + 3
        for seen in later:
            assert seen["annotations"] == {} and seen["response"] == {} and seen["flags"] == 0
            assert seen["correlation"] not in (str(corr), None)
        assert len({seen["correlation"] for seen in later}) == 3
        assert current_context.response_annotations == {}
        assert proxy.echo(1) == 1
    captured = service.captured[0]
    assert captured.run(lambda: (str(current_context.correlation_id), dict(current_context.annotations))) == \
        (str(corr), {"XTRA": b"first", "MINE": b"changed in place"})


def test_a_request_that_does_not_decode_is_answered_and_the_connection_stays(start_daemon, monkeypatch):
    """The lane's error reply for a request whose data does not decode, as the general path gives it."""
    from meshrpc.wire.serializers import BY_NAME
    lane = Lane(monkeypatch)
    uri = start_daemon().register(Service(), "service")
    with meshrpc.Proxy(uri) as proxy:
        proxy._pyroSerializer = "marshal"
        assert proxy.echo(1) == 1
        marshal_serializer = BY_NAME["marshal"]

        def broken(*args: Any, **kwargs: Any) -> bytes:
            return b"(\x04\x00\x00\x00[\xff\xff\xff\x7f"  # a list of 2**31 - 1 items, in 10 bytes
        monkeypatch.setattr(marshal_serializer, "dumps_call", broken)
        monkeypatch.setattr(marshal_serializer, "scalar_call_form", lambda binary: None)
        proxy._pyroRelease()
        with pytest.raises(errors.SerializeError, match="marshal data declares a size"):
            proxy.echo(2)
        assert lane.refused == 1  # the lane took it, and answered with the decoding error
        monkeypatch.undo()
        assert proxy.echo(3) == 3
