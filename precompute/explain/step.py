"""Explanations and explanation scores of the kept (neuron, head) pairs (paper §4.4,
docs/method.md §4-§5): computing and storing them. The scoring itself is ``scoring``, the
tables ``report``, the ``lookups explain`` command ``cli``.

For each kept pair the neuron's explain-split prompts are split into active / inactive by the
pair's head (``Prompt.active``); an explainer (``explainers.baseline``, the default, or
``explainers.llm``) writes an explanation and answers Yes / No for each of the top
``heldout_per_pair`` held-out prompts (by rank) — on an imported run (``import_paper``),
exactly the prompts the authors' GPT-4 classified, so the explainers are compared on the same
prompts. The explanation score is
``E = ½(TP/(TP+FN) + TN/(TN+FP))`` over those prompts, the truth being whether the head is
active on each (the run's rule).

Decisions:
- Unparsed answers (anything ``explainers.parse_answer`` does not read as Yes / No) are stored
  in ``Classification.answer`` with ``predicted=None``, counted in ``Explanation.n_unparsed``
  and left out of the confusion matrix. If that leaves no parsed answer among the active (or
  inactive) prompts, E is undefined: status ``ok`` (the work is done; a re-run would get the
  same cached answers), score None, and ``error`` says why. ``score_table`` counts these as
  ``unscored``.
- Pairs whose held-out prompts are all one class (or none) get status ``single_class``, score
  None (the project's rule); explainers that answer them anyway (the baseline) store the
  answers, so the one defined rate gives the authors' fallback score (``scoring.authors_score``).
- ``n_pos`` / ``n_neg``: held-out prompts on which the head is / is not active (all of them,
  parsed or not).
- Idempotent and resumable: one ``Explanation`` per (pair, explainer), committed with its
  ``Classification`` rows; a re-run does the pairs that have none or a ``failed`` one.
- ``Neuron.best_score``: max E over the neuron's pairs by the run's own rule (the authors' for
  imported runs), taken from the LLM explainers when any has scored the neuron, otherwise from
  the baseline (the same whatever order they ran in).
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from tqdm.auto import tqdm

from context_lookups.precompute.explain.explainers import (
    BASELINE,
    Example,
    PairResult,
    PairTask,
    explainer_name,
    is_llm,
    parse_answer,
)
from context_lookups.precompute.explain.scoring import explanation_score, run_rule, score_by_rule
from context_lookups.precompute.heads.lookup import carriers, decode
from context_lookups.precompute.store.runs import now
from context_lookups.precompute.store.schema import (
    Classification,
    Explanation,
    Lookup,
    Neuron,
    Pair,
    Prompt,
    Run,
)

logger = logging.getLogger(__name__)


def load_tasks(session: Session, *, run_id: int, explainer: str, heldout_per_pair: int,
               pending_only: bool = True) -> list[PairTask]:
    """The kept pairs of the run still to do for ``explainer`` (no explanation, or a failed
    one; every kept pair with ``pending_only=False``), with their explain prompts and top
    ``heldout_per_pair`` held-out prompts by rank (on an imported run: the prompts the
    recorded explainer classified). Each explain prompt carries the pair head's stored look-up
    (``Example.carriers``, docs/method.md §3-§4); held-out prompts carry none."""
    done = (select(Explanation.pair_id).where(Explanation.explainer == explainer,
                                              Explanation.status.in_(("ok", "single_class"))))
    cond = [Pair.run_id == run_id, Pair.kept] + ([Pair.id.not_in(done)] if pending_only else [])
    rows = session.execute(select(Pair, Neuron).join(Neuron, Pair.neuron_id == Neuron.id)
                           .where(*cond)
                           .order_by(Neuron.layer, Neuron.neuron, Pair.head_layer, Pair.head)).all()
    # Imported runs: the held-out prompts the recorded explainer classified, per pair.
    classified: dict[int, set[int]] = {}
    if rows and session.get(Run, run_id).provenance is not None:
        q = (select(Explanation.pair_id, Classification.prompt_id)
             .join(Classification, Classification.explanation_id == Explanation.id)
             .where(Explanation.pair_id.in_([p.id for p, _ in rows]), Explanation.explainer != explainer))
        for pid, prid in session.execute(q):
            classified.setdefault(pid, set()).add(prid)
    prompts: dict[int, dict[str, list[Prompt]]] = {}
    looks: dict[tuple[int, int, int], bytes] = {}  # (prompt id, head layer, head) -> contrib
    for nid in sorted({n.id for _, n in rows}):
        by_split: dict[str, list[Prompt]] = {"explain": [], "heldout": []}
        q = select(Prompt).where(Prompt.neuron_id == nid).order_by(Prompt.split, Prompt.rank)
        for p in session.scalars(q):
            by_split.setdefault(p.split, []).append(p)
        prompts[nid] = by_split
        looks.update(((pid, k, h), c) for pid, k, h, c in session.execute(
            select(Lookup.prompt_id, Lookup.head_layer, Lookup.head, Lookup.contrib)
            .where(Lookup.prompt_id.in_([p.id for p in by_split["explain"]]))))
    tasks = []
    for pair, n in rows:
        label = f"L{pair.head_layer}H{pair.head}"

        def ex(p: Prompt, carried: bool = False, pair=pair, label=label) -> Example:
            c = looks.get((p.id, pair.head_layer, pair.head)) if carried else None
            return Example(p.id, p.text, tuple(p.tokens), label in p.active,
                           tuple(carriers(p.tokens, decode(c)).items()) if c is not None else ())

        held = prompts[n.id]["heldout"]
        same = classified.get(pair.id)
        held = [p for p in held if p.id in same] if same else held[:heldout_per_pair]
        tasks.append(PairTask(pair_id=pair.id, neuron_id=n.id, kind=n.kind, label=label, token=n.token,
                              explain=[ex(p, carried=True) for p in prompts[n.id]["explain"]],
                              heldout=[ex(p) for p in held]))
    return tasks


def store_result(session: Session, task: PairTask, result: PairResult, *, explainer: str) -> Explanation:
    """Write one pair's explanation (replacing a failed one) and its classifications; commit."""
    old = session.scalar(select(Explanation).where(Explanation.pair_id == task.pair_id,
                                                   Explanation.explainer == explainer))
    if old is not None:
        session.execute(delete(Classification).where(Classification.explanation_id == old.id))
        session.delete(old)
        session.flush()
    preds = [parse_answer(a) for _, _, a in result.answers]
    sc = explanation_score([t for _, t, _ in result.answers], preds)
    status, error = result.status, result.error
    n_pos = sum(e.active for e in task.heldout)
    if status == "ok" and sc.score is None:  # done, but the unparsed answers leave E undefined
        error = (f"no parsed answer among the {'active' if sc.tpr is None else 'inactive'} held-out "
                 f"prompts ({sc.n_unparsed} unparsed answers): E is undefined")
    exp = Explanation(pair_id=task.pair_id, explainer=explainer, status=status, text=result.text,
                      prompt=result.prompt, settings=result.settings or None, score=sc.score,
                      tpr=sc.tpr, tnr=sc.tnr, n_pos=n_pos, n_neg=len(task.heldout) - n_pos,
                      n_unparsed=sc.n_unparsed, error=error, created_at=now())
    session.add(exp)
    session.flush()
    session.add_all(Classification(explanation_id=exp.id, prompt_id=pid, truth=t, answer=a, predicted=p)
                    for (pid, t, a), p in zip(result.answers, preds, strict=True))
    session.commit()
    return exp


