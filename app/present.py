"""Presentation helpers: rows as JSON-able dicts (the ``.json`` twins and the templates use the
same dicts), the colour scale, visible token text and the server-side SVG histogram.

Nothing here touches the database or the model.
"""

from __future__ import annotations

import math
from functools import lru_cache

from markupsafe import Markup, escape

from precompute.attribution import head_label
from precompute.redact import redact
from precompute.tokens import escape_controls, escaped, joined_text

from .states import explanation_status, neuron_status

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


def legend(scale: float, n: int = 5) -> list[dict]:
    """Stops of the legend bar: ``[{value, colour}]`` from -scale to +scale."""
    return [{"value": v, "colour": colour(v, scale)}
            for v in (scale * (2 * i / (n - 1) - 1) for i in range(n))]


def nice_scale(values, floor: float = 1e-9) -> float:
    """The largest finite ``|v|`` of ``values`` (None, NaN and infinities skipped), at least
    ``floor``."""
    m = floor
    for v in values:
        if v is not None:
            a = abs(v)
            if a > m and a != math.inf:  # NaN compares false
                m = a
    return m


# --- tokens ------------------------------------------------------------------------------------
_VISIBLE = {i: chr(0x2400 + i) for i in range(32)}  # control characters: ␀ ␁ ...
_VISIBLE.update({ord("\n"): "↵", ord("\r"): "⏎", ord("\t"): "⇥", 127: "␡"})


@lru_cache(maxsize=65536)
def visible(token: str) -> str:
    """A token's text with newlines, tabs and control characters made visible (↵, ⇥, ␀...);
    an empty token shows as ∅. Escaping is the template's job (autoescape)."""
    return token.translate(_VISIBLE) if token else "∅"


def token_fields(token_ids, texts, partial) -> dict:
    """The shown form of a sequence of tokens: ``tokens_escaped`` (each token's text, partial
    UTF-8 characters as escaped bytes ``\\xe2\\x82``) and ``tokens_joined`` (for each partial
    token, the text of the run of partial tokens it belongs to; else None). ``partial`` is
    :func:`precompute.tokens.partial_tokens` of the run's tokenizer (empty when unknown: the
    texts are then shown as stored). Every token shown by the explorer goes through here."""
    texts = list(texts or [])
    if token_ids is None or len(token_ids) != len(texts):  # no ids (imported data): as stored
        return {"tokens_escaped": [escape_controls(t) for t in texts], "tokens_joined": [None] * len(texts)}
    return {"tokens_escaped": escaped(token_ids, texts, partial),
            "tokens_joined": joined_text(token_ids, partial)}


def token_escaped(token_id: int, text: str, partial) -> str:
    """One token's shown text (see :func:`token_fields`)."""
    return escaped([token_id], [text], partial)[0]


def fmt(x, digits: int = 3) -> str:
    if type(x) is float:  # the common case first: a page formats thousands of floats
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 10 ** 6):
            return f"{x:.{digits}g}"
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


@lru_cache(maxsize=65536)
def _tok_text(token: str) -> str:
    return str(escape(visible(token)))


def tokens_html(toks: list[str], acts: list | None, scale: float, mark: int | None = None,
                pick: str | None = None, selected: int | None = None, joined: list | None = None) -> Markup:
    """Tokens as spans coloured by activation, each with its value in ``title``.

    Built here rather than in a Jinja macro because a page holds thousands of tokens. Every
    token text is escaped; ``toks`` are the escaped token texts (:func:`token_fields`);
    ``joined[i]``, when given and not None, marks token ``i`` as a partial UTF-8 character and
    names the text its bytes form with their neighbours (in the tooltip). With ``pick`` (a
    form's id), each token is a submit button of that form carrying only ``pos=i``: the form
    holds the prompt once, so the markup grows linearly with the prompt (a link per token
    repeating the whole prompt grew with its square)."""
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
        text = _tok_text(t)
        style = colour(a, scale)
        if pick is not None:
            out.append(f'<button type="submit" form="{pick}" name="pos" value="{i}" class="{cls}" '
                       f'style="background:{style}" title="#{i}{note}: act {fmt(a, 4)}">{text}</button>')
        else:
            out.append(f'<span class="{cls}" style="background:{style}" '
                       f'title="#{i}{note}: act {fmt(a, 4)}">{text}</span>')
    out.append("</span>")
    return Markup("".join(out))


