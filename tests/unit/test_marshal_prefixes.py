"""The marshal guard's verified prefixes (wire.marshal_check): a check that resumes after a prefix it
verified before refuses exactly what a check from the first byte refuses. The reference here is the
guard as it was before the prefixes (one scan from the first byte); every case runs after the guard
remembered a prefix the case's data starts with, so that the resuming path is the one tested."""

from __future__ import annotations

import marshal
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from meshrpc import errors
from meshrpc.wire import marshal_check, plain
from meshrpc.wire.marshal_check import _ANY, _COUNTED_, _FLAG_REF, _LONG_, _PLAIN, _SIZED_, _SHORT, _SMALL_TUPLE, \
    _TEXT_COMPLEX, _TEXT_FLOAT

_I32 = struct.Struct("<i")


def reference(data: bytes, plain_only: bool = False) -> None:
    """The guard before prefixes: one linear scan from the first byte."""
    table = _PLAIN if plain_only else _ANY
    unpack = _I32.unpack_from
    end = len(data)
    pos = 0
    try:
        while pos < end:
            step = table[data[pos]]
            if step > 0:
                pos += step
                continue
            if step == _SIZED_:
                count = unpack(data, pos + 1)[0]
                pos += 5
                if not 0 <= count <= end - pos:
                    raise errors.SerializeError(f"marshal data declares a size of {count} where {end - pos} bytes remain")
                pos += count
            elif step == _COUNTED_ or step == _LONG_:
                count = unpack(data, pos + 1)[0]
                pos += 5
                if step == _LONG_:
                    count = 2 * abs(count)
                if not 0 <= count <= end - pos:
                    raise errors.SerializeError(f"marshal data declares a size of {count} where {end - pos} bytes remain")
                if step == _LONG_:
                    pos += count
            elif step == -_SHORT or step == -_TEXT_FLOAT:
                pos += 2 + data[pos + 1]
            elif step == -_TEXT_COMPLEX:
                pos += 2 + data[pos + 1]
                pos += 1 + data[pos]
            elif step == -_SMALL_TUPLE:
                pos += 2
            else:
                raise errors.SerializeError(f"marshal data holds a value of type code {chr(data[pos] & ~_FLAG_REF)!r}, "
                                            "which is not accepted")
    except (struct.error, IndexError):
        raise errors.SerializeError("truncated marshal data") from None
    if pos > end:
        raise errors.SerializeError("truncated marshal data")


def outcome(check, data: bytes, plain_only: bool) -> str:
    try:
        check(data, plain_only)
    except errors.SerializeError as exc:
        return f"refused: {exc}"
    return "accepted"


def same_as_reference(warm: bytes, data: bytes, plain_only: bool) -> None:
    """`warm` is checked first (the guard may remember its prefix), then `data` must fare as in the reference."""
    outcome(marshal_check.check, warm, plain_only)
    assert outcome(marshal_check.check, data, plain_only) == outcome(reference, data, plain_only)


CALLS = [plain.dumps_call("bench", "echo", (1,), None),
         plain.dumps_call("obj_0123456789abcdef0123456789abcdef", "get", ("kitchen", 2.5, None, 2 ** 70), None),
         plain.dumps_call("o", "m", ([1, 2], {"a": (3, 4)}), {"k": "v"}),
         marshal.dumps(("bench", "echo", (1,), {})),            # marshal version 4: short strings, references
         marshal.dumps(("bench", "echo", ("x" * 300,), {}))]


@pytest.mark.parametrize("plain_only", [True, False])
@pytest.mark.parametrize("call", CALLS)
def test_a_remembered_prefix_is_used_and_changes_nothing(call, plain_only):
    same_as_reference(call, call, plain_only)
    slots = marshal_check._prefixes.known[plain_only]
    if outcome(reference, call, plain_only) == "accepted" and len(call) >= marshal_check._PREFIX_MIN:
        assert any(call.startswith(prefix) and pos > 0 for prefix, pos, _ in slots), "no prefix was remembered"


@pytest.mark.parametrize("plain_only", [True, False])
@pytest.mark.parametrize("call", CALLS)
def test_data_that_shares_a_remembered_prefix_but_is_cut_short_or_lies_is_refused_as_before(call, plain_only):
    for cut in range(len(call)):  # every truncation: a container's count no longer fits, a size runs past the end
        same_as_reference(call, call[:cut], plain_only)
    for pos in range(len(call)):  # every byte after a remembered prefix replaced by a huge count or a bad code
        for byte in (0xFF, 0x7F, ord("c"), ord("["), ord("r")):
            same_as_reference(call, call[:pos] + bytes([byte]) + call[pos + 1:], plain_only)
    same_as_reference(call, call + b"[\xff\xff\xff\x7f", plain_only)
    same_as_reference(call, call + b"\x00", plain_only)


