"""Fixtures for the Pyro5 interop matrix: daemons of either library run in background threads,
proxies of either library, and peers in separate processes.

Everything binds 127.0.0.1. Daemons are stopped with `daemon.shutdown()` and their loop threads
joined with a timeout; proxies are released in teardown (Pyro5 proxies belong to the thread that
created them, which is the test's main thread here, so teardown may release them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import Pyro5.api
import Pyro5.errors
import pytest

import meshrpc
import meshrpc.errors

HOST = "127.0.0.1"
SERIALIZERS = ("serpent", "marshal", "json", "msgpack")
PROXY_TIMEOUT = 10.0  # seconds; a hung peer fails the call well inside the 30 s test timeout
REPO_ROOT = Path(__file__).resolve().parents[2]


def new_daemon(kind: str) -> Any:
    if kind == "meshrpc":
        return meshrpc.Daemon(host=HOST)
    if kind == "pyro5":
        return Pyro5.api.Daemon(host=HOST)
    raise ValueError(kind)


def new_proxy(kind: str, uri: Any, serializer: str | None) -> Any:
    """A proxy of library `kind` for `uri`, using `serializer` (None: the library's default)."""
    cls = meshrpc.Proxy if kind == "meshrpc" else Pyro5.api.Proxy
    proxy = cls(str(uri))
    if serializer is not None:
        proxy._pyroSerializer = serializer
    proxy._pyroTimeout = PROXY_TIMEOUT
    return proxy


class DaemonRunner:
    """Starts daemons (either library) with their request loop in a thread; stops them all at teardown."""

    def __init__(self) -> None:
        self._running: list[tuple[Any, threading.Thread]] = []

    def start(self, kind: str, objects: dict[str, Any], daemon: Any = None) -> tuple[Any, dict[str, Any]]:
        """Register `objects` ({object id: object}) on `daemon` (default: a new `kind` daemon), serve it
        in a thread, and return (daemon, uris)."""
        daemon = daemon if daemon is not None else new_daemon(kind)
        uris = {object_id: daemon.register(obj, object_id) for object_id, obj in objects.items()}
        thread = threading.Thread(target=daemon.requestLoop, name=f"{kind}-requestLoop", daemon=True)
        thread.start()
        self._running.append((daemon, thread))
        return daemon, uris

    def stop_all(self) -> list[str]:
        stuck = []
        for daemon, thread in reversed(self._running):
            daemon.shutdown()
            thread.join(10)
            if thread.is_alive():
                stuck.append(f"{thread.name} ({daemon!r})")
        self._running.clear()
        return stuck


@pytest.fixture
def daemons() -> Iterator[DaemonRunner]:
    runner = DaemonRunner()
    yield runner
    stuck = runner.stop_all()
    assert not stuck, f"request loops still running 10 s after daemon.shutdown(): {stuck}"


class ProxyFactory:
    """Makes proxies of either library and releases every one of them at teardown."""

    def __init__(self) -> None:
        self._made: list[Any] = []

    def __call__(self, kind: str, uri: Any, serializer: str | None) -> Any:
        proxy = new_proxy(kind, uri, serializer)
        self._made.append(proxy)
        return proxy

    def adopt(self, proxy: Any) -> Any:
        """Release `proxy` (e.g. an autoproxy received in a result) at teardown too."""
        self._made.append(proxy)
        return proxy

    def release_all(self) -> None:
        for proxy in reversed(self._made):
            try:
                proxy._pyroRelease()
            except (Pyro5.errors.PyroError, meshrpc.errors.MeshError, OSError) as exc:
                print(f"could not release {proxy!r}: {exc!r}")
        self._made.clear()


@pytest.fixture
def proxies() -> Iterator[ProxyFactory]:
    factory = ProxyFactory()
    yield factory
    factory.release_all()


@pytest.fixture
def proxy_maker() -> Callable[..., Any]:
    """`new_proxy(kind, uri, serializer)`, for proxies that a test releases itself (e.g. in the thread
    that owns them)."""
    return new_proxy


@pytest.fixture(params=SERIALIZERS)
def serializer(request: pytest.FixtureRequest) -> str:
    return request.param


class ServerProcess:
    """A daemon in a child process (`sys.executable -c CODE`) that prints its URI on the first line
    of stdout and serves until its stdin closes."""

    def __init__(self, code: str) -> None:
        self.stderr = ""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=str(REPO_ROOT), env=env)
        line = self.proc.stdout.readline().strip()  # bounded by the test's timeout
        if not line.startswith("PYRO:"):
            self.stop()
            raise RuntimeError(f"server process did not print a URI; got {line!r}; stderr:\n{self.stderr}")
        self.uri = line

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the server shuts its daemon down at EOF
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # our own child, by its handle
                self.proc.wait(5)
        try:
            self.stderr = self.proc.stderr.read()
        except (OSError, ValueError):
            pass
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        return self.proc.returncode


@pytest.fixture
def server_process() -> Iterator[Callable[[str], ServerProcess]]:
    started: list[ServerProcess] = []

    def start(code: str) -> ServerProcess:
        server = ServerProcess(code)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
