"""Docs as tests: run the code blocks of README.md and docs/*.md as a reader would, in order.

    python3 tools/docrun.py docs/tutorial.md [more pages...]   # run pages, say what failed and where
    python3 tools/docrun.py --list docs/tutorial.md            # show each block and what will happen to it

The marking convention is in docs/README.md ("Docs whose snippets run"); in short:
- ```python and ```sh (also bash, shell, console) blocks run; every other language (text, json, ini,
  ...) is only shown. A fence without a language is an error: tag output ```text.
- Each Python block runs as its own program, as a reader who saves it to a file and runs it: it must
  import and define every name it uses (a name only an earlier block defines is an error, also
  inside a function that never runs here), and its program must exit after its last line.
- A Python block whose first line is `# NAME.py` is saved as NAME.py in the page's directory instead
  of being run: a later shell block runs it (`python3 NAME.py &`), as a reader would.
- `<!-- doctest: OPTIONS -->` on the line before a fence changes what happens to that block:
  `skip: REASON`, `background`, `ready=TEXT`, `fails`, `timeout=SECONDS`, `output`.

Each page runs in a directory of its own (the repository's top-level entries linked into it), in a
mesh realm of its own, with name-server ports nothing else uses; whatever a page left running is
stopped at its end. tests/docs/test_docs_run.py runs every page under pytest.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON_LANGS = {"python", "py", "python3"}
SHELL_LANGS = {"sh", "bash", "shell", "console"}
BLOCK_TIMEOUT = 30.0  # seconds a block may run unless it says timeout=N
READY_TIMEOUT = 20.0  # seconds a background block has to show its ready=TEXT
EXIT_TIMEOUT = 10.0  # seconds a Python block's program has to exit after its last line ran
# shell commands never run: installing is CI's job, and the test suite runs this harness itself
NEVER_RUN = re.compile(r"^\s*(sudo\s+)?(python3?\s+-m\s+)?(pip3?\s+install|pytest)\b|^\s*(python3?\s+-m\s+)?pytest\b")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*doctest:\s*(.*?)\s*-->\s*$")
OPTION = re.compile(r'\s*(skip(?::\s*(?P<reason>.*))?$|(?P<key>[a-z]+)(?:=(?P<value>"[^"]*"|\S+))?)')
FILE_HEADER = re.compile(r"^#\s*([\w./-]+\.py)\s*$")
END_MARK = "\x00docrun-block-end"


class DocError(Exception):
    """A page's block failed or is malformed; the message starts with `page:line:`."""


@dataclass
class Block:
    page: str          # the page's path as given (relative to the repository when under it)
    line: int          # line number of the first line inside the fence
    lang: str
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in PYTHON_LANGS | SHELL_LANGS and "skip" not in self.options

    @property
    def saved_as(self) -> str | None:
        first = self.code.split("\n", 1)[0]
        match = FILE_HEADER.match(first) if self.lang in PYTHON_LANGS else None
        return match.group(1) if match else None

    @property
    def timeout(self) -> float:
        return float(self.options.get("timeout", BLOCK_TIMEOUT))


def parse_options(text: str, where: str) -> dict[str, str]:
    options: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = OPTION.match(text, pos)
        if not match or match.end() == pos:
            raise DocError(f"{where}: cannot read doctest option at {text[pos:]!r} (see docs/README.md)")
        if match.group(0).strip().startswith("skip"):
            reason = (match.group("reason") or "").strip()
            if not reason:
                raise DocError(f"{where}: `<!-- doctest: skip: REASON -->` needs a reason")
            options["skip"] = reason
            break
        key, value = match.group("key"), (match.group("value") or "").strip('"')
        if key not in ("background", "ready", "fails", "timeout", "output"):
            raise DocError(f"{where}: unknown doctest option {key!r}: use skip: REASON, background, "
                           f"ready=TEXT, fails, timeout=SECONDS or output")
        options[key] = value
        pos = match.end()
    if "ready" in options:
        options.setdefault("background", "")
    return options


