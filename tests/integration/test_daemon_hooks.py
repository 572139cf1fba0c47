"""A daemon's announcers come from the plugged-in factories (server/hooks.py): created on the first
named registration, told about registrations and withdrawals, closed with the daemon."""

from __future__ import annotations

from typing import Any

import pytest

import meshrpc
from meshrpc.server import hooks


class Recorder:
    def __init__(self, bind_host: str) -> None:
        self.bind_host = bind_host
        self.log: list[tuple] = []

    def register(self, name: str, uri: str, tags: frozenset[str]) -> None:
        self.log.append(("register", name, uri, tags))

    def withdraw(self, name: str, uri: str) -> None:
        self.log.append(("withdraw", name, uri))

    def close(self) -> None:
        self.log.append(("close",))


@meshrpc.expose
class Thing:
    def ping(self) -> str:
        return "pong"


@pytest.fixture
def recorders(monkeypatch: pytest.MonkeyPatch) -> list[Recorder]:
    made: list[Recorder] = []

    def factory(bind_host: str, settings: Any) -> Recorder | None:
        if settings.REALM.endswith("-quiet"):
            return None
        made.append(Recorder(bind_host))
        return made[-1]

    # only the recorder: this test must not announce on the mesh
    monkeypatch.setattr(hooks, "_factories", [("recorder", factory)])
    return made


def test_announcers_follow_named_registrations(recorders: list[Recorder], realm: str) -> None:
    settings = meshrpc.Settings().copy(REALM=realm)
    with meshrpc.Daemon(host="127.0.0.1", settings=settings) as daemon:
        daemon.register(Thing(), "plain")  # no name: nothing is announced, no announcer is made
        assert recorders == []
        uri = daemon.register(Thing(), "thing", name="hooks.thing", metadata={"kind:thing"})
        [recorder] = recorders
        assert recorder.bind_host == "127.0.0.1"
        assert recorder.log == [("register", "hooks.thing", str(uri), frozenset({"kind:thing"}))]
        daemon.unregister("thing")
        assert recorder.log[-1] == ("withdraw", "hooks.thing", str(uri))
    assert recorder.log[-1] == ("close",)


def test_a_factory_may_decline(recorders: list[Recorder], realm: str) -> None:
    settings = meshrpc.Settings().copy(REALM=realm + "-quiet")
    with meshrpc.Daemon(host="127.0.0.1", settings=settings) as daemon:
        daemon.register(Thing(), name="hooks.quiet")
        assert recorders == [] and daemon._announcers.active == {}


def test_proxy_for_uses_the_plugged_in_proxy_class() -> None:
    with meshrpc.Daemon(host="127.0.0.1") as daemon:
        daemon.register(Thing(), "thing")
        proxy = daemon.proxyFor("thing")
        assert isinstance(proxy, meshrpc.Proxy) and proxy._pyroSettings is not None
        assert "ping" in proxy._pyroMethods