def head_grid_html(grid: list[list[float]], n_scored: int, n_heads: int, scale: float, active=(),
                   pair_url=None, boxes: str | None = None, ablated=()) -> Markup:
    """A layer x head heatmap table; rows beyond ``n_scored`` dimmed (not scored for the
    neuron). Cells link to ``pair_url(k, h)``, or hold ablation checkboxes of form ``boxes``;
    active heads are outlined, ablated ones marked. (Python, not a Jinja macro: it is on every
    neuron page and live view.)"""
    active, ablated = set(active or ()), set(ablated or ())
    out = ['<table class="heat">\n  <thead><tr><th></th>', "".join(f"<th>H{h}</th>" for h in range(n_heads)),
           "</tr></thead>\n  <tbody>\n"]
    form = escape(boxes) if boxes else None
    for k, row in enumerate(grid):
        out.append(f'  <tr class="{"unscored" if k >= n_scored else ""}"><th>L{k}</th>\n')
        for h, v in enumerate(row):
            lab = f"L{k}H{h}"
            on, off = lab in active, lab in ablated
            out.append(f'    <td class="cell{" act" if on else ""}{" abl" if off else ""}" '
                       f'style="background:{colour(v, scale)}" title="{lab}: {fmt(v, 4)}'
                       f'{" (active)" if on else ""}{" (ablated)" if off else ""}">')
            if form:
                out.append(f'<label><input type="checkbox" class="abl-box" name="ablate" value="{lab}" '
                           f'form="{form}"{" checked" if off else ""} aria-label="ablate {lab}">'
                           f'<span>{fmt(v, 2)}</span></label>')
            elif pair_url and k < n_scored:
                out.append(f'<a href="{escape(pair_url(k, h))}">{fmt(v, 2)}</a>')
            else:
                out.append(fmt(v, 2))
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
                       f'title="prompt {int(p["rank"])}, {lab}: {fmt(v, 4)}{" (active)" if on else ""}"></td>')
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
        return Markup(self.get_or_make(("tokens", p["id"], p["act"], scale),
                                       lambda: str(tokens_html(p["tokens_escaped"], p["acts"], scale,
                                                               mark=p["max_pos"], joined=p["tokens_joined"]))))


# --- rows as dicts -------------------------------------------------------------------------------

def run_dict(run, counts: dict | None = None) -> dict:
    """A run row. For an imported run (``provenance``), ``started_at`` / ``finished_at`` are
    the authors' run dates (their file names, their local time), ``imported_at`` when it was
    imported (UTC), and ``missing``: what it lacks, one line each."""
    prov = getattr(run, "provenance", None)
    imported = getattr(run, "imported_at", None)
    d = {"slug": run.slug, "model_name": run.model_name, "dataset": run.dataset,
         "settings": run.settings, "layers": run.layers, "n_layers": run.n_layers,
         "n_heads": run.n_heads, "d_mlp": run.d_mlp, "d_model": run.d_model, "status": run.status,
         "started_at": run.started_at.isoformat() if run.started_at else None,
         "finished_at": run.finished_at.isoformat() if run.finished_at else None,
         "imported_at": imported.isoformat() if imported else None,
         "package_version": run.package_version, "provenance": prov,
         "missing": missing_lines(prov)}
    if counts is not None:
        d["counts"] = counts
    return d


def missing_lines(provenance: dict | None) -> list[str]:
    """What an imported run lacks, one line each ("what: cost"); older imports stored bare
    file patterns, shown as they are."""
    out = []
    for m in (provenance or {}).get("missing") or []:
        out.append(f"{m.get('what', m.get('role'))}: {m.get('cost', '')}".rstrip(": ") if isinstance(m, dict)
                   else str(m))
    return out


def neuron_dict(n, partial=None) -> dict:
    """A neuron row; ``token_escaped`` is its token as shown (:func:`token_fields`)."""
    partial = partial or {}
    return {"layer": n.layer, "neuron": n.neuron, "kind": n.kind, "rank": n.rank,
            "token_id": n.token_id, "token": n.token,
            "token_escaped": token_escaped(n.token_id, n.token, partial), "congruence": n.congruence,
            "top_tokens": [{"token_id": t[0], "token": t[1], "token_escaped": token_escaped(t[0], t[1], partial),
                            "congruence": t[2]} for t in n.top_tokens or []],
            "max_act": n.max_act, "status": n.status, "status_text": neuron_status(n.status),
            "best_score": n.best_score}


def prompt_dict(p, partial=None) -> dict:
    return {"id": p.id, "split": p.split, "rank": p.rank, "doc_idx": p.doc_idx, "start": p.start,
            "end": p.end, "text": p.text, "tokens": p.tokens, "token_ids": p.token_ids,
            **token_fields(p.token_ids, p.tokens, partial or {}),
            # Without recorded per-token activations (imported runs) the max is the last token.
            "acts": p.acts, "max_pos": max(range(len(p.acts)), key=p.acts.__getitem__) if p.acts
            else (len(p.tokens) - 1 if p.tokens else None),
            "act": p.act, "doc_act": p.doc_act, "pre": p.pre,
            "attr_raw": p.attr_raw, "attr_ln": p.attr_ln, "other_ln": p.other_ln, "active": p.active}


def pair_dict(p) -> dict:
    return {"id": p.id, "head_layer": p.head_layer, "head": p.head,
            "label": head_label(p.head_layer, p.head), "n_prompts": p.n_prompts,
            "n_active": p.n_active, "active_fraction": p.active_fraction,
            "mean_attr_raw": p.mean_attr_raw, "mean_attr_ln": p.mean_attr_ln, "kept": p.kept}


