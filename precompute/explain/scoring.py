"""Pure scoring of explanations (paper §4.4, docs/method.md §5): the explanation score E, its
true positive / true negative rates, the authors' single-class fallback, the summary statistics
of a set of scores (with the skew test) and the paired comparison of two explainers.

No database, no I/O: lists in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

MIN_SKEWTEST = 8  # scipy.stats.skewtest is not valid with fewer samples
MIN_HELDOUT_PER_CLASS = 5  # fewer answered held-out prompts in a class: E is flagged "small sample"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Score:
    """Confusion matrix and explanation score of one pair. ``score``/``tpr``/``tnr`` are None
    when undefined (a class without parsed answers)."""

    score: float | None
    tpr: float | None
    tnr: float | None
    tp: int
    fn: int
    tn: int
    fp: int
    n_pos: int
    n_neg: int
    n_unparsed: int


def run_rule(run) -> str:
    """The E rule a run is judged by (docs/method.md §5), the one place it is decided:
    ``"authors"`` for the authors' imported data (so their figures are reproduced, ``run`` has a
    ``provenance``), ``"project"`` for runs computed here."""
    return "authors" if run.provenance is not None else "project"


def score_by_rule(rule: str, score: float | None, tpr: float | None, tnr: float | None) -> float | None:
    """One explanation's E by ``rule`` (:func:`run_rule`): the stored project score, or the
    authors' with their single-class fallback (:func:`authors_score`)."""
    return authors_score(score, tpr, tnr) if rule == "authors" else score


