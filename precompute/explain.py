"""Explanations and explanation scores of the kept (neuron, head) pairs (paper §4.4,
docs/method.md §4-§5), and the ``lookups explain`` command.

For each kept pair the neuron's explain-split prompts are split into active / inactive by the
pair's head (``Prompt.active``); an explainer (``explainers.baseline``, the default, or
``explainers.llm``) writes an explanation and answers Yes / No for each of the top
``heldout_per_pair`` held-out prompts (by rank). The explanation score is
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
  None; they are explained but not classified.
- ``n_pos`` / ``n_neg``: held-out prompts on which the head is / is not active (all of them,
  parsed or not).
- Idempotent and resumable: one ``Explanation`` per (pair, explainer), committed with its
  ``Classification`` rows; a re-run does the pairs that have none or a ``failed`` one.
- ``Neuron.best_score``: max E over the neuron's pairs, taken from the LLM explainers when any
  has scored the neuron, otherwise from the baseline (the same whatever order they ran in).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from tqdm.auto import tqdm

from .errors import NotFound
from .explainers import BASELINE, Example, PairResult, PairTask, explainer_name, parse_answer
from .schema import Classification, Explanation, Neuron, Pair, Prompt, Run
from .store import now

logger = logging.getLogger(__name__)

KINDS = ("next_token", "random")
MIN_SKEWTEST = 8  # scipy.stats.skewtest is not valid with fewer samples


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


def explanation_score(truth: Sequence[bool], predicted: Sequence[bool | None]) -> Score:
    """``E = ½(TP/(TP+FN) + TN/(TN+FP))`` (paper §4.4); ``predicted`` None (unparsed) is left
    out of the confusion matrix and counted.

    Raises:
        ValueError: ``truth`` and ``predicted`` differ in length.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truths but {len(predicted)} predictions")
    pairs = [(bool(t), None if p is None else bool(p)) for t, p in zip(truth, predicted)]
    tp = sum(1 for t, p in pairs if t and p is True)
    fn = sum(1 for t, p in pairs if t and p is False)
    tn = sum(1 for t, p in pairs if not t and p is False)
    fp = sum(1 for t, p in pairs if not t and p is True)
    tpr = tp / (tp + fn) if tp + fn else None
    tnr = tn / (tn + fp) if tn + fp else None
    score = 0.5 * (tpr + tnr) if tpr is not None and tnr is not None else None
    return Score(score, tpr, tnr, tp, fn, tn, fp, n_pos=sum(1 for t in truth if t),
                 n_neg=sum(1 for t in truth if not t), n_unparsed=sum(1 for _, p in pairs if p is None))


def load_tasks(session: Session, *, run_id: int, explainer: str, heldout_per_pair: int) -> list[PairTask]:
    """The kept pairs of the run still to do for ``explainer`` (no explanation, or a failed
    one), with their explain prompts and top ``heldout_per_pair`` held-out prompts by rank."""
    done = (select(Explanation.pair_id).where(Explanation.explainer == explainer,
                                              Explanation.status.in_(("ok", "single_class"))))
    rows = session.execute(select(Pair, Neuron).join(Neuron, Pair.neuron_id == Neuron.id)
                           .where(Pair.run_id == run_id, Pair.kept, Pair.id.not_in(done))
                           .order_by(Neuron.layer, Neuron.neuron, Pair.head_layer, Pair.head)).all()
    prompts: dict[int, dict[str, list[Prompt]]] = {}
    for nid in sorted({n.id for _, n in rows}):
        by_split: dict[str, list[Prompt]] = {"explain": [], "heldout": []}
        q = select(Prompt).where(Prompt.neuron_id == nid).order_by(Prompt.split, Prompt.rank)
        for p in session.scalars(q):
            by_split.setdefault(p.split, []).append(p)
        prompts[nid] = by_split
    tasks = []
    for pair, n in rows:
        label = f"L{pair.head_layer}H{pair.head}"

        def ex(p: Prompt) -> Example:
            return Example(p.id, p.text, tuple(p.tokens), label in p.active)

        tasks.append(PairTask(pair_id=pair.id, neuron_id=n.id, kind=n.kind, label=label, token=n.token,
                              explain=[ex(p) for p in prompts[n.id]["explain"]],
                              heldout=[ex(p) for p in prompts[n.id]["heldout"][:heldout_per_pair]]))
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
                    for (pid, t, a), p in zip(result.answers, preds))
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

        if name == BASELINE:
            from .explainers.baseline import explain_pair

            for t in tqdm(tasks, desc="explain baseline", unit="pair", dynamic_ncols=True):
                try:
                    result = explain_pair(t)
                except Exception as exc:  # record and go on; the run must not stop on one pair
                    logger.exception("baseline failed on pair %d", t.pair_id)
                    result = PairResult(status="failed", error=f"{type(exc).__name__}: {exc}")
                result.settings = {**result.settings, "heldout_per_pair": settings.heldout_per_pair}
                on_result(t, result)
        elif tasks:
            from .explainers.llm import run_llm

            out.update(run_llm(s, tasks, settings, on_result))
        out["best_scores"] = update_best_scores(s, run_id=run_id)
        s.commit()
    logger.info("explain (%s): %s", name, out)
    return out


