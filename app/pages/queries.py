"""The stored-data pages' own reads of the database, as keyword-only functions: the runs, a run's
findings and counts, and the filtered, sorted, paginated lists of neurons and of pairs (which
join several steps' rows). The reads of one paper step's rows are that step's own
(``precompute.<step>.reads``); the pages call them directly.

Routes never build SQL. Functions return ORM rows or plain dicts/lists ready for a template and
for JSON. Lookups that can fail raise :class:`precompute.core.errors.NotFound` with a message
naming the valid range; the route boundary turns it into a 404.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass

from sqlalchemy import and_, case, exists, func, select
from sqlalchemy.orm import Session, defer, load_only

from context_lookups.precompute.ablation.reads import ablation_methods, ablation_table
from context_lookups.precompute.core.errors import NotFound
from context_lookups.precompute.explain.explainers import preferred
from context_lookups.precompute.findings.report import comparison_table, explainers_of_run, score_table
from context_lookups.precompute.findings.verdict import run_verdict
from context_lookups.precompute.heads import reads as head_reads
from context_lookups.precompute.store.runs import check_layer
from context_lookups.precompute.store.schema import (
    Ablation,
    Explanation,
    Neuron,
    Pair,
    Prompt,
    Run,
)

logger = logging.getLogger(__name__)

KINDS = ("selected", "all", "next_token", "random", "other")
# "kind" (the default) sorts the neurons with a kept pair first, so the list opens on neurons that
# lead somewhere; then the analysed neurons: next-token, then random, then the others.
KEPT_FIRST = case((exists().where(Pair.neuron_id == Neuron.id, Pair.kept.is_(True)), 0), else_=1)
KIND_ORDER = case({"next_token": 0, "random": 1}, value=Neuron.kind, else_=2)
SORTS = {"kind": KIND_ORDER, "congruence": Neuron.congruence, "best_score": Neuron.best_score,
         "max_act": Neuron.max_act, "layer": Neuron.layer, "neuron": Neuron.neuron, "token": Neuron.token}


# Bounds of what one page may show (a hostile or huge import cannot make a page unbounded):
MAX_PAGE_PROMPTS = 200  # prompts of one neuron and split on a neuron or pair page
MAX_PAGE_ROWS = 500  # rows of a list that is not paginated (a head's neurons, findings' pair rows)


# --- runs ------------------------------------------------------------------------------------

def list_runs(session: Session) -> list[Run]:
    return list(session.scalars(select(Run).order_by(Run.started_at.desc(), Run.id)))


def get_run(session: Session, *, slug: str) -> Run:
    """The run called ``slug``. Raises NotFound naming the runs that exist."""
    run = session.scalar(select(Run).where(Run.slug == slug))
    if run is None:
        names = [r.slug for r in list_runs(session)]
        raise NotFound(f"Unknown model {slug!r}: runs in this database are "
                       f"{', '.join(names) if names else 'none (run `lookups precompute`)'}.")
    return run


def run_counts(session: Session, *, run_id: int) -> dict:
    """Rows per table of one run (neurons by kind, prompts, pairs, explanations, ablations)."""
    kinds = dict(session.execute(select(Neuron.kind, func.count()).where(Neuron.run_id == run_id)
                                 .group_by(Neuron.kind)).all())
    pairs = dict(session.execute(select(Pair.kept, func.count()).where(Pair.run_id == run_id)
                                 .group_by(Pair.kept)).all())
    n_prompts = session.scalar(select(func.count()).select_from(Prompt).join(Neuron)
                               .where(Neuron.run_id == run_id)) or 0
    n_expl = session.scalar(select(func.count()).select_from(Explanation).join(Pair)
                            .where(Pair.run_id == run_id)) or 0
    n_abl = session.scalar(select(func.count()).select_from(Ablation).join(Pair)
                           .where(Pair.run_id == run_id)) or 0
    return {"neurons": sum(kinds.values()), "next_token": kinds.get("next_token", 0),
            "random": kinds.get("random", 0), "other": kinds.get("other", 0), "prompts": n_prompts,
            "pairs": sum(pairs.values()), "kept_pairs": pairs.get(True, 0),
            "explanations": n_expl, "ablations": n_abl}


def findings(session: Session, *, run_id: int) -> dict:
    """The paper's two claims for one run: the ``verdict`` (``precompute.findings.verdict.run_verdict``)
    and the two tables behind it, from precompute: explanation scores E of next-token
    vs random neurons per explainer (``report.score_table``) and ablation drops of active vs
    inactive prompts per method (``ablation.ablation_table``). Empty dicts when not computed.
    ``comparisons``: each other explainer against the first LLM explainer (else the first) on
    the same pairs (``report.comparison_table``). ``knockout``: the run's attention-knockout
    summary over its kept pairs (``heads.reads.knockout_summary`` without the per-pair map;
    docs/method.md §3), with its ``state``."""
    names = explainers_of_run(session, run_id=run_id)
    ref = preferred(names)  # an LLM's when there is one
    methods = ablation_methods(session, run_id=run_id)
    comparisons = []
    for ex in names:
        if ex != ref:
            c = comparison_table(session, run_id=run_id, a=ref, b=ex)
            c["n_rows"], c["rows"] = len(c["rows"]), c["rows"][:MAX_PAGE_ROWS]  # all pairs: /{run}/pairs
            comparisons.append(c)
    return {"verdict": run_verdict(session, session.get(Run, run_id), explainers=names, methods=methods),
            "explanations": {ex: score_table(session, run_id=run_id, explainer=ex) for ex in names},
            "ablation": {m: ablation_table(session, run_id=run_id, method=m) for m in methods},
            "comparisons": comparisons, "knockout": knockout_findings(session, run_id=run_id)}


def knockout_findings(session: Session, *, run_id: int) -> dict:
    """The run's knockout summary (``heads.reads.knockout_summary``: the share of pairs whose top
    context source holds, with its Wilson interval, and the pairs' rank agreement) and its
    ``state``: ``done``, ``not_in_data`` (an imported run: the knockout needs the model) or
    ``not_computed`` (no knockout stored: a run computed before it existed or with
    ``--knockout-top-m 0``)."""
    run = session.get(Run, run_id)
    out = {k: v for k, v in head_reads.knockout_summary(session, run_id=run_id).items() if k != "pairs"}
    if out["n_pairs"]:
        out["state"] = {"state": "done", "reason": None}
    elif run.provenance is not None:
        out["state"] = {"state": "not_in_data", "reason": "the knockout needs the model's weights, which "
                        "the authors' files do not hold"}
    else:
        out["state"] = {"state": "not_computed", "reason": "no knockout stored: a run computed before the "
                        "knockout existed or with --knockout-top-m 0"}
    return out


def strong_candidates(session: Session, *, run_id: int, min_per_class: int) -> list[tuple]:
    """``(Explanation, Pair, Neuron)`` rows that may be among the run's strongest pairs (the home
    page's list, :func:`app.pages.views.strongest_pairs`): explanations of kept pairs with E above
    0.5 and at least ``min_per_class`` distinct held-out prompts in each class."""
    return [tuple(r) for r in session.execute(
        select(Explanation, Pair, Neuron).join(Pair, Pair.id == Explanation.pair_id)
        .join(Neuron, Neuron.id == Pair.neuron_id)
        .where(Pair.run_id == run_id, Pair.kept.is_(True), Explanation.score > 0.5,
               Explanation.n_pos >= min_per_class, Explanation.n_neg >= min_per_class))]


def layer_counts(session: Session, *, run_id: int) -> dict[int, dict]:
    """Per scanned layer: selected neurons by kind, pairs scored and kept (next-token and
    random neurons together)."""
    out: dict[int, dict] = {}
    for layer, kind, n in session.execute(select(Neuron.layer, Neuron.kind, func.count())
                                          .where(Neuron.run_id == run_id, Neuron.kind != "other")
                                          .group_by(Neuron.layer, Neuron.kind)):
        out.setdefault(layer, {"next_token": 0, "random": 0, "pairs": 0, "kept_pairs": 0})[kind] = n
    for layer, kept, n in session.execute(select(Neuron.layer, Pair.kept, func.count())
                                          .join(Neuron, Neuron.id == Pair.neuron_id)
                                          .where(Pair.run_id == run_id).group_by(Neuron.layer, Pair.kept)):
        row = out.setdefault(layer, {"next_token": 0, "random": 0, "pairs": 0, "kept_pairs": 0})
        row["pairs"] += n
        row["kept_pairs"] += n if kept else 0
    return dict(sorted(out.items()))


# --- neurons ---------------------------------------------------------------------------------

@dataclass
class NeuronFilter:
    """The neuron list's query. The default view (``sort="kind"``) leads with the neurons that
    have a kept pair, then the analysed neurons (``kind`` "selected": next-token, then random),
    each group by congruence; ``kind="all"`` lists every scanned neuron."""

    layer: int | None = None
    kind: str = "selected"
    q: str | None = None
    min_congruence: float | None = None
    max_congruence: float | None = None
    min_score: float | None = None
    sort: str = "kind"
    order: str = "asc"
    page: int = 1
    per_page: int = 50


def _by_ids(session: Session, model, ids, *options) -> list:
    """Rows of ``model`` with these ids, in the order of ``ids`` (read 900 at a time: SQLite's
    bound-parameter limit), loaded with ``options`` (e.g. ``load_only``)."""
    found = {}
    ids = list(ids)
    for i in range(0, len(ids), 900):
        found.update((r.id, r) for r in session.scalars(select(model).where(model.id.in_(ids[i:i + 900]))
                                                        .options(*options)))
    return [found[i] for i in ids if i in found]


def list_neurons(session: Session, *, run: Run, flt: NeuronFilter, ids=None) -> tuple[list[Neuron], int]:
    """One page of the run's neurons matching ``flt`` and the total count; with ``ids`` (keys
    of :func:`neuron_keys`), those neurons in that order and their count.

    The page is found on the sort keys and ids alone (the sorter never carries a row's JSON
    columns), then its rows are read by id.

    Raises:
        NotFound: ``flt.layer`` is not a scanned layer.
    """
    if ids is not None:
        rows = _by_ids(session, Neuron, ids)
        return rows, len(rows)
    where, order = _neuron_query(run, flt)
    total = session.scalar(select(func.count()).select_from(Neuron).where(where)) or 0
    page = session.scalars(select(Neuron.id).where(where).order_by(*order)
                           .limit(flt.per_page).offset((flt.page - 1) * flt.per_page)).all()
    return _by_ids(session, Neuron, page), total


def neuron_keys(session: Session, *, run: Run, flt: NeuronFilter) -> array:
    """The ids of every neuron of the run matching ``flt``, in the list's order (one sorted
    read of the keys: a CSV streams their rows a chunk at a time by id, never by OFFSET)."""
    where, order = _neuron_query(run, flt)
    return array("q", session.scalars(select(Neuron.id).where(where).order_by(*order)))


def _neuron_query(run: Run, flt: NeuronFilter):
    """The WHERE and ORDER BY of the neuron list (the last keys, layer and neuron, are unique).

    Raises:
        NotFound: ``flt.layer`` is not a scanned layer.
    """
    if flt.layer is not None:
        check_layer(run, flt.layer)
    cond = [Neuron.run_id == run.id]
    if flt.layer is not None:
        cond.append(Neuron.layer == flt.layer)
    if flt.kind == "selected":
        cond.append(Neuron.kind != "other")
    elif flt.kind != "all":
        cond.append(Neuron.kind == flt.kind)
    if flt.q:
        esc = flt.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        cond.append(Neuron.token.ilike(f"%{esc}%", escape="\\"))
    if flt.min_congruence is not None:
        cond.append(Neuron.congruence >= flt.min_congruence)
    if flt.max_congruence is not None:
        cond.append(Neuron.congruence <= flt.max_congruence)
    if flt.min_score is not None:
        cond.append(Neuron.best_score >= flt.min_score)
    col = SORTS[flt.sort]
    primary = col.desc().nulls_last() if flt.order == "desc" else col.asc().nulls_last()
    lead = ()
    if flt.sort == "kind":  # neurons with a kept pair first (last, reversed)
        lead = (KEPT_FIRST.desc() if flt.order == "desc" else KEPT_FIRST.asc(),)
    ties = (Neuron.congruence.desc(),) if flt.sort == "kind" else ()
    return and_(*cond), (*lead, primary, *ties, Neuron.layer, Neuron.neuron)


# --- pairs and heads -------------------------------------------------------------------------

@dataclass
class PairFilter:
    """The run's pair list: one row per (pair, explanation), or per pair without any."""

    layer: int | None = None
    kind: str = "selected"
    kept: bool = True
    explainer: str | None = None
    min_score: float | None = None
    min_n: int | None = None
    sort: str = "score"
    page: int = 1
    per_page: int = 100


