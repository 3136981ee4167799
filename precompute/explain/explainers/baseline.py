"""The baseline explainer: offline, deterministic context statistics (no LLM).

It calibrates what an LLM adds to the explanation score (paper §4.4): it explains a (neuron,
head) pair by the context features that separate the prompts on which the head is active from
those on which it is not, and classifies a held-out prompt by the same features.

Features: tokens and token bigrams of a prompt (token strings as stored in ``Prompt.tokens``,
without BOS). A feature's value on a prompt is a recency weight ``x = 2 ** (-d / HALF_LIFE)``
of its latest occurrence, ``d`` = tokens between the feature's last token and the prompt's last
token (0 for the last token), and 0 when absent — so context near the end (where the head reads
at the last position) counts more. Length features: for each ``k`` in ``LENGTHS``, "the prompt
has at most ``k`` tokens" or "more than ``k``" (value 1), since which head reads the context
depends on how much context there is (trimmed prompts end where the neuron fires).

Contrast: weighted log-odds with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008,
"Fightin' Words", eq. 16-22), with weighted counts ``y_f^A = Σ_active x_f``,
``y_f^I = Σ_inactive x_f``, totals ``n^A``, ``n^I``, and as prior the pooled counts of the
pair's own explain prompts (``α_f = y_f^A + y_f^I``, ``α_0 = n^A + n^I``)::

    δ_f = log((y^A + α_f) / (n^A + α_0 - y^A - α_f)) - log((y^I + α_f) / (n^I + α_0 - y^I - α_f))
    z_f = δ_f / sqrt(1 / (y^A + α_f) + 1 / (y^I + α_f))

Candidates: the ``N_CANDIDATES`` features with the largest positive z present in at least
``MIN_SUPPORT`` active prompts, and as many with the most negative z present in at least
``MIN_SUPPORT`` inactive prompts. A prompt's score is ``s = Σ_selected z_f · x_f``; it is
classified active when ``s > threshold``, the threshold being the midpoint (between consecutive
explain-prompt scores) that maximises balanced accuracy ``½(TPR + TNR)`` on the explain prompts
(ties: the middle one of the tied candidates). The selected features are chosen greedily
(forward selection, at most ``MAX_FEATURES``): at each step the candidate that most raises that
balanced accuracy is added; selection stops when none raises it — so the explanation names the
fewest features that separate the explain prompts, and chance features that a larger fixed set
would drag in stay out. The explanation text names the selected features, positive (active)
and negative (inactive). Nothing is random.

The look-up (docs/method.md §3-§4): when the pair's explain prompts carry their stored
per-source decomposition (``Example.carriers``), the ``N_LOOKUP`` token strings that carry the
most to the neuron through the head, summed over the *active* explain prompts of the fit, join
the candidates (with their own z, whatever their support): the tokens the head reads when it
is active. Selection and classification are unchanged, so a held-out prompt is still classified
from its text alone; the explanation says "reads" for a selected feature that came from the
look-up. Held-out prompts carry no look-up and none is ever read for them.

One-class explain splits (the authors' pairs have no upper bound on the active fraction, so a
head can be active on every explain prompt): there is nothing to contrast, and the explanation
is the split itself, "active on every prompt" (or "on none"), which answers every held-out
prompt with that class. Held-out prompts are answered even when they are all one class, so the
authors' single-class rule (``scoring.authors_score``) can score the pair. Only the explain
prompts of the pair are ever read; the held-out truth is not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from context_lookups.precompute.explain.explainers import BASELINE, PairResult, PairTask

LENGTHS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # tokens: thresholds of the length features
HALF_LIFE = 8.0  # tokens: a feature 8 tokens before the end weighs half as much as at the end
MAX_N = 2  # unigrams and bigrams
N_CANDIDATES = 10  # candidate features per side, by |z|
MAX_FEATURES = 6  # features named in all
MIN_SUPPORT = 2  # prompts of the side that must contain a candidate feature
N_LOOKUP = 4  # look-up candidates: the tokens carrying the most over the active explain prompts
FOLDS = 5  # folds of the explain prompts for out-of-fold thresholds
_EPS = 1e-9


@dataclass(frozen=True)
class Config:
    """The baseline's choices that cross-validation selects (``explainers.selection``):
    ``half_life`` of the recency weight (tokens), at most ``max_features`` named features, and
    where the threshold comes from: ``"fit"`` (the explain prompts the features were chosen
    on) or ``"oof"`` (their out-of-fold scores: each prompt scored by a fit on the other
    folds, so the threshold is not set on scores the selection has already pushed apart)."""

    half_life: float = HALF_LIFE
    max_features: int = MAX_FEATURES
    threshold: str = "fit"

    def label(self) -> str:
        return (f"half-life {self.half_life:g}, at most {self.max_features} features, "
                f"threshold {self.threshold}")


DEFAULT = Config()

METHOD_NOTE = (
    "Baseline explainer (no LLM; paper §4.4 calibration): weighted log-odds with an "
    "informative Dirichlet prior (Monroe et al. 2008) of tokens, bigrams and prompt-length "
    "thresholds between the "
    "{n_active} active and {n_inactive} inactive explain prompts of the pair, each occurrence "
    "weighted by 2^(-d/{half_life:g}) (d = tokens from the end of the prompt), and the tokens the "
    "head reads that carry the most to the neuron on the active explain prompts (its look-up, "
    "when stored); held-out prompts are classified from their text by the sum of z-scores of the "
    "named features against a threshold chosen on the explain prompts.")


def features(tokens: Sequence[str], *, max_n: int = MAX_N, half_life: float = HALF_LIFE) -> dict[str, float]:
    """The recency-weighted features of one prompt: ``{feature: x}`` with ``x`` in (0, 1].

    A feature is the concatenated text of 1..``max_n`` consecutive tokens; ``x`` is
    ``2 ** (-d / half_life)`` of its latest occurrence, ``d`` = distance in tokens between the
    feature's last token and the prompt's last token. Plus one length feature per ``LENGTHS``
    threshold (``length_feature``), ``x`` = 1.
    """
    out: dict[str, float] = {}
    last = len(tokens) - 1
    for end in range(len(tokens)):
        w = 2.0 ** (-(last - end) / half_life)
        for n in range(1, max_n + 1):
            if end - n + 1 < 0:
                break
            f = "".join(tokens[end - n + 1:end + 1])
            if w > out.get(f, 0.0):
                out[f] = w
    for k in LENGTHS:
        out[length_feature(k, len(tokens) <= k)] = 1.0
    return out


_LEN_MARK = "\x00len"  # length features cannot collide with token text (no token holds NUL + this)


def length_feature(k: int, at_most: bool) -> str:
    """The name of the length feature "at most ``k`` tokens" (or "more than ``k``")."""
    return f"{_LEN_MARK}{'<=' if at_most else '>'}{k}"


def feature_text(f: str) -> str:
    """A feature as the explanation names it: quoted token text, or the length condition."""
    if f.startswith(_LEN_MARK):
        rest = f[len(_LEN_MARK):]
        return (f"a prompt of at most {rest[2:]} tokens" if rest.startswith("<=")
                else f"a prompt of more than {rest[1:]} tokens")
    return json.dumps(f, ensure_ascii=False)


def _counts(xs: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, int]]:
    """Per feature: the summed weights ``y_f`` and the number of prompts holding it."""
    y: dict[str, float] = {}
    n: dict[str, int] = {}
    for x in xs:
        for f, v in x.items():
            y[f] = y.get(f, 0.0) + v
            n[f] = n.get(f, 0) + 1
    return y, n


def _z(ya: dict[str, float], yi: dict[str, float], feats) -> dict[str, float]:
    na, ni = sum(ya.values()), sum(yi.values())
    a0 = na + ni
    out = {}
    for f in feats:
        a, i = ya.get(f, 0.0), yi.get(f, 0.0)
        alpha = a + i
        # The floors only matter when one feature holds all the mass (single-token prompts).
        delta = (math.log((a + alpha) / max(na + a0 - a - alpha, _EPS))
                 - math.log((i + alpha) / max(ni + a0 - i - alpha, _EPS)))
        out[f] = delta / math.sqrt(1.0 / (a + alpha) + 1.0 / (i + alpha))
    return out


def log_odds_z(active: Sequence[dict[str, float]], inactive: Sequence[dict[str, float]]) -> dict[str, float]:
    """z-scores of the weighted log-odds ratio (active vs inactive) of every feature, with an
    informative Dirichlet prior from the pooled counts (Monroe et al. 2008). Positive z: more
    typical of active prompts."""
    ya, _ = _counts(active)
    yi, _ = _counts(inactive)
    return _z(ya, yi, set(ya) | set(yi))


def _threshold(scores: Sequence[float], truth: Sequence[bool]) -> tuple[float, float]:
    """``(balanced accuracy, threshold)`` of the best threshold (see ``best_threshold``); one
    sort and one sweep over the distinct scores."""
    n_pos = sum(1 for y in truth if y)
    n_neg = len(truth) - n_pos
    counts: dict[float, list[int]] = {}
    for s, y in zip(scores, truth, strict=True):
        counts.setdefault(s, [0, 0])[0 if y else 1] += 1
    vals = sorted(counts)
    cands = [vals[0] - 1.0] + [(a + b) / 2 for a, b in zip(vals, vals[1:], strict=False)] + [vals[-1] + 1.0]
    accs = []
    below_pos = below_neg = 0  # prompts with a score below the candidate: predicted inactive
    for j in range(len(cands)):
        if j:
            below_pos += counts[vals[j - 1]][0]
            below_neg += counts[vals[j - 1]][1]
        tp, tn = n_pos - below_pos, below_neg
        accs.append(0.5 * ((tp / n_pos if n_pos else 0.0) + (tn / n_neg if n_neg else 0.0)))
    best = max(accs)
    tied = [t for t, a in zip(cands, accs, strict=True) if a == best]
    return best, tied[(len(tied) - 1) // 2]


def best_threshold(scores: Sequence[float], truth: Sequence[bool]) -> float:
    """The threshold ``t`` (predict active iff ``score > t``) maximising balanced accuracy on
    ``scores``; candidates are midpoints between consecutive distinct scores and one below the
    lowest / above the highest; ties go to the middle tied candidate."""
    return _threshold(scores, truth)[1]


@dataclass
class BaselineExplanation:
    """The fitted baseline for one pair: named features with their z-scores and the
    threshold. ``classify`` applies the fixed scoring rule to a prompt's tokens."""

    active_features: list[tuple[str, float]]
    inactive_features: list[tuple[str, float]]
    threshold: float
    n_active: int
    n_inactive: int
    config: Config = DEFAULT
    read: tuple[str, ...] = ()  # look-up candidates of the fit (the tokens the head reads)

    def score(self, tokens: Sequence[str]) -> float:
        x = features(tokens, half_life=self.config.half_life)
        return sum(z * x.get(f, 0.0) for f, z in self.active_features + self.inactive_features)

    def classify(self, tokens: Sequence[str]) -> tuple[bool, str]:
        """``(predicted active, answer)``; the answer starts with ``Yes`` / ``No`` and gives
        the score against the threshold."""
        s = self.score(tokens)
        if s > self.threshold:
            return True, f"Yes (score {s:.3f} > threshold {self.threshold:.3f})"
        return False, f"No (score {s:.3f} <= threshold {self.threshold:.3f})"

    def text(self) -> str:
        """The readable explanation, labelled as the baseline."""
        def names(fs):
            return ", ".join(feature_text(f) for f, _ in fs)

        if not self.active_features and not self.inactive_features:
            return ("Baseline (token statistics, no LLM): no token or bigram of the context "
                    "separates the active from the inactive examples.")
        parts = []
        reads = [(f, z) for f, z in self.active_features if f in self.read]
        others = [(f, z) for f, z in self.active_features if f not in self.read]
        if reads:
            parts.append(f"active when it reads {' or '.join(feature_text(f) for f, _ in reads)} from the "
                         f"context{f', or the context contains {names(others)}' if others else ''}")
        elif self.active_features:
            parts.append(f"active when the context contains {names(self.active_features)}, "
                         f"especially near the end")
        if self.inactive_features:
            parts.append(f"inactive when it contains {names(self.inactive_features)}")
        return "Baseline (token statistics, no LLM): the head is " + "; ".join(parts) + "."

    def as_dict(self) -> dict:
        return {"active_features": [[f, round(z, 6)] for f, z in self.active_features],
                "inactive_features": [[f, round(z, 6)] for f, z in self.inactive_features],
                "threshold": self.threshold, "half_life": self.config.half_life, "max_n": MAX_N,
                "n_candidates": N_CANDIDATES, "max_features": self.config.max_features,
                "threshold_from": self.config.threshold,
                "min_support": MIN_SUPPORT, "lengths": list(LENGTHS),
                "prior": "pooled explain prompts of the pair", "n_lookup": N_LOOKUP,
                "read_candidates": list(self.read)}


