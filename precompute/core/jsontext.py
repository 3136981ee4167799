"""Checks on JSON text before it is parsed, shared by every reader of untrusted JSON (the scan
corpus, the authors' data).

A deeply nested document makes a recursive parser raise ``RecursionError`` (Python's ``json``)
or crash (pyarrow's reader); and on CPython 3.11 a ``RecursionError`` raised inside C code can
leave the interpreter's recursion bookkeeping off, so that a later ``compile()`` fails with
"AST constructor recursion depth mismatch". Readers therefore measure the nesting first and
never let a parser reach the limit.
"""

from __future__ import annotations

import re

import numpy as np

_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_OPEN = (ord("["), ord("{"))
_CLOSE = (ord("]"), ord("}"))


def nesting_depth(data: bytes, limit: int) -> int:
    """The deepest ``[`` / ``{`` nesting of JSON text ``data`` (brackets inside strings are not
    counted), without parsing; stops early once above ``limit`` (then returns a value >
    ``limit``). Text with at most ``limit`` brackets in all is not scanned: its bracket count,
    an upper bound of its depth, is returned."""
    n = data.count(b"[") + data.count(b"{")
    if n <= limit:
        return n
    depth = best = 0
    text = _STRINGS.sub(b'""', data)
    step = 1 << 22
    for i in range(0, len(text), step):
        a = np.frombuffer(text[i:i + step], dtype=np.uint8)
        d = (np.isin(a, _OPEN).astype(np.int32) - np.isin(a, _CLOSE).astype(np.int32)).cumsum()
        if len(d):
            best = max(best, depth + int(d.max()))
            depth += int(d[-1])
        if best > limit:
            break
    return best
