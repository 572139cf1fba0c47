"""Child processes for the CLI and example tests: the real `meshrpc` command and example programs.

Everything runs on loopback in a realm of the test's own. Output is read by threads, so a test waits
for a printed line with a deadline (never a sleep); every process started is stopped at teardown, by
its own handle.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINE_TIMEOUT = 20.0  # seconds to wait for an expected line by default


def meshrpc_command() -> list[str]:
    """The installed `meshrpc` console script of this interpreter (else `python -m meshrpc`)."""
    script = Path(sys.executable).parent / "meshrpc"
    if script.exists():
        return [str(script)]
    found = shutil.which("meshrpc")
    return [found] if found else [sys.executable, "-m", "meshrpc"]


MESHRPC = meshrpc_command()


def free_port() -> int:
    """A port nothing listens on now (for settings that must point nowhere)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(realm: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child: no MESHRPC_/PYRO_ settings of the caller's, loopback, its own realm,
    and a name server port that nothing listens on (tests that want one start their own)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESHRPC_", "PYRO_")) and k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(MESHRPC_REALM=realm or "test-" + uuid.uuid4().hex[:12], MESHRPC_HOST="127.0.0.1",
               MESHRPC_NS_PORT=str(free_port()), MESHRPC_NS_BCPORT=str(free_port()), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class Proc:
    """A child process; its stdout and stderr lines are collected by threads as they come."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path = REPO) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=str(cwd))
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, pattern: str | Callable[[str], bool], timeout: float = LINE_TIMEOUT, *, stderr: bool = False,
               start: int = 0) -> str:
        """The first line (from index start) of stdout (or stderr) matching pattern (a regex searched
        in the line, or a predicate); fails after timeout seconds or when the process ended without it."""
        matches = pattern if callable(pattern) else (lambda line: re.search(pattern, line) is not None)
        lines = self.err if stderr else self.out
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in lines[start:]:
                    if matches(line):
                        return line
                start = max(start, len(lines))
                remaining = deadline - time.monotonic()
                ended = self.proc.poll() is not None and not any(r.is_alive() for r in self._readers)
                if remaining <= 0 or ended:
                    raise AssertionError(
                        f"{'exited' if ended else f'no line within {timeout} s'} without a line matching "
                        f"{pattern!r}: {self.describe()}")
                self._changed.wait(min(remaining, 0.5))

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit (and for all output); the exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s: {self.describe()}") from None
        for reader in self._readers:
            reader.join(10)
        return code

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Send sig and wait for the exit; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def stdout(self) -> str:
        return "\n".join(self.out)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    def describe(self) -> str:
        return (f"{' '.join(self.argv)} (exit {self.proc.poll()})\n--- stdout:\n{self.stdout}\n"
                f"--- stderr:\n{self.stderr}")


class Runner:
    """Starts processes for one test with one environment; kills what is left at teardown."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[Proc] = []

    def start(self, argv: Sequence[str], **env: str) -> Proc:
        proc = Proc(argv, {**self.env, **env})
        self.started.append(proc)
        return proc

    def meshrpc(self, *args: str, **env: str) -> Proc:
        return self.start([*MESHRPC, *args], **env)

    def python(self, script: str | Path, *args: str, **env: str) -> Proc:
        return self.start([sys.executable, str(script), *args], **env)

    def run(self, *args: str, timeout: float = 30.0, **env: str) -> Proc:
        """`meshrpc ARGS` to its end."""
        proc = self.meshrpc(*args, **env)
        proc.wait(timeout)
        return proc

    def close(self) -> None:
        for proc in reversed(self.started):
            proc.kill()
            for stream in (proc.proc.stdout, proc.proc.stderr):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass


def runner_for(realm: str) -> Iterator[Runner]:
    """For a `runner` fixture: a Runner in realm, closed at teardown."""
    r = Runner(base_env(realm))
    try:
        yield r
    finally:
        r.close()


def assert_clean_exit(proc: Proc, codes: Sequence[int] = (0,)) -> None:
    code = proc.proc.returncode
    assert code in codes, f"exit code {code}, expected {codes}: {proc.describe()}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.describe()
