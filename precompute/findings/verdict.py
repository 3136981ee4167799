"""The findings verdict of a run (docs/method.md §8): for each of the paper's two claims, the
run's figure with a seeded 95 % bootstrap interval over pairs, the paper's figure beside it, and
one word — *reproduces*, *does not reproduce* or *inconclusive*.

Claims (paper §4.4 and §5.4):

1. Explanations of next-token neurons' heads beat chance and random neurons' heads: the mean
   explanation score E of next-token pairs against 0.5, and its difference from the random
   neurons' mean against 0.
2. Ablating a head where it is active lowers the probability of the neuron's token more than
   where it is not: the mean over pairs of the pair's mean drop on active held-out prompts,
   minus the same on inactive ones (the authors' per-pair statistic), against 0; and its
   control, that gap for next-token neurons' pairs minus the same gap for random neurons'
   pairs, against 0 (the paper reports no random-neuron ablation).

Rule: *reproduces* when the whole interval lies on the paper's side of the null value,
*does not reproduce* when it lies wholly on the other side, *inconclusive* when it contains the
null value; *not measured* when a group has fewer than :data:`MIN_PAIRS` pairs.

Pure functions on stored rows' values; :func:`run_verdict` reads them (read only).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from context_lookups.precompute.explain.explainers import llm_first
from context_lookups.precompute.explain.scoring import run_rule, score_by_rule
from context_lookups.precompute.store.schema import Ablation, Explanation, Neuron, Pair, Run

CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 0
MIN_PAIRS = 3  # a group with fewer pairs gets "not measured": a bootstrap of 1-2 values says nothing

REPRODUCES, DOES_NOT, INCONCLUSIVE, NOT_MEASURED = ("reproduces", "does_not_reproduce",
                                                   "inconclusive", "not_measured")
WORDS = {REPRODUCES: "reproduces", DOES_NOT: "does not reproduce", INCONCLUSIVE: "inconclusive",
         NOT_MEASURED: "not measured"}
RULE = ("reproduces: the whole 95% bootstrap interval (9,999 resamples of the pairs, seed 0) lies "
        "on the paper's side of the null value; does not reproduce: it lies wholly on the other "
        "side; inconclusive: it contains the null value; not measured: fewer than "
        f"{MIN_PAIRS} pairs in a group.")

# The paper's figures (Table 3 and §5.4; mean ± std of E, mean drop active / inactive, KS p).
PAPER = {
    "gpt2-small": {"label": "GPT-2 small", "E": (0.650, 0.194), "drop": (0.0193, 0.0075, 1e-5)},
    "gpt2-medium": {"label": "GPT-2 medium", "E": (0.610, 0.201), "drop": (0.0097, 0.0003, 4e-13)},
    "gpt2-large": {"label": "GPT-2 large", "E": (0.575, 0.227), "E_random": (0.558, 0.191),
                   "drop": (0.0063, 0.0011, 2e-23)},
    "pythia-160m": {"label": "Pythia-160m", "E": (0.621, 0.206)},
    "pythia-1.4b": {"label": "Pythia-1.4b", "E": (0.574, 0.176)},
}
_ALIASES = {"gpt2": "gpt2-small"}


def paper_reference(model_name: str, slug: str = "") -> dict:
    """The paper's figures to set beside a run of ``model_name`` (or slug): the same model's when
    the paper reports it, else GPT-2 small's; ``E_random`` is GPT-2 large's everywhere (the only
    random-neuron figure the paper gives)."""
    names = [n.lower().rsplit("/", 1)[-1] for n in (model_name or "", slug or "")]
    key = next((_ALIASES.get(n, n) for n in names if _ALIASES.get(n, n) in PAPER), "gpt2-small")
    ref = dict(PAPER[key])
    ref["model"] = key
    ref["same_model"] = any(_ALIASES.get(n, n) == key for n in names)
    ref["E_random"] = PAPER["gpt2-large"]["E_random"]
    ref["E_random_label"] = PAPER["gpt2-large"]["label"]
    return ref


def decide(lo: float | None, hi: float | None, null: float) -> str:
    """The verdict word of an interval ``[lo, hi]`` for a claim "the figure exceeds ``null``"."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return NOT_MEASURED
    if lo > null:
        return REPRODUCES
    if hi < null:
        return DOES_NOT
    return INCONCLUSIVE