def update_best_scores(session: Session, *, run_id: int) -> int:
    """Set ``Neuron.best_score`` = max E over the neuron's pairs (LLM explainers preferred over
    the baseline; see the module docstring). Returns the number of neurons with a score.
    The caller commits."""
    rows = session.execute(select(Pair.neuron_id, Explanation.explainer, func.max(Explanation.score))
                           .join(Explanation, Explanation.pair_id == Pair.id)
                           .where(Pair.run_id == run_id, Explanation.score.is_not(None))
                           .group_by(Pair.neuron_id, Explanation.explainer)).all()
    best: dict[int, tuple[bool, float]] = {}
    for nid, explainer, score in rows:
        key = (explainer != BASELINE, score)
        if nid not in best or key > best[nid]:
            best[nid] = key
    for n in session.scalars(select(Neuron).where(Neuron.run_id == run_id, Neuron.kind != "other")):
        n.best_score = best[n.id][1] if n.id in best else None
    return len(best)


def _describe(scores: list[float]) -> dict:
    """mean, std (population, ddof=0), skew (scipy, biased) and skewtest of E."""
    import numpy as np
    from scipy import stats

    out: dict = {"n": len(scores), "mean": None, "std": None, "skew": None,
                 "skewtest": {"statistic": None, "pvalue": None, "reason": None}}
    if not scores:
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
        res = stats.skewtest(a)
        out["skewtest"].update(statistic=float(res.statistic), pvalue=float(res.pvalue))
    return out


def score_table(session: Session, *, run_id: int, explainer: str) -> dict:
    """The paper's Table 3 for one run and explainer: per neuron kind (``next_token``,
    ``random``) the mean, std, skew and ``scipy.stats.skewtest`` of E, with counts of kept
    pairs, scored, single-class, failed and missing pairs and unparsed answers, and the sorted
    scores. ``skewtest`` p-value is None with a ``reason`` when there are fewer than 8 scores.

    Raises:
        NotFound: no run ``run_id``.
    """
    if session.get(Run, run_id) is None:
        raise NotFound(f"No run with id {run_id}.")
    out: dict = {"run_id": run_id, "explainer": explainer, "kinds": {}}
    for kind in KINDS:
        kept = session.scalar(select(func.count()).select_from(Pair).join(Neuron, Pair.neuron_id == Neuron.id)
                              .where(Pair.run_id == run_id, Pair.kept, Neuron.kind == kind)) or 0
        exps = session.execute(select(Explanation.status, Explanation.score, Explanation.n_unparsed)
                               .join(Pair, Explanation.pair_id == Pair.id)
                               .join(Neuron, Pair.neuron_id == Neuron.id)
                               .where(Pair.run_id == run_id, Pair.kept, Neuron.kind == kind,
                                      Explanation.explainer == explainer)).all()
        scores = sorted(e.score for e in exps if e.score is not None)
        row = {"kept_pairs": kept, "explained": len(exps),
               "single_class": sum(e.status == "single_class" for e in exps),
               "failed": sum(e.status == "failed" for e in exps),
               "unscored": sum(e.status == "ok" and e.score is None for e in exps),
               "missing": kept - len(exps), "n_unparsed": sum(e.n_unparsed for e in exps)}
        row.update(_describe(scores))
        row["scores"] = scores
        out["kinds"][kind] = row
    return out


