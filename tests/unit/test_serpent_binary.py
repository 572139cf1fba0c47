"""Unit tests of the binary form of serpent values (meshrpc.wire.plain, serializers.SerpentBinary) and of
the marshal guard it relies on (wire.marshal_check).

The binary form is only an encoding: whatever a value is, the receiver must get exactly what serpent
(in out-of-band mode, as between meshrpc peers) would have given it. The differential tests below
check that on generated values of every kind, plain or not.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import marshal
import math
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshrpc.errors import SerializeError
from meshrpc.wire import frame as wire
from meshrpc.wire import marshal_check, plain
from meshrpc.wire.serializers import SerpentBinary, by_id, by_name

pytestmark = pytest.mark.timeout(60)

HYPOTHESIS = settings(max_examples=400, deadline=None, database=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SERPENT = by_name("serpent")
BINARY = by_id(SerpentBinary.id)


class Colour(enum.IntEnum):
    RED = 1


class Label(str):
    pass


def via_text(value: Any) -> Any:
    """What a meshrpc peer receives with serpent text (out-of-band bytes on)."""
    oob: list = []
    data = SERPENT.dumps(value, oob)
    return SERPENT.loads(data, [bytes(b) for b in oob])


def via_encode(value: Any) -> tuple[int, Any]:
    """What a meshrpc peer receives when the binary form is allowed: (wire id, value)."""
    oob: list = []
    wire_id, data = SERPENT.encode(value, oob, binary=True)
    return wire_id, by_id(wire_id).loads(data, [bytes(b) for b in oob])


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (True == 1 would hide a bool turned int); nan == nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


# --- every kind of value serpent meets: plain ones and the others
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10 ** 60, max_value=10 ** 60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, exclude_categories=())),   # surrogates included
    st.binary(max_size=20), st.complex_numbers(allow_nan=False),
    st.datetimes(), st.dates(), st.decimals(allow_nan=False), st.uuids(),
    st.sampled_from([Colour.RED, Label("x"), frozenset(), frozenset({1}), set(), bytearray(b"ab")]))
keys = st.one_of(st.text(max_size=5), st.integers(-5, 5), st.booleans(),
                 st.tuples(st.integers(0, 3), st.text(max_size=2)))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=30), st.lists(inner, max_size=4).map(tuple),
                            st.dictionaries(keys, inner, max_size=4),
                            st.sets(st.integers(-3, 3) | st.text(max_size=2), max_size=4),
                            st.builds(lambda d: {"__class__": "float", **d}, st.just({"value": "nan"}))),
    max_leaves=40)


@HYPOTHESIS
@given(values)
def test_the_binary_form_gives_exactly_what_serpent_gives(value: Any) -> None:
    try:
        expected = via_text(value)
    except SerializeError:
        with pytest.raises(SerializeError):
            via_encode(value)
        return
    wire_id, got = via_encode(value)
    assert same(got, expected), (value, expected, got)
    assert wire_id == (SerpentBinary.id if plain.is_plain(value) else SERPENT.id)


@HYPOTHESIS
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.lists(inner, max_size=5).map(tuple)
                    | st.dictionaries(st.text(max_size=4) | st.integers(), inner, max_size=5), max_leaves=60))
def test_plain_values_do_travel_in_binary_form(value: Any) -> None:
    wire_id, got = via_encode(value)
    assert wire_id == SerpentBinary.id
    assert same(got, via_text(value))


@pytest.mark.parametrize("value", [
    None, True, 0, -2 ** 100, 1.5, float("inf"), float("nan"), -0.0, "", "ab\ud800\x00\U0001f600",
    (), [], {}, {"a": [1, (2, 3)]}, {(1, "x"): 2, 3: None, True: "t"}, {1, "2"}, [(i, str(i)) for i in range(100)],
    [[1, 2]] * 40, {"__class__": "x"},   # plain by type (the receiver handles the key, as with serpent)
])
def test_plain(value: Any) -> None:
    assert plain.is_plain(value)
    assert plain.dumps(value) == marshal.dumps(value, 2)


@pytest.mark.parametrize("value", [
    b"x", bytearray(b"x"), memoryview(b"x"), 1j, set(), frozenset({1}), Colour.RED, Label("x"),
    datetime.date(2020, 1, 1), decimal.Decimal("1.5"), uuid.uuid4(), object(), {None: 1}, {1.5: 2},
    {(None,): 1}, [1, 2, b"x"], [1] * 20 + [b"x"], [(1, 2)] * 20 + [(1, set())], ({1: {2: 3j}},),
    {"k": [1, frozenset()]}, [[set()]] * 20,
])
def test_not_plain(value: Any) -> None:
    assert not plain.is_plain(value)
    assert plain.dumps(value) is None


def test_circular_and_very_deep_values_are_left_to_serpent() -> None:
    loop: list = []
    loop.append(loop)
    assert not plain.is_plain(loop)
    wide_loop: list = [1] * 20
    wide_loop.append(wide_loop)
    assert not plain.is_plain(wide_loop)
    deep: Any = 1
    for _ in range(plain.MAX_DEPTH + 5):
        deep = [deep]
    assert not plain.is_plain(deep)
    with pytest.raises(SerializeError):
        SERPENT.encode(loop, [], binary=True)   # serpent's own refusal, not a crash in the plain test


def test_only_serpent_uses_the_binary_form() -> None:
    for name in ("marshal", "json", "msgpack"):
        ser = by_name(name)
        assert ser.encode([1, 2], None, binary=True)[0] == ser.id
    assert SERPENT.encode([1, 2], None, binary=False)[0] == SERPENT.id
    assert BINARY.values is SERPENT and SERPENT.values is SERPENT


def test_binary_form_is_not_a_serializer_to_choose() -> None:
    with pytest.raises(SerializeError):
        by_name("serpent-binary")


def test_capabilities_of_a_handshake() -> None:
    assert wire.capabilities({}) == b""
    assert wire.capabilities({wire.CAPABILITIES: b"1b"}) == b"1b"
    assert wire.capabilities({wire.CAPABILITIES: 5}) == b""


# --- the receiving side: hostile binary payloads get SerializeError and nothing else


def test_refuses_code_objects_and_references() -> None:
    with pytest.raises(SerializeError, match="type code"):
        BINARY.loads(marshal.dumps(compile("1", "x", "eval")))
    shared = ["ab"] * 3
    with pytest.raises(SerializeError, match="type code"):
        BINARY.loads(marshal.dumps([shared, shared], 4))    # version 4: references and short forms
    assert BINARY.loads(marshal.dumps([shared, shared], 2)) == [shared, shared]


@pytest.mark.parametrize("code", [b"[", b"(", b"<", b"u", b"s"])
def test_refuses_sizes_that_do_not_fit(code: bytes) -> None:
    bomb = code + (2 ** 31 - 1).to_bytes(4, "little") + b"N" * 10
    started = time.monotonic()
    with pytest.raises(SerializeError, match="declares a size"):
        BINARY.loads(bomb)
    assert time.monotonic() - started < 1.0


def test_refuses_huge_long_digit_counts() -> None:
    with pytest.raises(SerializeError, match="declares a size"):
        BINARY.loads(b"l" + (-(2 ** 30)).to_bytes(4, "little", signed=True) + b"\x01\x00")


@pytest.mark.parametrize("data", [b"", b"[", b"[\x02\x00\x00\x00N", b"u\x05\x00\x00\x00ab", b"0", b"{N", b"i\x01",
                                  b"(\x01\x00\x00\x00", b"\xff", b"{uN"])
def test_truncated_or_malformed(data: bytes) -> None:
    with pytest.raises(SerializeError):
        BINARY.loads(data)


@HYPOTHESIS
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    try:
        BINARY.loads(data)
    except SerializeError:
        pass


@HYPOTHESIS
@given(st.data())
def test_mutated_payloads_never_escape_as_other_errors(data: st.DataObject) -> None:
    payload = bytearray(marshal.dumps(("obj", "echo", ([1, 2.5, "x"], {"k": (None, True)}), {}), 2))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    try:
        BINARY.loads(bytes(payload))
    except SerializeError:
        pass


def test_the_general_marshal_guard_still_refuses_what_it_refused() -> None:
    marshal_serializer = by_name("marshal")
    for bomb in (b"[" + (2 ** 31 - 1).to_bytes(4, "little"), b"(" + (2 ** 24).to_bytes(4, "little") + b"N",
                 b")\x05N", b"c" + bytes(30), b"r\x00\x00\x00\x00"):
        with pytest.raises(SerializeError):
            marshal_serializer.loads(bomb)   # refused by the guard, or by marshal itself after it
    # everything marshal writes for plain values, in every version, passes the general guard
    value = [("ab", 1, 2.5, 2 ** 70, None, True, {"k": {1, 2}}, frozenset({3}), b"x", 1j)] * 3
    for version in range(5):
        marshal_check.check(marshal.dumps(value, version))
