"""Review guards for issue 15's fast lanes (w7-review), at the unit level: the marshal guard's per-thread
prefix memory against a scan from the first byte when remembered prefixes come from data that was itself
refused, from the other table, or from calls that rotate."""

from __future__ import annotations

import marshal
import random

from test_marshal_prefixes import CALLS, outcome, reference

from meshrpc.wire import marshal_check, plain

MORE = CALLS + [plain.dumps_call("bench", name, (n, "s" * n), None) for n, name in enumerate(("a", "bb", "ccc"))]


def mutate(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return data
    if choice == 1:
        return data[:rng.randrange(len(data) + 1)]
    if choice == 2:
        pos = rng.randrange(len(data))
        return data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1:]
    if choice == 3:
        pos = rng.randrange(len(data))
        return data[:pos] + rng.randbytes(rng.randrange(1, 6)) + data[pos:]
    return data + rng.randbytes(rng.randrange(1, 8))


def test_rotating_corrupted_and_cross_table_prefixes_never_change_a_verdict() -> None:
    """One thread checks a stream of calls and their corruptions in both tables (a daemon's worker
    serving a marshal and a serpent-binary connection in turn): every verdict, resumed or not, is the
    scan's from the first byte, whatever was remembered before (also prefixes of refused data)."""
    rng = random.Random(1512)
    for _ in range(40000):
        data = mutate(rng, rng.choice(MORE))
        plain_only = rng.random() < 0.5
        assert outcome(marshal_check.check, data, plain_only) == outcome(reference, data, plain_only), \
            (data, plain_only, marshal_check._prefixes.known)


def test_a_prefix_remembered_for_one_table_is_not_used_for_the_other() -> None:
    """A marshal version-4 call accepted by the full table; the same bytes for the plain table (serpent
    binary) must still be judged by the plain table from the first byte."""
    call = marshal.dumps(("bench", "echo", (1,), {}))
    for plain_only in (False, True, False, True):
        assert outcome(marshal_check.check, call, plain_only) == outcome(reference, call, plain_only)