def fit(active: Sequence[Sequence[str]], inactive: Sequence[Sequence[str]],
        config: Config = DEFAULT) -> BaselineExplanation:
    """Fit the baseline on the token lists of the active and inactive explain prompts, with
    ``config`` (the threshold is the in-sample one; ``explain_pair`` applies ``"oof"``).

    Raises:
        ValueError: either side is empty (a kept pair always has both).
    """
    if not active or not inactive:
        raise ValueError(f"The baseline needs active and inactive examples, got {len(active)} "
                         f"active and {len(inactive)} inactive.")
    return fit_features([features(t, half_life=config.half_life) for t in active],
                        [features(t, half_life=config.half_life) for t in inactive], config)


def read_tokens(carriers_a: Sequence[dict[str, float]] | None, n: int = N_LOOKUP) -> list[str]:
    """The look-up candidates: the ``n`` token strings that carry the most to the neuron summed
    over the active explain prompts' carriers (``precompute.heads.lookup.carriers``, BOS left out),
    those with a positive total only; ties by token. Empty without carriers."""
    total: dict[str, float] = {}
    for c in carriers_a or ():
        for t, v in c.items():
            total[t] = total.get(t, 0.0) + v
    return [t for t in sorted(total, key=lambda t: (-total[t], t))[:n] if total[t] > 0]