@lru_cache(maxsize=256)
def _bootstrap(groups: tuple[tuple[float, ...], ...], signs: tuple[int, ...]) -> tuple[float, float]:
    """95 % interval of ``Σ signs[g] · mean(groups[g])`` (e.g. one group; a difference of two;
    a difference of two differences), the groups resampled independently:
    ``scipy.stats.bootstrap``, BCa (percentile when BCa is degenerate, e.g. all values equal),
    seeded. Cached: the same stored values give the same interval, and a page asks again on
    every view."""
    import numpy as np
    from scipy import stats

    data = tuple(np.asarray(g, dtype=float) for g in groups)

    def stat(*xs, axis=-1):
        return sum(sign * x.mean(axis=axis) for sign, x in zip(signs, xs, strict=True))

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = stats.bootstrap(data, stat, n_resamples=N_RESAMPLES, vectorized=True, paired=False,
                                 confidence_level=CONFIDENCE, method=method,
                                 rng=np.random.default_rng(SEED)).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    point = float(stat(*data))
    return point, point


def claim(groups: Sequence[Sequence[float]], *, null: float, paper: float | None,
          signs: Sequence[int] | None = None) -> dict:
    """One claim's figure: ``value`` = ``Σ signs[g] · mean(groups[g])`` (default: the mean of
    the first group, minus the second's mean when there are two), its interval ``lo``/``hi``,
    the group sizes ``n``, the ``null`` value, the ``paper``'s figure, whether the interval
    holds it (``paper_inside``) and the ``verdict``.

    Raises:
        ValueError: no group, more than two without ``signs``, or ``signs`` of another length.
    """
    if signs is None:
        if len(groups) not in (1, 2):
            raise ValueError(f"a claim of {len(groups)} groups needs their signs")
        signs = (1, -1)[:len(groups)]
    if not groups or len(signs) != len(groups):
        raise ValueError(f"{len(groups)} groups and {len(signs)} signs")
    clean = [tuple(float(v) for v in g if v is not None and math.isfinite(v)) for g in groups]
    n = [len(g) for g in clean]
    out = {"value": None, "lo": None, "hi": None, "n": n, "null": null, "paper": paper,
           "paper_inside": None, "verdict": NOT_MEASURED,
           "reason": None}
    if min(n) < MIN_PAIRS:
        out["reason"] = f"needs at least {MIN_PAIRS} pairs per group, has {' and '.join(map(str, n))}"
        return out
    value = sum(sign * sum(g) / len(g) for sign, g in zip(signs, clean, strict=True))
    lo, hi = _bootstrap(tuple(clean), tuple(int(x) for x in signs))
    out.update(value=value, lo=lo, hi=hi, verdict=decide(lo, hi, null),
               paper_inside=None if paper is None else lo <= paper <= hi)
    return out


# --- what the verdict reads from the database ---------------------------------------------------

def pair_scores(session: Session, *, run_id: int, explainer: str, kind: str, rule: str) -> list[float]:
    """E of every kept pair of ``kind`` neurons explained by ``explainer``, by ``rule``
    (``"project"``: undefined for single-class held-out sets; ``"authors"``: their fallback)."""
    rows = session.execute(select(Explanation.score, Explanation.tpr, Explanation.tnr, Explanation.status)
                           .join(Pair, Pair.id == Explanation.pair_id)
                           .join(Neuron, Neuron.id == Pair.neuron_id)
                           .where(Pair.run_id == run_id, Pair.kept, Neuron.kind == kind,
                                  Explanation.explainer == explainer)).all()
    vals = [score_by_rule(rule, s, tp, tn) for s, tp, tn, st in rows if rule == "project" or st != "failed"]
    return [v for v in vals if v is not None]


