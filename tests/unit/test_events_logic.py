"""The pure parts of meshrpc.events: subject rules, pattern tags, the backlog and the receipts."""

from __future__ import annotations

import threading

import pytest

from meshrpc.events.streams import Backlog, Receipts
from meshrpc.events.subjects import Pattern, SubjectError, check_subject, pack_tags, pattern_of_tag
from meshrpc.mesh import records


@pytest.mark.parametrize("pattern, subject, expected", [
    ("home.hall.door", "home.hall.door", True),
    ("home.hall.door", "home.hall.Door", False),          # case-sensitive, as NATS
    ("home.*.door", "home.hall.door", True),
    ("home.*.door", "home.hall.x.door", False),           # * is exactly one token
    ("home.*", "home", False),
    ("home.>", "home.hall.door", True),
    ("home.>", "home.hall", True),
    ("home.>", "home", False),                            # > needs at least one token
    (">", "anything.at.all", True),
    ("*.*", "a.b", True),
    ("*.*", "a.b.c", False),
])
def test_nats_wildcards(pattern: str, subject: str, expected: bool) -> None:
    assert Pattern.parse(pattern).matches(subject) is expected


@pytest.mark.parametrize("bad", ["", "home..door", ".home", "home.", "home.>.door", "home.d*", "a b", 7])
def test_bad_patterns_are_refused_with_a_reason(bad: object) -> None:
    with pytest.raises(SubjectError):
        Pattern.parse(bad)  # type: ignore[arg-type]


def test_publishing_to_a_wildcard_is_refused() -> None:
    assert check_subject("home.hall.door") == "home.hall.door"
    for bad in ("home.*", "home.>", "x" * 300):
        with pytest.raises(SubjectError):
            check_subject(bad)


def test_pyro3_regex_patterns_match_from_the_start_ignoring_case() -> None:
    p = Pattern.regex(r"stock\.(nyse|nasdaq)")
    assert p.matches("STOCK.NYSE.ibm") and not p.matches("x.stock.nyse")
    with pytest.raises(SubjectError):
        Pattern.regex(r"(a)\1")        # backtracking constructs are refused (publishers run them)


def test_tags_round_trip_and_foreign_tags_are_ignored() -> None:
    for p in (Pattern.parse("home.*.door"), Pattern.regex("a,b%c")):
        assert pattern_of_tag(p.tag) == p
    assert pattern_of_tag("lamp") is None and pattern_of_tag("ev:bad..pattern") is None


def test_many_patterns_pack_into_few_announcements_within_the_budget() -> None:
    patterns = [Pattern.parse(f"home.room{i}.*.state") for i in range(200)]
    groups = pack_tags(patterns, 800)
    assert sorted(t for g in groups for t in g) == sorted(p.tag for p in patterns)
    assert all(len(records.encode_tags(g)) <= 800 for g in groups)
    assert len(groups) == -(-sum(len(p.tag) + 1 for p in patterns) // 800)     # as few as fit
    assert pack_tags(patterns[:3], 800) == [frozenset(p.tag for p in patterns[:3])]
    with pytest.raises(SubjectError):
        pack_tags([Pattern.parse("a" * 200)], 100)


def test_backlog_drops_the_oldest_and_counts() -> None:
    backlog = Backlog(3)
    assert all(backlog.put((f"s.{i}", i, 0.0, 0)) for i in range(3))
    assert backlog.put(("s.3", 3, 0.0, 0)) is False
    assert backlog.dropped == 1
    first, batch = backlog.take(10)
    assert first == 1 and [e[1] for e in batch] == [1, 2, 3]      # numbers stay attached to events
    backlog.put(("s.4", 4, 0.0, 0))
    assert backlog.take(10) == (4, [("s.4", 4, 0.0, 0)])
    backlog.put(("s.5", 5, 0.0, 0))
    assert backlog.close() == 1 and backlog.dropped == 2
    assert backlog.take(1) is None


def test_backlog_take_waits_for_a_put() -> None:
    backlog = Backlog(5, first_seq=7)
    got = []
    taker = threading.Thread(target=lambda: got.append(backlog.take(5, timeout=30)))
    taker.start()
    backlog.put(("a.b", 1, 0.0, 0))
    taker.join(30)
    assert got == [(7, [("a.b", 1, 0.0, 0)])]


def test_receipts_skip_duplicates_and_count_gaps_once() -> None:
    r = Receipts()
    assert r.accept("p", 0, 3) == (0, 0)
    assert r.accept("p", 0, 3) == (3, 0)          # the same batch again: all duplicates
    assert r.accept("p", 2, 3) == (1, 0)          # overlaps by one
    assert r.accept("p", 10, 2) == (0, 5)         # 5..9 never came
    assert r.accept("q", 4, 1) == (0, 4)          # a new stream starts at 0
    assert r.stats() == {"streams": 2, "lost": 9, "duplicates": 4}
