"""Name-server interop with Pyro5 5.x, both ways, over loopback:
Pyro5 clients (locate_ns, proxies, the nsc tool) against ours; our locate_ns and resolve_ns against
a real Pyro5 name server in a child process; broadcast discovery across the two libraries."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import Pyro5.api
import Pyro5.core
import Pyro5.errors
import pytest
from test_nameserver import HOST, RunningNS, ns_settings, refused_port, running_nameservers

import meshrpc
from meshrpc import URI, errors
from meshrpc.naming import locate_ns, resolve_ns

pytestmark = pytest.mark.timeout(90)
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def start_nameserver() -> Iterator[Callable[..., RunningNS]]:
    yield from running_nameservers()


class ChildProcess:
    """A Python child process that prints KEY=VALUE lines first and ends at EOF on stdin (or at
    terminate(), our own child by its handle)."""

    def __init__(self, args: list[str], wanted: set[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env["PYTHONUNBUFFERED"] = "1"
        for key in list(env):
            if key.startswith("PYRO_"):
                del env[key]
        self.proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=str(REPO_ROOT), env=env)
        self.values: dict[str, str] = {}
        seen = []
        while not wanted <= set(self.values):
            line = self.proc.stdout.readline()  # bounded by the test timeout
            if not line:
                self.stop()
                raise RuntimeError("child process ended early:\n" + "".join(seen))
            seen.append(line)
            for separator in (" = ", "="):
                key, sep, value = line.strip().partition(separator)
                if sep and key in wanted:
                    self.values[key] = value
                    break

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stdin):
            try:
                stream.close()
            except (OSError, ValueError):
                pass


@pytest.fixture
def children() -> Iterator[Callable[[list[str], set[str]], ChildProcess]]:
    started: list[ChildProcess] = []

    def start(args: list[str], wanted: set[str]) -> ChildProcess:
        child = ChildProcess(args, wanted)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


@pytest.fixture
def pyro5_ns(children: Callable[[list[str], set[str]], ChildProcess]) -> str:
    """A real Pyro5 name server on loopback (no broadcast responder: Pyro5 starts none for localhost)."""
    child = children(["-m", "Pyro5.nameserver", "-n", HOST, "-p", "0", "-x"], {"URI"})
    return child.values["URI"]


PYRO5_NS_WITH_BROADCAST = textwrap.dedent("""
    import sys, threading
    from Pyro5 import nameserver
    uri, daemon, _ = nameserver.start_ns(host="127.0.0.1", port=0, enableBroadcast=False)
    bc = nameserver.BroadcastServer(uri, bchost="127.0.0.1", bcport=0)
    bc.runInThread()
    print("URI=" + str(uri))
    print("BCPORT=" + str(bc.getPort()), flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), daemon.shutdown()), daemon=True).start()
    daemon.requestLoop()
    bc.close()
