"""The `meshrpc` command, run for real in subprocesses, on loopback, each test in a realm of its own.

Daemons are `meshrpc echo` and `meshrpc ns` subprocesses; tests wait for the lines they print (or
for a command's exit), never for a fixed time.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from subprocs import MESHRPC, REPO, Proc, Runner, assert_clean_exit, free_port, runner_for

from meshrpc.cli import COMMANDS
from meshrpc.cli.reference import clean_environment

pytestmark = pytest.mark.timeout(90)

ESC = "\x1b["
ROW_FIELDS = {"name", "uri", "metadata", "host", "source"}


@pytest.fixture
def runner(realm: str) -> Iterator[Runner]:
    yield from runner_for(realm)


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


class Echo:
    """`meshrpc echo` in a subprocess: its name, tags and URI."""

    def __init__(self, runner: Runner, name: str, *tags: str) -> None:
        self.name, self.tags = name, set(tags) or {"echo"}
        args = ["echo", "--name", name, "--json"]
        for tag in tags:
            args += ["--tag", tag]
        self.proc = runner.meshrpc(*args)
        self.uri = json.loads(self.proc.expect(r'^\{"'))["uri"]

    def stop(self) -> None:
        # Ctrl-C is how an echo server stops: "interrupted", exit 130, and no traceback
        self.proc.stop(signal.SIGINT)
        assert_clean_exit(self.proc, (0, 130))


@pytest.fixture
def echo(runner: Runner) -> Iterator[Echo]:
    server = Echo(runner, unique("test.echo"), "echo", "kitchen")
    yield server
    server.stop()


class NameServer:
    """`meshrpc ns` in a subprocess on free ports; env points other commands at it."""

    def __init__(self, runner: Runner) -> None:
        self.proc = runner.meshrpc("ns", "--host", "127.0.0.1", "--port", "0", "--bcport", "0", "--json")
        info = json.loads(self.proc.expect(r'^\{"'))
        self.uri = info["uri"]
        self.port = int(self.uri.rsplit(":", 1)[1])
        self.bcport = int(info["broadcast"].rsplit(":", 1)[1])
        self.env = {"MESHRPC_NS_PORT": str(self.port), "MESHRPC_NS_BCPORT": str(self.bcport)}

    def stop(self) -> None:
        self.proc.stop(signal.SIGTERM)  # SIGTERM stops a name server cleanly
        assert_clean_exit(self.proc, (0,))


@pytest.fixture
def nameserver(runner: Runner) -> Iterator[NameServer]:
    ns = NameServer(runner)
    yield ns
    ns.stop()


def error_lines(proc: Proc) -> list[str]:
    return [line for line in proc.err if line.startswith("error:")]


def assert_one_line_error(proc: Proc, code: int = 1, contains: str = "") -> str:
    """A failed command: exit code, one `error:` line last on stderr, no traceback."""
    assert proc.proc.returncode == code, proc.describe()
    assert "Traceback" not in proc.stderr, proc.describe()
    errors = error_lines(proc)
    assert len(errors) == 1 and proc.err[-1] == errors[0], proc.describe()
    assert contains in errors[0], proc.describe()
    return errors[0]


def run_many(runner: Runner, *commands: list[str], env: dict[str, str] | None = None) -> list[Proc]:
    """Independent commands, run at the same time; each waited for."""
    procs = [runner.meshrpc(*args, **(env or {})) for args in commands]
    for proc in procs:
        proc.wait(60)
    return procs


def rows(proc: Proc) -> list[dict[str, Any]]:
    assert proc.proc.returncode == 0, proc.describe()
    found = json.loads(proc.stdout)
    assert isinstance(found, list), proc.describe()
    for row in found:
        assert ROW_FIELDS <= set(row), row
    return found


# ------------------------------------------------------------------ help, version, config

def test_help_of_every_command(runner: Runner) -> None:
    top = runner.run("--help")
    assert top.proc.returncode == 0 and "usage: meshrpc" in top.stdout
    procs = {name: runner.meshrpc(name, "--help") for name in COMMANDS}
    for name, proc in procs.items():
        assert proc.wait() == 0, proc.describe()
        assert proc.stdout.startswith(f"usage: meshrpc {name}"), proc.describe()
        assert name in top.stdout, f"`meshrpc --help` does not list {name}"
    for name in ("lookup", "list", "yplookup", "register", "remove"):
        text = procs[name].stdout
        assert "--json" in text and "--timeout" in text and "--ns-host" in text, text
    for name in ("lookup", "list", "yplookup"):
        assert "--source {mesh,etcd,ns,all}" in procs[name].stdout


def test_no_command_prints_help(runner: Runner) -> None:
    proc = runner.run()
    assert proc.proc.returncode == 0 and "usage: meshrpc" in proc.stdout


def test_version_and_config(runner: Runner) -> None:
    version = runner.run("version", "--json")
    info = json.loads(version.stdout)
    assert info["meshrpc"] and info["protocol"] == 502 and info["python"]
    text = runner.run("version")
    assert text.proc.returncode == 0 and text.stdout.startswith("meshrpc ")
    config = runner.run("config", "--json")
    assert json.loads(config.stdout)["REALM"] == runner.env["MESHRPC_REALM"]
    table = runner.run("config")
    realm_row = next(line for line in table.out if line.startswith("REALM "))
    assert runner.env["MESHRPC_REALM"] in realm_row and realm_row.split()[-1] == "env"
    reference = runner.run("config", "--reference")
    assert reference.stdout.startswith("# Configuration reference")


def test_cli_reference_is_current() -> None:
    """docs/cli.md's generated part matches the parsers (regenerate: python3 -m meshrpc.cli.reference docs/cli.md)."""
    proc = subprocess.run([sys.executable, "-m", "meshrpc.cli.reference", "--check", "docs/cli.md"], cwd=REPO,
                          env=clean_environment(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ browse

def test_browse_table_and_json(runner: Runner, echo: Echo) -> None:
    table = runner.run("browse")
    assert table.proc.returncode == 0, table.describe()
    assert table.out[0].split() == ["NAME", "TAGS", "URI", "HOST", "LIVENESS"], table.describe()
    line = next(line for line in table.out if line.startswith(echo.name))
    assert echo.uri in line and "echo,kitchen" in line and "127.0.0.1" in line
    assert "listening for meshrpc services" in table.stderr  # progress on stderr, not in the table

    as_json = runner.run("browse", "--json", "--prefix", "test.echo", "--tag", "kitchen")
    found = json.loads(as_json.stdout)
    assert [(e["name"], e["uri"], e["metadata"], e["host"]) for e in found] == [
        (echo.name, echo.uri, ["echo", "kitchen"], "127.0.0.1")]
    assert as_json.stderr == ""  # nothing but JSON, no progress, in JSON mode

    nothing = runner.run("browse", "--tag", "no-such-tag")
    assert nothing.proc.returncode == 0 and nothing.stdout == ""
    assert "nothing found" in nothing.stderr and runner.env["MESHRPC_REALM"] in nothing.stderr


def test_browse_watch_json_sees_a_daemon_arrive_and_leave(runner: Runner) -> None:
    watch = runner.meshrpc("browse", "--watch", "--json")
    marker = json.loads(watch.expect(r'"event": "all-for-now"'))
    assert marker["count"] == 0, watch.describe()
    name = unique("test.watch")
    echo = Echo(runner, name, "watched")
    added = json.loads(watch.expect(rf'"name": "{re.escape(name)}"'))
    assert added["event"] == "added" and added["cause"] == "announce"
    assert {"event", "cause", "name", "uri", "metadata", "host", "realm", "time"} <= set(added)
    assert (added["uri"], added["metadata"], added["host"]) == (echo.uri, ["watched"], "127.0.0.1")
    assert abs(added["time"] - time.time()) < 60

    echo.stop()  # a clean stop says goodbye on the mesh: removed at once
    removed = json.loads(watch.expect(rf'"event": "removed".*"name": "{re.escape(name)}"|'
                                      rf'"name": "{re.escape(name)}".*"event": "removed"'))
    assert removed["uri"] == echo.uri and removed["event"] == "removed" and removed["cause"] == "goodbye"
    for line in watch.out:
        json.loads(line)  # every line is one JSON object

    watch.stop(signal.SIGINT)
    assert_clean_exit(watch)
    assert watch.stderr == "", watch.describe()


def test_browse_watch_ctrl_c_exits_cleanly(runner: Runner, echo: Echo) -> None:
    watch = runner.meshrpc("browse", "--watch")
    watch.expect("watching the mesh", stderr=True)
    line = watch.expect(re.escape(echo.name))
    assert re.match(r"\d\d:\d\d:\d\d [+=] ", line) and echo.uri in line
    watch.stop(signal.SIGINT)
    assert_clean_exit(watch)
    assert "KeyboardInterrupt" not in watch.stderr


# ------------------------------------------------------------------ demo

def test_demo_end_to_end(runner: Runner) -> None:
    started = time.monotonic()
    demo = runner.run("demo", "--json", timeout=60)
    elapsed = time.monotonic() - started
    assert demo.proc.returncode == 0, demo.describe()
    assert elapsed < 20, f"the demo took {elapsed:.1f} s"
    result = json.loads(demo.stdout)
    assert result["ok"] is True
    assert result["failover"]["failed"] == 0, result["failover"]["errors"]
    assert len(result["browse"]) == 4
    assert result["pyrometa"]["place"] == "kitchen"
    assert "Traceback" not in demo.stderr


# ------------------------------------------------------------------ call and ping

def test_call_and_ping_an_echo_server(runner: Runner, echo: Echo) -> None:
    by_name = runner.run("call", f"PYRONAME:{echo.name}", "echo", "hello")
    assert by_name.proc.returncode == 0 and by_name.stdout == "'hello'", by_name.describe()
    direct = runner.run("call", echo.uri, "echo", "[1, 2, {'a': 3}]", "--json")
    assert json.loads(direct.stdout) == {"result": [1, 2, {"a": 3}]}
    by_tags = runner.run("call", "PYROMETA:echo,kitchen", "generator", "3")
    assert by_tags.stdout == "[0, 1, 2]", by_tags.describe()
    with_marshal = runner.run("call", echo.uri, "echo", "b'raw'", "--serializer", "marshal")
    assert with_marshal.stdout == "b'raw'", with_marshal.describe()

    ping = runner.run("ping", f"PYRONAME:{echo.name}", "--count", "3", "--json")
    info = json.loads(ping.stdout)
    assert info["target"] == echo.uri and len(info["rtt_ms"]) == 3 and info["connect_ms"] > 0
    text = runner.run("ping", echo.uri)
    assert text.stdout.startswith(f"{echo.uri}: connected in"), text.describe()

    remote_error = runner.run("call", echo.uri, "error")
    assert_one_line_error(remote_error, 1, "ValueError: this is the generated error from echoserver echo() method")

    # --timeout bounds a name's lookup too (it waited LOOKUP_TIMEOUT, 3 s, whatever --timeout said)
    unknown = runner.run("call", "PYRONAME:test.no.such.name", "echo", "1", "--timeout", "0.5",
                         MESHRPC_RESOLVE="mesh")
    assert_one_line_error(unknown, 1, "UnknownNameError: unknown name 'test.no.such.name'")
    assert "waited 0.5 s" in unknown.stderr, unknown.describe()


# ------------------------------------------------------------------ lookup, list, yplookup on the mesh

def test_lookup_list_yplookup_on_the_mesh(runner: Runner) -> None:
    kitchen = Echo(runner, unique("test.home.kitchen"), "sensor", "kitchen")
    garden = Echo(runner, unique("test.home.garden"), "sensor", "garden")
    try:
        (lookup, lookup_json, missing, missing_json, everything, by_prefix, by_regex, table, nothing,
         nothing_json, both, sensors, one, combined, none, no_filter, positional) = run_many(
            runner, ["lookup", kitchen.name], ["lookup", kitchen.name, "--json"],
            ["lookup", "test.no.such.name", "--timeout", "0.5"],
            ["lookup", "test.no.such.name", "--timeout", "0.5", "--json"],
            ["list", "--json"], ["list", "--prefix", "test.home.garden", "--json"],
            ["list", "--regex", r"test\.home\.(kit|nothing)", "--json"], ["list"],
            ["list", "--prefix", "nothing.here"], ["list", "--prefix", "nothing.here", "--json"],
            ["list", "--prefix", "a", "--regex", "b"],
            ["yplookup", "--all", "sensor", "--json"], ["yplookup", "--all", "sensor", "--any", "garden,attic", "--json"],
            ["yplookup", "--all", "sensor,kitchen", "--json"], ["yplookup", "--any", "attic"], ["yplookup"],
            ["yplookup", "sensor", "kitchen", "--json"])

        assert lookup.proc.returncode == 0, lookup.describe()
        assert lookup.out[0].split() == ["NAME", "TAGS", "URI"]
        assert lookup.out[1].split() == [kitchen.name, "kitchen,sensor", kitchen.uri]
        assert f"looking for '{kitchen.name}' on the mesh" in lookup.stderr
        assert rows(lookup_json) == [{"name": kitchen.name, "uri": kitchen.uri, "metadata": ["kitchen", "sensor"],
                                      "host": "127.0.0.1", "source": "mesh"}]

        line = assert_one_line_error(missing, 1, "'test.no.such.name' not found on the mesh")
        assert runner.env["MESHRPC_REALM"] in line and missing.stdout == ""
        assert missing_json.proc.returncode == 1 and json.loads(missing_json.stdout) == []

        assert {r["name"] for r in rows(everything)} == {kitchen.name, garden.name}
        assert [r["uri"] for r in rows(by_prefix)] == [garden.uri]
        assert [r["name"] for r in rows(by_regex)] == [kitchen.name]
        assert [line.split()[0] for line in table.out] == ["NAME", *sorted([kitchen.name, garden.name])]

        assert nothing.proc.returncode == 0 and nothing.stdout == "", nothing.describe()
        assert "nothing matching on the mesh" in nothing.stderr and "error" not in nothing.stderr
        assert json.loads(nothing_json.stdout) == [] and nothing_json.proc.returncode == 0
        assert both.proc.returncode == 2 and "not allowed with" in both.stderr

        assert {r["name"] for r in rows(sensors)} == {kitchen.name, garden.name}
        assert [r["name"] for r in rows(one)] == [garden.name]
        assert [r["name"] for r in rows(combined)] == [kitchen.name]
        assert none.proc.returncode == 0 and none.stdout == "" and "nothing with any of attic" in none.stderr
        assert no_filter.proc.returncode == 2 and "give at least one tag" in no_filter.stderr
        assert rows(positional) == rows(combined), positional.describe()  # `yplookup TAG...` is --all

        started = time.monotonic()
        runner.run("lookup", "test.no.such.name", "--timeout", "0.5")
        assert time.monotonic() - started < 10, "--timeout does not bound a lookup"
    finally:
        kitchen.stop()
        garden.stop()


# ------------------------------------------------------------------ the name server

def test_name_server_commands(runner: Runner, nameserver: NameServer, echo: Echo) -> None:
    env = nameserver.env
    name = unique("test.ns.echo")
    registered = runner.run("register", name, echo.uri, "--tag", "echo", "--tag", "ns-only", **env)
    assert registered.proc.returncode == 0, registered.describe()
    assert registered.stdout == f"registered {name} -> {echo.uri}  [echo,ns-only]  (name server 127.0.0.1:{nameserver.port})"
    assert "locating a name server" in registered.stderr
    other = runner.run("register", "test.ns.other", "PYRO:obj@127.0.0.1:1", "--json", **env)
    assert json.loads(other.stdout)["registered"] == "test.ns.other"

    # the same, at an explicit location instead of the environment's
    explicit = runner.run("lookup", name, "--source", "ns", "--ns-host", "127.0.0.1", "--ns-port",
                          str(nameserver.port), "--json")
    assert rows(explicit) == [{"name": name, "uri": echo.uri, "metadata": ["echo", "ns-only"],
                               "host": "127.0.0.1", "source": "ns"}]

    listed, everything, regex, tagged, merged, duplicate, bad_uri = run_many(
        runner, ["list", "--source", "ns", "--prefix", "test.ns.", "--json"], ["list", "--source", "ns", "--json"],
        ["list", "--source", "ns", "--regex", r"test\.ns\.o", "--json"],
        ["yplookup", "--source", "ns", "--all", "echo", "--any", "ns-only,x", "--json"],
        ["list", "--source", "all", "--prefix", "test."],
        ["register", name, "PYRO:obj@127.0.0.1:2", "--safe"], ["register", "test.bad", "not-a-uri"], env=env)
    assert [r["name"] for r in rows(listed)] == [name, "test.ns.other"]
    assert "Pyro.NameServer" in {r["name"] for r in rows(everything)}
    assert [r["name"] for r in rows(regex)] == ["test.ns.other"]
    assert [r["name"] for r in rows(tagged)] == [name]
    # both sources: the echo server is on the mesh, its registration in the name server
    assert merged.out[0].split() == ["NAME", "TAGS", "URI", "SOURCE"], merged.describe()
    sources = {line.split()[0]: line.split()[-1] for line in merged.out[1:]}
    assert sources == {echo.name: "mesh", name: "ns", "test.ns.other": "ns"}
    assert_one_line_error(duplicate, 1, "is registered already")
    assert_one_line_error(bad_uri, 1, "InvalidURIError")

    # resolving PYRONAME through the name server only
    call = runner.run("call", f"PYRONAME:{name}", "echo", "via-ns", MESHRPC_RESOLVE="ns", **env)
    assert call.stdout == "'via-ns'", call.describe()

    removed = runner.run("remove", name, **env)
    assert removed.proc.returncode == 0 and removed.stdout.startswith("removed 1 entry"), removed.describe()
    again = runner.run("remove", name, **env)
    assert_one_line_error(again, 1, "is not registered")
    gone = runner.run("lookup", name, "--source", "ns", **env)
    assert_one_line_error(gone, 1, "not found in the name server")
    by_prefix = runner.run("remove", "--prefix", "test.ns.", "--json", **env)
    assert json.loads(by_prefix.stdout)["removed"] == 1
    none_left = runner.run("list", "--source", "ns", "--prefix", "test.", **env)
    assert none_left.proc.returncode == 0 and none_left.stdout == "" and "nothing matching" in none_left.stderr
    usage = runner.run("remove", **env)
    assert usage.proc.returncode == 2 and "exactly one of NAME" in usage.stderr


def test_name_server_missing_is_one_clear_error(runner: Runner) -> None:
    # MESHRPC_NS_PORT and _BCPORT point at ports nothing listens on (see base_env)
    lookup, register, both, own = run_many(
        runner, ["lookup", "x", "--source", "ns", "--timeout", "2"],
        ["register", "x", "PYRO:obj@127.0.0.1:1", "--timeout", "2"], ["list", "--source", "all", "--timeout", "1"],
        ["remove", "Pyro.NameServer"])
    line = assert_one_line_error(lookup, 1, "no name server answered")
    assert "meshrpc ns" in line
    assert_one_line_error(register, 1, "no name server answered")
    assert_one_line_error(both, 1, "nothing found on the mesh")
    assert own.proc.returncode == 2 and "cannot be removed" in own.stderr


# ------------------------------------------------------------------ errors and colours

@pytest.mark.parametrize("args, contains", [
    (["call", "not-a-uri", "echo"], "InvalidURIError"),
    (["ping", "PYRO:obj@127.0.0.1:PORT"], "NotDeliveredError"),
    (["call", "PYRO:obj@127.0.0.1:PORT", "echo", "1"], "cannot connect"),
    (["lookup", "nothing.here", "--timeout", "0.3"], "not found"),
    (["browse", "--timeout", "not-a-number"], "invalid float value"),
])
def test_errors_are_one_line_without_traceback(runner: Runner, args: list[str], contains: str) -> None:
    args = [a.replace("PORT", str(free_port())) for a in args]
    proc = runner.run(*args)
    if proc.proc.returncode == 2:  # argparse usage errors: usage, then one `meshrpc X: error:` line
        assert "Traceback" not in proc.stderr and contains in proc.err[-1], proc.describe()
        return
    assert_one_line_error(proc, 1, contains)


def test_unknown_method_is_one_line(runner: Runner, echo: Echo) -> None:
    proc = runner.run("call", echo.uri, "no_such_method")
    assert_one_line_error(proc, 1, "no_such_method")


def test_debug_shows_the_traceback(runner: Runner) -> None:
    proc = runner.run("--debug", "call", "not-a-uri", "echo")
    assert proc.proc.returncode != 0 and "Traceback" in proc.stderr and "InvalidURIError" in proc.stderr


def run_in_pty(argv: list[str], env: dict[str, str], timeout: float = 30.0) -> str:
    """Run argv with stdout and stderr on a pseudo-terminal; everything it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=REPO)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], max(0.0, min(1.0, deadline - time.monotonic())))
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def test_colours_only_on_a_terminal_and_never_with_no_color(runner: Runner) -> None:
    piped = runner.run("config")
    assert piped.proc.returncode == 0 and ESC not in piped.stdout and ESC not in piped.stderr
    failed = runner.run("call", "not-a-uri", "echo")
    assert ESC not in failed.stderr and failed.err[-1].startswith("error: ")

    on_tty = run_in_pty([*MESHRPC, "config"], runner.env)
    assert ESC + "1m" in on_tty, on_tty  # the bold header
    error_on_tty = run_in_pty([*MESHRPC, "call", "not-a-uri", "echo"], runner.env)
    assert ESC + "31merror:" in error_on_tty, error_on_tty

    no_color = {**runner.env, "NO_COLOR": "1"}
    assert ESC not in run_in_pty([*MESHRPC, "config"], no_color)
    assert ESC not in run_in_pty([*MESHRPC, "call", "not-a-uri", "echo"], no_color)
    dumb = {**runner.env, "TERM": "dumb"}
    assert ESC not in run_in_pty([*MESHRPC, "config"], dumb)


def test_json_output_has_no_colour_or_progress(runner: Runner, echo: Echo) -> None:
    proc = runner.run("list", "--json")
    assert proc.stderr == "" and ESC not in proc.stdout
    assert [r["name"] for r in rows(proc)] == [echo.name]
