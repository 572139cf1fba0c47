"""Subjects and the patterns that select them: pure functions, no I/O.

A subject is dot-separated tokens (`home.hall.door`), case-sensitive, as NATS has them. A pattern
is a subject whose tokens may be `*` (exactly one token) or, as the last token only, `>` (one or
more trailing tokens). For Pyro3's Event Server there are regex patterns too: `re.match` of the
subject, case-insensitive; they run on saferegex's linear-time matcher, because a publisher
compiles the patterns that subscribers announce (input from the network).

On the mesh a subscriber announces its patterns as metadata tags: `ev:<pattern>` or
`evre:<regex>`; `pack_tags` splits many of them over as few announcements as fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable

from ..errors import MeshError
from ..mesh import records
from ..naming.saferegex import compile_safe
from ..wire.constants import EVENTS_MAX_SUBJECT, EVENTS_REGEX_TAG, EVENTS_SUBJECT_TAG

_FORBIDDEN = frozenset(" \t\r\n\0")


class SubjectError(MeshError, ValueError):
    """A subject or pattern that breaks the rules (what is wrong is in the message)."""


def check_subject(subject: object) -> str:
    """subject if it is a valid subject to publish (no wildcards); SubjectError otherwise."""
    tokens = _tokens(subject, "subject")
    if any(token in ("*", ">") for token in tokens):
        raise SubjectError(f"cannot publish to {subject!r}: wildcards (* and >) are for subscribing")
    return subject  # type: ignore[return-value]


def _tokens(text: object, what: str) -> list[str]:
    if not isinstance(text, str) or not text:
        raise SubjectError(f"a {what} must be a non-empty string, not {text!r}")
    if len(text.encode("utf-8", "surrogatepass")) > EVENTS_MAX_SUBJECT:
        raise SubjectError(f"a {what} is at most {EVENTS_MAX_SUBJECT} bytes, {text[:40]!r}... is longer")
    if not _FORBIDDEN.isdisjoint(text):
        raise SubjectError(f"a {what} has no spaces or control characters: {text!r}")
    tokens = text.split(".")
    if "" in tokens:
        raise SubjectError(f"{what} {text!r} has an empty token: use dot-separated words like home.hall.door")
    return tokens


@dataclass(frozen=True)
class Pattern:
    """A compiled subscription pattern: `Pattern.parse("home.*.door")`, `Pattern.regex("door.*")`."""

    text: str
    is_regex: bool = False
    _match: Callable[[str], bool] = field(compare=False, repr=False, default=lambda subject: False)

    @classmethod
    def parse(cls, text: str) -> Pattern:
        tokens = _tokens(text, "pattern")
        for i, token in enumerate(tokens):
            if token == ">" and i != len(tokens) - 1:
                raise SubjectError(f"pattern {text!r}: '>' matches the tail and must be the last token")
            if token not in ("*", ">") and ("*" in token or ">" in token):
                raise SubjectError(f"pattern {text!r}: a wildcard is a whole token (home.*.door, not home.d*)")
        if "*" not in tokens and ">" not in tokens:
            return cls(text, False, text.__eq__)
        return cls(text, False, _wildcard_matcher(tokens))

    @classmethod
    def regex(cls, text: str) -> Pattern:
        """A Pyro3-style pattern: re.match against the subject, ignoring case."""
        if not isinstance(text, str) or not text:
            raise SubjectError(f"a regex pattern must be a non-empty string, not {text!r}")
        if len(text.encode("utf-8", "surrogatepass")) > EVENTS_MAX_SUBJECT:
            raise SubjectError(f"a regex pattern is at most {EVENTS_MAX_SUBJECT} bytes")
        try:
            compiled = compile_safe("(?i)" + text)
        except MeshError as exc:
            raise SubjectError(f"regex pattern {text!r}: {exc}") from None
        return cls(text, True, compiled.match)

    def matches(self, subject: str) -> bool:
        return self._match(subject)

    @property
    def tag(self) -> str:
        """The metadata tag that announces this pattern on the mesh."""
        return (EVENTS_REGEX_TAG if self.is_regex else EVENTS_SUBJECT_TAG) + self.text


def _wildcard_matcher(pattern: list[str]) -> Callable[[str], bool]:
    tail = pattern[-1] == ">"
    fixed = pattern[:-1] if tail else pattern

    def matches(subject: str) -> bool:
        tokens = subject.split(".")
        if (len(tokens) <= len(fixed)) if tail else (len(tokens) != len(fixed)):
            return False
        return all(p == "*" or p == t for p, t in zip(fixed, tokens))
    return matches


def pattern_of_tag(tag: str) -> Pattern | None:
    """The pattern a metadata tag announces; None for other tags and for patterns that do not
    parse (a newer or broken peer: ignored, never an error on the receiving side)."""
    try:
        if tag.startswith(EVENTS_SUBJECT_TAG):
            return Pattern.parse(tag[len(EVENTS_SUBJECT_TAG):])
        if tag.startswith(EVENTS_REGEX_TAG):
            return Pattern.regex(tag[len(EVENTS_REGEX_TAG):])
    except SubjectError:
        return None
    return None


def pack_tags(patterns: Iterable[Pattern], budget: int) -> list[frozenset[str]]:
    """The patterns' tags in groups whose encoded size (records.encode_tags) stays within budget
    bytes: one announcement each. First-fit by size, so many short patterns share one."""
    groups: list[tuple[int, set[str]]] = []
    for tag in sorted({p.tag for p in patterns}, key=len, reverse=True):
        size = len(records.encode_tags([tag]).encode()) + 1    # plus the comma that joins it
        if size > budget:
            raise SubjectError(f"pattern {tag!r} does not fit in one mesh announcement ({budget} bytes)")
        for i, (used, tags) in enumerate(groups):
            if used + size <= budget:
                tags.add(tag)
                groups[i] = (used + size, tags)
                break
        else:
            groups.append((size, {tag}))
    return [frozenset(tags) for _, tags in groups]
