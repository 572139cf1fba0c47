"""Pyro5's own example programs, run with one side on meshrpc: the output must be what Pyro5 on both
sides prints.

The examples come from Pyro5's source distribution (tests/pyro5_peer/sdist.py; never copied here).
A program "on meshrpc" is the unchanged example with its imports renamed: it runs under the import
shim of the peer suite (tests/pyro5_peer/shim.py), so `import Pyro5.api` loads `meshrpc`. Each
example runs three times in real processes, each against a real Pyro5 name server of its own on
loopback, side by side: Pyro5 server + Pyro5 client (the reference), meshrpc server + Pyro5 client,
and Pyro5 server + meshrpc client. Outputs are compared after masking what differs from run to run
(object ids, addresses, times, hash order) and the library's own frames in remote tracebacks; where
the guide (docs/migrating-from-pyro5.md) documents a difference, the comparison expects exactly that
(DOCUMENTED). Nothing leaves the machine: every address is loopback, the programs are given the name
server's location (PYRO_NS_HOST/PORT: no broadcast search) and the mesh stays on loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import Pyro5.api
import Pyro5.errors
import pytest

from tests.pyro5_peer import sdist

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds for a server to register its names
RUN_TIMEOUT = 60.0  # seconds for a client to finish
SEED = 5  # random.seed for every program, so the examples' random choices repeat

# (example directory, server script, client script, names the server registers, compare the server's output,
#  in order): "exact" compares line by line; "lines" compares the lines in any order, for programs whose
# threads or callbacks print as timing has it (callback: five workers sleep and call back in parallel)
# (exceptions: a failing oneway call is logged by meshrpc's daemon, printed by Pyro5's: the guide says so)
EXAMPLES = [
    ("shoppingcart", "shopserver.py", "clients.py", ["example.shop"], True, "exact"),
    ("exceptions", "server.py", "client.py", ["example.exceptions"], False, "exact"),
    ("banks", "server.py", "client.py", ["example.banks.rabobank", "example.banks.abn"], True, "exact"),
    ("instancemode", "server.py", "client.py", ["instance.single", "instance.session", "instance.percall"], True,
     "exact"),
    ("callback", "server.py", "client.py", ["example.callback"], True, "lines"),
]

ECHO_SERVER = "Pyro5.utils.echoserver"  # a server "script": Pyro5's echo server module, or `meshrpc echo`

# a program runs from its own directory, with a fixed random seed; "meshrpc" loads the import shim first
# (print() writes its text and its newline separately, so threads printing at once could glue two lines
# together; here each print() is whole: the lines are the program's, only their order is timing)
LAUNCHER = """
import builtins, random, runpy, sys, threading
_print, _printing = builtins.print, threading.RLock()
def print_whole_lines(*args, **kwargs):
    with _printing:
        _print(*args, **kwargs)
builtins.print = print_whole_lines
if sys.argv[1] == "meshrpc":
    import tests.pyro5_peer.shim
import Pyro5.api, Pyro5.errors  # loaded before the seed: what a library draws at import does not count
import ipaddress, Pyro5.socketutil
def loopback_for_external(hostname, workaround127=False, version=None, real=Pyro5.socketutil.get_ip_address):
    # "this machine's (outside) address" (hugetransfer, filetransfer bind it) is loopback here
    return ipaddress.ip_address("127.0.0.1") if workaround127 or not hostname else real(hostname, False, version)
Pyro5.socketutil.get_ip_address = loopback_for_external
lib, script = sys.argv[1:3]
sys.argv = [script]
sys.path.insert(0, ".")
random.seed({seed})
if script == ECHO_SERVER and lib == "meshrpc":
    from meshrpc.cli import main
    sys.exit(main(["echo", "--no-mesh"]))  # the guide's counterpart of Pyro5's echo server
elif script == ECHO_SERVER:
    runpy.run_module(script, run_name="__main__")
else:
    runpy.run_path(script, run_name="__main__")
