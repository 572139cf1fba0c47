"""Pyro5's own example programs, run with one side on meshrpc: the output must be what Pyro5 on both
sides prints.

The examples come from Pyro5's source distribution (tests/pyro5_peer/sdist.py; never copied here).
A program "on meshrpc" is the unchanged example with its imports renamed: it runs under the import
shim of the peer suite (tests/pyro5_peer/shim.py), so `import Pyro5.api` loads `meshrpc`. Each
example runs three times in real processes, against a real Pyro5 name server on loopback:
Pyro5 server + Pyro5 client (the reference), meshrpc server + Pyro5 client, and Pyro5 server +
meshrpc client. Outputs are compared after masking what differs from run to run (object ids,
addresses, times) and the library's own frames in remote tracebacks.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import Pyro5.api
import Pyro5.errors
import pytest

from tests.pyro5_peer import sdist

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds for a server to register its names
RUN_TIMEOUT = 60.0  # seconds for a client to finish
SEED = 5  # random.seed for every program, so the examples' random choices repeat

# (example directory, server script, client script, names the server registers, compare the server's output)
# (exceptions: a failing oneway call is logged by meshrpc's daemon, printed by Pyro5's: the guide says so)
EXAMPLES = [
    ("shoppingcart", "shopserver.py", "clients.py", ["example.shop"], True),
    ("exceptions", "server.py", "client.py", ["example.exceptions"], False),
    ("banks", "server.py", "client.py", ["example.banks.rabobank", "example.banks.abn"], True),
]

# a program runs from its own directory, with a fixed random seed; "meshrpc" loads the import shim first
LAUNCHER = """
import random, runpy, sys
if sys.argv[1] == "meshrpc":
    import tests.pyro5_peer.shim
