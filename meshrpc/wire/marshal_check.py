"""A guard for marshal data from peers.

`marshal.loads` trusts the sizes a stream declares: five bytes declaring a list of 2**31 items make it
reserve 16 GiB before it reads any item. `check` walks the stream's tokens first, without building
anything, and refuses a size or count that cannot fit in the bytes that follow it, code objects, and
unknown type codes. marshal data is a flat prefix encoding (a container's header is followed by its
items' tokens), so one linear pass finds every header; the nesting itself, truncation and depth are
checked by `marshal.loads`, which raises on them without allocating by declared sizes.
"""

from __future__ import annotations

import struct
import threading

from ..errors import SerializeError

_I32 = struct.Struct("<i")
_FLAG_REF = 0x80

# what follows a type code, by kind
_FIXED, _SIZED, _SHORT, _COUNTED, _SMALL_TUPLE, _LONG, _TEXT_FLOAT, _TEXT_COMPLEX = range(1, 9)
_KINDS = {
    _FIXED: {"N": 0, "F": 0, "T": 0, "S": 0, ".": 0, "0": 0, "{": 0, "i": 4, "g": 8, "y": 16, "r": 4},
    _SIZED: "stuaA",          # int32 length, then that many bytes
    _SHORT: "zZ",             # 1-byte length, then that many bytes
    _COUNTED: "[(<>",         # int32 count, then that many items (each at least one byte)
    _SMALL_TUPLE: ")",        # 1-byte count
    _LONG: "l",               # int32 digit count (its sign is the number's), 2 bytes per digit
    _TEXT_FLOAT: "f",         # 1-byte length, then the text
    _TEXT_COMPLEX: "x",       # two of those
}

# the codes marshal version 2 writes for plain values (wire.plain), and nothing else: no references
PLAIN_CODES = "NFT0{igstul[(<"


def _table(codes: str | None) -> list[int]:
    """Per byte value, what the token it starts is: a fixed token's whole size (> 0), minus the kind of
    a token with a length or count (< 0), or 0: refused. One lookup per token (this runs on every
    call a daemon receives)."""
    table = [0] * 256
    for k, members in _KINDS.items():
        for code in members:
            if codes is not None and code not in codes:
                continue
            for byte in (ord(code), ord(code) | _FLAG_REF) if codes is None else (ord(code),):
                table[byte] = 1 + members[code] if k == _FIXED else -k
    return table


_ANY = _table(None)
_PLAIN = _table(PLAIN_CODES)
_SIZED_, _COUNTED_, _LONG_ = -_SIZED, -_COUNTED, -_LONG


# Verified prefixes, per table: the first bytes of data checked from the beginning, where the scan stood
# after them, and the least length data needs for their checks to hold (a container's count is checked
# against the bytes after it). Data that starts with the same bytes is scanned the same way up to there,
# so its check resumes there: calls mostly start alike, with a 4-tuple, object id, method and vargs
# headers. Each thread keeps its last two such prefixes per table (a daemon's worker serves one
# connection at a time; two methods called in turn still resume).
_PREFIX_TOKENS = 4  # tokens with a size or count in a prefix: a call's (tuple, id, method, vargs)
_PREFIX_MIN = 22    # shorter data (most results) is scanned at once: the shortest call is 22 bytes
_PREFIX_MAX = 512   # longer prefixes are not kept (a big string in the first tokens)
_NO_PREFIX = (b"\xff", 0, 0)  # 0xff is no type code: good data never starts so, and resuming at 0 is no gain


class Prefixes:
    """Verified prefixes remembered for the checks of one party: a connection's own (its ServerSession's:
    no thread-local lookup, and connections served in turn by one thread do not push each other's
    prefixes out), or each thread's (check's default). Not for two threads at a time."""

    def __init__(self) -> None:
        self.known = {False: (_NO_PREFIX, _NO_PREFIX), True: (_NO_PREFIX, _NO_PREFIX)}


class _ThreadPrefixes(threading.local):
    def __init__(self) -> None:
        Prefixes.__init__(self)  # type: ignore[arg-type]


_prefixes = _ThreadPrefixes()


def check(data: bytes, plain_only: bool = False, prefixes: Prefixes | None = None) -> None:
    """Raise SerializeError unless every size `data` declares fits in it and every type code is
    accepted (plain_only: only the codes of PLAIN_CODES, as wire.plain values are written).
    `prefixes`: where the verified prefixes are remembered (None: this thread's)."""
    table = _PLAIN if plain_only else _ANY
    unpack = _I32.unpack_from
    end = len(data)
    pos = least = remember = 0
    if end >= _PREFIX_MIN:
        known = (_prefixes if prefixes is None else prefixes).known
        slots = known[plain_only]
        prefix, pos, least = slots[0]
        if end < least or not data.startswith(prefix):  # else: the same bytes were checked up to pos
            prefix, pos, least = slots[1]
            if end < least or not data.startswith(prefix):
                pos, least, remember = 0, 0, _PREFIX_TOKENS
    try:
        while pos < end:
            step = table[data[pos]]
            if step > 0:  # a fixed-size token
                pos += step
                continue
            if step == _SIZED_:  # the commonest other token of a call (names, strings): tested first
                count = unpack(data, pos + 1)[0]
                pos += 5
                if not 0 <= count <= end - pos:
                    raise SerializeError(f"marshal data declares a size of {count} where {end - pos} bytes remain")
                pos += count
            elif step == _COUNTED_ or step == _LONG_:
                count = unpack(data, pos + 1)[0]
                pos += 5
                if step == _LONG_:
                    count = 2 * abs(count)
                if not 0 <= count <= end - pos:
                    raise SerializeError(f"marshal data declares a size of {count} where {end - pos} bytes remain")
                if step == _LONG_:
                    pos += count
                elif pos + count > least:
                    least = pos + count
            elif step == -_SHORT or step == -_TEXT_FLOAT:
                pos += 2 + data[pos + 1]
            elif step == -_TEXT_COMPLEX:
                pos += 2 + data[pos + 1]
                pos += 1 + data[pos]
            elif step == -_SMALL_TUPLE:
                pos += 2
            else:
                raise SerializeError(f"marshal data holds a value of type code {chr(data[pos] & ~_FLAG_REF)!r}, "
                                     "which is not accepted")
            if remember:
                remember -= 1
                if not remember and pos <= end and pos <= _PREFIX_MAX:  # every token so far lies within data[:pos]
                    known[plain_only] = ((data[:pos], pos, least if least > pos else pos), slots[0])
    except (struct.error, IndexError):
        raise SerializeError("truncated marshal data") from None
    if pos > end:
        raise SerializeError("truncated marshal data")
