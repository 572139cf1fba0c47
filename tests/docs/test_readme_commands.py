"""README.md's "The command line" section names every `meshrpc` sub-command (w11-newcomer: `get`, `set`
and `describe` were missing, so a reader of the README never learnt of them)."""

from __future__ import annotations

import re
from pathlib import Path

from meshrpc.cli import COMMANDS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_names_every_sub_command() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## The command line", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(?:meshrpc )?([a-z]+)", section))
    missing = sorted(set(COMMANDS) - named)
    assert not missing, f"README.md's command-line section does not name: {', '.join(missing)}"
