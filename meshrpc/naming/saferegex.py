"""Regex filters that cannot hang the name server: a linear-time matcher for a subset of Python regex.

Python's `re` backtracks, so `(a+)+$` against a 30-character name runs for seconds, and it holds the
GIL meanwhile: no time budget around it can stop it and the whole process stalls. Here the pattern
is parsed by Python's own parser (same syntax and error messages), turned into a Thompson NFA and
run as a lazily built DFA: each step maps a set of NFA states and a character to the next set, and
those steps are cached, so matching costs one or two dict look-ups per character.

`compile_safe(pattern).match(text)` answers what `bool(re.match(pattern, text))` answers (anchored at
the start, any prefix may match). Constructs that need backtracking are refused with NamingError:
backreferences, lookahead/lookbehind, conditionals, atomic groups and possessive repeats.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from re import _constants as C  # type: ignore[attr-defined]
from re import _parser as P  # type: ignore[attr-defined]

from ..errors import NamingError
from ..limits import MAX_REGEX_LENGTH, MAX_REGEX_STATES, REGEX_DFA_STATES, REGEX_DFA_TRANSITIONS, REGEX_TIME_BUDGET

_CHAR, _SPLIT, _ASSERT, _MATCH = range(4)
_REFUSED = {
    C.GROUPREF: "backreferences", C.GROUPREF_EXISTS: "conditional groups", C.ASSERT: "lookahead/lookbehind",
    C.ASSERT_NOT: "lookahead/lookbehind", C.ATOMIC_GROUP: "atomic groups", C.POSSESSIVE_REPEAT: "possessive repeats",
}
_ASCII_SPACE = frozenset(" \t\n\r\f\v")
_CheckChar = Callable[[str], bool]


def _ascii_word(ch: str) -> bool:
    return ch == "_" or (ch.isascii() and ch.isalnum())


def _unicode_word(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


def _category(code: object, ascii_only: bool) -> _CheckChar:
    if code is C.CATEGORY_DIGIT or code is C.CATEGORY_NOT_DIGIT:
        test: _CheckChar = (lambda ch: "0" <= ch <= "9") if ascii_only else str.isdecimal
    elif code is C.CATEGORY_SPACE or code is C.CATEGORY_NOT_SPACE:
        test = _ASCII_SPACE.__contains__ if ascii_only else str.isspace
    elif code is C.CATEGORY_WORD or code is C.CATEGORY_NOT_WORD:
        test = _ascii_word if ascii_only else _unicode_word
    else:
        raise NamingError(f"invalid regex: unsupported character category {code}")
    if code in (C.CATEGORY_NOT_DIGIT, C.CATEGORY_NOT_SPACE, C.CATEGORY_NOT_WORD):
        return lambda ch: not test(ch)
    return test


class SafePattern:
    """A compiled pattern; `match(text)` is `bool(re.match(pattern, text))` in linear time."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._kind: list[int] = []
        self._arg: list[object] = []
        self._out1: list[int] = []
        self._out2: list[int] = []
        try:
            parsed = P.parse(pattern, 0)
        except (re.error, RecursionError, OverflowError) as exc:  # absurd repeat counts overflow
            raise NamingError(f"invalid regex: {exc}") from None
        flags = parsed.state.flags
        if flags & C.SRE_FLAG_LOCALE:
            raise NamingError("invalid regex: the LOCALE flag is not supported")
        self._ascii = bool(flags & C.SRE_FLAG_ASCII)
        self._uses_asserts = False
        self._uses_words = False
        accept = self._new(_MATCH)
        self._start = self._sequence(list(parsed), accept, flags)
        self._states: dict[tuple[frozenset[int], bool, bool, bool], _DState] = {}
        self._initial: _DState = self._dfa_state(frozenset({self._start}), True, False, False)

    # ------------------------------------------------------------------ NFA construction (backwards)
    def _new(self, kind: int, arg: object = None, out1: int = -1, out2: int = -1) -> int:
        if len(self._kind) >= MAX_REGEX_STATES:
            raise NamingError(f"regex too complex: more than {MAX_REGEX_STATES} states (expanded repeats count "
                              "once per copy)")
        self._kind.append(kind)
        self._arg.append(arg)
        self._out1.append(out1)
        self._out2.append(out2)
        return len(self._kind) - 1

    def _sequence(self, items: list, nxt: int, flags: int) -> int:
        for op, av in reversed(items):
            nxt = self._node(op, av, nxt, flags)
        return nxt

    def _node(self, op: object, av: object, nxt: int, flags: int) -> int:
        if op in _REFUSED:
            raise NamingError(f"regex not supported by the name server: {_REFUSED[op]} need backtracking "
                              "(use a pattern without them, or a prefix)")
        if op is C.LITERAL or op is C.NOT_LITERAL or op is C.ANY or op is C.IN:
            return self._new(_CHAR, self._char_test(op, av, flags), nxt)
        if op is C.SUBPATTERN:
            _group, add_flags, del_flags, items = av  # type: ignore[misc]
            return self._sequence(list(items), nxt, (flags | add_flags) & ~del_flags)
        if op is C.BRANCH:
            _, branches = av  # type: ignore[misc]
            starts = [self._sequence(list(b), nxt, flags) for b in branches]
            entry = starts[-1]
            for start in reversed(starts[:-1]):
                entry = self._new(_SPLIT, None, start, entry)
            return entry
        if op is C.MAX_REPEAT or op is C.MIN_REPEAT:
            low, high, items = av  # type: ignore[misc]
            return self._repeat(int(low), high, list(items), nxt, flags)
        if op is C.AT:
            self._uses_asserts = True
            if av in (C.AT_BOUNDARY, C.AT_NON_BOUNDARY):
                self._uses_words = True
            elif av not in (C.AT_BEGINNING, C.AT_BEGINNING_STRING, C.AT_END, C.AT_END_STRING):
                raise NamingError(f"regex not supported by the name server: anchor {av}")
            multiline = bool(flags & C.SRE_FLAG_MULTILINE)
            return self._new(_ASSERT, (av, multiline), nxt)
        raise NamingError(f"regex not supported by the name server: {op}")

    def _repeat(self, low: int, high: object, items: list, nxt: int, flags: int) -> int:
        entry = nxt
        if high is C.MAXREPEAT:
            loop = self._new(_SPLIT, None, -1, nxt)  # body or leave; the body comes back here
            self._out1[loop] = self._sequence(items, loop, flags)
            entry = loop
        else:
            for _ in range(int(high) - low):  # type: ignore[call-overload]
                # an optional copy: its body (then the later optional copies), or skip to what follows
                entry = self._new(_SPLIT, None, self._sequence(items, entry, flags), nxt)
        for _ in range(low):
            entry = self._sequence(items, entry, flags)
        return entry

    def _char_test(self, op: object, av: object, flags: int) -> _CheckChar:
        ascii_only = self._ascii or bool(flags & C.SRE_FLAG_ASCII)
        if op is C.ANY:
            return (lambda ch: True) if flags & C.SRE_FLAG_DOTALL else (lambda ch: ch != "\n")
        if op is C.LITERAL:
            literal = chr(av)  # type: ignore[arg-type]
            test: _CheckChar = literal.__eq__
        elif op is C.NOT_LITERAL:
            literal = chr(av)  # type: ignore[arg-type]
            test = literal.__ne__
            if flags & C.SRE_FLAG_IGNORECASE:
                low, up = literal.lower(), literal.upper()
                return lambda ch: ch != literal and ch.lower() != low and ch.upper() != up
            return test
        else:
            test = self._class_test(av, ascii_only)  # type: ignore[arg-type]
        if flags & C.SRE_FLAG_IGNORECASE:
            base = test
            return lambda ch: base(ch) or base(ch.lower()) or base(ch.upper())
        return test

    @staticmethod
    def _class_test(items: list, ascii_only: bool) -> _CheckChar:
        negate = False
        chars: set[str] = set()
        ranges: list[tuple[str, str]] = []
        others: list[_CheckChar] = []
        for op, av in items:
            if op is C.NEGATE:
                negate = True
            elif op is C.LITERAL:
                chars.add(chr(av))
            elif op is C.RANGE:
                ranges.append((chr(av[0]), chr(av[1])))
            elif op is C.CATEGORY:
                others.append(_category(av, ascii_only))
            elif op is C.NOT_LITERAL:
                excluded = chr(av)
                others.append(excluded.__ne__)
            else:
                raise NamingError(f"regex not supported by the name server: {op} in a character class")
        frozen = frozenset(chars)

        def member(ch: str) -> bool:
            return (ch in frozen or any(lo <= ch <= hi for lo, hi in ranges)
                    or any(test(ch) for test in others)) != negate
        return member

    # ------------------------------------------------------------------ simulation (a lazy DFA)
    # A DFA state is a set of NFA states (before following empty transitions) plus what anchors need
    # to know about the text already read: whether nothing was read, and whether the previous
    # character was a word character or a newline. A step consumes one character; its key is the
    # character, or "\n$" for a newline that ends the text (where `$` may match before it).
    def _is_word(self, ch: str) -> bool:
        return _ascii_word(ch) if self._ascii else _unicode_word(ch)

    def _dfa_state(self, kernel: frozenset[int], at_start: bool, prev_word: bool, prev_nl: bool) -> _DState:
        if not self._uses_asserts:
            at_start = prev_word = prev_nl = False
        key = (kernel, at_start, prev_word, prev_nl)
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= REGEX_DFA_STATES:
                # start over rather than grow: the old graph goes once no match walks it any more
                self._states.clear()
                self._initial = self._dfa_state(frozenset({self._start}), True, False, False)
            state = self._states[key] = _DState(kernel, at_start, prev_word, prev_nl)
        return state

    def _assert_holds(self, arg: tuple, ctx: tuple) -> bool:
        code, multiline = arg
        at_start, at_end, prev_nl, next_nl, final_nl, prev_word, next_word = ctx
        if code is C.AT_BEGINNING:
            return at_start or (multiline and prev_nl)
        if code is C.AT_BEGINNING_STRING:
            return at_start
        if code is C.AT_END:
            return at_end or final_nl or (multiline and next_nl)
        if code is C.AT_END_STRING:
            return at_end
        if code is C.AT_BOUNDARY:
            return prev_word != next_word
        return prev_word == next_word and not (at_start and at_end)  # AT_NON_BOUNDARY

    def _closure(self, kernel: frozenset[int], ctx: tuple) -> tuple[list[int], bool]:
        """The character-consuming states reachable without input, and whether the end is reachable."""
        kind, out1, out2, arg = self._kind, self._out1, self._out2, self._arg
        seen: set[int] = set()
        stack = list(kernel)
        chars: list[int] = []
        accepted = False
        while stack:
            state = stack.pop()
            if state in seen:
                continue
            seen.add(state)
            k = kind[state]
            if k == _CHAR:
                chars.append(state)
            elif k == _SPLIT:
                stack.append(out1[state])
                if out2[state] >= 0:
                    stack.append(out2[state])
            elif k == _ASSERT:
                if self._assert_holds(arg[state], ctx):  # type: ignore[arg-type]
                    stack.append(out1[state])
            else:
                accepted = True
        return chars, accepted

    def _step(self, state: _DState, key: str) -> _DState | bool:
        """The state after reading key's character; True when the pattern already matched before it."""
        ch = key[0]
        is_word = self._uses_words and self._is_word(ch)
        ctx = (state.at_start, False, state.prev_nl, ch == "\n", key == "\n$", state.prev_word, is_word)
        chars, accepted = self._closure(state.kernel, ctx)
        result: _DState | bool
        if accepted:
            result = True
        else:
            arg, out1 = self._arg, self._out1
            kernel = frozenset(out1[s] for s in chars if arg[s](ch))  # type: ignore[operator]
            result = self._dfa_state(kernel, False, is_word, ch == "\n") if kernel else False
        if len(state.trans) < REGEX_DFA_TRANSITIONS:
            state.trans[key] = result
        return result

    def _accepts_at_end(self, state: _DState) -> bool:
        if state.at_end is None:
            ctx = (state.at_start, True, state.prev_nl, False, False, state.prev_word, False)
            state.at_end = self._closure(state.kernel, ctx)[1]
        return state.at_end

    def match(self, text: str, deadline: float | None = None) -> bool:
        """bool(re.match(pattern, text)); NamingError when time.monotonic() passes deadline."""
        state = self._initial
        last = len(text) - 1
        for pos, ch in enumerate(text):
            key = "\n$" if ch == "\n" and pos == last else ch
            nxt = state.trans.get(key)
            if nxt is None:
                nxt = self._step(state, key)
                if deadline is not None and time.monotonic() > deadline:
                    raise _budget_error()
            if nxt is True:
                return True
            if nxt is False:
                return False
            state = nxt
        return self._accepts_at_end(state)

    def filter(self, names: Iterable[str], budget: float = REGEX_TIME_BUDGET) -> list[str]:
        """The names that match, within `budget` seconds (NamingError past it)."""
        deadline = time.monotonic() + budget
        found = []
        for i, name in enumerate(names):
            if not i & 63 and time.monotonic() > deadline:
                raise _budget_error()
            if self.match(name, deadline):
                found.append(name)
        return found

    def __repr__(self) -> str:
        return f"<SafePattern {self.pattern!r}, {len(self._kind)} states>"


class _DState:
    __slots__ = ("at_end", "at_start", "kernel", "prev_nl", "prev_word", "trans")

    def __init__(self, kernel: frozenset[int], at_start: bool, prev_word: bool, prev_nl: bool) -> None:
        self.kernel, self.at_start, self.prev_word, self.prev_nl = kernel, at_start, prev_word, prev_nl
        self.trans: dict[str, _DState | bool] = {}
        self.at_end: bool | None = None


def _budget_error() -> NamingError:
    return NamingError(f"regex matching took longer than {REGEX_TIME_BUDGET} s; use a simpler pattern or a prefix")


def compile_safe(pattern: object) -> SafePattern:
    """A SafePattern; TypeError for a non-str, NamingError for an invalid, too long or unsupported one."""
    if not isinstance(pattern, str):
        raise TypeError(f"regex must be a str, not {type(pattern).__name__}")
    if len(pattern) > MAX_REGEX_LENGTH:
        raise NamingError(f"invalid regex: longer than {MAX_REGEX_LENGTH} characters")
    return SafePattern(pattern)


__all__ = ["SafePattern", "compile_safe"]
