"""Read-only report tables of explanation scores (paper Table 3, docs/method.md §5): per run
and explainer, E of next-token vs random neurons by the project's rule and by the authors'
rule; the per-pair comparison of two explainers; the text forms printed by the CLI. The web
app reads the same tables. Nothing here writes.
"""

from __future__ import annotations

import math

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from context_lookups.precompute.core.errors import NotFound
from context_lookups.precompute.explain.explainers import baseline_first
from context_lookups.precompute.explain.scoring import authors_score, describe, paired_comparison
from context_lookups.precompute.store.schema import Explanation, Neuron, Pair, Run

KINDS = ("next_token", "random")

RULES = {
    "project": "E = ½(TPR + TNR) over parsed answers; undefined (left out) when the held-out "
               "prompts of a pair are all one class",
    "authors": "the authors' rule: single-class pairs score the one defined rate (TPR or TNR), "
               "so every answered pair counts; population std (np.std); skew test one-sided "
               "(alternative='greater')",
}


def _explanations(session: Session, run_id: int, explainer: str, kind: str | None = None):
    q = (select(Explanation, Pair, Neuron).join(Pair, Explanation.pair_id == Pair.id)
         .join(Neuron, Pair.neuron_id == Neuron.id)
         .where(Pair.run_id == run_id, Pair.kept, Explanation.explainer == explainer)
         .order_by(Neuron.layer, Neuron.neuron, Pair.id))
    if kind is not None:
        q = q.where(Neuron.kind == kind)
    return session.execute(q).all()


def score_table(session: Session, *, run_id: int, explainer: str) -> dict:
    """The paper's Table 3 for one run and explainer: per neuron kind (``next_token``,
    ``random``) the mean, std, skew and ``scipy.stats.skewtest`` (two-sided) of E (project
    rule), with counts of kept pairs, scored, single-class, unanswered (imported explanations
    without held-out answers), failed and missing pairs and unparsed answers, the sorted
    scores, and ``authors_rule``: the same summary by the authors' rule
    (``scoring.authors_score``; skew test one-sided, ``alternative='greater'``, as theirs) with
    ``n_fallback`` single-class pairs scored by one rate.

    Raises:
        NotFound: no run ``run_id``.
    """
    if session.get(Run, run_id) is None:
        raise NotFound(f"No run with id {run_id}.")
    out: dict = {"run_id": run_id, "explainer": explainer, "rules": RULES, "kinds": {}}
    for kind in KINDS:
        kept = session.scalar(select(func.count()).select_from(Pair).join(Neuron, Pair.neuron_id == Neuron.id)
                              .where(Pair.run_id == run_id, Pair.kept, Neuron.kind == kind)) or 0
        exps = [e for e, _, _ in _explanations(session, run_id, explainer, kind)]
        scores = sorted(e.score for e in exps if e.score is not None)
        row = {"kept_pairs": kept, "explained": len(exps),
               "single_class": sum(e.status == "single_class" for e in exps),
               "unanswered": sum(e.status == "unanswered" for e in exps),
               "failed": sum(e.status == "failed" for e in exps),
               "unscored": sum(e.status == "ok" and e.score is None for e in exps),
               "missing": kept - len(exps), "n_unparsed": sum(e.n_unparsed for e in exps)}
        row.update(describe(scores))
        row["scores"] = scores
        auth = [authors_score(e.score, e.tpr, e.tnr) for e in exps if e.status != "failed"]
        auth = sorted(a for a in auth if a is not None)
        row["authors_rule"] = {**describe(auth, alternative="greater"), "scores": auth,
                               "n_fallback": sum(e.score is None and authors_score(e.score, e.tpr, e.tnr)
                                                 is not None for e in exps)}
        out["kinds"][kind] = row
    return out


def explainers_of_run(session: Session, *, run_id: int) -> list[str]:
    """The explainers that have explanations in the run (baseline first)."""
    names = session.scalars(select(Explanation.explainer).join(Pair, Explanation.pair_id == Pair.id)
                            .where(Pair.run_id == run_id).distinct()).all()
    return baseline_first(names)