""".replace("{seed}", str(SEED)).replace("ECHO_SERVER", repr(ECHO_SERVER))

# what serve() prints about each object and the daemon: its own words in meshrpc (the guide says so)
SERVE_BANNER = re.compile(r"^(Object .*:|    uri = .*|    name = .*|Pyro daemon running\.|serving \S+ as PYRO:.*"
                          r"|meshrpc daemon running at .*)$")
# (example directory, program): examples that are one process, run on Pyro5 and on meshrpc
SINGLE_PROCESS = [
    ("socketpair", "pair-thread.py"),
    # metadata in the name server: yplookup with meta_all and meta_any, set_metadata, PYROMETA: proxies
    ("ns-metadata", "example.py"),
]

MASKS = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x?"),
    (re.compile(r"PYRO:[^\s'\">,)]+"), "PYRO:?"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "UUID"),
    (re.compile(r"\b\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\b"), "TIME"),
    (re.compile(r"\b\d{9,}\b"), "ID"),
    (re.compile(r"\b(?:localhost|127\.0\.0\.1):\d+\b"), "HOST:PORT"),
    (re.compile(r"\('127\.0\.0\.1', \d+\)"), "('127.0.0.1', PORT)"),  # a client's address, as a tuple
    (re.compile(r"\bobj_[0-9a-f]{32}\b"), "obj_ID"),  # an object id a daemon made up
    (re.compile(r"\./u:(<+[^>]*>+|\S*)"), "./u:?"),
    (re.compile(r"unknown object '[^']*'"), "unknown object"),
    (re.compile(r"\b(?:Pyro5|meshrpc)\.errors\."), "errors."),  # each side's own error classes
    # repr() of a proxy names each library's class (a deliberate difference the guide lists)
    (re.compile(r"<(?:Pyro5\.client\.Proxy|meshrpc\.Proxy) at "), "<Proxy at "),
    (re.compile(r"(<Proxy at 0x\?; (?:not )?connected; for [^;>]+?);? owner [^>]*>"), r"\1>"),  # no owner thread
    # the banner before a remote traceback is each library's own sentence (the guide says so)
    (re.compile(r"^ \+--- This exception .*remotely.*traceback:$"), " +--- remote traceback:"),
]


# input() prompts of servers: they end without a newline, so the server's next output continues their line
SERVER_PROMPTS = ("Servertype threaded or multiplex (t/m)?",)


def _prompts_apart(lines: list[str]) -> Iterator[str]:
    for line in lines:
        prompt = next((p for p in SERVER_PROMPTS if line.startswith(p) and line != p), None)
        if prompt:
            yield prompt
            line = line[len(prompt):]
        yield line


def normalized(output: str) -> list[str]:
    lines = []
    skip_code_line = False
    for line in _prompts_apart(output.splitlines()):
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


# (server library, client library) of each run of an example; the first is the reference
PAIRINGS = (("pyro5", "pyro5"), ("meshrpc", "pyro5"), ("pyro5", "meshrpc"))


def _start_nameserver() -> tuple[subprocess.Popen, dict[str, str]]:
    """A real Pyro5 name server on loopback (no broadcast), and the environment that points programs at it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "Pyro5.nameserver", "-n", HOST, "-p", str(port), "-x"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {**os.environ, "PYRO_NS_HOST": HOST, "PYRO_NS_PORT": str(port), "PYRO_HOST": HOST,
           "MESHRPC_REALM": "pyro5-examples-" + uuid.uuid4().hex[:8], "MESHRPC_LOOKUP_TIMEOUT": "1",
           "MESHRPC_RESOLVE": "ns",  # names through the name server only, as Pyro5 resolves them
           "MESHRPC_INTERFACES": HOST,  # the mesh on loopback even for a daemon on another address
           "PYRO_BROADCAST_ADDRS": HOST,  # a Pyro5 program that misses the name server asks loopback, not the LAN
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
    return proc, env


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # our own child, by its handle
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def nameservers() -> Iterator[dict[tuple[str, str], dict[str, str]]]:
    """A name server per pairing (each pairing's programs register the same names: the pairings run at once)."""
    started = []
    try:
        for _ in PAIRINGS:
            started.append(_start_nameserver())
        yield {libs: env for libs, (_, env) in zip(PAIRINGS, started)}
    finally:
        for proc, _ in started:
            _stop(proc)


@pytest.fixture(scope="module")
def nameserver(nameservers: dict[tuple[str, str], dict[str, str]]) -> dict[str, str]:
    return nameservers[PAIRINGS[0]]


def _each_pairing(run: Callable[[str, str, dict[str, str]], Any],
                  nameservers: dict[tuple[str, str], dict[str, str]],
                  at_once: bool = True) -> dict[tuple[str, str], Any]:
    """run(server lib, client lib, environment) for the three pairings at once (each with its own name
    server): {pairing: its result}. The examples mostly wait (sleeps, round trips), so running them side
    by side takes about as long as the slowest."""
    with ThreadPoolExecutor(len(PAIRINGS) if at_once else 1) as pool:
        futures = {libs: pool.submit(run, *libs, nameservers[libs]) for libs in PAIRINGS}
        return {libs: future.result() for libs, future in futures.items()}


def _run_client(server_proc: subprocess.Popen, command: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, str]:
    """Run the client to its end: (its output, the server's output read meanwhile)."""
    done = subprocess.run(command, cwd=cwd, env=env, text=True, timeout=RUN_TIMEOUT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return done.stdout, ""


def _run_pair(example: Path, server: str, client: str, names: list[str], server_lib: str, client_lib: str,
              env: dict[str, str], drive: Any = _run_client, server_input: str = "") -> tuple[list[str], list[str]]:
    """(client output, server output), normalized, of one run. `drive` runs the client once the server
    has registered `names` (its default: to the end, with no input); the server reads `server_input`."""
    with Pyro5.api.Proxy(env["_NS_URI"]) as ns:
        for name in names:
            ns.remove(name)
    launch = [sys.executable, "-c", LAUNCHER]
    server_proc = subprocess.Popen([*launch, server_lib, server], cwd=example, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.PIPE if server_input else subprocess.DEVNULL)
    if server_input:
        server_proc.stdin.write(server_input)
        server_proc.stdin.close()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        with Pyro5.api.Proxy(env["_NS_URI"]) as ns:
            while not all(name in ns.list(prefix=name) for name in names):  # not a longer name with its prefix
                if server_proc.poll() is not None or time.monotonic() > deadline:
                    server_proc.kill()
                    pytest.fail(f"{example.name}/{server} ({server_lib}) did not register {names}:\n"
                                f"{server_proc.communicate()[0]}")
                time.sleep(0.05)
        client_output, server_output = drive(server_proc, [*launch, client_lib, client], example, env)
    finally:
        server_proc.terminate()
        try:
            server_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server_proc.kill()
            server_proc.wait()
        # through the same file object: a drive that read lines (readline) may hold the next output in
        # its buffer, which communicate(timeout=...) would skip (it reads the pipe itself)
        rest = server_proc.stdout.read()
    return normalized(client_output), normalized(server_output + rest)


def _client_given_the_uri(server_proc: subprocess.Popen, command: list[str], cwd: Path,
                          env: dict[str, str]) -> tuple[str, str]:
    """A server that uses no name server prints its URI; the client asks for it on stdin (autoproxy)."""
    seen = []
    while True:
        line = server_proc.stdout.readline()  # bounded by the test's timeout
        if not line:
            pytest.fail(f"{command[-1]}'s server ended without printing a URI:\n{''.join(seen)}")
        seen.append(line)
        uri = re.search(r"PYRO:[^\s'\">]+", line)
        if uri:
            break
    done = subprocess.run(command, cwd=cwd, env=env, text=True, timeout=RUN_TIMEOUT, input=uri[0] + "\n",
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return done.stdout, "".join(seen)


# (example directory, server script, client script, compare the server's output too): servers that use no
# name server print their URI, which the client asks for on stdin
# autoproxy: a factory registers the objects it makes with self._pyroDaemon.register and returns them
# (the client gets proxies); attributes: remote properties, dunder methods, Pyro5's texts for private
# names; callcontext: a Daemon subclass's annotations() and a oneway call's empty response annotations
# (its server prints the daemon's and the connection's repr(), which differ: the guide says so);
# streaming: remote iterators and generators; custom-serialization: class-to-dict hooks on both sides;
# thirdpartylib: a library class exposed by calling expose() on it (server.py: a result of an unknown class
# is a SerializeError, a private method is callable) or through an adapter class (server2.py)
URI_EXAMPLES = [
    ("autoproxy", "server.py", "client.py", True),
    ("attributes", "server.py", "client.py", True),
    ("callcontext", "server.py", "client.py", False),
    ("streaming", "server.py", "client.py", True),
    ("custom-serialization", "server.py", "client.py", True),
    ("thirdpartylib", "server.py", "client.py", True),
    ("thirdpartylib", "server2.py", "client.py", True),
]


@pytest.mark.timeout(4 * (START_TIMEOUT + RUN_TIMEOUT))
@pytest.mark.parametrize("directory, server, client, server_too", URI_EXAMPLES,
                         ids=[f"{e[0]}/{e[1]}" if e[1] != "server.py" else e[0] for e in URI_EXAMPLES])
def test_example_given_the_uri_prints_the_same_with_either_side_on_meshrpc(examples_dir: Path,
                                                                          nameservers: dict[Any, dict[str, str]],
                                                                          directory: str, server: str,
                                                                          client: str, server_too: bool) -> None:
    example = examples_dir / directory
    runs = _each_pairing(lambda server_lib, client_lib, env: _run_pair(
        example, server, client, [], server_lib, client_lib, env, drive=_client_given_the_uri), nameservers)
    reference = runs[("pyro5", "pyro5")]
    if directory == "autoproxy":
        assert any("Thingy 3 says: I am last then..." in line for line in reference[1]), reference
    for (server_lib, client_lib), (client_out, server_out) in runs.items():
        assert client_out == reference[0], f"{directory}: the client's output differs with a {server_lib} server " \
                                           f"and a {client_lib} client"
        if server_too:
            assert server_out == reference[1], f"{directory}: the server's output differs with a {server_lib} " \
                                               f"server and a {client_lib} client"


USERSESSION_NAMES = ["example.usersession.singletondb", "example.usersession.sessiondb"]
CONCURRENT = "***** Multiple concurrent proxies on the Session-Bound Database... (no issues)"
OUTCOME = re.compile(r"^(?:\[Thread-\d+\] num=10[0-2]|RuntimeError: ERROR: concurrent "
                     r"connection access \((?:read|write)\) by multiple different threads)$")
DB_LINE = re.compile(r"^DB: user user123 (?:stores: number = 10[0-2]|retrieve: number)$")
SESSION_CREATED = "[SessionboundDatabase] new instance and connection for user: user123"


def _read_available(pipe: Any) -> str:
    """What a process has written to `pipe` so far (without waiting for more)."""
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)
    return b"".join(chunks).decode()


def _client_in_two_halves(server_proc: subprocess.Popen, command: list[str], cwd: Path,
                          env: dict[str, str]) -> tuple[str, str]:
    """usersession: run the sequential half; when the client waits at its first input(), take what the
    server printed so far (the calls were synchronous, so all of it is there); then let the client
    run its concurrent half. A line "--- concurrent ---" marks the cut in both outputs."""
    client = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        first = []
        while not first or first[-1].rstrip("\n") != CONCURRENT:
            line = client.stdout.readline()  # bounded by the test's timeout
            if not line:
                pytest.fail(f"usersession's client ended early:\n{''.join(first)}")
            first.append(line)
        server_first = _read_available(server_proc.stdout)
        rest = client.communicate(input="\n\n", timeout=RUN_TIMEOUT)[0]
    finally:
        if client.poll() is None:
            client.kill()  # our own child, by its handle
            client.wait(5)
    return "".join(first) + "--- concurrent ---\n" + rest, server_first + "--- concurrent ---\n"


def _concurrent_outcomes(lines: list[str]) -> list[str]:
    """The concurrent half's outcome lines (a number read, or the database's concurrency error), each
    iteration of each thread giving one; anything but those, section headers and tracebacks fails."""
    outcomes = []
    for line in lines:
        if line.startswith("enter to start:"):  # input()'s prompt, with no newline of its own
            line = line[len("enter to start:"):].lstrip(" ")
        if OUTCOME.match(line):
            outcomes.append(line)
        elif not (line in ("", "--- concurrent ---") or line.startswith("***** ")
                  or line.startswith("Traceback (most recent call last):") or line.startswith("  ")):
            pytest.fail(f"usersession printed an unexpected line: {line!r}")
    return outcomes


@pytest.mark.timeout(4 * (START_TIMEOUT + RUN_TIMEOUT))
def test_usersession_example_prints_the_same_with_either_side_on_meshrpc(
        examples_dir: Path, nameservers: dict[Any, dict[str, str]]) -> None:
    """Session instances read the USER annotation the client set in current_context.annotations, in
    their constructor. The sequential half prints the same line by line; the concurrent half is timing
    by design (threads share one database, and the singleton one shows its concurrency errors), so
    there each of 2x2 threads' 3 iterations must give a number or that error, and the server must
    make a session instance (for user123) per thread and log only user123's database calls."""
    example = examples_dir / "usersession"
    runs = _each_pairing(lambda server_lib, client_lib, env: _run_pair(
        example, "server.py", "client.py", USERSESSION_NAMES, server_lib, client_lib, env,
        drive=_client_in_two_halves), nameservers)
    cut = "--- concurrent ---"
    reference_client, reference_server = (out[:out.index(cut)] for out in runs[("pyro5", "pyro5")])
    assert reference_server.count(SESSION_CREATED) == 2, reference_server
    for (server_lib, client_lib), (client_out, server_out) in runs.items():
        where = f"usersession with a {server_lib} server and a {client_lib} client"
        assert client_out[:client_out.index(cut)] == reference_client, f"{where}: the client's output differs"
        assert server_out[:server_out.index(cut)] == reference_server, f"{where}: the server's output differs"
        concurrent = client_out[client_out.index(cut):]
        outcomes = _concurrent_outcomes(concurrent)
        session_half = _concurrent_outcomes(concurrent[:concurrent.index(next(
            line for line in concurrent if line.startswith("***** Multiple concurrent proxies on the Singleton")))])
        assert len(outcomes) == 12 and len(session_half) == 6, f"{where}: {concurrent}"
        assert all("num=" in line for line in session_half), f"{where}: a session-bound call failed: {concurrent}"
        server_rest = server_out[server_out.index(cut) + 1:]
        assert server_rest.count(SESSION_CREATED) == 2, f"{where}: {server_rest}"
        db_lines = [line for line in server_rest if line != SESSION_CREATED]
        assert all(DB_LINE.match(line) for line in db_lines) and 12 <= len(db_lines) <= 24, f"{where}: {server_rest}"


def in_order(lines: list[str], compare: str) -> list[str]:
    """The lines as compared: as printed ("exact"), or sorted ("lines": which thread prints first is timing)."""
    return sorted(lines) if compare == "lines" else lines


@pytest.mark.timeout(4 * (START_TIMEOUT + RUN_TIMEOUT))
@pytest.mark.parametrize("directory, server, client, names, server_too, compare", EXAMPLES,
                         ids=[e[0] for e in EXAMPLES])
def test_example_prints_the_same_with_either_side_on_meshrpc(examples_dir: Path,
                                                             nameservers: dict[Any, dict[str, str]],
                                                             directory: str, server: str, client: str,
                                                             names: list[str], server_too: bool,
                                                             compare: str) -> None:
    example = examples_dir / directory
    runs = _each_pairing(lambda server_lib, client_lib, env: [
        in_order(out, compare) for out in _run_pair(example, server, client, names, server_lib, client_lib, env)],
        nameservers)
    reference = runs[PAIRINGS[0]]
    for server_lib, client_lib in PAIRINGS[1:]:
        client_out, server_out = runs[(server_lib, client_lib)]
        assert client_out == reference[0], f"{directory}: the client's output differs with a {server_lib} " \
                                           f"server and a {client_lib} client"
        if server_too:
            assert server_out == reference[1], f"{directory}: the server's output differs with a {server_lib} " \
                                               f"server and a {client_lib} client"


@pytest.mark.timeout(2 * RUN_TIMEOUT + 30)
@pytest.mark.parametrize("directory, program", SINGLE_PROCESS, ids=[e[0] for e in SINGLE_PROCESS])
def test_single_process_example_prints_the_same_on_meshrpc(examples_dir: Path, directory: str, program: str) -> None:
    """Each run has a name server of its own, empty (ns-metadata lists every registration)."""
    def run(lib: str) -> list[str]:
        proc, env = _start_nameserver()
        try:
            done = subprocess.run([sys.executable, "-c", LAUNCHER, lib, program], cwd=examples_dir / directory,
                                  env=env, text=True, timeout=RUN_TIMEOUT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            _stop(proc)
        return _with_example_masks(normalized(done.stdout), directory)

    with ThreadPoolExecutor(2) as pool:
        reference, output = pool.map(run, ("pyro5", "meshrpc"))
    assert output == reference, f"{directory}/{program} prints differently on meshrpc"


class Run(NamedTuple):
    """How one example runs, for those that need more than "start the server, run the client to its end"."""

    directory: str
    server: str
    client: str
    names: tuple[str, ...] = ()  # the names the server registers in the name server (the client starts after)
    uri: bool = False  # the server prints its URI: the client reads it as its first line of input
    client_input: str = ""  # the client's other input() answers
    server_input: str = ""  # the server's input() answers
    pause_after: str = ""  # once the client printed a line with this, it gets its other input only after `pause` s
    pause: float = 0.0
    until: str = ""  # the client runs forever: it is stopped once it printed a line with this
    server_until: str = ""  # the server's output is compared up to its line with this (it works on after the client)
    compare: str = "exact"  # "exact"; "lines" (both outputs in any order); "server lines" (the server's only)
    server_too: bool = True  # compare the server's output too (not when it prints only its library's log or banner)
    label: str = ""  # the test id, when the directory alone is not unique
    at_once: bool = True  # the pairings run at the same time (not when the example's address is fixed)

    @property
    def id(self) -> str:
        return self.label or self.directory


TIMINGS = [  # what an example measures: differs from run to run
    (re.compile(r"\b\d+\.\d+ seconds\b"), "N seconds"),
    (re.compile(r"\(\d+ calls/sec\)"), "(N calls/sec)"),
    (re.compile(r"\b\d+ kb/sec\. = \d+\.\d+ mb/sec\."), "N kb/sec. = N mb/sec."),
    (re.compile(r"\b\d+\.\d+ times faster\b"), "N times faster"),
    (re.compile(r"\b\d+\.\d+ Mb/sec\."), "N Mb/sec."),
]


def _sorted_items(separator: str) -> Callable[[re.Match], str]:
    """A replacement that sorts the items of a match's second group (its first and third stay)."""
    return lambda match: match[1] + separator.join(sorted(match[2].split(separator))) + match[3]


# masks for one example (after the common ones)
EXAMPLE_MASKS: dict[str, list[tuple[re.Pattern, Any]]] = {
    "batchedcalls": TIMINGS,
    "hugetransfer": TIMINGS,
    "filetransfer": TIMINGS,
    # the threads that run calls have each library's names: meshrpc-worker-N (Pyro5: Pyro-Worker-<id>; its
    # multiplex server runs calls in MainThread and each oneway call in a thread "oneway-call"; the guide says so)
    "servertypes": [(re.compile(r"\b(?:meshrpc-worker-\d+|meshrpc-oneway|Pyro-Worker-ID|MainThread|oneway-call)\b"),
                     "WORKER")],
    # the size of a call includes the object id: the echo server's is "test.echoserver" in Pyro5, "echo" in
    # meshrpc (the guide says so)
    "maxsize": [(re.compile(r"message too large \(\d+, "), "message too large (N, ")],
    # set elements print in hash order, which changes from process to process (a PYROMETA: URI's too, in Pyro5)
    "ns-metadata": [(re.compile(r"^(   meta: )(.*)()$"), _sorted_items(", ")),
                    (re.compile(r"(\{)('[^{}]*')(\})"), _sorted_items(", ")),
                    (re.compile(r"(for PYROMETA:)([^>]*)(>)"), _sorted_items(","))],
    # the shared secret comes from os.urandom (AGREE: client and server print the same one)
    "diffie-hellman": [(re.compile(r"^shared secret key =  [0-9a-f]+$"), "shared secret key =  KEY")],
}

# a value both sides of one run must print alike, before it is masked: {example directory: pattern of its line}
AGREE = {"diffie-hellman": re.compile(r"^shared secret key =  ([0-9a-f]+)$")}

# What the guide (docs/migrating-from-pyro5.md, "What behaves differently") says a pairing prints instead of
# the reference: {(run id, server lib, client lib, "client" or "server"): [(first line, last line, instead)]}.
# The reference's lines from one matching `first` through the next matching `last` (regular expressions)
# become `instead`; a block the reference does not have fails the test (the expectation went stale).
# NOT CLOSED: a meshrpc daemon does not close a connection that stays idle longer than COMMTIMEOUT;
# RECONNECTS: a meshrpc proxy whose daemon closed the connection connects again before sending (the call did not run)
THIRD_CALL = ["calling add: 2, 2", "calling add: 3, 3"]  # autoretry's third call runs after its second
# validateHandshake sees current_context.client (the connection) and the serializer already (Pyro5: None, 0)
HANDSHAKE_CONTEXT = [
    (r"^  context\.client:  None$", "", ["  context.client:  <ClientConnection ('127.0.0.1', PORT)>"]),
    (r"^  context\.client_sock_addr:  None$", "", ["  context.client_sock_addr:  ('127.0.0.1', PORT)"]),
    (r"^  context\.serializer_id:  0$", "", ["  context.serializer_id:  1"])]
DOCUMENTED: dict[tuple[str, str, str, str], list[tuple[str, str, list[str]]]] = {
    # autoretry's server closes idle connections after 0.5 s (COMMTIMEOUT), which the client's third call meets
    ("autoretry", "meshrpc", "pyro5", "client"): [  # NOT CLOSED: the third call works
        (r"^Got exception .*ConnectionClosedError", "", [])],
    ("autoretry", "meshrpc", "pyro5", "server"): [(r"^calling add: 2, 2$", "", THIRD_CALL)],
    ("autoretry", "pyro5", "meshrpc", "client"): [(r"^Got exception .*ConnectionClosedError", "", [])],  # RECONNECTS
    ("autoretry", "pyro5", "meshrpc", "server"): [(r"^calling add: 2, 2$", "", THIRD_CALL)],
    ("disconnects", "meshrpc", "pyro5", "client"): [  # NOT CLOSED: the ping finds the connection alive
        (r"^  <proxy: Connection lost\. REBINDING\.\.\.>$", r"^  <proxy: Connection restored",
         ["  <proxy: ping reply (still connected)>"])],
    ("handshake", "meshrpc", "pyro5", "server"): HANDSHAKE_CONTEXT,
    ("handshake-refused", "meshrpc", "pyro5", "server"): HANDSHAKE_CONTEXT,
    # a refusal names the URI (Pyro5: the address as a tuple)
    ("handshake-refused", "pyro5", "meshrpc", "client"): [
        (r"^errors\.CommunicationError: connection to \('127\.0\.0\.1', PORT\) rejected: ", "",
         ["errors.CommunicationError: connection to PYRO:? rejected: wrong secret code, connection refused"])],
    # a meshrpc proxy refuses to send a call larger than MAX_MESSAGE_SIZE with MessageTooLargeError (which the
    # example catches); Pyro5's raises a plain ProtocolError there (the example's except misses it)
    ("maxsize", "pyro5", "meshrpc", "client"): [
        (r"^Traceback \(most recent call last\):$", r"^errors\.ProtocolError: message too large \(N, max=2500\)$",
         ["EXCEPTION (expected): the call of echo is larger than MAX_MESSAGE_SIZE (2500 bytes); send less or raise "
          "the limit"])],
}

RUNS = [
    # oneway calls and the server working on after the client's last one; server2: a counter that oneway
    # calls increment in the background
    Run("oneway", "server.py", "client.py", ("example.oneway",), server_until="work work.. 1"),
    Run("oneway", "server2.py", "client2.py", ("example.oneway2",), label="oneway/server2.py"),
    # a proxy's _pyroTimeout and COMMTIMEOUT on calls and on a daemon that accepts and never answers; its last
    # call (no timeout, that daemon) waits forever with Pyro5 (a meshrpc PYRONAME proxy gives up after
    # REBIND_TIMEOUT: the guide says so), so the client is stopped when it says so; the server's "done."
    # of a call that timed out and the next call's "sleeping" come at the same moment
    Run("timeout", "server.py", "client.py", ("example.timeout", "example.timeout.frozendaemon"),
        until="Feel free to abort", compare="server lines"),
    # the thread server and the multiplex server (the client's five threads finish in any order)
    Run("servertypes", "server.py", "client.py", ("example.servertypes",), server_input="t\n", compare="lines",
        label="servertypes/thread"),
    Run("servertypes", "server.py", "client.py", ("example.servertypes",), server_input="m\n", compare="lines",
        label="servertypes/multiplex"),
    # batches (with results, oneway, one that fails); its oneway batch ends with a 2 s delay on the server
    Run("batchedcalls", "server.py", "client.py", uri=True, server_until="end of batch #2"),
    # 5 MB strings, bytes and bytearrays as arguments, and a remote iterator of 200 kB chunks
    Run("hugetransfer", "server.py", "client.py", uri=True),
    # a proxy's handshake data checked by the daemon's validateHandshake, accepted and refused; clientDisconnect
    Run("handshake", "server.py", "client.py", uri=True, client_input="pancakes\n"),
    Run("handshake", "server.py", "client.py", uri=True, client_input="waffles\n", label="handshake-refused"),
    # Pyro5's echo server (meshrpc echo), and MAX_MESSAGE_SIZE against it
    Run("echoserver", ECHO_SERVER, "client.py", uri=True, server_too=False),
    Run("maxsize", ECHO_SERVER, "client.py", uri=True, server_too=False),
    # objects registered with and without an id of the program's choice, called by URI
    Run("nonameserver", "server.py", "client.py", uri=True),
    # resources tracked on the client's connection, closed when it disconnects
    Run("resourcetracking", "server.py", "client.py", uri=True, client_input="\n"),
    # the tutorial's warehouse (phase 3): a PYRONAME: proxy handed to the client's own objects
    Run("warehouse/phase3", "warehouse.py", "visit.py", ("example.warehouse",),
        client_input="umbrella\n\nlaptop\numbrella\n"),
    # a session object computes a shared key with the client's
    Run("diffie-hellman", "server.py", "client.py", ("example.dh.keyexchange",)),
    # MAX_RETRIES against a server that closes idle connections after 0.5 s
    Run("autoretry", "server.py", "client.py", ("example.autoretry",)),
    # a proxy subclass pings before each call and reconnects when the server closed the idle connection
    # (its COMMTIMEOUT is 5 s: the client waits 6 s); the server prints only its library's log
    Run("disconnects", "server.py", "client.py", uri=True, pause_after="result = ", pause=6.0, client_input="\n",
        server_too=False),
    # blobs by regular calls, remote iterators, response annotations of a generator (FDAT), and a raw socket
    # next to the daemon's in the program's own select loop (two threads each: their lines in any order)
    Run("filetransfer", "server.py", "client.py", uri=True, client_input="\n\n\n\n", compare="lines"),
    # a daemon on a Unix domain socket, and on one in the abstract namespace (the socket's name is fixed)
    Run("unixdomainsock", "server.py", "client.py", uri=True, at_once=False),
    Run("unixdomainsock", "abstract_namespace_server.py", "client.py", uri=True, at_once=False,
        label="unixdomainsock/abstract_namespace_server.py"),
]


def _read_until(stream: Any, found: Callable[[str], Any], seen: list[str], what: str) -> Any:
    """Read lines of `stream` into `seen` until found(line) is true; that value."""
    while True:
        line = stream.readline()  # bounded by the test's timeout
        if not line:
            pytest.fail(f"{what} ended early:\n{''.join(seen)}")
        seen.append(line)
        if found(line):
            return found(line)


def _drive(run: Run) -> Callable[..., tuple[str, str]]:
    def drive(server_proc: subprocess.Popen, command: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, str]:
        server_seen: list[str] = []
        uri_line = ""
        if run.uri:
            uri = _read_until(server_proc.stdout, re.compile(r"PYRO:[^\s'\">]+").search, server_seen, run.server)
            uri_line = uri[0] + "\n"
        client = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            client_seen: list[str] = []
            client.stdin.write(uri_line)
            if run.pause_after:
                client.stdin.flush()
                _read_until(client.stdout, lambda line: run.pause_after in line, client_seen, run.client)
                time.sleep(run.pause)  # the example's scenario: a client idle for longer than the server's timeout
            client.stdin.write(run.client_input)  # a few lines: within the pipe's buffer
            client.stdin.close()
            if run.until:
                _read_until(client.stdout, lambda line: run.until in line, client_seen, run.client)
            else:  # through the file object readline used (it may have buffered more)
                client_seen.append(client.stdout.read())  # to its end, bounded by the test's timeout
                client.wait(RUN_TIMEOUT)
        finally:
            if client.poll() is None:
                client.kill()  # our own child, by its handle (one that runs forever)
                client.wait(5)
        if run.server_until:
            _read_until(server_proc.stdout, lambda line: run.server_until in line, server_seen, run.server)
        return "".join(client_seen), "".join(server_seen)
    return drive


def _with_example_masks(lines: list[str], directory: str) -> list[str]:
    for pattern, replacement in EXAMPLE_MASKS.get(directory, []):
        lines = [pattern.sub(replacement, line) for line in lines]
    return lines


def _as_documented(reference: list[str], key: tuple[str, str, str, str]) -> list[str]:
    """The reference with the documented difference of `key` applied (see DOCUMENTED)."""
    lines = list(reference)
    for first, last, instead in DOCUMENTED.get(key, []):
        start = next((i for i, line in enumerate(lines) if re.search(first, line)), None)
        assert start is not None, f"{key}: the reference has no line {first!r} any more:\n" + "\n".join(lines)
        end = start if not last else next((i for i in range(start, len(lines)) if re.search(last, lines[i])), None)
        assert end is not None, f"{key}: the reference has no line {last!r} after {first!r}"
        lines[start:end + 1] = instead
    return lines


def _cut_after(lines: list[str], text: str) -> list[str]:
    """The lines up to the first one with `text` (what a server prints after it depends on when it is stopped)."""
    if not text:
        return lines
    return lines[:next((i for i, line in enumerate(lines) if text in line), len(lines) - 1) + 1]


@pytest.mark.timeout(2 * (START_TIMEOUT + RUN_TIMEOUT))
@pytest.mark.parametrize("run", RUNS, ids=[run.id for run in RUNS])
def test_example_run_prints_the_same_with_either_side_on_meshrpc(examples_dir: Path,
                                                                 nameservers: dict[Any, dict[str, str]],
                                                                 run: Run) -> None:
    example = examples_dir / run.directory

    def one(server_lib: str, client_lib: str, env: dict[str, str]) -> list[list[str]]:
        client_out, server_out = _run_pair(example, run.server, run.client, list(run.names), server_lib, client_lib,
                                           env, drive=_drive(run), server_input=run.server_input)
        if run.directory in AGREE:
            values = [match[1] for line in client_out + server_out if (match := AGREE[run.directory].match(line))]
            assert len(values) == 2 and values[0] == values[1], f"{run.id} ({server_lib} server, {client_lib} " \
                                                                f"client): its sides disagree: {values}"
        server_out = _cut_after(server_out, run.server_until)
        return [_with_example_masks(client_out, run.directory), _with_example_masks(server_out, run.directory)]

    runs = _each_pairing(one, nameservers, at_once=run.at_once)
    reference = runs[PAIRINGS[0]]
    assert reference[0], f"{run.id}: the reference client printed nothing"
    for (server_lib, client_lib), outputs in runs.items():
        for side, output, expected in zip(("client", "server"), outputs, reference):
            if side == "server" and not run.server_too:
                continue
            expected = _as_documented(expected, (run.id, server_lib, client_lib, side))
            if run.compare == "lines" or (side == "server" and run.compare == "server lines"):
                output, expected = sorted(output), sorted(expected)
            assert output == expected, f"{run.id}: the {side}'s output differs with a {server_lib} server and a " \
                                       f"{client_lib} client"


def _autoreconnect_run(example: Path, server_lib: str, client_lib: str, env: dict[str, str]) -> list[str]:
    """autoreconnect (PYRO: URI): the server is stopped after the client's second call and started again on
    the same port when the client says it is rebinding; the client is stopped after two more calls. The
    client's and both servers' output, normalized, with a line between them."""
    launch = [sys.executable, "-c", LAUNCHER]
    servers: list[subprocess.Popen] = []
    server_seen: list[str] = []
    client_seen: list[str] = []

    def start_server() -> str:
        servers.append(subprocess.Popen([*launch, server_lib, "server.py"], cwd=example, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        return _read_until(servers[-1].stdout, re.compile(r"Server started, uri: (PYRO:\S+)").search, server_seen,
                           "server.py")[1]

    def two_calls() -> None:
        for _ in range(2):
            _read_until(client.stdout, lambda line: "Sleeping 1 second" in line, client_seen, "client.py")

    uri = start_server()
    client = subprocess.Popen([*launch, client_lib, "client.py"], cwd=example, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client.stdin.write(uri + "\n")
        client.stdin.close()
        two_calls()  # the server is stopped while the client sleeps after its second call
        _stop(servers[0])
        server_seen.append(servers[0].stdout.read() + "--- restarted ---\n")
        _read_until(client.stdout, lambda line: "(restart the server now)" in line, client_seen, "client.py")
        start_server()
        two_calls()
    finally:
        client.kill()  # our own child, by its handle: it calls forever
        client.wait(5)
        for server in servers:
            if server.poll() is None:
                _stop(server)
    server_seen.append(servers[-1].stdout.read())
    return normalized("".join(client_seen)) + ["--- server ---"] + normalized("".join(server_seen))


def _own_port_copy(example: Path, into: Path, fixed: str) -> Path:
    """A copy of an example whose server binds a port of its own instead of its fixed one (`fixed`, the
    source's text, e.g. "port=7777"), so that the pairings can run side by side."""
    shutil.copytree(example, into)
    server = into / "server.py"
    source = server.read_text()
    assert fixed in source, f"{example.name}/server.py no longer says {fixed!r}"
    server.write_text(source.replace(fixed, f"port={free_port()}"))
    return into


@pytest.mark.timeout(2 * (START_TIMEOUT + RUN_TIMEOUT))
def test_autoreconnect_example_prints_the_same_with_either_side_on_meshrpc(
        examples_dir: Path, nameservers: dict[tuple[str, str], dict[str, str]], tmp_path: Path) -> None:
    """A PYRO: proxy's _pyroReconnect() after its server was stopped, against the server started again on
    its fixed port and object id. The pairings run side by side, each in a copy of the example with a
    port of its own (the example's is fixed: 7777; the output shows it masked)."""

    def run(server_lib: str, client_lib: str, env: dict[str, str]) -> list[str]:
        copy = _own_port_copy(examples_dir / "autoreconnect", tmp_path / f"{server_lib}-{client_lib}", "port=7777")
        return _autoreconnect_run(copy, server_lib, client_lib, env)
    outputs = _each_pairing(run, nameservers)
    reference = outputs[PAIRINGS[0]]
    assert "Connection lost. REBINDING..." in reference and sum("call..." in line for line in reference) == 5, reference
    for (server_lib, client_lib), output in outputs.items():
        assert output == reference, f"autoreconnect: the output differs with a {server_lib} server and a " \
                                    f"{client_lib} client"


def test_the_shim_gives_the_pyro5_package_its_modules_as_attributes() -> None:
    """`import Pyro5.api` loads Pyro5's modules, and programs use them as attributes of the package without
    importing them (the eventloop example calls Pyro5.nameserver.start_ns): under the shim too."""
    probe = ("import tests.pyro5_peer.shim, Pyro5.api, meshrpc.nameserver, meshrpc.socketutil\n"
             "assert Pyro5.nameserver is meshrpc.nameserver and Pyro5.socketutil is meshrpc.socketutil\n"
             "assert not hasattr(Pyro5, 'no_such_module')\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, text=True, timeout=RUN_TIMEOUT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert done.returncode == 0, done.stdout