# "n": the smaller class of the held-out set first-largest (the figure that limits how precise E
# is, docs/method.md §5), then E.
PAIR_SORTS = ("score", "neuron", "n")
_SMALLER_CLASS = case((Explanation.n_pos < Explanation.n_neg, Explanation.n_pos), else_=Explanation.n_neg)


def list_pairs(session: Session, *, run: Run, flt: PairFilter, keys=None) -> tuple[list[tuple], int]:
    """One page of ``(Pair, Neuron, Explanation | None)`` rows of the run matching ``flt`` and
    their total: best E first (unscored last), by neuron and head, or by held-out size (``n``:
    the smaller of the active and inactive held-out counts, largest first). ``min_n``: that
    smaller count at least. With ``keys`` (``(pair id, explanation id or -1)`` of
    :func:`pair_keys`), those rows in that order and their count.

    The page is found on the sort keys and ids alone, then its rows are read by id.

    Raises:
        NotFound: ``flt.layer`` is not a scanned layer.
    """
    if keys is None:
        base, order = _pair_query(run, flt)
        total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
        keys = [(p, -1 if e is None else e) for p, e in session.execute(
            base.with_only_columns(Pair.id, Explanation.id).order_by(*order)
            .limit(flt.per_page).offset((flt.page - 1) * flt.per_page))]
    else:
        total = len(keys)
    pairs = {p.id: p for p in _by_ids(session, Pair, {p for p, _ in keys})}
    neurons = {n.id: n for n in _by_ids(session, Neuron, {p.neuron_id for p in pairs.values()},
                                        _PAIR_ROW_NEURON)}
    expl = {e.id: e for e in _by_ids(session, Explanation, {e for _, e in keys if e >= 0},
                                     defer(Explanation.prompt))}
    return [(pairs[p], neurons[pairs[p].neuron_id], expl.get(e)) for p, e in keys], total


