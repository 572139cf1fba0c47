"""Output for the command line: colours only on a terminal (NO_COLOR honoured), JSON for scripts."""

from __future__ import annotations

import json
import os
import select
import sys
from collections.abc import Sequence
from typing import Any

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


class Output:
    def __init__(self, json_mode: bool = False, stream: Any = None) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stdout
        self.colour = colour_allowed(self.stream)

    def style(self, text: str, *styles: str) -> str:
        if not self.colour or not styles:
            return text
        return "\x1b[" + ";".join(_CODES[s] for s in styles) + "m" + text + "\x1b[0m"

    def line(self, text: str = "", *styles: str) -> None:
        self.stream.write(self.style(text, *styles) + "\n")
        self.stream.flush()

    def check_reader(self) -> None:
        """BrokenPipeError when stdout is a pipe whose reader has gone (`browse --watch | head`), so a
        command that waits for news ends now rather than at its next line."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, ValueError, OSError):
            return
        poller = select.poll()
        poller.register(fd, select.POLLERR)
        if any(mask & (select.POLLERR | select.POLLHUP) for _, mask in poller.poll(0)):
            raise BrokenPipeError(f"the reader of stdout (fd {fd}) is gone")

    def json(self, value: Any) -> None:
        self.stream.write(json.dumps(value, default=_json_default, sort_keys=True) + "\n")
        self.stream.flush()

    def err(self, text: str) -> None:
        """One line on stderr, `error: ...` (a multi-line message is joined into one line)."""
        prefix = "\x1b[31merror:\x1b[0m " if colour_allowed(sys.stderr) else "error: "
        sys.stderr.write(prefix + one_line(text) + "\n")
        sys.stderr.flush()

    def status(self, text: str) -> None:
        """Progress on stderr (never mixed into JSON output)."""
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[str(c) for c in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        self.line("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), "bold")
        for row in cells:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def colour_allowed(stream: Any) -> bool:
    """Colours only on a terminal, and not when NO_COLOR is set (to anything but "", as no-color.org
    says) or TERM is dumb."""
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    return tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)
