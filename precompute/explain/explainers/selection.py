"""The baseline's configuration chosen by cross-validation across neurons (docs/method.md §4).

The baseline (:mod:`precompute.explain.explainers.baseline`) has choices a fixed setting would tune to
whatever data it was tried on: the recency half-life, how many features it may name, and
whether its threshold is set on the prompts its features were chosen on or on their
out-of-fold scores. They are chosen per neuron, from :data:`GRID`, by leave-one-neuron-out
cross-validation on **explain prompts only**:

1. for every kept pair ``p`` of the run and every configuration ``c``, ``cv(c, p)`` is the
   balanced accuracy of ``c`` on ``p``'s own explain prompts, each predicted by a fit on the
   other folds (stratified, :func:`baseline.folds`);
2. neuron ``n``'s pairs use the ``c`` with the best mean ``cv(c, p)`` over the pairs of the
   *other* neurons (ties: the first in :data:`GRID`, the simplest first).

So no pair's configuration depends on its own neuron's prompts, and no held-out label is ever
read (the held-out prompts are only classified). The configuration used is stored on each
explanation (``settings``), with the mean CV score that chose it.
"""

from __future__ import annotations

from collections.abc import Sequence

from context_lookups.precompute.explain.explainers import PairResult, PairTask
from context_lookups.precompute.explain.explainers.baseline import Config, explain_pair, features, out_of_fold

GRID = tuple(Config(half_life=h, max_features=m, threshold=t)
             for m in (1, 2, 4, 6) for h in (4.0, 8.0, 16.0) for t in ("fit", "oof"))


def _bacc(pairs: Sequence[tuple[bool, float]], threshold: float = 0.0) -> float:
    pos = [s for a, s in pairs if a]
    neg = [s for a, s in pairs if not a]
    return 0.5 * (sum(s > threshold for s in pos) / len(pos) + sum(s <= threshold for s in neg) / len(neg))


def cv_scores(tasks: Sequence[PairTask], grid: Sequence[Config] = GRID) -> dict[int, list[float | None]]:
    """``{pair_id: [cv(c, p) for c in grid]}`` (None where a side of the pair's explain prompts
    is too small to fold, or the pair has one class): out-of-fold balanced accuracy on the
    pair's explain prompts, each fold's prompts classified by the fold-fit's own threshold."""
    out: dict[int, list[float | None]] = {}
    cache: dict[tuple[int, float], dict] = {}

    def feats(e, half_life):
        key = (e.prompt_id, half_life)
        if key not in cache:
            cache[key] = features(e.tokens, half_life=half_life)
        return cache[key]

    for t in tasks:
        row: list[float | None] = []
        for c in grid:
            if not t.active or not t.inactive:
                row.append(None)
                continue
            oof = out_of_fold([feats(e, c.half_life) for e in t.active],
                              [feats(e, c.half_life) for e in t.inactive], c, t.active_carriers(),
                              centred=True)
            row.append(None if oof is None else _bacc(oof))
        out[t.pair_id] = row
    return out


def choose(tasks: Sequence[PairTask], grid: Sequence[Config] = GRID
           ) -> dict[int, tuple[Config, float | None]]:
    """``{neuron_id: (config, mean cv of the other neurons' pairs)}`` by leave-one-neuron-out
    (module docstring); a neuron with no other neuron's pairs to learn from gets the first
    configuration of ``grid`` and None."""
    cv = cv_scores(tasks, grid)
    totals = [0.0] * len(grid)
    counts = [0] * len(grid)
    own: dict[int, tuple[list[float], list[int]]] = {}
    for t in tasks:
        s, n = own.setdefault(t.neuron_id, ([0.0] * len(grid), [0] * len(grid)))
        for j, v in enumerate(cv[t.pair_id]):
            if v is not None:
                totals[j] += v
                counts[j] += 1
                s[j] += v
                n[j] += 1
    out = {}
    for nid, (s, n) in own.items():
        means = [(totals[j] - s[j]) / (counts[j] - n[j]) if counts[j] - n[j] else None
                 for j in range(len(grid))]
        if all(m is None for m in means):
            out[nid] = (grid[0], None)
            continue
        j = max(range(len(grid)), key=lambda j: (means[j] if means[j] is not None else -1.0, -j))
        out[nid] = (grid[j], means[j])
    return out


def explain_with(task: PairTask, chosen: dict[int, tuple[Config, float | None]]) -> PairResult:
    """Explain ``task`` with the baseline and the configuration :func:`choose` gave its neuron
    (``chosen`` is computed once over every kept pair of the run, done or not, so that a
    resumed run chooses the same); the configuration and its CV score go on ``settings``."""
    config, cv = chosen.get(task.neuron_id, (GRID[0], None))
    res = explain_pair(task, config)
    res.settings = {**res.settings, "config": config.label(),
                    "cv": {"rule": "leave-one-neuron-out, explain prompts only",
                           "mean_bacc_other_neurons": cv}}
    return res
