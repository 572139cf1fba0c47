"""Smoke tests of examples/: every program runs, on loopback, in a mesh realm of the test's own.

Servers print a `ready` line (or their URI) when they serve; tests wait for it, run the client to its
end, and stop the server with Ctrl-C (SIGINT), which must end it cleanly.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator

import pytest
from subprocs import REPO, Proc, Runner, assert_clean_exit, runner_for

pytestmark = pytest.mark.timeout(90)

EXAMPLES = REPO / "examples"


@pytest.fixture
def runner(realm: str) -> Iterator[Runner]:
    yield from runner_for(realm)


def serve(runner: Runner, script: str, *args: str, ready: str = r"^ready: ", **env: str) -> Proc:
    server = runner.python(EXAMPLES / script, *args, **env)
    server.expect(ready)
    return server


def client(runner: Runner, script: str, *args: str, timeout: float = 60.0, **env: str) -> Proc:
    proc = runner.python(EXAMPLES / script, *args, **env)
    proc.wait(timeout)
    assert_clean_exit(proc)
    return proc


def stop(server: Proc) -> None:
    server.stop(signal.SIGINT)
    assert_clean_exit(server)


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    folders = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert folders, "no examples"
    for folder in folders:
        assert f"]({folder}/)" in readme, f"examples/README.md does not list {folder}/"
    for script in re.findall(r"examples/([\w/]+\.py)", readme):
        assert (EXAMPLES / script).exists(), f"examples/README.md mentions a missing file: {script}"
    for path in EXAMPLES.rglob("*.py"):
        assert path.read_text().startswith('"""'), f"{path} has no docstring saying what it does"


def test_greeting(runner: Runner) -> None:
    server = serve(runner, "greeting/server.py")
    assert runner.env["MESHRPC_REALM"] in server.out[0]  # the realm came from the environment
    proc = client(runner, "greeting/client.py", "tester")
    assert proc.out[0] == "hello, tester!"
    assert proc.out[1].startswith("(served by PYRO:") and "@127.0.0.1:" in proc.out[1]
    stop(server)


def test_home_automation(runner: Runner) -> None:
    devices = serve(runner, "home/devices.py")
    proc = client(runner, "home/client.py")
    assert re.fullmatch(r"kitchen temperature: \d+\.\d °C", proc.out[0]), proc.describe()
    assert "home.hall.light: hall light is on" in proc.out
    assert "home.kitchen.light: kitchen light is on" in proc.out
    assert not any("sprinkler" in line for line in proc.out)  # a switch, but not a light
    sensors = [line for line in proc.out[1:] if re.match(r"home\.\w+\.(temperature|humidity): ", line)]
    assert len(sensors) == 3, proc.describe()
    stop(devices)


def test_asyncio_home(runner: Runner) -> None:
    devices = serve(runner, "asyncio_home/devices.py")
    proc = client(runner, "asyncio_home/controller.py")
    assert proc.out[:2] == ["hall motion sensor: subscribed", "porch motion sensor: subscribed"], proc.describe()
    assert sorted(proc.out[2:4]) == ["motion in the hall: hall lamp on", "motion in the porch: porch lamp on"]
    assert proc.out[4:] == ["hall lamp: on after 3 motion events", "porch lamp: on after 3 motion events"]
    stop(devices)


def test_failover(runner: Runner) -> None:
    replicas = {label: serve(runner, "failover/replica.py", label) for label in ("A", "B")}
    caller = runner.python(EXAMPLES / "failover" / "client.py", "--pause", "0.05")
    first = caller.expect(r"^call 1: ")
    victim = re.search(r"from replica (\w)", first).group(1)
    survivor = "B" if victim == "A" else "A"
    replicas[victim].proc.send_signal(signal.SIGKILL)
    replicas[victim].wait()
    killed_at = len(caller.out)
    # the same proxy carries on: three answers from the survivor, and no call failed
    for _ in range(3):
        line = caller.expect(rf"from replica {survivor}$", start=killed_at)
        killed_at = caller.out.index(line) + 1
    assert not any("failed" in line for line in caller.out), caller.describe()
    numbers = [int(re.match(r"call (\d+):", line).group(1)) for line in caller.out]
    assert numbers == list(range(1, len(numbers) + 1)), caller.describe()  # none skipped
    caller.stop(signal.SIGINT)
    assert_clean_exit(caller)
    stop(replicas[survivor])


def test_callbacks(runner: Runner) -> None:
    server = serve(runner, "callbacks/server.py")
    proc = client(runner, "callbacks/client.py", "3")
    assert proc.out == ["report: step 1/3", "report: step 2/3", "report: step 3/3", "report: done, result 6"]
    stop(server)


def test_streaming_a_large_result(runner: Runner) -> None:
    server = serve(runner, "streaming/server.py")
    proc = client(runner, "streaming/client.py", "8")
    assert re.match(r"received 8\.0 MiB in 8 chunks, \d+ MiB/s; checksum matches", proc.out[-1]), proc.describe()
    stop(server)


