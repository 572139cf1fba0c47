"""Recovery through meshrpc.aio and through futures, against asyncio daemons in other processes:
kill -9 mid-call (idempotent: re-sent to the next provider; not idempotent: fails, ran at most once),
and rebinding after a provider moved."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
from subprocs import Proc, Runner, runner_for
from support import wait_until

import meshrpc
import meshrpc.aio
from meshrpc import errors
from meshrpc.aio.background import BackgroundLoop
from meshrpc.config import Settings

pytestmark = pytest.mark.timeout(90)

SERVER = Path(__file__).parent / "aio_resilience_server.py"


@pytest.fixture
def runner(realm: str) -> Iterator[Runner]:
    yield from runner_for(realm)


@pytest.fixture
def settings(realm: str) -> Iterator[Settings]:
    yield Settings().copy(REALM=realm, INTERFACES="127.0.0.1", HOST="127.0.0.1", REBIND_TIMEOUT=20.0,
                          RESOLVE="mesh")
    from meshrpc.mesh import reset_for_tests
    reset_for_tests()


class AioClient:
    """Calls through a meshrpc.aio.Proxy, on a loop of the test's own."""

    def __init__(self, settings: Settings) -> None:
        self.loop = BackgroundLoop(settings, name="test-aio")
        self.proxy = meshrpc.aio.Proxy("PYRONAME:resil.worker", settings=settings)

    def start(self, method: str, *args: Any) -> Any:
        return self.loop.submit(getattr(self.proxy, method)(*args))

    def result(self, pending: Any, timeout: float = 40.0) -> Any:
        return pending.result(timeout)

    def close(self) -> None:
        self.loop.submit(self.proxy._pyroRelease()).result(5)
        self.loop.close()


class FutureClient:
    """Calls through meshrpc.asyncproxy (futures)."""

    def __init__(self, settings: Settings) -> None:
        self.proxy = meshrpc.asyncproxy(meshrpc.Proxy("PYRONAME:resil.worker", settings=settings))

    def start(self, method: str, *args: Any) -> Any:
        return getattr(self.proxy, method)(*args)

    def result(self, pending: Any, timeout: float = 40.0) -> Any:
        assert pending.wait(timeout), "no result in time"
        return pending.value

    def close(self) -> None:
        self.proxy._pyroRelease()


@pytest.fixture(params=["aio", "futures"])
def client(request: Any, settings: Settings) -> Iterator[Any]:
    made = AioClient(settings) if request.param == "aio" else FutureClient(settings)
    yield made
    made.close()


def start_worker(runner: Runner, label: str, runs: Path) -> Proc:
    proc = runner.python(SERVER, label, str(runs))
    proc.expect(rf"^ready: {label} ")
    return proc


def runs_of(runs: Path, method: str, tag: str) -> list[str]:
    if not runs.exists():
        return []
    return [line.split()[1] for line in runs.read_text().splitlines() if line.endswith(f" {method} {tag}")]


def test_kill_9_mid_call_idempotent_is_resent_to_the_next_provider(runner: Runner, client: Any,
                                                                 tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = start_worker(runner, "A", runs)
    assert client.result(client.start("lookup", 0.0, "warm")) == "lookup warm by A"
    pending = client.start("lookup", 2.0, "t1")
    wait_until(lambda: runs_of(runs, "lookup", "t1"), 20, message="the call to start on A")
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    start_worker(runner, "B", runs)
    assert client.result(pending) == "lookup t1 by B"
    assert runs_of(runs, "lookup", "t1") == ["A", "B"]


def test_kill_9_mid_call_not_idempotent_fails_and_ran_once(runner: Runner, client: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = start_worker(runner, "A", runs)
    pending = client.start("write", 2.0, "w1")
    wait_until(lambda: runs_of(runs, "write", "w1"), 20, message="the call to start on A")
    first.proc.send_signal(signal.SIGKILL)
    first.wait()
    second = start_worker(runner, "B", runs)
    with pytest.raises(errors.ConnectionClosedError):
        client.result(pending)
    assert runs_of(runs, "write", "w1") == ["A"]  # never re-sent
    assert client.result(client.start("write", 0.0, "w2")) == "write w2 by B"  # the proxy goes on
    second.stop(signal.SIGINT)


def test_rebind_after_a_move(runner: Runner, client: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = start_worker(runner, "A", runs)
    assert client.result(client.start("write", 0.0, "m1")) == "write m1 by A"
    assert first.stop(signal.SIGINT) == 0  # a graceful move: goodbyes on the mesh
    start_worker(runner, "B", runs)
    # not idempotent, yet safe: the old connection is found closed before sending
    assert client.result(client.start("write", 0.0, "m2")) == "write m2 by B"
    assert runs_of(runs, "write", "m2") == ["B"]
