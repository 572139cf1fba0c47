"""A guard for marshal data from peers.

`marshal.loads` trusts the sizes a stream declares: five bytes declaring a list of 2**31 items make it
reserve 16 GiB before it reads any item. This walks the stream first (without building anything) and
refuses sizes that cannot fit in what is left, code objects, and unknown type codes.
"""

from __future__ import annotations

import struct

from ..errors import SerializeError

_I32 = struct.Struct("<i")
_FLAG_REF = 0x80

# type code -> fixed payload size in bytes
_FIXED = {ord("N"): 0, ord("F"): 0, ord("T"): 0, ord("S"): 0, ord("."): 0,
          ord("i"): 4, ord("g"): 8, ord("y"): 16, ord("r"): 4}
_SIZED_BYTES = {ord(c) for c in "stuaA"}      # int32 length, then that many bytes
_SHORT_BYTES = {ord("z"), ord("Z")}            # 1-byte length, then that many bytes
_SIZED_CONTAINERS = {ord(c) for c in "[(<>"}   # int32 count, then that many items
_SMALL_TUPLE = ord(")")                        # 1-byte count
_DICT, _NULL = ord("{"), ord("0")
_LONG = ord("l")                               # int32 digit count, 2 bytes per digit
_TEXT_FLOAT, _TEXT_COMPLEX = ord("f"), ord("x")


def check(data: bytes) -> None:
    """Raise SerializeError unless `data` is marshal data of plain values whose sizes fit."""
    view = memoryview(data)
    end = len(view)
    pos = 0
    pending = 1  # values still to read at the current level (a stack of counts)
    stack: list[int] = []
    in_dict: list[bool] = [False]
    while True:
        if pending == 0:
            if not stack:
                break
            pending = stack.pop()
            in_dict.pop()
            continue
        if pos >= end:
            raise SerializeError("truncated marshal data")
        code = view[pos] & ~_FLAG_REF
        pos += 1
        if code == _NULL:
            if not in_dict[-1]:
                raise SerializeError("malformed marshal data (NULL outside a dict)")
            pending = 0  # the end of a dict
            continue
        if pending > 0:  # dicts (pending -1) have no count: their NULL ends them
            pending -= 1
        if code in _FIXED:
            pos += _FIXED[code]
        elif code in _SIZED_BYTES:
            pos += 4 + _read_count(view, pos, end)
        elif code == _LONG:  # the digit count carries the sign
            pos += 4 + 2 * _read_count(view, pos, end, signed=True)
        elif code in _SHORT_BYTES or code in (_TEXT_FLOAT, _TEXT_COMPLEX):
            if pos >= end:
                raise SerializeError("truncated marshal data")
            pos += 1 + view[pos]
            if code == _TEXT_COMPLEX:
                if pos >= end:
                    raise SerializeError("truncated marshal data")
                pos += 1 + view[pos]
        elif code in _SIZED_CONTAINERS or code == _SMALL_TUPLE:
            if code == _SMALL_TUPLE:
                if pos >= end:
                    raise SerializeError("truncated marshal data")
                count, pos = view[pos], pos + 1
            else:
                count = _read_count(view, pos, end)
                pos += 4
            if count > end - pos:  # every item takes at least one byte
                raise SerializeError(f"marshal data declares {count} items but holds {end - pos} bytes")
            stack.append(pending)
            in_dict.append(False)
            pending = count
        elif code == _DICT:
            stack.append(pending)
            in_dict.append(True)
            pending = -1
        else:
            raise SerializeError(f"marshal data holds a value of type code {chr(code)!r}, which is not accepted")
        if pos > end:
            raise SerializeError("truncated marshal data")
        if len(stack) > 2000:
            raise SerializeError("marshal data nested too deeply")


def _read_count(view: memoryview, pos: int, end: int, signed: bool = False) -> int:
    if pos + 4 > end:
        raise SerializeError("truncated marshal data")
    count = _I32.unpack_from(view, pos)[0]
    if signed:
        count = abs(count)
    if count < 0 or count > end - pos - 4:
        raise SerializeError(f"marshal data declares a size of {count} that does not fit")
    return count
