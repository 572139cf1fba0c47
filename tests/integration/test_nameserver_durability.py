"""sqlite storage durability: what the name server acknowledged survives `kill -9` of its process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_nameserver import HOST, PROXY_TIMEOUT, ns_settings

import meshrpc
from meshrpc import URI

pytestmark = pytest.mark.timeout(90)
REPO_ROOT = Path(__file__).resolve().parents[2]


def ns_command() -> list[str]:
    """`python -m meshrpc ns` once the CLI dispatcher knows it, else the module on its own."""
    from meshrpc.cli import COMMANDS
    if "ns" in COMMANDS:
        return [sys.executable, "-m", "meshrpc", "ns"]
    return [sys.executable, "-m", "meshrpc.cli.ns"]


class NameServerProcess:
    def __init__(self, db: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env = {k: v for k, v in env.items() if not k.startswith("MESHRPC_")}
        self.proc = subprocess.Popen(
            ns_command() + ["--host", HOST, "--port", "0", "--no-broadcast", "--storage", f"sql:{db}", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            cwd=str(REPO_ROOT), env=env)
        line = self.proc.stdout.readline()  # bounded by the test timeout
        if not line:
            self.proc.wait(10)
            raise RuntimeError("name server did not start: " + self.proc.stderr.read())
        info = json.loads(line)
        self.uri = URI(info["uri"])
        self.entries = info["entries"]

    def proxy(self) -> meshrpc.Proxy:
        proxy = meshrpc.Proxy(self.uri, settings=ns_settings())
        proxy._pyroTimeout = PROXY_TIMEOUT
        return proxy

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)  # our own child, by its handle
        self.proc.wait(10)
        self.close_pipes()

    def terminate(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(15)
        self.close_pipes()
        return code

    def close_pipes(self) -> None:
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass


@pytest.fixture
def processes() -> Iterator[list[NameServerProcess]]:
    started: list[NameServerProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(10)
        process.close_pipes()


def test_acknowledged_registrations_survive_kill_9(tmp_path: Path, processes: list[NameServerProcess]) -> None:
    db = tmp_path / "names.db"
    first = NameServerProcess(db)
    processes.append(first)
    assert first.entries == 1  # only its own entry
    with first.proxy() as ns:
        ns.register("durable.one", "PYRO:one@127.0.0.1:5001", metadata={"keep"})
        ns.register("durable.gone", "PYRO:gone@127.0.0.1:5002")
        ns.register("durable.meta", "PYRO:meta@127.0.0.1:5003", metadata={"old"})

    def writer(i: int) -> None:
        with first.proxy() as proxy:
            for j in range(20):
                proxy.register(f"bulk.{i}.{j}", f"PYRO:b{j}@127.0.0.1:{6000 + i}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with first.proxy() as ns:
        assert ns.remove("durable.gone") == 1
        ns.set_metadata("durable.meta", {"new"})
        assert ns.count() == 1 + 2 + 80
    first.kill9()  # no clean shutdown, no checkpoint

    second = NameServerProcess(db)
    processes.append(second)
    with second.proxy() as ns:
        assert ns.lookup("durable.one", return_metadata=True) == (URI("PYRO:one@127.0.0.1:5001"), {"keep"})
        assert set(ns.lookup("durable.meta", True)[1]) == {"new"}
        assert "durable.gone" not in ns.list()
        assert len(ns.list(prefix="bulk.")) == 80
        assert ns.lookup("Pyro.NameServer") == second.uri  # its own entry points at the new process
        ns.register("durable.two", "PYRO:two@127.0.0.1:5004")
    assert second.terminate() == 0  # SIGTERM: a clean shutdown

    third = NameServerProcess(db)
    processes.append(third)
    with third.proxy() as ns:
        assert {"durable.one", "durable.two", "durable.meta"} <= set(ns.list(prefix="durable."))
        assert ns.count() == 1 + 2 + 1 + 80