def test_the_least_length_a_prefix_needs_is_kept():
    # a vargs tuple declaring 3 items: a payload with the same prefix and fewer bytes after it is refused
    call = plain.dumps_call("bench", "echo", (1, 2, 3), None)
    marshal_check.check(call, True)
    head = call[:call.index(b"(\x03\x00\x00\x00") + 5]
    with pytest.raises(errors.SerializeError):
        marshal_check.check(head + b"N0", True)
    with pytest.raises(errors.SerializeError):
        reference(head + b"N0", True)


def test_two_methods_called_in_turn_both_resume_and_a_third_replaces_the_older():
    a, b, c = (plain.dumps_call("bench", name, (1,), None) for name in ("first", "second", "third"))
    for data in (a, b, a, b):
        marshal_check.check(data, True)
    prefixes = [p for p, _, _ in marshal_check._prefixes.known[True]]
    assert any(a.startswith(p) and p != b"\xff" for p in prefixes) and any(b.startswith(p) for p in prefixes)
    marshal_check.check(c, True)
    prefixes = [p for p, _, _ in marshal_check._prefixes.known[True]]
    assert any(c.startswith(p) for p in prefixes) and not any(a.startswith(p) and len(p) > 22 for p in prefixes)


def test_each_thread_remembers_its_own_prefixes():
    marshal_check.check(CALLS[0], True)
    seen: list = []
    thread = threading.Thread(target=lambda: seen.append(marshal_check._prefixes.known[True]))
    thread.start()
    thread.join(10)
    assert seen and all(pos == 0 for _, pos, _ in seen[0])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(warm=st.sampled_from(CALLS), tail=st.binary(max_size=40), keep=st.integers(0, 120),
       plain_only=st.booleans())
def test_any_data_after_a_remembered_prefix_fares_as_in_a_scan_from_the_start(warm, tail, keep, plain_only):
    same_as_reference(warm, warm[:keep] + tail, plain_only)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=80), plain_only=st.booleans())
def test_any_data_fares_as_in_a_scan_from_the_start(data, plain_only):
    same_as_reference(data, data, plain_only)
    same_as_reference(CALLS[0], data, plain_only)


def test_a_memory_of_its_own_keeps_to_itself_and_changes_nothing():
    """marshal_check.Prefixes (a connection's, ServerSession's): prefixes remembered there, not in the
    thread's memory nor in another connection's; two connections served in turn by one thread each
    resume after their own; and what is refused is what a scan from the first byte refuses."""
    ours, theirs = marshal_check.Prefixes(), marshal_check.Prefixes()
    before = dict(marshal_check._prefixes.known)
    a, b, c = (plain.dumps_call("bench", name, (1,), None) for name in ("first", "second", "third"))
    for data in (a, b, c, a):  # three methods on one connection...
        marshal_check.check(data, True, ours)
    for data in (c, c):  # ...and one on the other, in between
        marshal_check.check(data, True, theirs)
    assert marshal_check._prefixes.known == before
    assert any(a.startswith(p) and pos > 0 for p, pos, _ in ours.known[True])
    assert not any(a.startswith(p) and pos > 0 for p, pos, _ in theirs.known[True])
    assert any(c.startswith(p) and pos > 0 for p, pos, _ in theirs.known[True])
    for call in CALLS:
        for plain_only in (True, False):
            memory = marshal_check.Prefixes()
            outcome(lambda d, p: marshal_check.check(d, p, memory), call, plain_only)
            for cut in range(len(call)):
                data = call[:cut]
                assert outcome(lambda d, p: marshal_check.check(d, p, memory), data, plain_only) == \
                    outcome(reference, data, plain_only)
            for pos in range(len(call)):
                data = call[:pos] + b"\xff" + call[pos + 1:]
                assert outcome(lambda d, p: marshal_check.check(d, p, memory), data, plain_only) == \
                    outcome(reference, data, plain_only)


def test_a_server_session_remembers_its_own_prefixes():
    from support import handshaken_sessions
    client, server = handshaken_sessions("marshal")
    before = dict(marshal_check._prefixes.known)
    data = b"".join(client.call_request("obj", "echo", (1,), None))
    assert server.receive_request(data) == ("obj", "echo", (1,), {})
    assert marshal_check._prefixes.known == before
    assert any(pos > 0 for _, pos, _ in server._prefixes.known[False])
