"""Presentation of stored rows: rows as JSON-able dicts (the ``.json`` twins and the templates
use the same dicts), an explanation score's uncertainty, tokens as shown (partial UTF-8
characters as escaped bytes), and the scales of the colour legends. The HTML built in Python is
:mod:`app.pages.markup`'s.

Nothing here touches the database or the model.
"""

from __future__ import annotations

import math

from context_lookups.precompute.core.redact import redact
from context_lookups.precompute.core.tokens import escape_controls, escaped, joined_text
from context_lookups.precompute.explain.explainers import full_text
from context_lookups.precompute.explain.scoring import authors_score, score_interval, small_sample
from context_lookups.precompute.heads.attribution import head_label

from .states import explanation_status, neuron_status, score_reason

# --- scales ---------------------------------------------------------------------------------------

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
    """A prompt row; ``multiplicity``: how many documents trimmed to it (repeats merged,
    docs/method.md §2), ``doc_idxs`` their indices (None where not recorded)."""
    return {"id": p.id, "split": p.split, "rank": p.rank, "doc_idx": p.doc_idx, "start": p.start,
            "end": p.end, "text": p.text, "tokens": p.tokens, "token_ids": p.token_ids,
            **token_fields(p.token_ids, p.tokens, partial or {}),
            # Without recorded per-token activations (imported runs) the max is the last token.
            "acts": p.acts, "max_pos": max(range(len(p.acts)), key=p.acts.__getitem__) if p.acts
            else (len(p.tokens) - 1 if p.tokens else None),
            "act": p.act, "doc_act": p.doc_act, "pre": p.pre,
            "attr_raw": p.attr_raw, "attr_ln": p.attr_ln, "other_ln": p.other_ln, "active": p.active,
            "multiplicity": p.multiplicity or 1, "doc_idxs": p.doc_idxs}


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
    if counts is None and not n_unparsed and (tpr is not None or tnr is not None):
        tp = round(tpr * n_pos) if tpr is not None else 0
        tn = round(tnr * n_neg) if tnr is not None else 0
        counts = (tp, n_pos - tp if tpr is not None else 0, tn, n_neg - tn if tnr is not None else 0)
    if counts is None:
        return {"answered": None, "interval": None, "interval_authors": None,
                "small": small_sample(n_pos, n_neg)}
    tp, fn, tn, fp = counts
    iv = score_interval(tp, fn, tn, fp) if score is not None else None
    one_rate = score is None and score_authors is not None  # E is the authors' one-rate fallback
    iv_a = score_interval(tp, fn, tn, fp, rule="authors") if one_rate else None
    return {"answered": [tp + fn, tn + fp], "interval": list(iv) if iv else None,
            "interval_authors": list(iv_a) if iv_a else None, "small": small_sample(tp + fn, tn + fp)}


def flat_uncertainty(ex: dict) -> dict:
    """An :func:`explanation_dict`'s uncertainty as flat fields for list rows (and their CSV):
    ``e_lo``/``e_hi`` (E's interval, the authors' rule's where only it defines E),
    ``n_answered_active``/``n_answered_inactive``, ``small_sample`` and ``n_documents`` (the
    documents behind the distinct held-out prompts); None without one; and ``truncated`` (the
    explanation was cut at its token limit)."""
    iv = ex.get("interval") or ex.get("interval_authors")
    ans = ex.get("answered")
    return {"e_lo": iv[0] if iv else None, "e_hi": iv[1] if iv else None,
            "n_answered_active": ans[0] if ans else None, "n_answered_inactive": ans[1] if ans else None,
            "small_sample": ex.get("small") if ex else None, "n_documents": ex.get("n_documents"),
            "truncated": bool(ex.get("truncated"))}


def explanation_dict(e, counts: tuple[int, int, int, int] | None = None,
                     n_documents: int | None = None) -> dict:
    """An explanation with its E, rates, held-out sizes and :func:`uncertainty` (``counts``:
    (TP, FN, TN, FP) of its stored answers, ``explain.reads.answer_counts``; ``n_documents``: the
    documents its ``n_pos + n_neg`` distinct held-out prompts came from,
    ``explain.reads.heldout_documents``, None when not read). ``text`` as the
    explainer wrote it, with the lead-in of the authors' prompt for their GPT-4 explanations
    (imports made before it was stored get it here); ``status_text``: the status in words;
    ``truncated``: cut at the explainer's token limit (it ends mid-sentence); ``reason``: why E
    is missing (:func:`app.pages.states.score_reason`), None when there is one."""
    st = e.settings or {}
    auth = authors_score(e.score, e.tpr, e.tnr)
    text = full_text(e.text) if st.get("source") == "paper" else e.text
    # redacted: a database written before answers and errors were redacted may hold a key an
    # endpoint echoed
    d = {"id": e.id, "explainer": e.explainer, "status": e.status,
         "status_text": explanation_status(e.status), "text": redact(text),
         "score": e.score, "tpr": e.tpr, "tnr": e.tnr, "n_pos": e.n_pos, "n_neg": e.n_neg,
         "n_documents": n_documents, "n_unparsed": e.n_unparsed, "error": redact(e.error),
         "score_authors": auth,
         **uncertainty(score=e.score, score_authors=auth, tpr=e.tpr, tnr=e.tnr, n_pos=e.n_pos,
                       n_neg=e.n_neg, n_unparsed=e.n_unparsed, counts=counts),
         "truncated": bool(st.get("truncated")), "source": st.get("source")}
    d["reason"] = score_reason(d)  # why E is missing (None when there is one)
    return d


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
