"""The reads of step 4's rows (paper §4.4, docs/method.md §4-§5): a pair's explanations and their
held-out answers (as confusion counts), the explanations of several pairs, and the explanation
that gives a neuron its best E. Keyword-only; the explorer's pages call them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from context_lookups.precompute.explain.explainers import is_llm
from context_lookups.precompute.explain.scoring import authors_score
from context_lookups.precompute.store.schema import Classification, Explanation, Neuron, Pair, Prompt

CHUNK = 900  # ids per IN (...) list: under SQLite's bound-parameter limit


def pair_explanations(session: Session, *, pair_id: int) -> list[Explanation]:
    """The pair's explanations, by explainer."""
    return list(session.scalars(select(Explanation).where(Explanation.pair_id == pair_id)
                                .order_by(Explanation.explainer)))


def explanations_of_pairs(session: Session, *, pair_ids: list[int]) -> dict[int, list[Explanation]]:
    """``{pair_id: [explanation, ...]}`` (by explainer) of the pairs that have any."""
    out: dict[int, list[Explanation]] = {}
    if pair_ids:
        for e in session.scalars(select(Explanation).where(Explanation.pair_id.in_(pair_ids))
                                 .order_by(Explanation.explainer)):
            out.setdefault(e.pair_id, []).append(e)
    return out


def best_of_pairs(session: Session, *, pair_ids: list[int]) -> dict[int, Explanation]:
    """``{pair_id: explanation}``: each pair's scored explanation with the highest E (the
    project's rule; the first read on ties)."""
    best: dict[int, Explanation] = {}
    for i in range(0, len(pair_ids), CHUNK):
        for e in session.scalars(select(Explanation).where(Explanation.pair_id.in_(pair_ids[i:i + CHUNK]),
                                                           Explanation.score.is_not(None))):
            if e.pair_id not in best or e.score > best[e.pair_id].score:
                best[e.pair_id] = e
    return best


def pair_classifications(session: Session, *,
                         explanation_ids: list[int]) -> dict[int, dict[int, Classification]]:
    """``{explanation_id: {prompt_id: Classification}}``: the stored Yes/No answers."""
    out: dict[int, dict[int, Classification]] = {}
    if explanation_ids:
        q = select(Classification).where(Classification.explanation_id.in_(explanation_ids))
        for c in session.scalars(q):
            out.setdefault(c.explanation_id, {})[c.prompt_id] = c
    return out


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


def heldout_documents(session: Session, *, explanation_ids: list[int]) -> dict[int, int]:
    """``{explanation_id: documents}``: how many documents the held-out prompts an explanation was
    scored on came from (the sum of their multiplicities, docs/method.md §2, "Repeats"); it
    differs from the distinct prompts (``n_pos + n_neg``) where repeats were merged.
    Explanations without answers are absent."""
    out: dict[int, int] = {}
    for i in range(0, len(explanation_ids), CHUNK):
        for eid, n in session.execute(
                select(Classification.explanation_id, func.sum(Prompt.multiplicity))
                .join(Prompt, Prompt.id == Classification.prompt_id)
                .where(Classification.explanation_id.in_(explanation_ids[i:i + CHUNK]))
                .group_by(Classification.explanation_id)):
            out[eid] = int(n or 0)
    return out


def best_explanations(session: Session, *, neurons: list[Neuron]) -> dict[int, Explanation]:
    """``{neuron_id: explanation}``: for each neuron with a ``best_score``, the explanation of one
    of its pairs that scores it (by either rule; an LLM's preferred, ``explainers.is_llm``, then
    the most held-out prompts), so a list can show that E's held-out size and interval."""
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
        key = (is_llm(e.explainer), e.n_pos + e.n_neg, -e.id)
        if old is None or key > (is_llm(old.explainer), old.n_pos + old.n_neg, -old.id):
            best[nid] = e
    return best
