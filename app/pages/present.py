"""Presentation helpers: rows as JSON-able dicts (the ``.json`` twins and the templates use the
same dicts), the colour scale, visible token text and the server-side SVG histogram.

Nothing here touches the database or the model.
"""

from __future__ import annotations

import math
from functools import lru_cache

from markupsafe import Markup, escape

from context_lookups.precompute.core.redact import redact
from context_lookups.precompute.core.tokens import escape_controls, escaped, joined_text
from context_lookups.precompute.heads.attribution import head_label

from .formats import decimals, fixed, fmt, has_hidden, visible
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


def act_floor(acts) -> float:
    """The low end of an activation legend: the smallest activation shown, or 0 if none is
    negative (GELU's outputs are above about -0.17, so a symmetric legend would show colours
    that never occur)."""
    lo = 0.0
    for a in acts:
        if a is not None and a < lo and math.isfinite(a):
            lo = a
    return lo


def rank_note(n, d_mlp: int, selected_above: int | None) -> str | None:
    """The neuron's rank by congruence in words (docs/method.md §1): for a selected next-token
    neuron, how many higher-ranked neurons were passed over because their tokens fail the
    selection rules (``selected_above``: selected next-token neurons ranked higher)."""
    if n.rank is None:
        return None
    r = n.rank + 1
    where = f"Rank {r:,} of {d_mlp:,} by congruence in layer {n.layer}"
    if n.kind != "next_token" or selected_above is None:
        return f"{where}." if n.kind == "other" else f"{where} (a random baseline neuron: drawn, not ranked)."
    skipped = n.rank - selected_above
    if skipped <= 0:
        return f"{where}: every neuron ranked above it was selected too."
    return (f"{where}: the {skipped:,} higher-ranked neuron{'s' if skipped != 1 else ''} that "
            f"{'were' if skipped != 1 else 'was'} not selected predict tokens that fail the selection rules "
            f"(a leading space, more than two characters, a letter, not on the reject list); "
            f"{selected_above:,} ranked above it {'were' if selected_above != 1 else 'was'} selected.")


def pair_drops(pairs: list[dict]) -> list[float]:
    """Every mean ablation drop the neuron page's pair table shows (to write them with one
    number of decimals)."""
    return [side["mean_drop"] for p in pairs for a in p["ablation"].values()
            for side in a.values() if side and side.get("mean_drop") is not None]


def heldout_ablations(heldout: list[dict]) -> list[dict]:
    """The ablation row the pair page shows beside each held-out prompt (the first method's)."""
    return [next(iter(h["ablations"].values())) for h in heldout if h.get("ablations")]


def answer_parts(answer: str) -> dict:
    """A classifier's answer split for display: ``word`` (Yes / No, or the answer as given) and
    ``detail``, the baseline's score and threshold that it adds in parentheses (shown beside
    the word, not hidden in a tooltip)."""
    import re

    m = re.match(r"\s*(Yes|No)\b\s*(?:\((.*)\))?\s*$", answer or "", re.S)
    if m:
        return {"word": m.group(1), "detail": m.group(2)}
    return {"word": answer, "detail": None}


# --- tokens ------------------------------------------------------------------------------------

def token_fields(token_ids, texts, partial) -> dict:
    """The shown form of a sequence of tokens: ``tokens_escaped`` (each token's text, partial
    UTF-8 characters as escaped bytes ``\\xe2\\x82``) and ``tokens_joined`` (for each partial
    token, the text of the run of partial tokens it belongs to; else None). ``partial`` is
    :func:`precompute.core.tokens.partial_tokens` of the run's tokenizer (empty when unknown: the
    texts are then shown as stored). Every token shown by the explorer goes through here."""
    texts = list(texts or [])
    if token_ids is None or len(token_ids) != len(texts):  # no ids (imported data): as stored
        return {"tokens_escaped": [escape_controls(t) for t in texts], "tokens_joined": [None] * len(texts)}
    return {"tokens_escaped": escaped(token_ids, texts, partial),
            "tokens_joined": joined_text(token_ids, partial)}


def token_escaped(token_id: int, text: str, partial) -> str:
    """One token's shown text (see :func:`token_fields`)."""
    return escaped([token_id], [text], partial)[0]


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
                           f'value="{lab}" form="{form}"{" checked" if off else ""} aria-label="ablate {lab}">'
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


def _congruent(rows, partial) -> list[dict]:
    return [{"token_id": t[0], "token": t[1], "token_escaped": token_escaped(t[0], t[1], partial),
             "congruence": t[2]} for t in rows or []]