def explanation_dict(e) -> dict:
    """An explanation row; ``text`` as the explainer wrote it, with the lead-in of the authors'
    prompt for their GPT-4 explanations (imports made before it was stored get it here);
    ``status_text``: the status in words."""
    from precompute.paper.format import full_text
    from precompute.scoring import authors_score

    st = e.settings or {}
    text = full_text(e.text) if st.get("source") == "paper" else e.text
    # redacted: a database written before answers and errors were redacted may hold a key an endpoint echoed
    return {"id": e.id, "explainer": e.explainer, "status": e.status,
            "status_text": explanation_status(e.status), "text": redact(text),
            "score": e.score, "tpr": e.tpr, "tnr": e.tnr, "n_pos": e.n_pos, "n_neg": e.n_neg,
            "n_unparsed": e.n_unparsed, "error": redact(e.error),
            "score_authors": authors_score(e.score, e.tpr, e.tnr),
            "truncated": bool(st.get("truncated")), "source": st.get("source")}


def ablation_dict(a) -> dict:
    return {"method": a.method, "active": a.active, "act_clean": a.act_clean,
            "act_ablated": a.act_ablated, "prob_clean": a.prob_clean,
            "prob_ablated": a.prob_ablated, "drop": a.drop}


def classification_dict(c) -> dict:
    """A classifier answer (the endpoint's text, redacted as in :func:`explanation_dict`)."""
    return {"truth": c.truth, "answer": redact(c.answer), "predicted": c.predicted}


# --- heatmaps ------------------------------------------------------------------------------------

def mean_grid(grids: list[list[list[float]]]) -> list[list[float]]:
    """Element-wise mean of ``[attn_layer][head]`` grids (empty list if none)."""
    if not grids:
        return []
    n = len(grids)
    return [[sum(g[k][h] for g in grids) / n for h in range(len(grids[0][k]))]
            for k in range(len(grids[0]))]


# --- histogram -----------------------------------------------------------------------------------

def score_groups(table: dict) -> dict[str, list[float]]:
    """{kind: scores} of an ``report.score_table`` result (for the histogram)."""
    return {k: row.get("scores") or [] for k, row in (table.get("kinds") or {}).items()}


_KIND_COLOURS = {"next_token": "#d6604d", "random": "#4393c3", "other": "#999999"}


def histogram_svg(groups: dict[str, list[float]], *, bins: int = 10, lo: float = 0.0, hi: float = 1.0,
                  width: int = 420, height: int = 180, title: str = "explanation score E") -> Markup:
    """A grouped histogram of E in [lo, hi] as inline SVG (no JavaScript), bars side by side
    per bin, with axis ticks and a legend in its own row below the axis (``height`` is the
    plot's; the legend adds 18 px), so it never covers a bar. Labels are escaped."""
    names = [k for k in ("next_token", "random", "other") if groups.get(k)] + \
        [k for k in groups if k not in _KIND_COLOURS and groups[k]]
    if not names:
        return Markup("")
    counts = {k: [0] * bins for k in names}
    for k in names:
        for v in groups[k]:
            i = min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))
            counts[k][i] += 1
    top = max(max(c) for c in counts.values()) or 1
    ml, mb, mt, lh = 34, 28, 22, 18  # margins; lh: the legend's own band below the axis
    height += lh
    pw, ph = width - ml - 8, height - mb - mt - lh
    bw = pw / bins
    parts = [f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'font-size="10" role="img" aria-label="{escape(title)} histogram">',
             f'<text x="{ml}" y="14" class="hist-title">{escape(title)}</text>']
    for j in range(5):
        y = mt + ph - ph * j / 4
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{ml - 4}" y="{y + 3:.1f}" text-anchor="end">{round(top * j / 4, 1):g}</text>')
    for i in range(bins):
        for j, k in enumerate(names):
            c = counts[k][i]
            h = ph * c / top
            x = ml + i * bw + 1 + j * (bw - 2) / len(names)
            parts.append(f'<rect x="{x:.1f}" y="{mt + ph - h:.1f}" width="{(bw - 2) / len(names):.1f}" '
                         f'height="{h:.1f}" fill="{_KIND_COLOURS.get(k, "#666")}">'
                         f'<title>{escape(k)}: {c} in [{lo + i * (hi - lo) / bins:.2f}, '
                         f'{lo + (i + 1) * (hi - lo) / bins:.2f})</title></rect>')
    for i in range(0, bins + 1, max(1, bins // 5)):
        x = ml + i * bw
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 14}" text-anchor="middle">'
                     f'{lo + i * (hi - lo) / bins:.1f}</text>')
    x, y = ml, height - lh + 4  # legend in a row below the axis labels, never over the bars
    for k in names:
        label = f"{k} (n={len(groups[k])})"
        parts.append(f'<g class="hist-key"><rect x="{x}" y="{y}" width="10" height="10" '
                     f'fill="{_KIND_COLOURS.get(k, "#666")}"/>'
                     f'<text x="{x + 14}" y="{y + 9}">{escape(label)}</text></g>')
        x += 14 + 6 * len(label) + 12  # ~6 px per character at the 10 px font
    parts.append("</svg>")
    return Markup("".join(parts))
