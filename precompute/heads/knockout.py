"""What attention knockout says about a look-up (docs/method.md §3, "Attention knockout"; issue 28):
the knockouts of a kept pair's prompts as stored (table ``knockouts``), and their summaries — per
pair, the rank agreement between each context source's contribution and what knocking it out
removes; per run, the share of pairs whose top context source, knocked out, lowers the
activation by at least half of its contribution.

The knockouts themselves are the model backend's (:meth:`Backend.knockout
<precompute.model.backend.Backend.knockout>`, one pass per batch: the top ``m`` context sources
and the sink of each prompt, renormalised, direct and total effects); this module turns one
prompt's result into database fields, reads them back in the summaries' terms
(:class:`SourceKnockout`) and summarises them. Pure functions: no database, no model.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from context_lookups.precompute.model import SINK, Knockout

HALF = 0.5  # the run summary's bar: a drop of at least half the contribution
EFFECTS = ("direct_pre", "direct_act", "total_pre", "total_act", "total_prob")


def _finite(x) -> float | None:
    """``x`` as a float, None for None or NaN (an undefined knockout; JSON and SQL have no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def stored_rows(ko: Knockout) -> list[dict]:
    """The ``knockouts`` fields (without ``prompt_id``) of one prompt's knockouts of one head (the
    backend's :class:`~precompute.model.Knockout`): per knockout ``j`` (``idx``), the ``sources``
    removed, their summed raw look-up term ``contrib``, the effects (None where undefined) and the
    clean probability of the token ``prob_clean``."""
    out = []
    for j, src in enumerate(ko.sources):
        row = {"head_layer": ko.head[0], "head": ko.head[1], "idx": j, "sources": [int(s) for s in src],
               "contrib": float(sum(float(ko.contrib[s]) for s in src)), "prob_clean": _finite(ko.prob)}
        for name in EFFECTS:
            eff = getattr(ko, name)
            row[name] = None if eff is None else _finite(eff[j])
        out.append(row)
    return out


@dataclass(frozen=True)
class SourceKnockout:
    """One knockout of one prompt in the summaries' terms: the ``sources`` removed together, their
    LN-aware look-up term ``contrib_ln`` (pre-activation units: comparable across prompts) and
    the effects (knocked-out minus clean; None where undefined or not computed) by name
    (:data:`EFFECTS`)."""

    sources: tuple[int, ...]
    contrib_ln: float
    effects: dict[str, float | None]

    @property
    def is_sink(self) -> bool:
        return tuple(self.sources) == SINK


def from_backend(ko: Knockout) -> list[SourceKnockout]:
    """A prompt's :class:`~precompute.model.Knockout` in the summaries' terms."""
    c = ko.contrib_ln
    return [SourceKnockout(tuple(int(s) for s in src), float(sum(float(c[s]) for s in src)),
                           {e: None if getattr(ko, e) is None else _finite(getattr(ko, e)[j])
                            for e in EFFECTS})
            for j, src in enumerate(ko.sources)]


def from_stored(rows: Sequence, ln_scale: float) -> list[SourceKnockout]:
    """A prompt's stored ``Knockout`` rows (one head; any objects with the table's fields) in the
    summaries' terms, in their order; ``ln_scale``: the look-up's (``lookups.ln_scale``)."""
    return [SourceKnockout(tuple(r.sources), r.contrib / ln_scale, {e: getattr(r, e) for e in EFFECTS})
            for r in sorted(rows, key=lambda r: r.idx)]


def rank_agreement(contrib: Sequence[float], effect: Sequence[float]) -> dict:
    """Spearman rank agreement between the contributions of knocked-out sources and what knocking
    each out removes (``drop = -effect``, so agreement is positive when the larger contributors
    are the larger drops; docs/method.md §3).

    Returns ``{"rho", "p", "n", "reason"}``: ``rho`` and ``p`` from ``scipy.stats.spearmanr`` over
    the ``n`` sources whose values are both finite; ``rho``/``p`` None and ``reason`` set when
    the agreement is undefined: ``n < 3`` (two points always rank ±1, which says nothing), or
    either side constant (ranks with no spread have no correlation).
    """
    from scipy.stats import spearmanr

    pairs = [(float(c), -float(e)) for c, e in zip(contrib, effect, strict=True)
             if c is not None and e is not None and math.isfinite(float(c)) and math.isfinite(float(e))]
    n = len(pairs)
    out = {"rho": None, "p": None, "n": n, "reason": None}
    if n < 3:
        out["reason"] = f"undefined: {n} source{'s' if n != 1 else ''} (a rank agreement needs at least 3)"
        return out
    xs, ys = zip(*pairs, strict=True)
    if len(set(xs)) == 1 or len(set(ys)) == 1:
        side = "the contributions" if len(set(xs)) == 1 else "the effects"
        out["reason"] = f"undefined: {side} are constant"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = spearmanr(xs, ys)
    out["rho"], out["p"] = float(r.statistic), float(r.pvalue)
    return out


def top_source_holds(contrib_ln: Sequence[float], effect: Sequence[float | None], *,
                     fraction: float = HALF) -> bool | None:
    """Whether a pair's top context source is confirmed by its knockout (docs/method.md §3): over
    the pair's prompts (``contrib_ln[j]``: the LN-aware contribution of prompt ``j``'s top context
    source, pre-activation units; ``effect[j]``: the change of the activation when it is knocked
    out), the mean drop ``-mean(effect)`` is at least ``fraction`` of the mean contribution.
    None (undefined) without a prompt with finite values, or when the mean contribution is not
    positive (there is no rise to explain)."""
    pairs = [(float(c), float(e)) for c, e in zip(contrib_ln, effect, strict=True)
             if c is not None and e is not None and math.isfinite(float(c)) and math.isfinite(float(e))]
    if not pairs:
        return None
    c = sum(p[0] for p in pairs) / len(pairs)
    if c <= 0:
        return None
    return -sum(p[1] for p in pairs) / len(pairs) >= fraction * c


def context_singles(prompt: Sequence[SourceKnockout], effect: str) -> list[tuple[int, float, float | None]]:
    """``(source, LN-aware contribution, effect)`` of a prompt's single-source knockouts of context
    sources (the sink, BOS, left out: its term is no context's)."""
    return [(k.sources[0], k.contrib_ln, k.effects.get(effect)) for k in prompt
            if len(k.sources) == 1 and k.sources[0] not in SINK]


def pair_agreement(prompts: Sequence[Sequence[SourceKnockout]], *, effect: str = "total_act") -> dict:
    """:func:`rank_agreement` of one pair (docs/method.md §3): over the single-source knockouts of
    context sources of all the pair's prompts (``prompts[j]``: prompt ``j``'s knockouts), pooled,
    the LN-aware contributions (pre-activation units, comparable across prompts) against
    ``effect`` (``total_act`` by default; any of :data:`EFFECTS`). ``n`` counts (prompt, source)
    knockouts with finite values."""
    items = [x for p in prompts for x in context_singles(p, effect)]
    return rank_agreement([c for _, c, _ in items], [e for _, _, e in items])


def pair_top_source(prompts: Sequence[Sequence[SourceKnockout]], *, effect: str = "total_act",
                    fraction: float = HALF) -> dict:
    """:func:`top_source_holds` of one pair, with its figures: on each prompt, its knocked-out
    context source with the largest contribution (the default knockouts' first), its LN-aware
    contribution and ``effect``. Returns ``{"holds", "n", "mean_contrib", "mean_drop",
    "reason"}``: ``holds`` True/False, or None with the ``reason``; ``n`` prompts with finite
    values."""
    tops = []
    for p in prompts:
        items = context_singles(p, effect)
        if items:
            tops.append(max(items, key=lambda x: (x[1], -x[0])))
    ok = [(c, e) for _, c, e in tops if e is not None and math.isfinite(c) and math.isfinite(e)]
    holds = top_source_holds([c for c, _ in ok], [e for _, e in ok], fraction=fraction)
    out = {"holds": holds, "n": len(ok), "fraction": fraction,
           "mean_contrib": statistics.fmean(c for c, _ in ok) if ok else None,
           "mean_drop": -statistics.fmean(e for _, e in ok) if ok else None, "reason": None}
    if holds is None:
        out["reason"] = ("no prompt with a knocked-out context source" if not ok else
                         "undefined: the mean contribution of the top context source is not positive")
    return out


def share_of_pairs(flags: Sequence[bool | None], *, confidence: float = 0.95) -> dict:
    """The run's share of pairs whose top context source holds (:func:`top_source_holds`), with its
    Wilson interval (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).

    Returns ``{"k", "n", "share", "low", "high", "undefined", "reason"}``: ``n`` pairs with a
    defined check (``undefined`` more had none); ``share``/``low``/``high`` None and ``reason``
    set when ``n`` is 0.
    """
    from scipy.stats import binomtest

    k = sum(1 for f in flags if f is True)
    n = sum(1 for f in flags if f is not None)
    out = {"k": k, "n": n, "share": None, "low": None, "high": None, "undefined": len(flags) - n,
           "reason": None}
    if n == 0:
        out["reason"] = "no pair with a positive top context contribution and a knockout"
        return out
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    out.update(share=k / n, low=float(ci.low), high=float(ci.high))
    return out


def summarise_pair(prompts: Sequence[Sequence[SourceKnockout]]) -> dict:
    """Both summaries of one pair (the pair page's, docs/method.md §3): ``agreement``
    (:func:`pair_agreement`, total effect on the activation), ``top_source``
    (:func:`pair_top_source`) and ``n_prompts``, the prompts with knockouts."""
    return {"agreement": pair_agreement(prompts), "top_source": pair_top_source(prompts),
            "n_prompts": sum(1 for p in prompts if p)}


def summarise_run(pairs: Sequence[dict]) -> dict:
    """A run's knockout summary over its kept pairs' :func:`summarise_pair` dicts: ``top_source``,
    the share of pairs whose top context source holds (:func:`share_of_pairs`, with its Wilson
    interval and n pairs); ``agreement``: the pairs' Spearman ρ — ``n`` pairs with a defined ρ
    (``undefined`` more), their ``median`` and ``positive``, how many have ρ > 0 — and
    ``n_pairs``, the kept pairs with knockouts. ``reason`` when no pair has a knockout."""
    with_ko = [p for p in pairs if p["n_prompts"]]
    rhos = [p["agreement"]["rho"] for p in with_ko if p["agreement"]["rho"] is not None]
    return {"n_pairs": len(with_ko),
            "top_source": share_of_pairs([p["top_source"]["holds"] for p in with_ko]),
            "agreement": {"n": len(rhos), "undefined": len(with_ko) - len(rhos),
                          "median": statistics.median(rhos) if rhos else None,
                          "positive": sum(1 for r in rhos if r > 0)},
            "reason": None if with_ko else "no kept pair has stored knockouts"}
