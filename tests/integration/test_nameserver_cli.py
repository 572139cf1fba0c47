"""`meshrpc ns`: its options, and run() printing the URI (text and JSON) until the daemon stops."""

from __future__ import annotations

import argparse
import io
import json
import threading
from typing import Any

import pytest
from support import wait_until

import meshrpc.naming
from meshrpc import URI
from meshrpc.cli import ns as ns_cli
from meshrpc.cli.output import Output

pytestmark = pytest.mark.timeout(60)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    ns_cli.add_parser(sub)
    return parser.parse_args(["ns", *argv])


def test_options() -> None:
    args = parse([])
    assert (args.host, args.port, args.bcport, args.storage, args.no_broadcast, args.json) == (
        None, None, None, "memory", False, False)
    assert args.run is ns_cli.run
    args = parse(["--host", "127.0.0.1", "--port", "0", "--bcport", "0", "--storage", "sql:/tmp/x.db",
                  "--no-broadcast", "--autoclean", "5", "--mesh", "--json"])
    assert (args.host, args.port, args.bcport, args.storage, args.no_broadcast, args.autoclean, args.mesh,
            args.json) == ("127.0.0.1", 0, 0, "sql:/tmp/x.db", True, 5.0, True, True)
    args = parse(["-n", "127.0.0.1", "-p", "0", "-s", "sql:/tmp/x.db", "-x"])  # Pyro5's short options
    assert (args.host, args.port, args.storage, args.no_broadcast) == ("127.0.0.1", 0, "sql:/tmp/x.db", True)


@pytest.mark.parametrize("how", [["-m", "meshrpc.nameserver"],
                                 ["-c", "import sys, meshrpc.nameserver as ns; sys.exit(ns.main(sys.argv[1:]))"]],
                         ids=["python-m", "nameserver.main"])
def test_python_m_meshrpc_nameserver_runs_it_as_python_m_pyro5_nameserver_does(how: list[str]) -> None:
    """A Pyro5 user's `python -m Pyro5.nameserver -n HOST -p PORT -x`, renamed: it printed runpy's warning
    and ended at once (the package had imported the module already); now it serves until SIGTERM. The
    same through Pyro5's `nameserver.main(args)`, which a script may call."""
    import os
    import signal
    import subprocess
    import sys

    import Pyro5.api
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, *how, "-n", "127.0.0.1", "-p", "0", "-x"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = server.stdout.readline()  # bounded by the test's timeout
        assert first.startswith("name server ready: PYRO:Pyro.NameServer@127.0.0.1:"), first
        with Pyro5.api.Proxy(first.split()[-1]) as ns:
            assert ns.list() == {"Pyro.NameServer": first.split()[-1]}
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()  # our own child, by its handle
            server.wait(15)
    assert server.returncode == 0 and "Warning" not in err, err


def run_until_ready(monkeypatch: pytest.MonkeyPatch, argv: list[str], json_mode: bool) -> str:
    """run() in a thread; once it printed, shut its daemon down; the printed text."""
    started: list[Any] = []
    original = meshrpc.naming.start_ns

    def capturing_start_ns(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        started.append(result)
        return result

    monkeypatch.setattr(meshrpc.naming, "start_ns", capturing_start_ns)
    stream = io.StringIO()
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(ns_cli.run(parse(argv), Output(json_mode, stream))))
    thread.start()
    wait_until(lambda: started and stream.getvalue(), timeout=20, message="the name server to print its URI")
    started[0][1].shutdown()
    thread.join(15)
    assert not thread.is_alive() and outcome == [0]
    return stream.getvalue()


def test_run_prints_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    text = run_until_ready(monkeypatch, ["--host", "127.0.0.1", "--port", "0", "--bcport", "0"], False)
    assert text.startswith("name server ready: PYRO:Pyro.NameServer@127.0.0.1:")
    URI(text.split(": ", 1)[1].strip())


def test_run_prints_json(monkeypatch: pytest.MonkeyPatch) -> None:
    text = run_until_ready(monkeypatch, ["--host", "127.0.0.1", "--port", "0", "--no-broadcast", "--json"], True)
    info = json.loads(text)
    assert info["broadcast"] is None and info["storage"] == "memory" and info["entries"] == 1
    assert URI(info["uri"]).object == "Pyro.NameServer"