def fit_features(xa: Sequence[dict[str, float]], xi: Sequence[dict[str, float]],
                 config: Config = DEFAULT, carriers_a: Sequence[dict[str, float]] | None = None
                 ) -> BaselineExplanation:
    """:func:`fit` on the prompts' features (``features(tokens, half_life=config.half_life)``);
    ``carriers_a``: the look-up of each active prompt (aligned with ``xa``), or None."""
    ya, sa = _counts(xa)
    yi, si = _counts(xi)
    # z only of the features that can be candidates (enough support on one side): the same
    # candidates as ranking every feature, without the work
    z = _z(ya, yi, [f for f in set(ya) | set(yi)
                    if sa.get(f, 0) >= MIN_SUPPORT or si.get(f, 0) >= MIN_SUPPORT])
    ranked = sorted(z.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    pos = [(f, v) for f, v in ranked if v > 0 and sa.get(f, 0) >= MIN_SUPPORT][:N_CANDIDATES]
    neg = [(f, v) for f, v in ranked if v < 0 and si.get(f, 0) >= MIN_SUPPORT][:N_CANDIDATES]
    cands = sorted(pos + neg, key=lambda kv: (-abs(kv[1]), kv[0]))
    read = [t for t in read_tokens(carriers_a) if t in ya]
    have = {f for f, _ in cands}
    cands += sorted(((f, v) for f, v in _z(ya, yi, [t for t in read if t not in have]).items() if v != 0),
                    key=lambda kv: (-abs(kv[1]), kv[0]))
    xs = xa + xi
    truth = [True] * len(xa) + [False] * len(xi)
    # Greedy forward selection: add the candidate that most raises the balanced accuracy on the
    # explain prompts; stop when none raises it (fewest features that explain the split).
    chosen: list[tuple[str, float]] = []
    cur = [0.0] * len(xs)
    best = 0.5  # a constant score: chance
    while len(chosen) < config.max_features:
        trial = None
        for f, v in cands:
            if any(f == c for c, _ in chosen):
                continue
            sc = [c + v * x.get(f, 0.0) for c, x in zip(cur, xs, strict=True)]
            ba = _threshold(sc, truth)[0]
            if trial is None or ba > trial[0] + 1e-12:
                trial = (ba, f, v, sc)
        if trial is None or trial[0] <= best + 1e-12:
            break
        best, f, v, cur = trial
        chosen.append((f, v))
    model = BaselineExplanation(sorted(((f, v) for f, v in chosen if v > 0), key=lambda kv: -kv[1]),
                                sorted(((f, v) for f, v in chosen if v < 0), key=lambda kv: kv[1]),
                                _threshold(cur, truth)[1], len(xa), len(xi), config, tuple(read))
    return model


def folds(n_active: int, n_inactive: int, k: int = FOLDS) -> list[list[tuple[bool, int]]]:
    """Stratified folds of a pair's explain prompts: ``[(active, index within its side)]``
    per fold, each side dealt round-robin in order (deterministic); at most ``k`` folds, fewer
    when a side is small, and none when a side has fewer than 2 prompts."""
    k = min(k, n_active, n_inactive)
    if k < 2:
        return []
    out: list[list[tuple[bool, int]]] = [[] for _ in range(k)]
    for side, n in ((True, n_active), (False, n_inactive)):
        for i in range(n):
            out[i % k].append((side, i))
    return out


def out_of_fold(xa: Sequence[dict], xi: Sequence[dict], config: Config,
                carriers_a: Sequence[dict] | None = None, *,
                centred: bool = False) -> list[tuple[bool, float]] | None:
    """Each explain prompt's score under a fit on the other folds (:func:`folds`), as
    ``(active, score)``; None when the sides are too small to fold. A fold's look-up
    candidates come from its own training prompts (``carriers_a`` aligned with ``xa``).
    ``centred``: ``score - threshold`` instead, the threshold being the fold-fit's own
    (``config.threshold == "fit"``) or chosen from its training folds' out-of-fold scores
    (``"oof"``), as :func:`explain_pair` chooses it (used by ``explainers.selection``)."""
    fs = folds(len(xa), len(xi))
    if not fs:
        return None
    out = []
    for f in fs:
        held = set(f)
        ta = [x for i, x in enumerate(xa) if (True, i) not in held]
        ti = [x for i, x in enumerate(xi) if (False, i) not in held]
        tc = None if carriers_a is None else [c for i, c in enumerate(carriers_a) if (True, i) not in held]
        model = fit_features(ta, ti, config, tc)
        offset = 0.0
        if centred:
            inner = out_of_fold(ta, ti, config, tc) if config.threshold == "oof" else None
            if inner is not None:
                model.threshold = best_threshold([s for _, s in inner], [a for a, _ in inner])
            offset = model.threshold
        feats = model.active_features + model.inactive_features
        for side, i in f:
            x = (xa if side else xi)[i]
            out.append((side, sum(z * x.get(name, 0.0) for name, z in feats) - offset))
    return out


def explain_pair(task: PairTask, config: Config = DEFAULT) -> PairResult:
    """Explain one pair with the baseline (``config``: see :class:`Config`; the precompute job
    and ``lookups explain`` choose it by cross-validation across neurons,
    ``explainers.selection``) and answer Yes / No on each of its held-out prompts (also when
    they are all one class: status ``single_class``). Reads only the explain prompts' labels;
    a pair without explain prompts fails."""
    act, inact = task.active, task.inactive
    status = "single_class" if task.single_class else "ok"
    if not act and not inact:
        return PairResult(status="failed", error="the pair has no explain prompt")
    if not act or not inact:  # nothing to contrast: the split itself is the explanation
        yes = bool(act)
        n = len(act or inact)
        text = (f"Baseline (token statistics, no LLM): the head was {'active' if yes else 'inactive'} "
                f"on all {n} explain prompts, with no {'inactive' if yes else 'active'} example to "
                f"contrast: it is taken to be {'active on every' if yes else 'inactive on every'} prompt.")
        answer = f"{'Yes' if yes else 'No'} ({'active' if yes else 'inactive'} on every explain prompt)"
        return PairResult(status=status, text=text, prompt=METHOD_NOTE.format(
                              n_active=len(act), n_inactive=len(inact), half_life=HALF_LIFE),
                          settings={"explainer": BASELINE, "one_class": "active" if yes else "inactive"},
                          answers=[(e.prompt_id, e.active, answer) for e in task.heldout])
    xa = [features(e.tokens, half_life=config.half_life) for e in act]
    xi = [features(e.tokens, half_life=config.half_life) for e in inact]
    ca = task.active_carriers()
    model = fit_features(xa, xi, config, ca)
    if config.threshold == "oof":
        oof = out_of_fold(xa, xi, config, ca)
        if oof is not None:
            model.threshold = best_threshold([s for _, s in oof], [a for a, _ in oof])
    note = METHOD_NOTE.format(n_active=len(act), n_inactive=len(inact), half_life=config.half_life)
    return PairResult(status=status, text=model.text(), prompt=note,
                      settings={"explainer": BASELINE, **model.as_dict()},
                      answers=[(e.prompt_id, e.active, model.classify(e.tokens)[1]) for e in task.heldout])
