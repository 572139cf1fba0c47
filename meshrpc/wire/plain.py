"""Plain values: the ones serpent carries unchanged, so any exact encoding of them gives serpent's result.

Between meshrpc peers that agreed on it (frame.CAP_BINARY), a serpent message whose value is plain
travels in marshal's binary form (version 2: no back-references) instead of serpent's text, because
decoding Python literal text is the largest cost of a serpent call (docs/performance.md). The
receiver gets exactly the values serpent would have given it, so this is an encoding, not a
different serializer: the rule below is what keeps it so.

Plain: None, bool, int, float, str; tuples and lists of plain values; dicts whose keys are str, int,
bool (or tuples of those) and whose values are plain; non-empty sets of such keys. Not plain,
so sent as serpent text: everything else, including subclasses (IntEnum, str subclasses), bytes-like
values (they go out of band, uncopied), frozensets and empty sets (serpent turns them into a set and
a tuple), complex numbers, and structures nested deeper than MAX_DEPTH or circular.

One difference is left on purpose: an int of more than 4300 digits, which serpent's text cannot carry
(Python refuses to parse it), arrives intact.
"""

from __future__ import annotations

import marshal
from itertools import chain
from typing import Any

from .constants import BINARY_MARSHAL_VERSION as MARSHAL_VERSION  # (short: used in every dumps below)

MAX_DEPTH = 200       # deeper (or circular) values are left to serpent, which has its own rules
_WIDE = 16            # sequences longer than this are checked a level at a time, at C speed

SCALARS = frozenset({type(None), bool, int, float, str})  # plain on their own (not their subclasses)
_SCALARS = SCALARS
_KEYS = frozenset({bool, int, str})  # not float: serpent cannot carry a nan key
_CONTAINERS = frozenset({tuple, list, dict, set})
_SEQUENCES = (tuple, list)


def is_plain(value: Any) -> bool:
    """True when serpent would carry `value` unchanged (the rule in the module docstring)."""
    try:
        return _plain(value, 0)
    except RecursionError:  # pragma: no cover - MAX_DEPTH stops well before
        return False


def dumps(value: Any) -> bytes | None:
    """The binary form of `value`, or None when it is not plain (then it goes as serpent text)."""
    if type(value) in _SCALARS:  # most results: no walk
        return marshal.dumps(value, MARSHAL_VERSION)
    if not is_plain(value):
        return None
    try:
        return marshal.dumps(value, MARSHAL_VERSION)
    except ValueError:  # pragma: no cover - is_plain admits only what marshal writes
        return None


def scalar_call(object_id: Any, method: Any, vargs: Any, kwargs: Any) -> bool:
    """Whether the INVOKE value (object_id, method, vargs, kwargs or {}) is plain at a glance: names
    that are str, a tuple of scalars, no keywords (most calls). False says nothing: ask is_plain."""
    if type(vargs) is not tuple or kwargs or type(object_id) is not str or type(method) is not str:
        return False
    for v in vargs:
        if type(v) not in _SCALARS:
            return False
    return True


def dumps_call(object_id: Any, method: Any, vargs: Any, kwargs: Any) -> bytes | None:
    """dumps() of an INVOKE value (object_id, method, vargs or (), kwargs or {}), the common case first."""
    if scalar_call(object_id, method, vargs, kwargs):
        return marshal.dumps((object_id, method, vargs, {}), MARSHAL_VERSION)
    return dumps((object_id, method, vargs if vargs is not None else (), kwargs or {}))


def _plain(value: Any, depth: int) -> bool:
    t = type(value)
    if t in _SCALARS:
        return True
    if depth >= MAX_DEPTH:
        return False
    if t is tuple or t is list:
        if len(value) > _WIDE:
            return _plain_level(value, depth + 1)
        return _all_plain(value, depth + 1)
    if t is dict:
        return _plain_keys(value) and _all_plain(value.values(), depth + 1)
    if t is set:
        return bool(value) and _plain_keys(value)
    return False


def _all_plain(values: Any, depth: int) -> bool:
    # a loop, not all(<generator>): this runs on every call's arguments, and scalars need no recursion
    for v in values:
        if type(v) not in _SCALARS and not _plain(v, depth):
            return False
    return True


def _plain_level(level: list | tuple, depth: int) -> bool:
    """The plainness of every value in `level` and below, one nesting level per round: the type
    checks and the flattening run in C, which matters for wide values such as batches."""
    while depth < MAX_DEPTH:
        kinds = set(map(type, level))
        if kinds <= _SCALARS:
            return True
        if not kinds <= _SCALARS | _CONTAINERS:
            return False
        below: list = []
        if tuple in kinds or list in kinds:
            below.extend(chain.from_iterable([v for v in level if type(v) in _SEQUENCES]))
        if dict in kinds or set in kinds:
            mappings = [v for v in level if type(v) is dict or type(v) is set]
            if set in kinds and not all(v for v in mappings if type(v) is set):
                return False  # an empty set arrives as a tuple with serpent
            if not _plain_keys(chain.from_iterable(mappings)):
                return False
            below.extend(chain.from_iterable([v.values() for v in mappings if type(v) is dict]))
        level = below
        depth += 1
    return False


def _plain_keys(keys: Any) -> bool:
    if not keys:
        return True
    keys = keys if isinstance(keys, (dict, set)) else list(keys)
    if set(map(type, keys)) <= _KEYS:
        return True
    return all(map(_plain_key, keys))


def _plain_key(key: Any) -> bool:
    t = type(key)
    return t in _KEYS or (t is tuple and all(map(_plain_key, key)))