import Pyro5.api, Pyro5.errors  # loaded before the seed: what a library draws at import does not count
script = sys.argv[2]
sys.argv = [script]
sys.path.insert(0, ".")
random.seed({seed})
runpy.run_path(script, run_name="__main__")
""".format(seed=SEED)

# what serve() prints about each object and the daemon: its own words in meshrpc (the guide says so)
SERVE_BANNER = re.compile(r"^(Object .*:|    uri = .*|    name = .*|Pyro daemon running\.|serving \S+ as PYRO:.*"
                          r"|meshrpc daemon running at .*)$")
# (example directory, program): examples that are one process, run on Pyro5 and on meshrpc
SINGLE_PROCESS = [
    ("socketpair", "pair-thread.py"),
]

MASKS = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x?"),
    (re.compile(r"PYRO:[^\s'\">,)]+"), "PYRO:?"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "UUID"),
    (re.compile(r"\b\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\b"), "TIME"),
    (re.compile(r"\b\d{9,}\b"), "ID"),
    (re.compile(r"\b(?:localhost|127\.0\.0\.1):\d+\b"), "HOST:PORT"),
    (re.compile(r"\./u:(<+[^>]*>+|\S*)"), "./u:?"),
    (re.compile(r"unknown object '[^']*'"), "unknown object"),
    (re.compile(r"\b(?:Pyro5|meshrpc)\.errors\."), "errors."),  # each side's own error classes
    # the banner before a remote traceback is each library's own sentence (the guide says so)
    (re.compile(r"^ \+--- This exception .*remotely.*traceback:$"), " +--- remote traceback:"),  # meshrpc names the id (the guide says so)  # a daemon on a connected socket names its location in its own words
]


def normalized(output: str) -> list[str]:
    lines = []
    skip_code_line = False
    for line in output.splitlines():
        body = line[3:] if line.startswith(" | ") else line  # remote tracebacks are indented with " | "
        if skip_code_line:
            if body.strip() and set(body.strip()) <= {"^", "~"}:
                continue  # Python's markers under the skipped code line
            if not body.startswith("    ") or body.lstrip().startswith("File "):
                skip_code_line = False
            else:
                continue
        if SERVE_BANNER.match(line) or "register a hook with meshrpc.register_dict_to_class" in line:
            continue  # serve()'s own words; meshrpc's logged hint (Python prints warnings when no logging is set up)
        if re.search(r'File ".*/(Pyro5|meshrpc)/', line):
            skip_code_line = True  # a frame of the library itself (and its code line): not the program's
            continue
        for pattern, replacement in MASKS:
            line = pattern.sub(replacement, line)
        lines.append(line.rstrip())
    return lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def examples_dir() -> Path:
    root, why = sdist.fetch()
    if root is None:
        if sdist.required():
            pytest.fail(why)
        pytest.skip(why)
    return root / "examples"


@pytest.fixture(scope="module")
def nameserver(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A real Pyro5 name server on loopback (no broadcast), and the environment that points programs at it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "Pyro5.nameserver", "-n", HOST, "-p", str(port), "-x"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {**os.environ, "PYRO_NS_HOST": HOST, "PYRO_NS_PORT": str(port), "PYRO_HOST": HOST,
           "MESHRPC_REALM": "pyro5-examples-" + uuid.uuid4().hex[:8], "MESHRPC_LOOKUP_TIMEOUT": "1",
           "MESHRPC_RESOLVE": "ns",  # names through the name server only, as Pyro5 resolves them
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with Pyro5.api.Proxy(f"PYRO:Pyro.NameServer@{HOST}:{port}") as ns:
                ns.ping()
            break
        except Pyro5.errors.CommunicationError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"the Pyro5 name server did not start: {proc.communicate()[0]}")
            time.sleep(0.1)
    env["_NS_URI"] = f"PYRO:Pyro.NameServer@{HOST}:{port}"
    yield env
    proc.terminate()
    proc.wait(10)


def _run_pair(example: Path, server: str, client: str, names: list[str], server_lib: str, client_lib: str,
              env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(client output, server output), normalized, of one run."""
    with Pyro5.api.Proxy(env["_NS_URI"]) as ns:
        for name in names:
            ns.remove(name)
    launch = [sys.executable, "-c", LAUNCHER]
    server_proc = subprocess.Popen([*launch, server_lib, server], cwd=example, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        with Pyro5.api.Proxy(env["_NS_URI"]) as ns:
            while not all(ns.list(prefix=name) for name in names):
                if server_proc.poll() is not None or time.monotonic() > deadline:
                    server_proc.kill()
                    pytest.fail(f"{example.name}/{server} ({server_lib}) did not register {names}:\n"
                                f"{server_proc.communicate()[0]}")
                time.sleep(0.05)
        done = subprocess.run([*launch, client_lib, client], cwd=example, env=env, text=True, timeout=RUN_TIMEOUT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        server_proc.terminate()
        try:
            server_output = server_proc.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            server_proc.kill()
            server_output = server_proc.communicate()[0]
    return normalized(done.stdout), normalized(server_output)


@pytest.mark.timeout(4 * (START_TIMEOUT + RUN_TIMEOUT))
@pytest.mark.parametrize("directory, server, client, names, server_too", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_prints_the_same_with_either_side_on_meshrpc(examples_dir: Path, nameserver: dict[str, str],
                                                             directory: str, server: str, client: str,
                                                             names: list[str], server_too: bool) -> None:
    example = examples_dir / directory
    reference = _run_pair(example, server, client, names, "pyro5", "pyro5", nameserver)
    for server_lib, client_lib in (("meshrpc", "pyro5"), ("pyro5", "meshrpc")):
        client_out, server_out = _run_pair(example, server, client, names, server_lib, client_lib, nameserver)
        assert client_out == reference[0], f"{directory}: the client's output differs with a {server_lib} " \
                                           f"server and a {client_lib} client"
        if server_too:
            assert server_out == reference[1], f"{directory}: the server's output differs with a {server_lib} " \
                                               f"server and a {client_lib} client"


@pytest.mark.timeout(2 * RUN_TIMEOUT + 30)
@pytest.mark.parametrize("directory, program", SINGLE_PROCESS, ids=[e[0] for e in SINGLE_PROCESS])
def test_single_process_example_prints_the_same_on_meshrpc(examples_dir: Path, nameserver: dict[str, str],
                                                           directory: str, program: str) -> None:
    outputs = []
    for lib in ("pyro5", "meshrpc"):
        done = subprocess.run([sys.executable, "-c", LAUNCHER, lib, program], cwd=examples_dir / directory,
                              env=nameserver, text=True, timeout=RUN_TIMEOUT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        outputs.append(normalized(done.stdout))
    assert outputs[1] == outputs[0], f"{directory}/{program} prints differently on meshrpc"
