"""The reads behind the evidence the pages show with each finding (docs/method.md §1, §3, §5): the
stored Yes/No answers of explanations as confusion counts, the explanation that gives a neuron
its best E, the selected neurons ranked above a neuron, and the stored look-ups of a pair. Like
:mod:`app.queries`, keyword-only functions; routes never build SQL."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from context_lookups.precompute.store.schema import Classification, Explanation, Lookup, Neuron, Pair


def selected_above(session: Session, *, run_id: int, layer: int, rank: int) -> int:
    """Selected next-token neurons of ``layer`` ranked above ``rank`` (0-based, by congruence)."""
    return session.scalar(select(func.count()).select_from(Neuron).where(
        Neuron.run_id == run_id, Neuron.layer == layer, Neuron.kind == "next_token",
        Neuron.rank < rank)) or 0


def answer_counts(session: Session, *, explanation_ids: list[int]) -> dict[int, tuple[int, int, int, int]]:
    """``{explanation_id: (TP, FN, TN, FP)}`` of the stored Yes/No answers (unparsed answers left
    out, as in ``scoring.explanation_score``); explanations without answers are absent."""
    out: dict[int, list[int]] = {}
    if not explanation_ids:
        return {}
    for eid, truth, pred, n in session.execute(
            select(Classification.explanation_id, Classification.truth, Classification.predicted,
                   func.count())
            .where(Classification.explanation_id.in_(explanation_ids), Classification.predicted.is_not(None))
            .group_by(Classification.explanation_id, Classification.truth, Classification.predicted)):
        c = out.setdefault(eid, [0, 0, 0, 0])
        c[(0 if pred else 1) if truth else (3 if pred else 2)] += n
    return {k: tuple(v) for k, v in out.items()}


def best_explanations(session: Session, *, neurons: list[Neuron]) -> dict[int, Explanation]:
    """``{neuron_id: explanation}``: for each neuron with a ``best_score``, the explanation of one
    of its pairs that scores it (by either rule; an LLM's preferred, then the most held-out
    prompts), so a list can show that E's held-out size and interval."""
    from context_lookups.precompute.explain.scoring import authors_score

    want = {n.id: n.best_score for n in neurons if n.best_score is not None}
    if not want:
        return {}
    best: dict[int, Explanation] = {}
    for e, nid in session.execute(select(Explanation, Pair.neuron_id)
                                  .join(Pair, Pair.id == Explanation.pair_id)
                                  .where(Pair.neuron_id.in_(list(want)), Explanation.status != "failed")):
        if want[nid] not in (e.score, authors_score(e.score, e.tpr, e.tnr)):
            continue
        old = best.get(nid)
        key = (e.explainer.startswith("openai:"), e.n_pos + e.n_neg, -e.id)
        if old is None or key > (old.explainer.startswith("openai:"), old.n_pos + old.n_neg, -old.id):
            best[nid] = e
    return best


def pair_lookups(session: Session, *, prompt_ids: list[int], head_layer: int, head: int) -> dict[int, Lookup]:
    """``{prompt_id: Lookup}``: the stored per-source decomposition of head ``L{head_layer}H{head}``
    on each of the prompts that has one (docs/method.md §3)."""
    if not prompt_ids:
        return {}
    return {lk.prompt_id: lk for lk in session.scalars(select(Lookup).where(
        Lookup.prompt_id.in_(prompt_ids), Lookup.head_layer == head_layer, Lookup.head == head))}
