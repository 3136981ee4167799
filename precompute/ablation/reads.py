"""The reads of step 5's rows (paper §5.4, docs/method.md §6), read only: the drop statistics
(the project's KS over prompts, the authors' over per-pair means), the run's ablation table,
one pair's ablation and what the pages show of each pair's ablation (its state, its mean
drops). Keyword-only; the job's summary and the explorer's pages call them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import NotFound
from context_lookups.precompute.heads.attribution import head_label
from context_lookups.precompute.model import METHODS
from context_lookups.precompute.store.schema import Ablation, Neuron, Pair, Phase, Prompt

CHUNK = 900  # ids per IN (...) list: under SQLite's bound-parameter limit


def _side(drops: list[float]) -> dict:
    return {"n": len(drops), "mean_drop": statistics.fmean(drops) if drops else None,
            "median_drop": statistics.median(drops) if drops else None}


def drop_stats(rows: Sequence[tuple[int, bool, float]]) -> dict:
    """Summary of ``(pair_id, active, drop)`` rows: counts, mean and median drop of active and
    inactive prompts, and ``scipy.stats.ks_2samp(active, inactive)`` (D, p; None with a
    ``reason`` when a side is empty)."""
    from scipy.stats import ks_2samp

    act = [d for _, a, d in rows if a]
    ina = [d for _, a, d in rows if not a]
    ks = {"D": None, "p": None, "reason": None}
    if not rows:
        ks["reason"] = "no ablation rows"
    elif not act or not ina:
        ks["reason"] = f"no {'active' if not act else 'inactive'} prompts"
    else:
        r = ks_2samp(act, ina)
        ks.update(D=float(r.statistic), p=float(r.pvalue))
    return {"n_pairs": len({p for p, _, _ in rows}), "n_prompts": len(rows),
            "active": _side(act), "inactive": _side(ina), "ks": ks}


def authors_stats(rows: Sequence[tuple[int, bool, float, int]]) -> dict:
    """The authors' ablation statistic (``notebooks/8_head_ablation.ipynb``, docs/method.md §6)
    of ``(pair_id, active, drop, n_records)`` rows: per pair, the mean drop over its active
    prompts and over its inactive ones (each prompt counted ``n_records`` times, as the authors'
    records were), a pair without prompts on a side giving no value there (their NaN, dropped);
    then ``scipy.stats.ks_2samp`` of the active pairs' means against the inactive pairs' means.
    ``active`` / ``inactive``: ``n`` (pairs with a value), mean and median of the per-pair means;
    ``ks``: D, p (None with a ``reason`` when a side is empty)."""
    from scipy.stats import ks_2samp

    sums: dict[tuple[int, bool], list[float]] = {}
    for pid, active, drop, n in rows:
        acc = sums.setdefault((pid, bool(active)), [0.0, 0])
        acc[0] += drop * (n or 1)
        acc[1] += n or 1
    act = [s / n for (_, a), (s, n) in sorted(sums.items()) if a]
    ina = [s / n for (_, a), (s, n) in sorted(sums.items()) if not a]
    ks = {"D": None, "p": None, "reason": None}
    if not act or not ina:
        side = "active" if not act else "inactive"
        ks["reason"] = "no ablation rows" if not rows else f"no pair with {side} prompts"
    else:
        r = ks_2samp(act, ina)
        ks.update(D=float(r.statistic), p=float(r.pvalue))
    return {"statistic": "KS over per-pair mean drops (the authors')", "active": _side(act),
            "inactive": _side(ina), "ks": ks}


def ablation_table(session: Session, *, run_id: int, method: str = "zero") -> dict:
    """The run's ablation study (paper §5.4, Table 3): for next-token and random-neuron pairs
    separately, ``drop_stats`` of every stored ablation row of ``method`` (the project's
    statistic: KS over prompts), ``authors``: :func:`authors_stats` of the same rows (KS over
    per-pair mean drops), plus ``n_kept`` (kept pairs of that kind, ablated or not).

    Returns ``{"run_id", "method", "next_token": {...}, "random": {...}}``.
    """
    out = {"run_id": run_id, "method": method}
    for kind in ("next_token", "random"):
        rows = session.execute(
            select(Ablation.pair_id, Ablation.active, Ablation.drop, Ablation.n_records)
            .join(Pair, Pair.id == Ablation.pair_id).join(Neuron, Neuron.id == Pair.neuron_id)
            .where(Pair.run_id == run_id, Neuron.kind == kind, Ablation.method == method)
            .order_by(Ablation.pair_id, Ablation.prompt_id)).all()
        n_kept = len(session.scalars(select(Pair.id).join(Neuron, Neuron.id == Pair.neuron_id)
                                     .where(Pair.run_id == run_id, Pair.kept,
                                            Neuron.kind == kind)).all())
        out[kind] = {**drop_stats([tuple(r[:3]) for r in rows]), "n_kept": n_kept,
                     "statistic": "KS over prompts (the project's)", "authors": authors_stats(rows)}
    return out


def pair_ablation_stats(session: Session, *, pair_id: int, method: str = "zero") -> dict:
    """``drop_stats`` of one pair, ``authors_mean``: its mean drops where active / inactive as the
    authors computed them (each prompt counted ``n_records`` times), plus its per-prompt rows
    (``prompts``: ``prompt_id``, ``rank``, ``active``, ``act_clean``, ``act_ablated``,
    ``prob_clean``, ``prob_ablated``, ``drop``, ``n_records``, by rank).

    Raises:
        NotFound: no pair with that id.
    """
    pair = session.get(Pair, pair_id)
    if pair is None:
        raise NotFound(f"Pair {pair_id} does not exist.")
    rows = session.execute(select(Ablation, Prompt.rank).join(Prompt, Prompt.id == Ablation.prompt_id)
                           .where(Ablation.pair_id == pair_id, Ablation.method == method)
                           .order_by(Prompt.rank)).all()
    out = drop_stats([(a.pair_id, a.active, a.drop) for a, _ in rows])
    auth = authors_stats([(a.pair_id, a.active, a.drop, a.n_records) for a, _ in rows])
    out["authors_mean"] = {"active": auth["active"]["mean_drop"], "inactive": auth["inactive"]["mean_drop"],
                           "records": sum(a.n_records for a, _ in rows)}
    out.update(pair_id=pair_id, method=method, head=head_label(pair.head_layer, pair.head),
               prompts=[dict(prompt_id=a.prompt_id, rank=rank, active=a.active, act_clean=a.act_clean,
                             act_ablated=a.act_ablated, prob_clean=a.prob_clean,
                             prob_ablated=a.prob_ablated, drop=a.drop, n_records=a.n_records)
                        for a, rank in rows])
    return out


# --- what the pages read of a run's ablations --------------------------------------------------------

def ablation_methods(session: Session, *, run_id: int) -> list[str]:
    """The ablation methods with rows in the run, by name."""
    return list(session.scalars(select(Ablation.method).join(Pair).where(Pair.run_id == run_id)
                                .distinct().order_by(Ablation.method)))


def ablation_phases(session: Session, *, run_id: int, pair_ids: list[int]) -> dict[int, dict[str, int]]:
    """``{pair_id: {method: held-out prompts}}`` of the pairs' finished ablation units of work
    (phase ``ablation:{method}:{pair_id}``): a pair with a phase but no ablation row was
    skipped, one without a phase is not computed yet."""
    out: dict[int, dict[str, int]] = {}
    if not pair_ids:
        return out
    names = {f"ablation:{m}:{pid}": (m, pid) for pid in pair_ids for m in METHODS}
    for name, stats in session.execute(select(Phase.name, Phase.stats).where(
            Phase.run_id == run_id, Phase.name.in_(list(names)))):
        m, pid = names[name]
        out.setdefault(pid, {})[m] = (stats or {}).get("prompts", 0)
    return out


def mean_drops(session: Session, *, pair_ids: list[int]) -> dict[int, dict[str, dict]]:
    """``{pair_id: {method: {"active" | "inactive": {"n", "mean_drop"}}}}``: each pair's held-out
    prompts and mean drop of p(token) where its head is active and where it is not, the same
    figures as :func:`pair_ablation_stats` (one mean, :func:`drop_stats`'s); a side without
    prompts is absent."""
    drops: dict[tuple[int, str, bool], list[float]] = {}
    for i in range(0, len(pair_ids), CHUNK):
        for pid, method, active, drop in session.execute(
                select(Ablation.pair_id, Ablation.method, Ablation.active, Ablation.drop)
                .where(Ablation.pair_id.in_(pair_ids[i:i + CHUNK]))
                .order_by(Ablation.pair_id, Ablation.method, Ablation.prompt_id)):
            drops.setdefault((pid, method, bool(active)), []).append(drop)
    out: dict[int, dict[str, dict]] = {}
    for (pid, method, active), ds in drops.items():
        side = _side(ds)
        out.setdefault(pid, {}).setdefault(method, {})["active" if active else "inactive"] = {
            "n": side["n"], "mean_drop": side["mean_drop"]}
    return out


def pair_ablations(session: Session, *, pair_id: int) -> dict[str, dict[int, Ablation]]:
    """``{method: {prompt_id: Ablation}}`` of one pair."""
    out: dict[str, dict[int, Ablation]] = {}
    for a in session.scalars(select(Ablation).where(Ablation.pair_id == pair_id)):
        out.setdefault(a.method, {})[a.prompt_id] = a
    return out


def ablation_rows(session: Session, *, pair_ids: list[int], method: str | None = None
                  ) -> list[tuple[Ablation, int]]:
    """Every ablation row of the pairs (of ``method``, or of every method) with its prompt's
    rank, by pair, method and rank: ``[(Ablation, rank)]``."""
    if not pair_ids:
        return []
    q = (select(Ablation, Prompt.rank).join(Prompt, Prompt.id == Ablation.prompt_id)
         .where(Ablation.pair_id.in_(pair_ids)))
    if method is not None:
        q = q.where(Ablation.method == method)
    return [tuple(r) for r in session.execute(q.order_by(Ablation.pair_id, Ablation.method, Prompt.rank))]


def pair_ablation_summary(session: Session, *, pair_id: int) -> dict:
    """:func:`pair_ablation_stats` per stored method, without the per-prompt rows (the pair page
    shows those next to each prompt)."""
    methods = session.scalars(select(Ablation.method).where(Ablation.pair_id == pair_id).distinct())
    out = {}
    for m in methods:
        st = pair_ablation_stats(session, pair_id=pair_id, method=m)
        st.pop("prompts", None)
        out[m] = st
    return out
