"""Shared fixtures: daemons running in a background thread, unique mesh realms."""

from __future__ import annotations

import signal
import threading
import uuid
from typing import Any, Callable, Iterator

import pytest

import meshrpc

# Tests stop their child programs with Ctrl-C (SIGINT). A shell that starts the suite in the background
# (`cmd &` without job control) hands it SIGINT ignored, and children inherit that: they would never
# stop. Children of a process with a handler get the default action, so take one here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class RunningDaemon:
    """A meshrpc Daemon serving from a background thread; closed by the fixture."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("host", "127.0.0.1")
        self.daemon = meshrpc.Daemon(**kwargs)
        self.thread = threading.Thread(target=self.daemon.requestLoop, name="test-daemon", daemon=True)
        self.thread.start()

    def register(self, obj: Any, object_id: str | None = None, **kwargs: Any) -> meshrpc.URI:
        return self.daemon.register(obj, object_id, **kwargs)

    def stop(self) -> None:
        self.daemon.shutdown()
        self.thread.join(10)
        assert not self.thread.is_alive(), "daemon loop did not stop"


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., RunningDaemon]]:
    daemons: list[RunningDaemon] = []

    def start(**kwargs: Any) -> RunningDaemon:
        running = RunningDaemon(**kwargs)
        daemons.append(running)
        return running

    yield start
    for running in daemons:
        running.stop()


@pytest.fixture
def realm() -> str:
    """A mesh realm of this test's own, so parallel runs never see each other."""
    return "test-" + uuid.uuid4().hex[:12]


@pytest.fixture
def fresh_mesh() -> Iterator[None]:
    """The process's mesh started afresh (goodbyes sent), and after the test without a host program's
    Zeroconf (meshrpc.mesh.use_zeroconf)."""
    import meshrpc.mesh
    meshrpc.mesh.reset_for_tests()
    yield
    meshrpc.mesh.reset_for_tests()
    meshrpc.mesh.use_zeroconf(None)