def explainers_of_run(session: Session, *, run_id: int) -> list[str]:
    """The explainers that have explanations in the run (baseline first)."""
    names = session.scalars(select(Explanation.explainer).join(Pair, Explanation.pair_id == Pair.id)
                            .where(Pair.run_id == run_id).distinct()).all()
    return sorted(names, key=lambda n: (n != BASELINE, n))


def format_table(table: dict) -> str:
    """The score table as text (for the terminal)."""
    def f(x, fmt=".3f"):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    lines = [f"explanation scores E, run {table['run_id']}, explainer {table['explainer']}",
             f"{'neurons':<11}{'kept':>6}{'scored':>8}{'1-class':>8}{'unscored':>9}{'failed':>8}"
             f"{'missing':>8}{'unparsed':>9}{'mean':>8}{'std':>8}{'skew':>8}{'skew p':>10}"]
    for kind, r in table["kinds"].items():
        lines.append(f"{kind:<11}{r['kept_pairs']:>6}{r['n']:>8}{r['single_class']:>8}"
                     f"{r['unscored']:>9}{r['failed']:>8}"
                     f"{r['missing']:>8}{r['n_unparsed']:>9}{f(r['mean']):>8}{f(r['std']):>8}"
                     f"{f(r['skew']):>8}{f(r['skewtest']['pvalue'], '.2g'):>10}")
        if r["skewtest"]["reason"]:
            lines.append(f"{'':<11}skewtest: {r['skewtest']['reason']}")
    return "\n".join(lines)


def find_run(session: Session, *, run_name: str | None, model: str | None) -> Run:
    """The run named ``run_name``; else the only run; else the run whose slug is the model's.

    Raises:
        NotFound: no such run, or several and none chosen; the message lists the runs.
    """
    from .models import model_slug

    runs = session.scalars(select(Run).order_by(Run.id)).all()
    listing = ", ".join(f"{r.slug!r} ({r.model_name})" for r in runs) or "none"
    if run_name is not None:
        for r in runs:
            if r.slug == run_name:
                return r
        raise NotFound(f"No run {run_name!r} in this database; runs: {listing}.")
    if not runs:
        raise NotFound("This database has no run: run `lookups precompute` first.")
    if len(runs) == 1:
        return runs[0]
    slug = model_slug(model) if model else None
    for r in runs:
        if r.slug == slug:
            return r
    raise NotFound(f"This database has several runs ({listing}): choose one with --run-name.")


def explain_command(settings) -> int:
    """``lookups explain``: explain and score the kept pairs of an existing run with
    ``settings.explainer`` (no model is loaded), then print the score table. Returns 0.

    Raises:
        FileNotFoundError: the SQLite database does not exist.
        NotFound: no run to explain (message lists the runs).
        ValueError: ``--explainer none``.
        BadSettings: the LLM explainer without a usable API key.
    """
    from .db import open_writer, sessions

    name = explainer_name(settings)
    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise FileNotFoundError(f"Database {url.database} not found: run `lookups precompute` "
                                f"first or pass --db.")
    engine = open_writer(settings.db_url)
    try:
        Session = sessions(engine)
        with Session() as s:
            run = find_run(s, run_name=settings.run_name, model=settings.model)
        stats = run_explanations(Session, run.id, None, settings)
        with Session() as s:
            table = score_table(s, run_id=run.id, explainer=name)
    finally:
        engine.dispose()
    # The command's output (cli.py configured logging; results go to stdout).
    print(format_table(table))
    extra = {k: v for k, v in stats.items() if k.startswith("requests_")}
    print(f"run {run.slug!r}: {stats['pairs_done']} pairs done now "
          f"(ok {stats['ok']}, failed {stats['failed']}, single-class {stats['single_class']}, "
          f"unparsed answers {stats['n_unparsed']})" + (f"; LLM {extra}" if extra else ""))
    return 0
