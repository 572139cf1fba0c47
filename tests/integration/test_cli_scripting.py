"""A command line a home-automation scripter can live in (issue 17), run for real: typed arguments,
properties, describe, --all, --realm, browse hints and --exec, closed pipes, SIGTERM goodbyes, and a
person watching `browse --watch` in a terminal (tmux) while daemons come, go, get SIGTERM and kill -9.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from subprocs import MESHRPC, Proc, Runner, assert_clean_exit, runner_for

pytestmark = pytest.mark.timeout(120)

LAMP = textwrap.dedent('''
    import sys
    import meshrpc

    @meshrpc.expose
    class Lamp:
        """A lamp in the kitchen."""

        def __init__(self):
            self.on, self._level = False, 0

        def turn(self, on: bool, fade: float = 0.0) -> str:
            """Switch it on or off."""
            self.on = on
            return f"on={on!r} fade={fade!r}"

        @meshrpc.idempotent
        def state(self):
            return self.on

        @meshrpc.oneway
        def blink(self):
            pass

        @property
        def level(self):
            """Brightness, 0..100."""
            return self._level

        @level.setter
        def level(self, value):
            self._level = value

        @property
        def model(self):
            return "x1"

    with meshrpc.Daemon() as daemon:
        uri = daemon.register(Lamp(), name=sys.argv[1], metadata=set(sys.argv[2:]) or {"lamp"})
        print("ready", uri, flush=True)
        daemon.requestLoop()
''')


@pytest.fixture
def runner(realm: str) -> Iterator[Runner]:
    yield from runner_for(realm)


@pytest.fixture
def lamp_script(tmp_path: Path) -> Path:
    path = tmp_path / "lamp.py"
    path.write_text(LAMP)
    return path


def start_lamp(runner: Runner, script: Path, name: str, *tags: str) -> tuple[Proc, str]:
    proc = runner.python(script, name, *tags)
    uri = proc.expect(r"^ready ").split()[1]
    return proc, uri


def ok(proc: Proc) -> str:
    proc.wait(60)
    assert_clean_exit(proc)
    return proc.stdout


def usage_error(proc: Proc, contains: str) -> None:
    proc.wait(60)
    assert proc.proc.returncode == 2, proc.describe()
    assert "Traceback" not in proc.stderr and contains in proc.stderr, proc.describe()


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ call, get, set, describe, --all

def test_typed_arguments_keywords_and_properties(runner: Runner, lamp_script: Path) -> None:
    name = unique("home.lamp")
    _, uri = start_lamp(runner, lamp_script, name, "lamp", "kitchen")
    target = f"PYRONAME:{name}"
    assert ok(runner.meshrpc("call", target, "turn", "false")) == "'on=False fade=0.0'"   # never the string
    assert ok(runner.meshrpc("call", target, "turn", "True", "fade=0.5")) == "'on=True fade=0.5'"
    assert ok(runner.meshrpc("call", uri, "turn", "--args-json", '{"on": null, "fade": 2}')) == "'on=None fade=2'"
    assert json.loads(ok(runner.meshrpc("call", target, "state", "--json"))) == {"result": None}
    usage_error(runner.meshrpc("call", target, "turn", "yes"), "'yes' is ambiguous")
    usage_error(runner.meshrpc("call", target, "turn", "two words"), "quote a string as JSON")

    assert ok(runner.meshrpc("get", target, "level")) == "0"
    assert ok(runner.meshrpc("set", target, "level", "40")) == ""
    assert json.loads(ok(runner.meshrpc("get", target, "level", "--json"))) == {"value": 40}
    wrong = runner.meshrpc("get", target, "turn")
    wrong.wait(60)
    assert wrong.proc.returncode == 1 and "it is a method: use `meshrpc call`" in wrong.stderr, wrong.describe()
    prop = runner.meshrpc("call", target, "level")
    prop.wait(60)
    assert prop.proc.returncode == 1 and "read it with `meshrpc get`" in prop.stderr, prop.describe()


def test_describe_shows_signatures_docs_flags_tags_and_host(runner: Runner, lamp_script: Path) -> None:
    name = unique("home.lamp")
    _, uri = start_lamp(runner, lamp_script, name, "lamp", "kitchen")
    text = ok(runner.meshrpc("describe", f"PYRONAME:{name}"))
    assert f"Lamp at {uri}  (PYRONAME:{name})" in text
    assert "host: 127.0.0.1   tags: kitchen, lamp" in text and "A lamp in the kitchen." in text
    assert "turn(on: bool, fade: float = 0.0) -> str" in text and "Switch it on or off." in text
    assert re.search(r"state\(\)\s+\[idempotent\]", text) and re.search(r"blink\(\)\s+\[oneway\]", text)
    assert re.search(r"level\s+\[read/write\]", text) and re.search(r"model\s+\[read-only\]", text)
    described = json.loads(ok(runner.meshrpc("describe", uri, "--json")))
    assert described["methods"]["turn"]["signature"] == "(on: bool, fade: float = 0.0) -> str"
    assert described["attrs"]["level"] == {"doc": "Brightness, 0..100.", "writable": True}


def test_describe_a_pyro5_daemon_lists_names(runner: Runner, tmp_path: Path) -> None:
    pytest.importorskip("Pyro5")
    script = tmp_path / "pyro5_server.py"
    script.write_text(textwrap.dedent('''
        import Pyro5.api
        @Pyro5.api.expose
        class Thing:
            def ping(self, x):
                return x
        daemon = Pyro5.api.Daemon(host="127.0.0.1")
        print("ready", daemon.register(Thing, "thing"), flush=True)
        daemon.requestLoop()
    '''))
    proc = runner.python(script)
    uri = proc.expect("^ready ").split()[1]
    text = ok(runner.meshrpc("describe", uri))
    assert "ping(...)" in text


def test_call_all_providers(runner: Runner, lamp_script: Path) -> None:
    name = unique("home.lamp")
    uris = {start_lamp(runner, lamp_script, name, "lamp", "hall")[1] for _ in range(2)}
    rows = json.loads(ok(runner.meshrpc("call", "--all", f"PYROMETA:hall", "turn", "true", "--json")))
    assert {row["uri"] for row in rows} == uris and all(row["result"] == "on=True fade=0.0" for row in rows)
    text = ok(runner.meshrpc("call", "--all", f"PYRONAME:{name}", "state"))
    assert sorted(text.splitlines()) == sorted(f"{uri}  True" for uri in uris)


def test_realm_option_everywhere_and_empty_realm_refused(runner: Runner, lamp_script: Path) -> None:
    other = "test-" + uuid.uuid4().hex[:12]
    name = unique("home.lamp")
    proc = runner.python(lamp_script, name, MESHRPC_REALM=other)
    proc.expect("^ready ")
    assert ok(runner.meshrpc("call", f"PYRONAME:{name}", "state", "--realm", other)) == "False"
    assert name in ok(runner.meshrpc("lookup", name, "--realm", other))
    for args in (["browse", "--realm", ""], ["call", "PYRONAME:x", "m", "--realm", ""], ["lookup", "x", "--realm", " "]):
        usage_error(runner.meshrpc(*args), "the realm must not be empty")
    empty_env = runner.meshrpc("browse", MESHRPC_REALM="")
    usage_error(empty_env, "MESHRPC_REALM='': setting REALM: the realm must not be empty")
    assert len(empty_env.err) == 1, empty_env.describe()


def test_bad_and_unknown_settings_are_one_line(runner: Runner) -> None:
    bad = runner.meshrpc("browse", MESHRPC_LOOKUP_TIMEOUT="soon")
    usage_error(bad, "MESHRPC_LOOKUP_TIMEOUT='soon'")
    typo = runner.meshrpc("echo", MESHRPC_REBIND_TIMOUT="3")
    usage_error(typo, "did you mean MESHRPC_REBIND_TIMEOUT?")
    assert len(bad.err) == 1 and len(typo.err) == 1, (bad.describe(), typo.describe())


# ------------------------------------------------------------------ browse: hints, --exec, closed pipes, causes

def test_empty_browse_hints_match_what_was_heard(runner: Runner, lamp_script: Path) -> None:
    name = unique("home.lamp")
    start_lamp(runner, lamp_script, name, "lamp")
    other_realm = runner.meshrpc("browse", "--realm", "test-nobody-" + uuid.uuid4().hex[:6])
    other_realm.wait(30)
    assert "services were heard in realm(s)" in other_realm.stderr and runner.env["MESHRPC_REALM"] in other_realm.stderr
    assert "loopback only" not in other_realm.stderr, other_realm.describe()
    filtered = runner.meshrpc("browse", "--tag", "no-such-tag")
    filtered.wait(30)
    assert "none matching the filters" in filtered.stderr, filtered.describe()
    everywhere = json.loads(ok(runner.meshrpc("browse", "--all-realms", "--json", "--prefix", name)))
    assert [(row["realm"], row["name"]) for row in everywhere] == [(runner.env["MESHRPC_REALM"], name)]


def test_watch_exec_runs_a_handler_per_event(runner: Runner, lamp_script: Path, tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    handler = (f"{sys.executable} -c \"import json, os, sys; event = json.loads(sys.stdin.readline()); "
               f"open({str(log)!r}, 'a').write(' '.join([os.environ['MESH_EVENT'], os.environ['MESH_CAUSE'] or '-', "
               f"os.environ['MESH_NAME'], os.environ['MESH_TAGS'], event['uri']]) + chr(10))\"")
    name = unique("home.lamp")
    first, first_uri = start_lamp(runner, lamp_script, name, "lamp")
    watch = runner.meshrpc("browse", "--watch", "--prefix", name, "--exec", handler)
    watch.expect("all for now: 1 service")
    second, second_uri = start_lamp(runner, lamp_script, name, "lamp")
    watch.expect(re.escape(second_uri))
    first.stop(signal.SIGINT)
    watch.expect(r"- .*\(goodbye\)")
    deadline = time.monotonic() + 20
    expected = [f"present - {name} lamp {first_uri}", f"added announce {name} lamp {second_uri}",
                f"removed goodbye {name} lamp {first_uri}"]
    while (log.read_text().splitlines() if log.exists() else []) != expected:
        assert time.monotonic() < deadline, (log.read_text() if log.exists() else "", watch.describe())
        time.sleep(0.05)  # the handler writes a file: no event to wait on
    watch.stop(signal.SIGINT)
    assert_clean_exit(watch)


def test_watch_json_into_a_closed_pipe_ends_cleanly(runner: Runner, lamp_script: Path) -> None:
    start_lamp(runner, lamp_script, unique("home.lamp"))
    pipeline = subprocess.run(f"{' '.join(MESHRPC)} browse --watch --json | head -n 1", shell=True, env=runner.env,
                              capture_output=True, text=True, timeout=60)
    assert json.loads(pipeline.stdout)["event"] == "present"
    assert pipeline.stderr == "", pipeline.stderr   # no BrokenPipeError, no "Exception ignored"


def test_sigterm_says_goodbye_and_kill_is_an_expiry(runner: Runner, lamp_script: Path) -> None:
    watch = runner.meshrpc("browse", "--watch", "--json")
    watch.expect(r'"all-for-now"')
    echo_name, lamp_name = unique("test.echo"), unique("home.lamp")
    echo = runner.meshrpc("echo", "--name", echo_name, "--json")
    echo.expect(r'^\{"')
    lamp, _ = start_lamp(runner, lamp_script, lamp_name)
    for name in (echo_name, lamp_name):
        watch.expect(rf'"event": "added".*"name": "{re.escape(name)}"')
    started = time.monotonic()
    echo.stop(signal.SIGTERM)                 # `meshrpc echo`: a service manager's stop
    assert_clean_exit(echo)
    gone = json.loads(watch.expect(rf'"event": "removed".*"name": "{re.escape(echo_name)}"'))
    assert gone["cause"] == "goodbye" and time.monotonic() - started < 3.0
    lamp.kill()                                # kill -9: no goodbye, the entry expires
    gone = json.loads(watch.expect(rf'"event": "removed".*"name": "{re.escape(lamp_name)}"', timeout=30))
    assert gone["cause"] == "expiry", gone


def test_name_server_sigterm_withdraws_its_mesh_announcement(runner: Runner) -> None:
    watch = runner.meshrpc("browse", "--watch", "--json")
    watch.expect(r'"all-for-now"')
    ns = runner.meshrpc("ns", "--host", "127.0.0.1", "--port", "0", "--bcport", "0", "--mesh", "--json")
    ns.expect(r'^\{"')
    watch.expect(r'"event": "added"')
    ns.stop(signal.SIGTERM)
    assert_clean_exit(ns)
    gone = json.loads(watch.expect(r'"event": "removed"'))
    assert gone["cause"] == "goodbye", gone


# ------------------------------------------------------------------ what a person sees: browse --watch in tmux

@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_terminal_session_watch_while_daemons_come_and_go(runner: Runner, lamp_script: Path, tmp_path: Path) -> None:
    session = "mrpc" + uuid.uuid4().hex[:8]
    socket_name = str(tmp_path / "tmux.sock")
    tmux = ["tmux", "-S", socket_name]
    env_args = [f"{k}={v}" for k, v in runner.env.items() if k.startswith(("MESHRPC_", "PYTHON", "PATH"))]
    subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
                    "env", "TERM=xterm", *env_args, *MESHRPC, "browse", "--watch"], check=True, timeout=30)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                              timeout=30).stdout

    def wait_screen(pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = screen()
            if re.search(pattern, shown, re.MULTILINE):
                return shown
            assert time.monotonic() < deadline, f"not on screen: {pattern!r}\n{shown}"
            time.sleep(0.1)  # polling the terminal's screen: tmux has no event to wait on

    try:
        wait_screen(r"all for now: 0 service")
        names = {key: unique(f"tty.{key}") for key in ("stop", "term", "kill")}
        procs = {key: start_lamp(runner, lamp_script, name)[0] for key, name in names.items()}
        for name in names.values():
            wait_screen(rf"^\d\d:\d\d:\d\d \+ {re.escape(name)}  \[lamp\]  PYRO:")
        procs["stop"].stop(signal.SIGINT)
        wait_screen(rf"- {re.escape(names['stop'])} .*\(goodbye\)$")
        procs["term"].stop(signal.SIGTERM)   # a plain requestLoop program: the daemon takes SIGTERM itself
        wait_screen(rf"- {re.escape(names['term'])} .*\(goodbye\)$")
        procs["kill"].kill()
        shown = wait_screen(rf"- {re.escape(names['kill'])} .*\(expired: no longer heard\)$")
        assert "Traceback" not in shown
        subprocess.run([*tmux, "send-keys", "-t", session, "C-c"], check=True, timeout=30)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30)