def explanation_score(truth: Sequence[bool], predicted: Sequence[bool | None]) -> Score:
    """``E = ½(TP/(TP+FN) + TN/(TN+FP))`` (paper §4.4); ``predicted`` None (unparsed) is left
    out of the confusion matrix and counted. This is the project's rule: E is None when either
    class has no parsed answer (see :func:`authors_score` for the authors' fallback).

    Raises:
        ValueError: ``truth`` and ``predicted`` differ in length.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truths but {len(predicted)} predictions")
    pairs = [(bool(t), None if p is None else bool(p)) for t, p in zip(truth, predicted, strict=True)]
    tp = sum(1 for t, p in pairs if t and p is True)
    fn = sum(1 for t, p in pairs if t and p is False)
    tn = sum(1 for t, p in pairs if not t and p is False)
    fp = sum(1 for t, p in pairs if not t and p is True)
    tpr = tp / (tp + fn) if tp + fn else None
    tnr = tn / (tn + fp) if tn + fp else None
    score = 0.5 * (tpr + tnr) if tpr is not None and tnr is not None else None
    return Score(score, tpr, tnr, tp, fn, tn, fp, n_pos=sum(1 for t in truth if t),
                 n_neg=sum(1 for t in truth if not t), n_unparsed=sum(1 for _, p in pairs if p is None))


def authors_score(score: float | None, tpr: float | None, tnr: float | None) -> float | None:
    """E by the authors' rule (``notebooks/7_results.ipynb`` of their Oct 2023 run): ½(TPR +
    TNR) when both rates are defined; when the held-out prompts are all one class, the one
    defined rate (TPR if all are active, TNR if none is); None only without any answer."""
    if score is not None:
        return score
    if tpr is not None and tnr is None:
        return tpr
    if tnr is not None and tpr is None:
        return tnr
    return None


def describe(scores: Sequence[float], *, alternative: str = "two-sided") -> dict:
    """Summary of a set of E values: ``n``, ``mean``, ``std`` (population, ddof=0, as the
    authors' ``np.std``), ``skew`` (``scipy.stats.skew``, biased) and ``skewtest``
    (``{"statistic", "pvalue", "alternative", "reason"}``: ``scipy.stats.skewtest`` with
    ``alternative`` — the project's ``two-sided``, the authors' ``greater`` (their notebook:
    is E skewed to the right?); p None with a reason below 8 scores or when all scores are
    equal)."""
    import numpy as np
    from scipy import stats

    out: dict = {"n": len(scores), "mean": None, "std": None, "skew": None,
                 "skewtest": {"statistic": None, "pvalue": None, "alternative": alternative, "reason": None}}
    if not len(scores):
        out["skewtest"]["reason"] = "no scored pairs"
        return out
    a = np.asarray(scores, dtype=float)
    out["mean"], out["std"] = float(a.mean()), float(a.std())
    constant = bool(np.all(a == a[0]))
    if len(a) >= 3 and not constant:
        out["skew"] = float(stats.skew(a))
    if len(a) < MIN_SKEWTEST:
        out["skewtest"]["reason"] = f"skewtest needs at least {MIN_SKEWTEST} scores, have {len(a)}"
    elif constant:
        out["skewtest"]["reason"] = "all scores are equal"
    else:
        res = stats.skewtest(a, alternative=alternative)
        out["skewtest"].update(statistic=float(res.statistic), pvalue=float(res.pvalue))
    return out


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two explainers' E on the same pairs (``a[i]`` and ``b[i]`` score pair i): mean ± std
    (population) of each, mean difference ``b - a``, Pearson correlation
    (``scipy.stats.pearsonr``) and the paired Wilcoxon signed-rank test
    (``scipy.stats.wilcoxon``, two-sided, zero differences dropped as ``zero_method="wilcox"``).
    Statistics that are undefined (fewer than 2 pairs, constant scores, all differences zero)
    are None with a ``reason``.

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    import numpy as np
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"{len(a)} scores against {len(b)}: a paired comparison needs the same pairs")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out: dict = {"n": len(x), "a": {"mean": None, "std": None}, "b": {"mean": None, "std": None},
                 "mean_diff": None, "pearson": {"r": None, "p": None, "reason": None},
                 "wilcoxon": {"statistic": None, "p": None, "reason": None}}
    if len(x) == 0:
        out["pearson"]["reason"] = out["wilcoxon"]["reason"] = "no pair scored by both"
        return out
    out["a"] = {"mean": float(x.mean()), "std": float(x.std())}
    out["b"] = {"mean": float(y.mean()), "std": float(y.std())}
    out["mean_diff"] = float((y - x).mean())
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        out["pearson"]["reason"] = "needs at least 2 pairs and non-constant scores"
    else:
        r = stats.pearsonr(x, y)
        out["pearson"].update(r=float(r.statistic), p=float(r.pvalue))
    if np.all(y - x == 0):
        out["wilcoxon"]["reason"] = "all differences are zero"
    else:
        w = stats.wilcoxon(y, x, zero_method="wilcox")
        out["wilcoxon"].update(statistic=float(w.statistic), p=float(w.pvalue))
    return out


@lru_cache(maxsize=8)
def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``k / n`` at ``confidence`` (None when ``n`` is 0).
    Equal to ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method="wilson")`` (the
    tests check it), written out because that call costs ~0.4 ms and a list page shows hundreds.

    Raises:
        ValueError: ``k`` outside ``0..n``.
    """
    if not 0 <= k <= n:
        raise ValueError(f"{k} successes out of {n}")
    if n == 0:
        return None
    z = _z(confidence)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def score_interval(tp: int, fn: int, tn: int, fp: int, *, confidence: float = CONFIDENCE,
                   rule: str = "project") -> tuple[float, float] | None:
    """Interval of one pair's explanation score (docs/method.md §5). With both classes answered,
    each rate gets its Wilson interval at ``1 - (1 - confidence) / 2`` (97.5 % for 95 %) and the
    interval of ``E = ½(TPR + TNR)`` is the mean of their ends: by Bonferroni's inequality both
    rates lie in theirs with probability at least ``confidence``, and then E lies in its own.
    With one class (the authors' rule scores the one defined rate): that rate's Wilson interval
    at ``confidence``. None without any parsed answer, or with one class under the project's
    rule (E undefined)."""
    pos, neg = tp + fn, tn + fp
    if pos and neg:
        a, b = wilson(tp, pos, 0.5 + confidence / 2), wilson(tn, neg, 0.5 + confidence / 2)
        return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    if rule == "authors" and (pos or neg):
        return wilson(tp, pos, confidence) if pos else wilson(tn, neg, confidence)
    return None


def small_sample(n_pos: int, n_neg: int) -> bool:
    """Whether a pair's held-out set is below the documented minimum (docs/method.md §5): fewer
    than :data:`MIN_HELDOUT_PER_CLASS` answered prompts in either class."""
    return min(n_pos, n_neg) < MIN_HELDOUT_PER_CLASS


def finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))
