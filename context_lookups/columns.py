"""What the columns of the API's DataFrames mean and in which units (``DataFrame.attrs["units"]``
and ``DataFrame.attrs["columns"]``).

A frame's columns are the fields of a page's ``.json`` twin. A field stored as it is in the
database is described by its column's ``doc=`` in :mod:`precompute.store.schema` (the one
description of the tables); the fields the pages derive (shown tokens, intervals, links) are
described here, and so are the units of every quantity (the schema gives a unit only where
Datasette needs one).
"""

from __future__ import annotations

from collections.abc import Iterable

from context_lookups.precompute.store.schema import Ablation, Explanation, Neuron, Pair, Prompt, Run

# The units of the quantities (docs/method.md §1-§6). A unit of a list field is its elements'.
ACT = "activation (hook_post; post-GELU for GPT-2)"
RAW = "residual-stream units (head output · W_in[:, i], the paper's score)"
LN = "pre-activation units (hook_pre; the LN-aware score)"
UNITS: dict[str, str] = {
    "congruence": "logit per unit activation (W_out[l, i] · W_U[:, t])",
    "max_act": ACT, "act": ACT, "acts": ACT, "doc_act": ACT, "act_clean": ACT, "act_ablated": ACT,
    "pre": "pre-activation units (hook_pre)",
    "attr_raw": RAW, "mean_attr_raw": RAW, "head_attr": "residual-stream units (score=raw) or "
    "pre-activation units (score=ln)",
    "attr_ln": LN, "mean_attr_ln": LN, "other_ln": LN,
    "active_fraction": "fraction of the neuron's explain prompts (0..1)",
    "score": "E = ½(TPR + TNR), 0..1 (0.5: chance)", "score_authors": "E by the authors' rule, 0..1",
    "best_score": "E, 0..1", "e_lo": "E, 0..1", "e_hi": "E, 0..1",
    "tpr": "fraction of held-out prompts (0..1)", "tnr": "fraction of held-out prompts (0..1)",
    "prob_clean": "probability (0..1)", "prob_ablated": "probability (0..1)",
    "drop": "probability (prob_clean - prob_ablated)",
    "n_prompts": "prompts", "n_active": "prompts", "n_pos": "held-out prompts", "n_neg": "held-out prompts",
    "n_answered_active": "held-out prompts", "n_answered_inactive": "held-out prompts",
    "n_unparsed": "answers",
}

# Fields the pages derive from the stored rows (the others are described by the schema).
DERIVED: dict[str, str] = {
    "token_escaped": "the token as shown: parts of a UTF-8 character as escaped bytes (\\xe2\\x82), "
                     "control characters escaped",
    "tokens_escaped": "each token as shown (see token_escaped)",
    "tokens_joined": "for each token that is part of a UTF-8 character, the text of the run of such tokens "
                     "it belongs to; else null",
    "max_pos": "position (0-based, BOS excluded) of the largest activation of the prompt",
    "status_text": "the status in words",
    "url": "the page's path on the explorer", "pair_url": "the pair page's path on the explorer",
    "label": "the head, L{layer}H{head}",
    "explainer": "the explainer: baseline, or openai:<model> for an LLM",
    "explanation": "the explanation's text", "text": "the text",
    "e_lo": "low end of E's 95 % interval (docs/method.md §5)",
    "e_hi": "high end of E's 95 % interval", "small_sample": "fewer than 5 answered held-out prompts "
    "in a class: E is imprecise", "score_authors": "E by the authors' rule (one rate for single-class pairs)",
    "n_answered_active": "held-out prompts with a Yes/No answer where the head is active",
    "n_answered_inactive": "held-out prompts with a Yes/No answer where the head is inactive",
    "head_attr": "the pair's head's attribution on the prompt (in the score's units)",
    "head_active": "whether the pair's head is active on the prompt",
    "lookup": "the pair's head's look-up on the prompt (contrib, attention, bias, total, ...; "
              "docs/method.md §3), null when not stored",
    "classifications": "{explainer: {truth, answer, predicted}} on the held-out prompt",
    "ablations": "{method: {active, act_clean, act_ablated, prob_clean, prob_ablated, drop}}",
    "group": "which list of the pair page's twin the prompt comes from: active, inactive or heldout",
    "prompt_id": "the prompt's row id", "prompt_rank": "rank of the prompt's document in the scan's top-k",
    "method": "ablation method: zero or mean (docs/method.md §6)",
    "active": "whether the head is active on the prompt (ablations); the active heads (prompts)",
    "counts": "rows per table of the run", "missing": "what an imported run lacks, one line each",
}

_TABLES = {"runs": (Run,), "neurons": (Neuron,), "pairs": (Pair, Neuron, Explanation),
           "prompts": (Prompt,), "ablations": (Ablation, Pair, Neuron, Prompt)}


def describe(columns: Iterable[str], tables: str) -> dict[str, str]:
    """``{column: description}``: the derived field's, else the first of ``tables``' schema
    columns of that name (``tables``: a key of :data:`_TABLES`)."""
    out = {}
    for c in columns:
        if c in DERIVED:
            out[c] = DERIVED[c]
            continue
        for cls in _TABLES[tables]:
            col = cls.__table__.columns.get(c)
            if col is not None and col.doc:
                out[c] = col.doc
                break
    return out


def units(columns: Iterable[str]) -> dict[str, str]:
    """``{column: unit}`` of the columns that hold a quantity."""
    return {c: UNITS[c] for c in columns if c in UNITS}