def run_explanations(Session, run_id: int, model=None, settings=None) -> dict:
    """Explain and score every kept pair of the run not yet done with ``settings.explainer``
    (paper §4.4); then update ``Neuron.best_score``. ``model`` is not needed (token strings
    come from the stored prompts) and may be None.

    Returns: counts ``{"explainer", "pairs_done", "ok", "failed", "single_class",
    "n_unparsed", ...request counts of the LLM}``.

    Raises:
        ValueError: ``settings.explainer`` is ``"none"``.
        BadSettings: the LLM explainer without a usable API key.
    """
    name = explainer_name(settings)
    out: dict = {"explainer": name, "pairs_done": 0, "ok": 0, "failed": 0, "single_class": 0, "n_unparsed": 0}

    with Session() as s:
        tasks = load_tasks(s, run_id=run_id, explainer=name, heldout_per_pair=settings.heldout_per_pair)
        logger.info("explain (%s): %d kept pairs to do", name, len(tasks))

        def on_result(task: PairTask, result: PairResult) -> None:
            exp = store_result(s, task, result, explainer=name)
            out["pairs_done"] += 1
            out[exp.status] = out.get(exp.status, 0) + 1
            out["n_unparsed"] += exp.n_unparsed
            if exp.status == "failed":
                logger.warning("pair %d (%s of neuron %d): %s", task.pair_id, task.label,
                               task.neuron_id, exp.error)

        if name == BASELINE and tasks:
            from context_lookups.precompute.explain.explainers.selection import choose, explain_with

            # the configuration per neuron, by cross-validation across neurons on explain
            # prompts of every kept pair (done or not: a resumed run chooses the same)
            chosen = choose(load_tasks(s, run_id=run_id, explainer=name, pending_only=False,
                                       heldout_per_pair=settings.heldout_per_pair))
            for t in tqdm(tasks, desc="explain baseline", unit="pair", dynamic_ncols=True):
                try:
                    result = explain_with(t, chosen)
                except Exception as exc:  # record and go on; the run must not stop on one pair
                    logger.exception("baseline failed on pair %d", t.pair_id)
                    result = PairResult(status="failed", error=f"{type(exc).__name__}: {exc}")
                result.settings = {**result.settings, "heldout_per_pair": settings.heldout_per_pair}
                on_result(t, result)
        elif tasks:
            from context_lookups.precompute.explain.explainers.llm import run_llm

            out.update(run_llm(s, tasks, settings, on_result))
        out["best_scores"] = update_best_scores(s, run_id=run_id)
        s.commit()
    logger.info("explain (%s): %d pairs explained now (%d scored, %d with held-out prompts all of one "
                "class, %d failed; %d answers not Yes/No); %d neurons have a best E", name, out["pairs_done"],
                out["ok"], out["single_class"], out["failed"], out["n_unparsed"], out["best_scores"])
    return out


def update_best_scores(session: Session, *, run_id: int) -> int:
    """Set ``Neuron.best_score`` = max E over the neuron's pairs by the run's own rule: the
    project's for runs computed here, the authors' (``scoring.authors_score``: a single-class
    pair scores its one defined rate) for imported runs (LLM explainers preferred over the
    baseline; see the module docstring). Returns the number of neurons with a score. The
    caller commits."""
    rule = run_rule(session.get(Run, run_id))
    rows = session.execute(select(Pair.neuron_id, Explanation.explainer, Explanation.score, Explanation.tpr,
                                  Explanation.tnr)
                           .join(Explanation, Explanation.pair_id == Pair.id)
                           .where(Pair.run_id == run_id, Explanation.status != "failed")).all()
    best: dict[int, tuple[bool, float]] = {}
    for nid, explainer, score, tpr, tnr in rows:
        e = score_by_rule(rule, score, tpr, tnr)
        if e is None:
            continue
        key = (is_llm(explainer), e)
        if nid not in best or key > best[nid]:
            best[nid] = key
    for n in session.scalars(select(Neuron).where(Neuron.run_id == run_id, Neuron.kind != "other")):
        n.best_score = best[n.id][1] if n.id in best else None
    return len(best)
