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


def _table(codes: str | None) -> tuple[list[int], list[int]]:
    """Per byte value: the kind of token it starts (0: refused) and, for fixed tokens, the size."""
    kind, size = [0] * 256, [0] * 256
    for k, members in _KINDS.items():
        for code in members:
            if codes is not None and code not in codes:
                continue
            for byte in (ord(code), ord(code) | _FLAG_REF) if codes is None else (ord(code),):
                kind[byte] = k
                if k == _FIXED:
                    size[byte] = 1 + members[code]
    return kind, size


_ANY = _table(None)
_PLAIN = _table(PLAIN_CODES)


def check(data: bytes, plain_only: bool = False) -> None:
    """Raise SerializeError unless every size `data` declares fits in it and every type code is
    accepted (plain_only: only the codes of PLAIN_CODES, as wire.plain values are written)."""
    kind_of, size_of = _PLAIN if plain_only else _ANY
    unpack = _I32.unpack_from
    end = len(data)
    pos = 0
    try:
        while pos < end:
            code = data[pos]
            size = size_of[code]
            if size:
                pos += size
                continue
            kind = kind_of[code]
            if kind == _SIZED:  # the commonest token of a call (names, strings): tested first
                count = unpack(data, pos + 1)[0]
                pos += 5
                if not 0 <= count <= end - pos:
                    raise SerializeError(f"marshal data declares a size of {count} where {end - pos} bytes remain")
                pos += count
            elif kind == _COUNTED or kind == _LONG:
                count = unpack(data, pos + 1)[0]
                pos += 5
                if kind == _LONG:
                    count = 2 * abs(count)
                if not 0 <= count <= end - pos:
                    raise SerializeError(f"marshal data declares a size of {count} where {end - pos} bytes remain")
                if kind == _LONG:
                    pos += count
            elif kind == _SHORT or kind == _TEXT_FLOAT:
                pos += 2 + data[pos + 1]
            elif kind == _TEXT_COMPLEX:
                pos += 2 + data[pos + 1]
                pos += 1 + data[pos]
            elif kind == _SMALL_TUPLE:
                pos += 2
            else:
                raise SerializeError(f"marshal data holds a value of type code {chr(code & ~_FLAG_REF)!r}, "
                                     "which is not accepted")
    except (struct.error, IndexError):
        raise SerializeError("truncated marshal data") from None
    if pos > end:
        raise SerializeError("truncated marshal data")