def test_batched_and_oneway_calls(runner: Runner) -> None:
    server = serve(runner, "batch_oneway/server.py")
    proc = client(runner, "batch_oneway/client.py", "50")
    assert proc.out[0].startswith("50 calls one by one: ") and "(last result 100)" in proc.out[0]
    oneway_ms = float(re.search(r"returned after ([\d.]+) ms", proc.out[1]).group(1))
    assert oneway_ms < 500, proc.describe()  # did not wait for the server's 0.5 s
    assert proc.out[-1] == "total 1100"
    stop(server)


def test_name_server_fallback(runner: Runner) -> None:
    ns = runner.meshrpc("ns", "--host", "127.0.0.1", "--port", "0", "--bcport", "0", "--json")
    info = json.loads(ns.expect(r'^\{"'))
    env = {"MESHRPC_NS_PORT": info["uri"].rsplit(":", 1)[1], "MESHRPC_NS_BCPORT": info["broadcast"].rsplit(":", 1)[1]}
    server = serve(runner, "nameserver/server.py", **env)
    assert "registered as example.ns.greeting in the name server at 127.0.0.1:" in server.out[0]
    proc = client(runner, "nameserver/client.py", MESHRPC_RESOLVE="ns", **env)
    assert proc.out[0].startswith("in the name server: example.ns.greeting -> PYRO:"), proc.describe()
    assert proc.out[-1] == "hello, world, via the name server!"
    stop(server)  # Ctrl-C: the server removes its name on the way out
    listed = runner.run("list", "--source", "ns", "--prefix", "example.", "--json", **env)
    assert json.loads(listed.stdout) == [], listed.describe()
    ns.stop(signal.SIGTERM)
    assert_clean_exit(ns)


def test_pyro5_interop(runner: Runner) -> None:
    pytest.importorskip("Pyro5")
    ours = serve(runner, "pyro5_interop/meshrpc_server.py", ready=r"^PYRO:")
    theirs = serve(runner, "pyro5_interop/pyro5_server.py", ready=r"^PYRO:")
    pyro5_client = client(runner, "pyro5_interop/pyro5_client.py", ours.out[0])
    assert pyro5_client.out == ["Pyro5 client -> meshrpc daemon: 2 + 3 = 5",
                                "Pyro5 client got the remote ZeroDivisionError: division by zero"]
    meshrpc_client = client(runner, "pyro5_interop/meshrpc_client.py", theirs.out[0])
    assert meshrpc_client.out[:2] == ["meshrpc client -> Pyro5 daemon: 2 + 3 = 5",
                                      "meshrpc client got the remote ZeroDivisionError: division by zero"]
    assert re.fullmatch(r"with the remote traceback attached \(\d+ lines\)", meshrpc_client.out[2])
    assert int(re.search(r"\d+", meshrpc_client.out[2]).group()) > 0
    stop(ours)
    stop(theirs)


def test_events_door_light_and_logger(runner: Runner) -> None:
    light = serve(runner, "events/light.py")
    logger = serve(runner, "events/logger.py")
    sensor = client(runner, "events/door_sensor.py", "4", "--pause", "0.05")
    assert sensor.out[0] == "door sensor: 2 subscribers listening", sensor.describe()
    assert sensor.out[-1] == "door sensor: 4 events, 8 deliveries, 0 dropped", sensor.describe()
    # flushed: each delivery returned after its handler ran (the lines may still be in the pipe)
    light.expect(lambda _line: len(light.out) >= 5)
    logger.expect(r"\(#3\)$")
    assert light.out[1:] == ["light: hall door open -> light on", "light: hall door closed -> light off"] * 2
    logged = [line for line in logger.out if line.startswith("logger: ") and "home.hall.door" in line]
    assert [re.search(r"'state': '(\w+)'.*\(#(\d)\)", line).groups() for line in logged] == [
        ("open", "0"), ("closed", "1"), ("open", "2"), ("closed", "3")], logger.describe()
    stop(light)
    stop(logger)
    assert logger.out[-1] == "logger: stopped (0 events lost)"


def test_examples_default_to_loopback() -> None:
    """No example binds anything but the configured host (localhost by default)."""
    for path in EXAMPLES.rglob("*.py"):
        text = path.read_text()
        assert "0.0.0.0" not in text, f"{path} binds every interface"
        for call in re.findall(r"Daemon\(([^)]*)\)", text):
            assert call in ("", 'host="localhost"'), f"{path}: Daemon({call})"


def test_links_in_the_guides_resolve() -> None:
    """Relative links of examples/README.md and the guides point at files that exist."""
    guides = [EXAMPLES / "README.md", *(REPO / "docs" / name for name in (
        "README.md", "tutorial.md", "clients.md", "servers.md", "cli.md", "security.md", "migrating-from-pyro5.md"))]
    for guide in guides:
        for target in re.findall(r"\]\(([^)#\s]+)\)", guide.read_text()):
            if "://" in target:
                continue
            assert (guide.parent / target).exists(), f"{guide.relative_to(REPO)} links to a missing {target}"
