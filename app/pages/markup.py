"""HTML built in Python rather than in Jinja macros, because a page holds thousands of tokens
and cells: the diverging colour scale, tokens coloured by activation, the layer x head heatmaps,
and the caches of rendered HTML (what pages derive from rows that never change while the server
runs). Every text is escaped here.
"""

from __future__ import annotations

import math
from functools import lru_cache

from markupsafe import Markup, escape

from .formats import decimals, fixed, fmt, has_hidden, visible

# --- colours -----------------------------------------------------------------------------------
_POS = (214, 96, 77)  # warm end of the diverging scale (positive)
_NEG = (67, 147, 195)  # cool end (negative)


_STEPS = 64  # colour resolution per side (the exact value is in each cell's title)


@lru_cache(maxsize=2 * _STEPS + 1)
def _rgb(step: int) -> str:
    end = _POS if step >= 0 else _NEG
    a = abs(step) / _STEPS
    r, g, b = (round(255 + (c - 255) * a) for c in end)
    return f"rgb({r},{g},{b})"


def colour(value: float | None, scale: float) -> str:
    """Diverging white-centred colour of ``value`` on ``[-scale, scale]`` as ``rgb(...)``."""
    if value is None or not math.isfinite(value) or scale <= 0:
        return "rgb(255,255,255)"
    t = max(-1.0, min(1.0, value / scale))
    return _rgb(round(t * _STEPS))



@lru_cache(maxsize=65536)
def _tok_text(token: str) -> str:
    return str(escape(visible(token)))


def tokens_html(toks: list[str], acts: list | None, scale: float, mark: int | None = None,
                pick: str | None = None, selected: int | None = None, joined: list | None = None,
                what: str = "act", href: str | None = None) -> Markup:
    """Tokens as spans coloured by activation, each with its value in ``title``.

    Built here rather than in a Jinja macro because a page holds thousands of tokens. Every
    token text is escaped; ``toks`` are the escaped token texts (:func:`token_fields`);
    ``joined[i]``, when given and not None, marks token ``i`` as a partial UTF-8 character and
    names the text its bytes form with their neighbours (in the tooltip). With ``pick`` (a
    form's id), each token is a submit button of that form carrying only ``pos=i``: the form
    holds the prompt once, so the markup grows linearly with the prompt (a link per token
    repeating the whole prompt grew with its square). ``what`` names the value in the tooltip;
    with ``href`` (e.g. ``"#pos-"``) each token links to ``href`` + its position."""
    out = ['<span class="toks">']
    n_acts = len(acts) if acts else 0
    for i, t in enumerate(toks):
        a = acts[i] if i < n_acts else None
        cls = "tok"
        if mark is not None and i == mark:
            cls += " max"
        if selected is not None and i == selected:
            cls += " sel"
        part = joined[i] if joined and i < len(joined) else None
        note = ""
        if part is not None:
            cls += " bytes"
            note = f" (bytes of “{escape(visible(part))}”)"
        elif has_hidden(t):
            cls += " ctl"
            note = " (control or invisible character, escaped)"
        text = _tok_text(t)
        style = colour(a, scale)
        if pick is not None:
            out.append(f'<button type="submit" form="{pick}" name="pos" value="{i}" class="{cls}" '
                       f'style="background:{style}" title="#{i}{note}: {what} {fmt(a, 4)}">{text}</button>')
        elif href is not None:
            out.append(f'<a class="{cls}" href="{href}{i}" style="background:{style}" '
                       f'title="#{i}{note}: {what} {fmt(a, 4)}">{text}</a>')
        else:
            out.append(f'<span class="{cls}" style="background:{style}" '
                       f'title="#{i}{note}: {what} {fmt(a, 4)}">{text}</span>')
    out.append("</span>")
    return Markup("".join(out))


