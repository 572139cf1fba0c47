"""What several sub-commands share: the --realm option and the one rule for typed arguments."""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
from typing import Any

from ..config import Settings, config

# a bare word passes as a string: no spaces, quotes or brackets, and not a would-be keyword
_WORD = re.compile(r"[\w.:/@+%#~^-]+\Z")
_AMBIGUOUS = {"true", "false", "null", "none", "nil", "yes", "no", "on", "off"}
_KEYWORD = re.compile(r"([A-Za-z_]\w*)=(.*)\Z", re.DOTALL)

VALUE_RULE = ("each ARG is JSON (true, 3, \"text\", [1, 2], {\"k\": 1}), else a Python literal (True, None, "
              "(1, 2), b'x'), else a plain word (letters, digits and _.:/@+-, passed as a string); NAME=ARG "
              "is a keyword argument. Anything else, and would-be keywords such as yes/TRUE/none, is an error: "
              "quote strings as JSON, '\"two words\"'")


class ArgumentValueError(ValueError):
    """A command-line value that the typed-argument rule does not accept (exit code 2)."""


def parse_value(text: str) -> Any:
    """The value of one command-line argument, by the strict rule of VALUE_RULE (never a silent guess:
    `false` is False, and `yes` is an error rather than a true-looking string)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if text.lower() in _AMBIGUOUS:
        raise ArgumentValueError(f"{text!r} is ambiguous: write true, false or null (JSON) for a value, "
                                 f"or '\"{text}\"' for the string")
    if _WORD.match(text):
        return text
    raise ArgumentValueError(f"cannot read {text!r} as JSON, a Python literal or a plain word: "
                             f"quote a string as JSON, e.g. '\"{text}\"'")


def parse_call_arguments(words: list[str], args_json: str | None = None) -> tuple[list[Any], dict[str, Any]]:
    """(positional, keyword) arguments from ARG and NAME=ARG words, plus --args-json (a JSON array of
    positional arguments or an object of keyword arguments)."""
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for word in words:
        keyword = _KEYWORD.match(word)
        if keyword and not word.startswith(("{", "[", "(", '"', "'")):
            keywords[keyword.group(1)] = parse_value(keyword.group(2))
        else:
            positional.append(parse_value(word))
    if args_json is not None:
        try:
            extra = json.loads(args_json)
        except ValueError as exc:
            raise ArgumentValueError(f"--args-json is not valid JSON: {exc}") from None
        if isinstance(extra, list):
            positional += extra
        elif isinstance(extra, dict) and all(isinstance(k, str) for k in extra):
            keywords.update(extra)
        else:
            raise ArgumentValueError("--args-json takes a JSON array (positional arguments) or object "
                                     "(keyword arguments)")
    return positional, keywords


def seconds(text: str) -> float:
    """argparse type of --timeout and the like: a finite number of seconds, 0 or more (a negative or
    infinite one is refused instead of meaning something by accident)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r} (a number of seconds, e.g. 2.5)") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is no number of seconds: give 0 or more, e.g. 2.5")
    return value


def realm_name(text: str) -> str:
    """argparse type of --realm: an empty realm is refused, as MESHRPC_REALM= is."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"the realm must not be empty: leave --realm out for MESHRPC_REALM "
                                         f"(now {config.REALM!r})")
    return text


def add_realm_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--realm", type=realm_name, default=None,
                   help=f"mesh realm (default: MESHRPC_REALM, now {config.REALM!r})")


def add_lan_option(p: argparse.ArgumentParser,
                   text: str = "listen on every network interface (as MESHRPC_HOST=0.0.0.0), not only this "
                               "machine's") -> None:
    p.add_argument("--lan", action="store_true", help=text)


def settings_for(realm: str | None, lan: bool = False) -> Settings:
    """The process's settings with --realm and --lan (every interface: MESHRPC_HOST=0.0.0.0) applied."""
    changes: dict[str, str] = {}
    if realm:
        changes["REALM"] = realm
    if lan:
        changes["HOST"] = "0.0.0.0"
    return config.copy(**changes) if changes else config