""")


# ----------------------------------------------------------------------------- Pyro5 clients, our server
def test_pyro5_locate_ns_and_api_against_ours(start_nameserver: Callable[..., RunningNS]) -> None:
    running = start_nameserver(broadcast=False)
    ns = Pyro5.api.locate_ns(host=HOST, port=running.port)
    try:
        ns.ping()
        assert ns.count() == 1
        target = Pyro5.core.URI("PYRO:thing@127.0.0.1:5555")
        ns.register("p5.thing", target, metadata={"p5", "thing"})
        ns.register("p5.other", "PYRO:other@127.0.0.1:5555", safe=True, metadata=["p5"])
        found = ns.lookup("p5.thing")
        assert isinstance(found, Pyro5.core.URI) and str(found) == str(target)
        uri, meta = ns.lookup("p5.thing", return_metadata=True)
        assert str(uri) == str(target) and set(meta) == {"p5", "thing"}
        assert ns.list(prefix="p5.") == {"p5.thing": str(target), "p5.other": "PYRO:other@127.0.0.1:5555"}
        assert ns.list(regex=r"p5\.o.*") == {"p5.other": "PYRO:other@127.0.0.1:5555"}
        listed = ns.list(return_metadata=True)
        assert set(listed["Pyro.NameServer"][1]) == {"class:Pyro5.nameserver.NameServer"}
        assert set(ns.yplookup(meta_all=["p5"])) == {"p5.thing", "p5.other"}
        assert ns.yplookup(meta_any=["thing"], return_metadata=False) == {"p5.thing": str(target)}
        ns.set_metadata("p5.other", {"changed"})
        assert set(ns.lookup("p5.other", True)[1]) == {"changed"}
        with pytest.raises(Pyro5.errors.NamingError, match="unknown name: missing"):
            ns.lookup("missing")
        with pytest.raises(Pyro5.errors.NamingError, match="name already registered"):
            ns.register("p5.thing", target, safe=True)
        with pytest.raises(TypeError):
            ns.register("bad", target, metadata="str")
        assert ns.remove(regex=r"p5\..*") == 2
        assert ns.remove("Pyro.NameServer") == 0
        assert ns.count() == 1
    finally:
        ns._pyroRelease()


def test_pyro5_proxy_by_pyroname_through_ours(start_nameserver: Callable[..., RunningNS],
                                              start_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    @meshrpc.expose
    class Echo:
        def echo(self, value: Any) -> Any:
            return value

    running = start_nameserver(broadcast=False)
    served = start_daemon()
    running.proxy().register("interop.echo", served.register(Echo(), "echo"), metadata={"interop"})
    monkeypatch.setattr(Pyro5.config, "NS_HOST", HOST)
    monkeypatch.setattr(Pyro5.config, "NS_PORT", running.port)
    for uri in ("PYRONAME:interop.echo", f"PYRONAME:interop.echo@{HOST}:{running.port}",
                f"PYROMETA:interop@{HOST}:{running.port}"):
        proxy = Pyro5.api.Proxy(uri)
        try:
            assert proxy.echo(uri) == uri
        finally:
            proxy._pyroRelease()


def test_pyro5_nsc_tool_against_ours(start_nameserver: Callable[..., RunningNS]) -> None:
    running = start_nameserver(broadcast=False)
    running.proxy().register("tool.visible", "PYRO:x@127.0.0.1:1", metadata={"tooltag"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_")}
    base = [sys.executable, "-m", "Pyro5.nsc", "-n", HOST, "-p", str(running.port)]
    done = subprocess.run(base + ["list"], capture_output=True, text=True, timeout=30, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "tool.visible --> PYRO:x@127.0.0.1:1" in done.stdout
    done = subprocess.run(base + ["yplookup_all", "tooltag"], capture_output=True, text=True, timeout=30, env=env,
                          check=False)
    assert done.returncode == 0 and "tool.visible" in done.stdout, done.stderr
    done = subprocess.run(base + ["remove", "tool.visible"], capture_output=True, text=True, timeout=30, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "tool.visible" not in running.proxy().list()


# ----------------------------------------------------------------------------- our client, Pyro5's server
def test_our_locate_ns_and_api_against_pyro5(pyro5_ns: str) -> None:
    port = URI(pyro5_ns).port
    settings = ns_settings()
    with locate_ns(HOST, port, settings=settings) as ns:
        ns.ping()
        assert ns.count() == 1
        ns.register("ours.thing", URI("PYRO:thing@127.0.0.1:5555"), metadata={"ours"})
        ns.register("ours.other", "PYRO:other@127.0.0.1:5555", metadata=["ours", "other"])
        found = ns.lookup("ours.thing")
        assert isinstance(found, URI) and found == URI("PYRO:thing@127.0.0.1:5555")
        uri, meta = ns.lookup("ours.other", return_metadata=True)
        assert uri == URI("PYRO:other@127.0.0.1:5555") and set(meta) == {"ours", "other"}
        assert ns.list(prefix="ours.") == {"ours.thing": "PYRO:thing@127.0.0.1:5555",
                                           "ours.other": "PYRO:other@127.0.0.1:5555"}
        assert set(ns.yplookup(meta_all=["ours", "other"])) == {"ours.other"}
        with pytest.raises(errors.NamingError, match="unknown name"):
            ns.lookup("missing")
        with pytest.raises(errors.NamingError, match="already registered"):
            ns.register("ours.thing", "PYRO:x@127.0.0.1:1", safe=True)
    # resolution through a Pyro5 name server
    at = f"@{HOST}:{port}"
    assert resolve_ns(URI("PYRONAME:ours.thing" + at), settings) == URI("PYRO:thing@127.0.0.1:5555")
    assert resolve_ns(URI("PYROMETA:other" + at), settings) == URI("PYRO:other@127.0.0.1:5555")
    assert resolve_ns(URI("PYRONAME:missing" + at), settings) is None
    # the configured host, no broadcast needed
    with locate_ns(settings=ns_settings(NS_PORT=port), broadcast=False) as ns:
        assert ns.remove(prefix="ours.") == 2


def test_our_broadcast_locate_finds_pyro5(children: Callable[[list[str], set[str]], ChildProcess]) -> None:
    child = children(["-c", PYRO5_NS_WITH_BROADCAST], {"URI", "BCPORT"})
    closed = refused_port()
    try:
        settings = ns_settings(NS_PORT=closed.getsockname()[1], NS_BCPORT=int(child.values["BCPORT"]))
        with locate_ns(settings=settings) as ns:
            assert ns._pyroUri == URI(child.values["URI"])
            assert ns.count() == 1
    finally:
        closed.close()


def test_pyro5_broadcast_locate_finds_ours(start_nameserver: Callable[..., RunningNS],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    running = start_nameserver()
    closed = refused_port()
    try:
        # Pyro5 first tries NS_HOST:NS_PORT (refused here), then broadcasts to BROADCAST_ADDRS on
        # NS_BCPORT; the loopback broadcast address keeps the query on this machine
        monkeypatch.setattr(Pyro5.config, "NS_HOST", HOST)
        monkeypatch.setattr(Pyro5.config, "NS_PORT", closed.getsockname()[1])
        monkeypatch.setattr(Pyro5.config, "NS_BCPORT", running.bcserver.port)
        monkeypatch.setattr(Pyro5.config, "BROADCAST_ADDRS", ["127.255.255.255"])
        ns = Pyro5.api.locate_ns()
        try:
            assert str(ns._pyroUri) == str(running.uri)
            assert ns.count() == 1
        finally:
            ns._pyroRelease()
        monkeypatch.setattr(Pyro5.config, "BROADCAST_ADDRS", ["127.0.0.1"])  # unicast query, same answer
        ns = Pyro5.api.locate_ns()
        try:
            assert str(ns._pyroUri) == str(running.uri)
        finally:
            ns._pyroRelease()
    finally:
        closed.close()


def test_pyro5_daemon_counts_as_alive_for_autoclean() -> None:
    from meshrpc.naming.server import probe_daemon
    daemon = Pyro5.api.Daemon(host=HOST)
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    try:
        assert probe_daemon(URI(str(daemon.uriFor("Pyro.Daemon"))), 5.0)
    finally:
        daemon.shutdown()
        thread.join(10)