# what a pair row shows of its neuron (its congruent-token lists are JSON that no row shows; a
# 2,848-row list spends most of its time decoding them otherwise)
_PAIR_ROW_NEURON = load_only(Neuron.layer, Neuron.neuron, Neuron.kind, Neuron.token, Neuron.token_id)


def pair_keys(session: Session, *, run: Run, flt: PairFilter) -> list[tuple[int, int]]:
    """``(pair id, explanation id or -1)`` of every row of the run's pair list matching
    ``flt``, in the list's order (one sorted read of the keys: a CSV streams their rows a chunk
    at a time by key, never by OFFSET)."""
    base, order = _pair_query(run, flt)
    return [(p, -1 if e is None else e)
            for p, e in session.execute(base.with_only_columns(Pair.id, Explanation.id).order_by(*order))]


def _pair_query(run: Run, flt: PairFilter):
    """The SELECT (pair, neuron, explanation) and ORDER BY of the pair list, ending with the
    pair and explanation ids (unique keys).

    Raises:
        NotFound: ``flt.layer`` is not a scanned layer.
    """
    if flt.layer is not None:
        check_layer(run, flt.layer)
    on = Explanation.pair_id == Pair.id
    if flt.explainer:
        on = and_(on, Explanation.explainer == flt.explainer)
    cond = [Pair.run_id == run.id]
    if flt.kept:
        cond.append(Pair.kept.is_(True))
    if flt.layer is not None:
        cond.append(Neuron.layer == flt.layer)
    if flt.kind in ("next_token", "random"):
        cond.append(Neuron.kind == flt.kind)
    if flt.min_score is not None:
        cond.append(Explanation.score >= flt.min_score)
    if flt.min_n is not None:
        cond.append(flt.min_n <= _SMALLER_CLASS)
    base = (select(Pair, Neuron, Explanation).join(Neuron, Neuron.id == Pair.neuron_id)
            .outerjoin(Explanation, on).where(*cond))
    by_neuron = (Neuron.layer, Neuron.neuron, Pair.head_layer, Pair.head, Explanation.explainer)
    score = Explanation.score.desc().nulls_last()
    order = {"neuron": by_neuron, "score": (score, *by_neuron),
             "n": (_SMALLER_CLASS.desc().nulls_last(),
                   (Explanation.n_pos + Explanation.n_neg).desc().nulls_last(), score, *by_neuron)}[flt.sort]
    return base, (*order, Pair.id, Explanation.id)
