"""Checks on JSON text before it is parsed, shared by every reader of untrusted JSON (the scan
corpus, the authors' data).

A deeply nested document makes a recursive parser raise ``RecursionError`` (Python's ``json``)
or crash (pyarrow's reader); and on CPython 3.11 a ``RecursionError`` raised inside C code can
leave the interpreter's recursion bookkeeping off, so that a later ``compile()`` fails with
"AST constructor recursion depth mismatch". Readers therefore measure the nesting first and
never let a parser reach the limit.
"""

from __future__ import annotations

import numpy as np

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))
_STEP = 1 << 20  # bytes per vectorised block (the block's temporaries: ~30 bytes per byte)


def nesting_depth(data: bytes, limit: int) -> int:
    """The deepest ``[`` / ``{`` nesting of JSON text ``data`` (brackets inside strings are not
    counted), without parsing; stops early once above ``limit`` (then returns a value >
    ``limit``). Text with at most ``limit`` brackets in all is not scanned: its bracket count,
    an upper bound of its depth, is returned.

    One pass, linear in ``len(data)`` whatever the text holds: a state machine (inside a string
    or not; is the next byte escaped) run block by block with numpy, its state carried from one
    block to the next. A backslash outside a string is not JSON: a parser stops there, and the
    depth before it is exact.
    """
    n = data.count(b"[") + data.count(b"{")
    if n <= limit:
        return n
    depth = best = 0
    in_string = escaped = 0  # the state at the start of the block
    view = memoryview(data)
    for i in range(0, len(data), _STEP):
        a = np.frombuffer(view[i:i + _STEP], dtype=np.uint8)
        idx = np.arange(len(a), dtype=np.int64)
        # backslashes just before each byte: the distance to the last other byte (a run that
        # began in the previous block counts as 1 or 0 there, which is all that matters: odd/even)
        plain = np.where(a == _BACKSLASH, -1 - escaped, idx)
        last_plain = np.maximum.accumulate(plain)
        run = np.empty(len(a), dtype=np.int64)
        run[0] = escaped
        run[1:] = idx[:-1] - last_plain[:-1]
        quote = (a == _QUOTE) & (run % 2 == 0)
        inside = (np.cumsum(quote) + in_string) % 2  # 1 from an opening quote to its closing one
        outside = (inside == 0) & ~quote
        d = np.cumsum((np.isin(a, _OPEN) & outside).astype(np.int32) -
                      (np.isin(a, _CLOSE) & outside).astype(np.int32))
        best = max(best, depth + int(d.max()))
        depth += int(d[-1])
        in_string = int(inside[-1])
        escaped = int((idx[-1] - last_plain[-1]) % 2)  # the block ends in an odd run of backslashes
        if best > limit:
            break
    return best