def comparison_table(session: Session, *, run_id: int, a: str, b: str) -> dict:
    """Explainers ``a`` and ``b`` on the same kept pairs of a run: one row per pair explained
    by both (``pair``, ``neuron``, ``head``, each explainer's E by both rules), and
    ``scoring.paired_comparison`` of their E by the authors' rule (every pair both answered)
    and by the project's rule (two-class pairs).

    Raises:
        NotFound: no run ``run_id``.
    """
    if session.get(Run, run_id) is None:
        raise NotFound(f"No run with id {run_id}.")
    by_pair: dict[int, dict] = {}
    for name in (a, b):
        for e, p, n in _explanations(session, run_id, name):
            if e.status == "failed":
                continue
            row = by_pair.setdefault(p.id, {"pair_id": p.id, "neuron": f"L{n.layer}N{n.neuron}",
                                            "token": n.token, "head": f"L{p.head_layer}H{p.head}",
                                            "layer": n.layer, "index": n.neuron})
            row[name] = {"E": e.score, "E_authors": authors_score(e.score, e.tpr, e.tnr),
                         "tpr": e.tpr, "tnr": e.tnr, "text": e.text}
    rows = [r for r in by_pair.values() if a in r and b in r]
    both_auth = [r for r in rows if r[a]["E_authors"] is not None and r[b]["E_authors"] is not None]
    both_proj = [r for r in rows if r[a]["E"] is not None and r[b]["E"] is not None]
    return {"run_id": run_id, "a": a, "b": b, "rows": rows, "rules": RULES,
            "authors_rule": paired_comparison([r[a]["E_authors"] for r in both_auth],
                                              [r[b]["E_authors"] for r in both_auth]),
            "project_rule": paired_comparison([r[a]["E"] for r in both_proj],
                                              [r[b]["E"] for r in both_proj])}


def _f(x, fmt=".3f"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_table(table: dict) -> str:
    """The score table as text (for the terminal)."""
    lines = [f"explanation scores E, run {table['run_id']}, explainer {table['explainer']}",
             f"{'neurons':<11}{'kept':>6}{'scored':>8}{'1-class':>8}{'unscored':>9}{'failed':>8}"
             f"{'missing':>8}{'unparsed':>9}{'mean':>8}{'std':>8}{'skew':>8}{'skew p':>10}"]
    for kind, r in table["kinds"].items():
        lines.append(f"{kind:<11}{r['kept_pairs']:>6}{r['n']:>8}{r['single_class']:>8}"
                     f"{r['unscored']:>9}{r['failed']:>8}"
                     f"{r['missing']:>8}{r['n_unparsed']:>9}{_f(r['mean']):>8}{_f(r['std']):>8}"
                     f"{_f(r['skew']):>8}{_f(r['skewtest']['pvalue'], '.2g'):>10}")
        if r["skewtest"]["reason"]:
            lines.append(f"{'':<11}skewtest: {r['skewtest']['reason']}")
        au = r.get("authors_rule")
        if au and au["n"] != r["n"]:
            lines.append(f"{'':<11}authors' rule (single-class fallback): {_f(au['mean'], '.4f')} ± "
                         f"{_f(au['std'], '.4f')} over {au['n']} pairs ({au['n_fallback']} by one rate); "
                         f"skew test p {_f(au['skewtest']['pvalue'], '.2g')} (one-sided, greater)")
        if r.get("unanswered"):
            lines.append(f"{'':<11}{r['unanswered']} explained pairs have no held-out answers in the data")
    return "\n".join(lines)


def format_comparison(cmp: dict) -> str:
    """The comparison of two explainers as text: per pair E (authors' rule) and the summary."""
    a, b = cmp["a"], cmp["b"]
    lines = [f"{'pair':<18}{'token':<12}{a:>16}{b:>16}"]
    for r in cmp["rows"]:
        lines.append(f"{r['neuron'] + ' ' + r['head']:<18}{r['token'][:11]!s:<12}"
                     f"{_f(r[a]['E_authors']):>16}{_f(r[b]['E_authors']):>16}")
    for rule in ("authors_rule", "project_rule"):
        c = cmp[rule]
        lines.append(f"{rule.replace('_', ' ')} ({c['n']} pairs): {a} {_f(c['a']['mean'], '.4f')} ± "
                     f"{_f(c['a']['std'], '.4f')}, {b} {_f(c['b']['mean'], '.4f')} ± "
                     f"{_f(c['b']['std'], '.4f')}; "
                     f"Pearson r {_f(c['pearson']['r'])}, Wilcoxon p {_f(c['wilcoxon']['p'], '.3g')}")
    return "\n".join(lines)


def find_run(session: Session, *, run_name: str | None, model: str | None) -> Run:
    """The run named ``run_name``; else the only run; else the run whose slug is the model's.

    Raises:
        NotFound: no such run, or several and none chosen; the message lists the runs.
    """
    from context_lookups.precompute.model.loading import model_slug

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