def parse(text: str, page: str) -> list[Block]:
    """The fenced blocks of a Markdown page. DocError for a fence without a language or an unclosed one."""
    blocks: list[Block] = []
    lines = text.split("\n")
    i = 0
    pending: tuple[int, str] | None = None  # (line, options text) of a marker waiting for its fence
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        if marker:
            pending = (i + 1, marker.group(1))
            i += 1
            continue
        fence = FENCE.match(line)
        if not fence:
            if line.strip() and pending is not None:
                raise DocError(f"{page}:{pending[0]}: a doctest marker must be right above a ``` fence")
            i += 1
            continue
        indent, mark, lang = fence.groups()
        start = i + 1
        j = start
        while j < len(lines) and not (lines[j].strip().startswith(mark[0] * len(mark))
                                      and lines[j].strip().strip(mark[0]) == ""):
            j += 1
        if j == len(lines):
            raise DocError(f"{page}:{i + 1}: code block is never closed")
        if not lang:
            raise DocError(f"{page}:{i + 1}: code block without a language: tag it ```python or ```sh (run), "
                           f"or ```text, ```json, ... (shown only; see docs/README.md)")
        body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines[start:j]]
        options = parse_options(pending[1], f"{page}:{pending[0]}") if pending else {}
        blocks.append(Block(page, start + 1, lang.lower(), "\n".join(body), options))
        pending = None
        i = j + 1
    return blocks