def pair_mean_drops(session: Session, *, run_id: int, method: str, kind: str = "next_token") -> dict:
    """The run's ablation evidence, the one place the verdict reads it: per kept pair of ``kind``
    neurons with ``method`` ablation rows, the mean drop of p(token) over its held-out prompts
    where the head is active, and where it is not (the authors' per-pair statistic; a pair
    without prompts on a side has no value there). Returns ``{"active": [...], "inactive":
    [...]}``. Imported runs whose ablation is stored in the same table are read the same way."""
    rows = session.execute(select(Ablation.pair_id, Ablation.active, func.avg(Ablation.drop))
                           .join(Pair, Pair.id == Ablation.pair_id).join(Neuron, Neuron.id == Pair.neuron_id)
                           .where(Pair.run_id == run_id, Neuron.kind == kind, Ablation.method == method)
                           .group_by(Ablation.pair_id, Ablation.active)
                           .order_by(Ablation.pair_id, Ablation.active)).all()
    out: dict[str, list[float]] = {"active": [], "inactive": []}
    for _, active, mean in rows:
        if mean is not None:
            out["active" if active else "inactive"].append(float(mean))
    return out


def explainers_for_verdict(names: Sequence[str]) -> list[str]:
    """Explainers in the order the verdict shows them: an LLM's first (the paper's,
    ``explainers.llm_first``), then the others."""
    return llm_first(names)


def run_verdict(session: Session, run: Run, *, explainers: Sequence[str], methods: Sequence[str]) -> dict:
    """The verdict of ``run`` (docs/method.md §8): ``rule`` (the E rule used), ``paper`` (the
    reference figures, :func:`paper_reference`), ``explanations`` (per explainer, LLM first:
    ``vs_chance`` and ``vs_random`` claims), ``ablation`` (per method: the ``drop`` claim, and
    its control ``vs_random``: the next-token pairs' gap minus the random pairs', groups
    ``n`` = next-token active, inactive, random active, inactive), and the stated
    ``rule_text``."""
    ref = paper_reference(run.model_name, run.slug)
    rule = run_rule(run)
    expl = []
    for ex in explainers_for_verdict(explainers):
        nt = pair_scores(session, run_id=run.id, explainer=ex, kind="next_token", rule=rule)
        rnd = pair_scores(session, run_id=run.id, explainer=ex, kind="random", rule=rule)
        p_e, p_r = ref["E"][0], ref["E_random"][0]
        vs_random = claim([nt, rnd], null=0.0, paper=round(PAPER["gpt2-large"]["E"][0] - p_r, 6))
        if not rnd:
            vs_random["reason"] = "no scored pairs of random neurons in this run"
        expl.append({"explainer": ex, "vs_chance": claim([nt], null=0.5, paper=p_e), "vs_random": vs_random})
    abl = []
    for m in methods:
        d = pair_mean_drops(session, run_id=run.id, method=m)
        r = pair_mean_drops(session, run_id=run.id, method=m, kind="random")
        paper = ref.get("drop")
        vs_random = claim([d["active"], d["inactive"], r["active"], r["inactive"]], null=0.0, paper=None,
                          signs=(1, -1, -1, 1))
        if not r["active"] and not r["inactive"]:
            vs_random["reason"] = "no ablated pairs of random neurons in this run"
        abl.append({"method": m, "drop": claim([d["active"], d["inactive"]], null=0.0,
                                               paper=round(paper[0] - paper[1], 6) if paper else None),
                    "vs_random": vs_random,
                    "mean_active": _mean(d["active"]), "mean_inactive": _mean(d["inactive"]),
                    "random_mean_active": _mean(r["active"]), "random_mean_inactive": _mean(r["inactive"])})
    return {"rule": rule, "paper": ref, "explanations": expl, "ablation": abl, "rule_text": RULE,
            "words": WORDS}


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