def neuron_dict(n, partial=None) -> dict:
    """A neuron row; ``token_escaped`` is its token as shown (:func:`token_fields`);
    ``top_tokens`` its most congruent tokens and ``bottom_tokens`` its most negative ones
    (None for runs that did not record them)."""
    partial = partial or {}
    return {"layer": n.layer, "neuron": n.neuron, "kind": n.kind, "rank": n.rank,
            "token_id": n.token_id, "token": n.token,
            "token_escaped": token_escaped(n.token_id, n.token, partial), "congruence": n.congruence,
            "top_tokens": _congruent(n.top_tokens, partial),
            "bottom_tokens": _congruent(n.bottom_tokens, partial) if n.bottom_tokens is not None else None,
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


def uncertainty(*, score, score_authors, tpr, tnr, n_pos: int, n_neg: int, n_unparsed: int,
                counts: tuple[int, int, int, int] | None) -> dict:
    """The uncertainty of one pair's E (docs/method.md §5): ``answered`` = (active, inactive)
    held-out prompts with a Yes/No answer, ``interval`` of E (``scoring.score_interval``; by the
    authors' rule, ``interval_authors``, where E is their one-rate fallback) and ``small``: below
    the documented minimum (``scoring.small_sample``). ``counts`` = (TP, FN, TN, FP) from the
    stored answers; without them (no stored answers) they are recovered from the rates when no
    answer was unparsed, else the interval is None."""
    from context_lookups.precompute.explain.scoring import score_interval, small_sample

    if counts is None and not n_unparsed and (tpr is not None or tnr is not None):
        tp = round(tpr * n_pos) if tpr is not None else 0
        tn = round(tnr * n_neg) if tnr is not None else 0
        counts = (tp, n_pos - tp if tpr is not None else 0, tn, n_neg - tn if tnr is not None else 0)
    if counts is None:
        return {"answered": None, "interval": None, "interval_authors": None,
                "small": small_sample(n_pos, n_neg)}
    tp, fn, tn, fp = counts
    iv = score_interval(tp, fn, tn, fp) if score is not None else None
    iv_a = score_interval(tp, fn, tn, fp, rule="authors") if score is None and score_authors is not None else None
    return {"answered": [tp + fn, tn + fp], "interval": list(iv) if iv else None,
            "interval_authors": list(iv_a) if iv_a else None, "small": small_sample(tp + fn, tn + fp)}


def flat_uncertainty(ex: dict) -> dict:
    """An :func:`explanation_dict`'s uncertainty as flat fields for list rows (and their CSV):
    ``e_lo``/``e_hi`` (E's interval, the authors' rule's where only it defines E),
    ``n_answered_active``/``n_answered_inactive`` and ``small_sample``; None without one."""
    iv = ex.get("interval") or ex.get("interval_authors")
    ans = ex.get("answered")
    return {"e_lo": iv[0] if iv else None, "e_hi": iv[1] if iv else None,
            "n_answered_active": ans[0] if ans else None, "n_answered_inactive": ans[1] if ans else None,
            "small_sample": ex.get("small") if ex else None}


def explanation_dict(e, counts: tuple[int, int, int, int] | None = None) -> dict:
    """An explanation with its E, rates, held-out sizes and :func:`uncertainty` (``counts``:
    (TP, FN, TN, FP) of its stored answers, ``queries.answer_counts``). ``text`` as the
    explainer wrote it, with the lead-in of the authors' prompt for their GPT-4 explanations
    (imports made before it was stored get it here); ``status_text``: the status in words."""
    from context_lookups.precompute.explain.scoring import authors_score
    from context_lookups.precompute.paper.format import full_text

    st = e.settings or {}
    auth = authors_score(e.score, e.tpr, e.tnr)
    text = full_text(e.text) if st.get("source") == "paper" else e.text
    # redacted: a database written before answers and errors were redacted may hold a key an
    # endpoint echoed
    return {"id": e.id, "explainer": e.explainer, "status": e.status,
            "status_text": explanation_status(e.status), "text": redact(text),
            "score": e.score, "tpr": e.tpr, "tnr": e.tnr, "n_pos": e.n_pos, "n_neg": e.n_neg,
            "n_unparsed": e.n_unparsed, "error": redact(e.error),
            "score_authors": auth,
            **uncertainty(score=e.score, score_authors=auth, tpr=e.tpr, tnr=e.tnr, n_pos=e.n_pos,
                          n_neg=e.n_neg, n_unparsed=e.n_unparsed, counts=counts),
            "truncated": bool(st.get("truncated")), "source": st.get("source")}


def ablation_dict(a) -> dict:
    return {"method": a.method, "active": a.active, "act_clean": a.act_clean,
            "act_ablated": a.act_ablated, "prob_clean": a.prob_clean,
            "prob_ablated": a.prob_ablated, "drop": a.drop}


def classification_dict(c) -> dict:
    """A classifier answer (the endpoint's text, redacted as in :func:`explanation_dict`)."""
    return {"truth": c.truth, "answer": redact(c.answer), "predicted": c.predicted}


# --- heatmaps ------------------------------------------------------------------------------------

def grid_scale(grids: list[list[list[float]]], n_rows: int) -> float:
    """The colour scale of ``[attn_layer][head]`` grids: their largest finite ``|value|`` over the
    first ``n_rows`` layers (the scored ones)."""
    return nice_scale(v for g in grids for row in g[:n_rows] for v in row)


def mean_grid(grids: list[list[list[float]]]) -> list[list[float]]:
    """Element-wise mean of ``[attn_layer][head]`` grids (empty list if none)."""
    if not grids:
        return []
    n = len(grids)
    return [[sum(g[k][h] for g in grids) / n for h in range(len(grids[0][k]))]
            for k in range(len(grids[0]))]


def score_groups(table: dict) -> dict[str, list[float]]:
    """{kind: scores} of an ``report.score_table`` result (for the histogram)."""
    return {k: row.get("scores") or [] for k, row in (table.get("kinds") or {}).items()}