def undefined_names(code: str) -> list[str]:
    """Names a Python block reads but neither imports, defines, assigns nor gets from builtins: a reader
    who saves the block alone gets a NameError for them (at once, or when that function runs)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []  # running it reports the syntax error with its line
    bound, used = set(dir(builtins)) | {"__file__"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
    return sorted(used - bound)


def check_self_contained(block: Block) -> None:
    missing = undefined_names(block.code)
    if missing:
        raise DocError(f"{block.where}: the Python block uses {', '.join(missing)} without importing or defining "
                       f"it: a reader who saves this block alone gets a NameError. Import or define it in the "
                       f"block (each block runs as a program of its own; see docs/README.md)")


def expected_pattern(expected: str) -> re.Pattern[str]:
    """An `output` block as a pattern: `...` matches anything (also across lines), trailing spaces ignored."""
    parts = [re.escape(part) for part in "\n".join(ln.rstrip() for ln in expected.strip().split("\n")).split("...")]
    return re.compile(".*?".join(parts), re.DOTALL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_environment(page: str) -> dict[str, str]:
    """A reader's environment, but in a realm of the page's own and with name-server ports nobody else uses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHRPC_", "PYRO_"))}
    tag = uuid.uuid4().hex[:8]
    env.update(MESHRPC_REALM=f"docs-{Path(page).stem}-{tag}", MESHRPC_NS_PORT=str(free_port()),
               MESHRPC_NS_BCPORT=str(free_port()), PYTHONUNBUFFERED="1", USER=f"reader{tag}", NO_COLOR="1")
    paths = [str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


# the child interpreter a page's Python blocks share: reads one block at a time as a JSON line
_DRIVER = r"""
import json, sys, traceback
namespace = {"__name__": "__main__"}
for line in sys.stdin:
    block = json.loads(line)
    status = "ok"
    try:
        exec(compile("\n" * (block["line"] - 1) + block["code"], block["page"], "exec"), namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            traceback.print_exception(exc.with_traceback(exc.__traceback__.tb_next))
            status = "failed"
    except BaseException as exc:  # the page's traceback, without this driver's frame
        traceback.print_exception(exc.with_traceback(exc.__traceback__.tb_next))
        status = "failed"
    sys.stdout.flush(); sys.stderr.flush()
    print(%r + " " + status, flush=True)
""" % END_MARK


class Page:
    """Runs one page's blocks in order; close() stops everything it started."""

    def __init__(self, path: Path, log: bool = False) -> None:
        self.path = path
        self.name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
        self.workdir = Path(tempfile.mkdtemp(prefix="docrun-"))
        for entry in REPO.iterdir():
            if entry.name != ".git" and not (self.workdir / entry.name).exists():
                (self.workdir / entry.name).symlink_to(entry)
        self.env = page_environment(self.name)
        self.statefile = self.workdir / ".docrun-env"
        self.background: list[tuple[Block, subprocess.Popen, Path]] = []
        self.python: subprocess.Popen | None = None
        self.python_output: list[str] = []
        self.python_changed = threading.Condition()
        self.last_output = ""
        self.log = log

    # --- running
    def run(self) -> None:
        blocks = parse(self.path.read_text(encoding="utf-8"), self.name)
        for block in blocks:
            if "output" in block.options:
                self.check_output(block)
                continue
            if not block.runs:
                continue
            if block.lang in PYTHON_LANGS:
                check_self_contained(block)
            if block.saved_as:
                (self.workdir / block.saved_as).write_text(block.code + "\n", encoding="utf-8")
                continue
            started = time.monotonic()
            if "background" in block.options:
                self.start_background(block)
            elif block.lang in PYTHON_LANGS:
                self.run_python(block)
            else:
                self.run_shell(block)
            if self.log:
                print(f"  {block.where} {block.lang} ok ({time.monotonic() - started:.1f} s)", file=sys.stderr)
        self.check_background_alive()

    def check_output(self, block: Block) -> None:
        if not expected_pattern(block.code).fullmatch(self.last_output.strip()):
            raise DocError(f"{block.where}: the output shown differs from what the block above printed.\n"
                           f"--- shown (`...` matches anything):\n{block.code}\n--- printed:\n{self.last_output}")

    def outcome(self, block: Block, ok: bool, output: str, what: str) -> None:
        self.last_output = output
        if "fails" in block.options:
            if ok:
                raise DocError(f"{block.where}: marked `fails` but {what} succeeded:\n{output}")
            return
        if not ok:
            raise DocError(f"{block.where}: {what} failed:\n{output}")

    def run_python(self, block: Block) -> None:
        """The block as a program of its own (a fresh interpreter that reads it, runs it and exits)."""
        self.stop_python()
        self.python = subprocess.Popen([sys.executable, "-u", "-c", _DRIVER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=self.current_env(), cwd=self.workdir, start_new_session=True)
        self.python_output = []
        threading.Thread(target=self._read_python, args=(self.python,), daemon=True).start()
        assert self.python.stdin is not None
        self.python.stdin.write(json.dumps({"page": self.name, "line": block.line, "code": block.code}) + "\n")
        self.python.stdin.close()  # one block per program: the driver ends after it
        deadline = time.monotonic() + block.timeout
        with self.python_changed:
            while True:
                lines = self.python_output
                ends = [ln for ln in lines if ln.startswith(END_MARK)]
                if ends:
                    output = "\n".join(ln for ln in lines if not ln.startswith(END_MARK))
                    break
                if self.python.poll() is not None and not self.python_reader_alive:
                    self.python = None
                    return self.outcome(block, False, "\n".join(lines) + "\n(the interpreter exited)",
                                        "the Python block")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stop_python()
                    raise DocError(f"{block.where}: the Python block did not finish within {block.timeout:g} s "
                                   f"(a server? mark it `<!-- doctest: background -->`):\n" + "\n".join(lines))
                self.python_changed.wait(min(remaining, 0.5))
        ok = ends[0].endswith(" ok")
        try:
            self.python.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop_python()
            if ok and "fails" not in block.options:
                raise DocError(f"{block.where}: the Python block ran to its end, but its program did not exit "
                               f"within {EXIT_TIMEOUT:g} s: something it started (a thread, a daemon, a proxy's "
                               f"loop) keeps it alive, and a reader's terminal would hang there. Close or stop it "
                               f"in the block (`with ...:`, `.close()`, `.shutdown()`):\n{output}") from None
        self.python = None
        return self.outcome(block, ok, output, "the Python block")

    python_reader_alive = False

    def _read_python(self, proc: subprocess.Popen) -> None:
        self.python_reader_alive = True
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.python_changed:
                self.python_output.append(line.rstrip("\n"))
                self.python_changed.notify_all()
        with self.python_changed:
            self.python_reader_alive = False
            self.python_changed.notify_all()

    def shell_script(self, block: Block) -> str:
        """The block as a bash script whose line numbers are the page's; exports are kept for later blocks."""
        code = block.code
        if block.lang == "console":  # only `$ ` lines are commands, the rest is output
            code = "\n".join(ln[2:] if ln.startswith("$ ") else "" for ln in code.split("\n"))
        code = "\n".join(": not run by docrun" if NEVER_RUN.search(ln) else ln for ln in code.split("\n"))
        state = shlex.quote(str(self.statefile))
        head = (f"[ -f {state} ] && . {state}; set -eE -o pipefail; "
                f"trap 'echo \"docrun: exit $? at {block.page} line $LINENO: $BASH_COMMAND\" >&2' ERR; "
                f"trap 'export -p > {state}' EXIT")
        return head + "\n" * (block.line - 1) + code + "\n"

    def current_env(self) -> dict[str, str]:
        """The page's environment with what shell blocks exported so far."""
        if not self.statefile.exists():
            return dict(self.env)
        out = subprocess.run(["bash", "-c", f". {shlex.quote(str(self.statefile))}; env -0"], env=self.env,
                             capture_output=True, check=False)
        pairs = (item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
        return {k: v for k, v in pairs}

    def run_shell(self, block: Block) -> None:
        logfile = self.workdir / f".docrun-{block.line}.log"
        with open(logfile, "w") as log:
            proc = subprocess.Popen(["bash", "-c", self.shell_script(block)], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
                                    start_new_session=True)
        # background jobs (`cmd &`) stay in the block's process group until the page ends
        self.background.append((block, proc, logfile))
        try:
            code = proc.wait(block.timeout)
        except subprocess.TimeoutExpired:
            raise DocError(f"{block.where}: the shell block did not finish within {block.timeout:g} s (a server? "
                           f"end its line with `&`, or mark the block `<!-- doctest: background -->`):\n"
                           + logfile.read_text(errors="replace")) from None
        self.outcome(block, code == 0, logfile.read_text(errors="replace"), f"the shell block (exit {code})")

    def start_background(self, block: Block) -> None:
        logfile = self.workdir / f".docrun-{block.line}.log"
        if block.lang in PYTHON_LANGS:
            source = self.workdir / f".docrun-{block.line}.py"
            source.write_text("\n" * (block.line - 1) + block.code + "\n", encoding="utf-8")
            argv = [sys.executable, "-u", "-c",
                    f"import sys; sys.argv = [{self.name!r}]; __name__ = '__main__'; "
                    f"exec(compile(open({str(source)!r}).read(), {self.name!r}, 'exec'))"]
            env = self.current_env()
        else:
            argv, env = ["bash", "-c", self.shell_script(block)], self.env
        with open(logfile, "w") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.workdir, start_new_session=True)
        self.background.append((block, proc, logfile))
        ready = block.options.get("ready")
        if not ready:
            return
        deadline = time.monotonic() + float(block.options.get("timeout", READY_TIMEOUT))
        while ready not in logfile.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                state = f"exited {proc.returncode}" if proc.poll() is not None else "still waiting"
                raise DocError(f"{block.where}: the background block never printed {ready!r} ({state}):\n"
                               + logfile.read_text(errors="replace"))
            time.sleep(0.05)  # polling a log file: there is no event to wait on

    def check_background_alive(self) -> None:
        """A background Python block (a server) that died before the page ended is a failure of the page."""
        for block, proc, logfile in self.background:
            if "background" in block.options and block.lang in PYTHON_LANGS and proc.poll() not in (None, 0):
                raise DocError(f"{block.where}: the background block exited with {proc.returncode} before the page "
                               f"ended:\n" + logfile.read_text(errors="replace"))

    # --- stopping
    def stop_python(self) -> None:
        if self.python is not None:
            _stop_group(self.python)
            self.python = None

    def close(self) -> None:
        self.stop_python()
        for _, proc, _ in reversed(self.background):
            _stop_group(proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group the block started (its own session), then SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.poll()
                return
            proc.poll()
            time.sleep(0.05)  # waiting for other processes of the group: no handle to wait on
    proc.poll()


def run_page(path: Path, log: bool = False) -> None:
    page = Page(path, log)
    try:
        page.run()
    finally:
        page.close()


def pages() -> list[Path]:
    """Every page the docs-as-tests job runs: README.md and docs/*.md."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def describe(path: Path) -> Iterator[str]:
    name = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
    for block in parse(path.read_text(encoding="utf-8"), name):
        if "output" in block.options:
            what = "compared with the output above"
        elif "skip" in block.options:
            what = f"skipped: {block.options['skip']}"
        elif not block.runs:
            what = "shown only"
        elif block.saved_as:
            what = f"saved as {block.saved_as}"
        else:
            what = "runs" + (" in the background" if "background" in block.options else "")
            what += "".join(f", {k}={v}" if v else f", {k}" for k, v in block.options.items() if k != "background")
        yield f"{block.where}: {block.lang}: {what}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 tools/docrun.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", help="Markdown pages (default: README.md and docs/*.md)")
    parser.add_argument("--list", action="store_true", help="show each block and what happens to it; run nothing")
    args = parser.parse_args(argv)
    paths = [Path(p).resolve() for p in args.pages] or pages()
    failed = 0
    for path in paths:
        try:
            if args.list:
                print("\n".join(describe(path)))
                continue
            started = time.monotonic()
            print(f"{path.name} ...", file=sys.stderr)
            run_page(path, log=True)
            print(f"{path.name} ok ({time.monotonic() - started:.1f} s)", file=sys.stderr)
        except DocError as exc:
            failed += 1
            print(f"FAILED {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
