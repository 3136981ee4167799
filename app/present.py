"""Presentation helpers: rows as JSON-able dicts (the ``.json`` twins and the templates use the
same dicts), the colour scale, visible token text and the server-side SVG histogram.

Nothing here touches the database or the model.
"""

from __future__ import annotations

import math
from functools import lru_cache

from markupsafe import Markup, escape

from precompute.attribution import head_label

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
    m = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    return max(m, floor)


# --- tokens ------------------------------------------------------------------------------------
_VISIBLE = {i: chr(0x2400 + i) for i in range(32)}  # control characters: ␀ ␁ ...
_VISIBLE.update({ord("\n"): "↵", ord("\r"): "⏎", ord("\t"): "⇥", 127: "␡"})


@lru_cache(maxsize=65536)
def visible(token: str) -> str:
    """A token's text with newlines, tabs and control characters made visible (↵, ⇥, ␀...);
    an empty token shows as ∅. Escaping is the template's job (autoescape)."""
    return token.translate(_VISIBLE) if token else "∅"


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 10 ** 6):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}f}"
    return str(x)


def tokens_html(toks: list[str], acts: list | None, scale: float, mark: int | None = None,
                link=None, selected: int | None = None) -> Markup:
    """Tokens as spans (or links) coloured by activation, each with its value in ``title``.

    Built here rather than in a Jinja macro because a page holds thousands of tokens. Every
    token text is escaped; ``link(i)`` / ``link(i, fragment=True)`` give a token's page URL and
    its htmx fragment URL."""
    out = ['<span class="toks">']
    n_acts = len(acts) if acts else 0
    for i, t in enumerate(toks):
        a = acts[i] if i < n_acts else None
        cls = "tok"
        if mark is not None and i == mark:
            cls += " max"
        if selected is not None and i == selected:
            cls += " sel"
        text = escape(visible(t))
        style = colour(a, scale)
        if link is not None:
            out.append(f'<a class="{cls}" href="{escape(link(i))}" hx-get="{escape(link(i, fragment=True))}" '
                       f'hx-target="#live" hx-swap="innerHTML" style="background:{style}" '
                       f'title="#{i} {text}: act {fmt(a, 4)}">{text}</a>')
        else:
            out.append(f'<span class="{cls}" style="background:{style}" title="#{i}: act {fmt(a, 4)}">{text}</span>')
    out.append("</span>")
    return Markup("".join(out))


def prompt_heat_html(prompts: list[dict], key: str, n_scored: int, n_heads: int, scale: float) -> Markup:
    """The per-prompt heatmap body: one row per prompt, one cell per scored head (outlined when
    the head is active on that prompt)."""
    out = []
    for p in prompts:
        grid, active = p[key], set(p["active"])
        out.append(f'<tr><th>{int(p["rank"])}</th>')
        for k in range(n_scored):
            for h, v in enumerate(grid[k]):
                lab = f"L{k}H{h}"
                on = lab in active
                out.append(f'<td class="cell{" act" if on else ""}" style="background:{colour(v, scale)}" '
                           f'title="prompt {int(p["rank"])}, {lab}: {fmt(v, 4)}{" (active)" if on else ""}"></td>')
        out.append("</tr>")
    return Markup("".join(out))


# --- rows as dicts -------------------------------------------------------------------------------

def run_dict(run, counts: dict | None = None) -> dict:
    d = {"slug": run.slug, "model_name": run.model_name, "dataset": run.dataset,
         "settings": run.settings, "layers": run.layers, "n_layers": run.n_layers,
         "n_heads": run.n_heads, "d_mlp": run.d_mlp, "d_model": run.d_model, "status": run.status,
         "started_at": run.started_at.isoformat() if run.started_at else None,
         "finished_at": run.finished_at.isoformat() if run.finished_at else None,
         "package_version": run.package_version, "provenance": getattr(run, "provenance", None)}
    if counts is not None:
        d["counts"] = counts
    return d


def neuron_dict(n) -> dict:
    return {"layer": n.layer, "neuron": n.neuron, "kind": n.kind, "rank": n.rank,
            "token_id": n.token_id, "token": n.token, "congruence": n.congruence,
            "top_tokens": [{"token_id": t[0], "token": t[1], "congruence": t[2]} for t in n.top_tokens or []],
            "max_act": n.max_act, "status": n.status, "best_score": n.best_score}


def prompt_dict(p) -> dict:
    return {"id": p.id, "split": p.split, "rank": p.rank, "doc_idx": p.doc_idx, "start": p.start,
            "end": p.end, "text": p.text, "tokens": p.tokens, "token_ids": p.token_ids,
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
    from precompute.scoring import authors_score

    st = e.settings or {}
    return {"id": e.id, "explainer": e.explainer, "status": e.status, "text": e.text,
            "score": e.score, "tpr": e.tpr, "tnr": e.tnr, "n_pos": e.n_pos, "n_neg": e.n_neg,
            "n_unparsed": e.n_unparsed, "error": e.error,
            "score_authors": authors_score(e.score, e.tpr, e.tnr),
            "truncated": bool(st.get("truncated")), "source": st.get("source")}


def ablation_dict(a) -> dict:
    return {"method": a.method, "active": a.active, "act_clean": a.act_clean,
            "act_ablated": a.act_ablated, "prob_clean": a.prob_clean,
            "prob_ablated": a.prob_ablated, "drop": a.drop}


def classification_dict(c) -> dict:
    return {"truth": c.truth, "answer": c.answer, "predicted": c.predicted}


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
    per bin, with axis ticks and a legend. Labels are escaped."""
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
    ml, mb, mt = 34, 28, 22
    pw, ph = width - ml - 8, height - mb - mt
    bw = pw / bins
    parts = [f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)} histogram">',
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
    for j, k in enumerate(names):
        x = ml + pw - 110
        y = mt + 4 + j * 14
        parts.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{_KIND_COLOURS.get(k, "#666")}"/>'
                     f'<text x="{x + 14}" y="{y + 9}">{escape(k)} (n={len(groups[k])})</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