def head_grid_html(grid: list[list[float]], n_scored: int, n_heads: int, scale: float, active=(),
                   pair_url=None, boxes: str | None = None, ablated=(), picked: str | None = None) -> Markup:
    """A layer x head heatmap table; rows beyond ``n_scored`` dimmed (not scored for the
    neuron). Cells link to ``pair_url(k, h)``, or hold an ablation checkbox of form ``boxes`` and
    the value as a submit button of that form picking the head whose look-up is shown
    (``head=L{k}H{h}``); active heads are outlined, ablated ones marked, the ``picked`` one
    framed. (Python, not a Jinja macro: it is on every neuron page and live view.)"""
    active, ablated = set(active or ()), set(ablated or ())
    d = decimals((v for row in grid[:n_scored] for v in row), sig=2, most=3)
    out = ['<table class="heat">\n  <thead><tr><th></th>', "".join(f"<th>H{h}</th>" for h in range(n_heads)),
           "</tr></thead>\n  <tbody>\n"]
    form = escape(boxes) if boxes else None
    for k, row in enumerate(grid):
        out.append(f'  <tr class="{"unscored" if k >= n_scored else ""}"><th>L{k}</th>\n')
        for h, v in enumerate(row):
            lab = f"L{k}H{h}"
            on, off = lab in active, lab in ablated
            out.append(f'    <td class="cell{" act" if on else ""}{" abl" if off else ""}'
                       f'{" picked" if lab == picked else ""}" '
                       f'style="background:{colour(v, scale)}" title="{lab}: {fixed(v, d + 2)}'
                       f'{" (active)" if on else ""}{" (ablated)" if off else ""}">')
            if form:
                out.append(f'<span class="cellbox"><input type="checkbox" class="abl-box" name="ablate" '
                           f'value="{lab}" form="{form}"{" checked" if off else ""} '
                           f'aria-label="ablate {lab}">'
                           f'<button type="submit" class="pick-head" form="{form}" name="head" value="{lab}" '
                           f'aria-label="look-up of {lab}">{fixed(v, d)}</button></span>')
            elif pair_url and k < n_scored:
                out.append(f'<a href="{escape(pair_url(k, h))}">{fixed(v, d)}</a>')
            else:
                out.append(fixed(v, d))
            out.append("</td>\n")
        out.append("  </tr>\n")
    out.append("  </tbody>\n</table>")
    return Markup("".join(out))


def _heat_row(p: dict, key: str, n_scored: int, scale: float) -> str:
    grid, active = p[key], set(p["active"])
    out = [f'<tr><th>{int(p["rank"])}</th>']
    for k in range(n_scored):
        for h, v in enumerate(grid[k]):
            lab = f"L{k}H{h}"
            on = lab in active
            out.append(f'<td class="cell{" act" if on else ""}" style="background:{colour(v, scale)}" '
                       f'title="prompt {int(p["rank"])}, {lab}: {fmt(v, 4)}'
                       f'{" (active)" if on else ""}"></td>')
    out.append("</tr>")
    return "".join(out)


def prompt_heat_html(prompts: list[dict], key: str, n_scored: int, n_heads: int, scale: float,
                     cache: HtmlCache | None = None) -> Markup:
    """The per-prompt heatmap body: one row per prompt, one cell per scored head (outlined when
    the head is active on that prompt). Rows come from ``cache`` when given."""
    if cache is None:
        return Markup("".join(_heat_row(p, key, n_scored, scale) for p in prompts))
    return Markup("".join(cache.get_or_make(("heat", p["id"], p["act"], key, n_scored, scale),
                                    lambda p=p: _heat_row(p, key, n_scored, scale)) for p in prompts))


class LockedLRU:
    """A thread-safe LRU mapping of what pages derive from rows that never change while the
    server runs (the database is read-only to it and those rows are written once): rendered
    prompts, ``views._prompts_part``, rendered page sections. One per app (row ids are unique
    within one database)."""

    def __init__(self, maxsize: int):
        from threading import Lock

        from cachetools import LRUCache

        self._cache: LRUCache = LRUCache(maxsize)
        self._lock = Lock()

    def get(self, key, default=None):
        with self._lock:
            return self._cache.get(key, default)

    def __setitem__(self, key, value) -> None:
        with self._lock:
            self._cache[key] = value

    def get_or_make(self, key, make):
        """The value kept for ``key``, else ``make()`` (kept)."""
        hit = self.get(key)
        if hit is None:
            hit = make()
            self[key] = hit
        return hit

    def section(self, key, caller) -> Markup:
        """A Jinja ``{% call %}`` block rendered once per ``key`` (None: not kept)."""
        return Markup(caller()) if key is None else self.get_or_make(key, lambda: Markup(caller()))


class HtmlCache(LockedLRU):
    """Rendered HTML of stored prompts, by (what, prompt id, parameters): a prompt's tokens and
    heatmap row are rendered once per scale."""

    def __init__(self, maxsize: int = 8192):
        super().__init__(maxsize)

    def prompt_tokens(self, p: dict, scale: float) -> Markup:
        """:func:`tokens_html` of a stored prompt (a ``prompt_dict``), max token marked."""
        def make() -> str:
            return str(tokens_html(p["tokens_escaped"], p["acts"], scale, mark=p["max_pos"],
                                   joined=p["tokens_joined"]))

        return Markup(self.get_or_make(("tokens", p["id"], p["act"], scale), make))
