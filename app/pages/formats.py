"""How values are written on the pages: numbers (one format per column or grid), dates, token
text (visible whitespace and control characters, marked leading spaces) and the E of a pair with
its interval. Pure functions: nothing here touches the database or the model."""

from __future__ import annotations

import math
import re
from datetime import datetime
from functools import lru_cache

from markupsafe import Markup, escape

# --- numbers -----------------------------------------------------------------------------------

TINY = 1e-3  # a non-zero figure smaller than this is written in scientific notation (sci)


def sci(x: float, sig: int = 2) -> str:
    """The one way a tiny (``0 < |x| < 1e-3``) or huge figure is written: scientific notation with
    ``sig`` significant figures and a short exponent (``4.0e-9``, ``-1.3e-4``), so that a drop of
    4e-9 never reads as 0.000000. :func:`fmt`, :func:`fixed` and :func:`signed` call it."""
    mant, _, exp = f"{x:.{max(sig, 1) - 1}e}".partition("e")
    return f"{mant}e{int(exp)}"


def _tiny(x: float) -> bool:
    return x != 0 and abs(x) < TINY


def fmt(x, digits: int = 3) -> str:
    """One value: ``digits`` decimals, or scientific notation (:func:`sci`) when it is under 1e-3 or
    huge (alone; a column or grid uses :func:`decimals` and :func:`fixed` so its values agree)."""
    if type(x) is float:  # the common case first: a page formats thousands of floats
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) < TINY or abs(x) < 10 ** -digits or abs(x) >= 10 ** 6):
            return sci(x, digits)
        return f"{x:.{digits}f}"
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return fmt(float(x), digits)
    return str(x)


def decimals(values, sig: int = 3, most: int = 6) -> int:
    """Decimals that give the largest ``|value|`` of ``values`` ``sig`` significant figures (0 to
    ``most``): every value of a column or grid is then written with the same number of decimals
    (:func:`fixed`), so they line up and compare at a glance. None, NaN and infinities are
    skipped."""
    top = 0.0
    for v in values:
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            top = max(top, abs(v))
    if top == 0:
        return min(sig - 1, most)
    return max(0, min(most, sig - 1 - math.floor(math.log10(top))))


def fixed(x, d: int) -> str:
    """``x`` with exactly ``d`` decimals ("–" for None; -0.000 is written 0.000), or in scientific
    notation (:func:`sci`) when it is a non-zero figure under 1e-3."""
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    if _tiny(x):
        return sci(x)
    s = f"{x:.{d}f}"
    return s[1:] if s.startswith("-") and float(s) == 0 else s


def signed(x, d: int) -> str:
    """:func:`fixed` with an explicit sign (``+0.012``, ``−0.059``), for differences."""
    if x is None:
        return "–"
    s = fixed(x, d)
    return "−" + s[1:] if s.startswith("-") else "+" + s


def dash(why: str | None, text: bool = False) -> Markup:
    """A missing figure: "–" with its reason (:func:`app.pages.states.reason`) as its tooltip, and
    with ``text`` also written beside it (where the page has room); "–" alone when no reason is
    known."""
    if not why:
        return Markup('<span class="missing">–</span>')
    out = f'<span class="missing" title="{escape(why)}">–</span>'
    if text:
        out += f' <span class="why">{escape(why)}</span>'
    return Markup(out)


def pval(p, d: int = 3) -> str:
    """A p-value: ``d`` decimals, ``< 0.001`` (for ``d`` = 3) below that ("–" for None)."""
    if p is None or not isinstance(p, (int, float)) or not math.isfinite(p):
        return "–"
    return f"< {10 ** -d:.{d}f}" if p < 10 ** -d else f"{p:.{d}f}"


def pct(x, d: int = 0) -> str:
    """A share in [0, 1] as a percentage."""
    return "–" if x is None else f"{100 * x:.{d}f}%"


def date(value) -> str:
    """A stored UTC timestamp (``datetime`` or ISO text) as ``1 Dec 2026, 13:41 UTC``."""
    if value is None or value == "":
        return "–"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return f"{value.day} {value:%b %Y, %H:%M} UTC"


# --- tokens ------------------------------------------------------------------------------------

# Control characters (C0, DEL, C1) and invisible or space-like format characters; newline and tab
# have their own arrows.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00a0\u00ad\u1680\u180e\u2000-\u200f\u2028-\u202f"
                     "\u205f-\u2064\u3000\ufeff]")
_ARROWS = {ord("\n"): "↵", ord("\t"): "⇥"}


def _escape_char(m: re.Match) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


@lru_cache(maxsize=65536)
def visible(token: str) -> str:
    """A token's text as shown: newline ↵, tab ⇥, every other control character or invisible
    character escaped as ``\\xNN`` / ``\\uNNNN`` (as partial UTF-8 bytes are, see
    :mod:`precompute.core.tokens`), an empty token ∅. Escaping for HTML is the caller's job."""
    if not token:
        return "∅"
    return _HIDDEN.sub(_escape_char, token.translate(_ARROWS))


# A control character already escaped upstream (``precompute.core.tokens.escape_controls`` writes
# C0 but tab and newline, DEL and C1 as ``\xNN`` in ``tokens_escaped``).
_ESCAPED_CONTROL = re.compile(r"\\x(?:0[0-8b-f]|1[0-9a-f]|7f|[89][0-9a-f])")


def has_hidden(token: str) -> bool:
    """Whether :func:`visible` escapes a character of ``token``, or ``token`` holds a control
    character escaped upstream."""
    return bool(token) and (_HIDDEN.search(token) is not None or _ESCAPED_CONTROL.search(token) is not None)


@lru_cache(maxsize=65536)
def token_html(token: str) -> Markup:
    """A token standing alone (a neuron's token, a list cell, the top-5): :func:`visible`,
    HTML-escaped, with each leading and trailing space drawn as a muted ␣ so that " est" and
    "est" differ at a glance (the title says it is a space)."""
    text = visible(token)
    core = text.strip(" ")
    if not core:
        return Markup('<span class="sp" title="space">␣</span>' * len(text))
    lead = len(text) - len(text.lstrip(" "))
    trail = len(text) - len(text.rstrip(" "))
    mark = '<span class="sp" title="space">␣</span>'
    return Markup(mark * lead + str(escape(core)) + mark * trail)


def token_plain(token: str) -> str:
    """A token in plain text (a page title): :func:`visible` with ␣ for leading spaces."""
    text = visible(token)
    lead = len(text) - len(text.lstrip(" "))
    return "␣" * lead + text[lead:]


def marked(text: str, marks: list[list[int]]) -> Markup:
    """``text`` HTML-escaped with each ``[start, end)`` of ``marks`` in ``<mark>`` (search
    snippets)."""
    out, pos = [], 0
    for a, b in sorted(marks):
        if a < pos:
            continue
        out += [str(escape(text[pos:a])), "<mark>", str(escape(text[a:b])), "</mark>"]
        pos = b
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))
