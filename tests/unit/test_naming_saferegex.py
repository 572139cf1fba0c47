"""The name server's linear-time regex matcher agrees with `re.match` and cannot be made to hang."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrpc.errors import NamingError
from meshrpc.limits import MAX_REGEX_LENGTH
from meshrpc.naming.saferegex import compile_safe

pytestmark = pytest.mark.timeout(120)

PATTERNS = [
    r"a", r"ab*c", r"(a|b)+$", r"^x.*y$", r"\w+\.\w+", r"(?i)ABC", r"[^a-c]+$", r"a{2,3}b", r"a{2}", r"\bfoo\b",
    r"(?m)^b$", r"a$", r"(a+)+$", r".*.*.*.*x", r"(?s).", r".", r"[\d_]+", r"x?", r"", r"(?a)\w+$", r"a|",
    r"\Aa\Z", r"(a*)*b", r"a\B", r"\B", r"(?i)[a-c]+$", r"(?i)[^a]", r"pyro\..*", r"(?:ab){1,2}?c", r"a\Z",
    r"(?m)a$\n?b", r"$", r"^$", r"(?i:a)B", r"[\s\S]{3}", r"\d{2,}", r"[^\W\d]+$", r"(?x) a  b  # comment",
    r"a{,2}$", r"(a|ab)(c|bcd)(d*)", r"\.", r"[.]", r"[a\-z]+",
]
NAMES = [
    "", "a", "ab", "abc", "abbbc", "aab", "aaab", "x y", "xay", "foo", "foo bar", "a\nb", "b\n", "a\n", "AbC",
    "ab.cd", "12_", "dxz", "é", "ÉA", "pyro.test", "ababc", "abc\n", "aaaa", "\n", "a\n\n", "123", "a-z", "abcd",
    "A", "aB",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_agrees_with_re_match(pattern: str) -> None:
    safe = compile_safe(pattern)
    for name in NAMES:
        assert safe.match(name) == bool(re.match(pattern, name)), (pattern, name)


_atoms = st.sampled_from(["a", "b", ".", "[ab]", "[^a]", r"\w", r"\d", "(a|b)", "(ab|a)", "(a*)", "x"])
_quantifiers = st.sampled_from(["", "", "*", "+", "?", "{1,2}", "*?", "{2}"])
_pieces = st.tuples(_atoms, _quantifiers).map("".join)
_patterns = st.tuples(st.sampled_from(["", "^"]), st.lists(_pieces, min_size=0, max_size=5),
                      st.sampled_from(["", "$", r"\Z", r"\b"])).map(lambda t: t[0] + "".join(t[1]) + t[2])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=_patterns, text=st.text(alphabet="ab1x \n", max_size=12))
def test_agrees_with_re_match_generated(pattern: str, text: str) -> None:
    assert compile_safe(pattern).match(text) == bool(re.match(pattern, text))


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)+$", r"(a|a)*b", r".*.*.*.*.*.*x", r"(\w+\s?)+$",
                                     r"(x+x+)+y"])
def test_catastrophic_patterns_run_in_linear_time(pattern: str) -> None:
    safe = compile_safe(pattern)
    text = "a" * 1000 + "!"
    started = time.monotonic()
    for _ in range(20):
        safe.match(text)
    # Python's re would need astronomically long; a linear matcher needs milliseconds even on a busy box
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("pattern, what", [
    (r"(a)\1", "backreferences"), (r"(?=a)", "lookahead"), (r"(?<!a)b", "lookahead"), (r"a*+", "possessive"),
    (r"(?>a)", "atomic"), (r"(a)?(?(1)b|c)", "conditional"),
])
def test_backtracking_constructs_are_refused(pattern: str, what: str) -> None:
    with pytest.raises(NamingError, match=what):
        compile_safe(pattern)


def test_invalid_and_oversized_patterns() -> None:
    with pytest.raises(NamingError, match="invalid regex"):
        compile_safe("(")
    with pytest.raises(NamingError, match="invalid regex"):
        compile_safe("a{99999999999}")
    with pytest.raises(NamingError, match="too complex"):
        compile_safe("(a{100}){100}")
    with pytest.raises(NamingError, match="longer than"):
        compile_safe("a" * (MAX_REGEX_LENGTH + 1))
    with pytest.raises(TypeError):
        compile_safe(b"abc")  # type: ignore[arg-type]


def test_filter_and_time_budget() -> None:
    safe = compile_safe(r"shop\..*")
    assert safe.filter(["shop.a", "shop", "x.shop.b", "shop.b"]) == ["shop.a", "shop.b"]
    slow = compile_safe(r"(a|aa)+$")
    with pytest.raises(NamingError, match="took longer"):
        slow.filter(["a" * 1000 + "b"] * 100_000, budget=0.05)


def test_cache_is_bounded() -> None:
    safe = compile_safe(r"(.*a){8}$")  # many distinct DFA states
    for n in range(300):
        safe.match("ab" * n + "c")
    assert len(safe._states) <= 1000
