"""The data of the stored-data pages other than the neuron page (:mod:`app.pages.neuron`): the
home page, a run's neuron and pair lists, a head's page and a pair's page, each as the JSON-able
dict its ``.json`` twin returns and its template renders.

Every page but the home page starts from its run's context
(:class:`~app.pages.context.RunContext`, resolved once per request); the rows are read through the
paper steps' own reads (``precompute.<step>.reads``) and the list pages' queries
(:mod:`app.pages.queries`). Nothing here runs or imports the model.
"""

from __future__ import annotations

import math

from sqlalchemy.orm import Session

from context_lookups.precompute.ablation import reads as ablation_reads
from context_lookups.precompute.explain import reads as explain_reads
from context_lookups.precompute.explain.scoring import MIN_HELDOUT_PER_CLASS
from context_lookups.precompute.findings.report import explainers_of_run
from context_lookups.precompute.heads import reads as head_reads
from context_lookups.precompute.heads.attribution import head_label
from context_lookups.precompute.neurons import reads as neuron_reads

from . import lookup as LK
from . import model_card, states, urls
from . import queries as Q
from .context import RunContext
from .present import (
    ablation_dict,
    act_floor,
    classification_dict,
    explanation_dict,
    flat_uncertainty,
    neuron_dict,
    nice_scale,
    pair_dict,
    prompt_dict,
    run_dict,
    token_escaped,
)

STRONGEST = 5  # pairs the home page lists per run


def home(s: Session) -> dict:
    """The home page's data: every run with its counts, findings (the verdict and the tables
    behind it), its strongest pairs (:func:`strongest_pairs`) and, for the embedded run, what its
    model is (``model_note``, with a link to its model card)."""
    runs = []
    for run in Q.list_runs(s):
        d = run_card(s, run)
        d["findings"] = Q.findings(s, run_id=run.id)
        d["strongest"] = strongest_pairs(s, run, limit=STRONGEST)
        runs.append(d)
    return {"runs": runs, "strongest_rule": {"min_per_class": MIN_HELDOUT_PER_CLASS, "lower_bound_above": 0.5,
                                             "limit": STRONGEST}}


def run_card(s: Session, run) -> dict:
    """A run's fields on the home page without its findings and strongest pairs: the run with
    its counts, what its model is (``model_note``), whether its files hold neurons only, and its
    links."""
    d = run_dict(run, Q.run_counts(s, run_id=run.id))
    d["model_note"] = model_note(run)
    d["neurons_only"] = states.neurons_only(run.provenance)  # a gpt2-xl-like import: nothing to explain
    d["links"] = {"neurons": urls.neurons(run.slug), "json": urls.neurons(run.slug, fmt="json")}
    return d


def strongest_pairs(s: Session, run, *, limit: int) -> list[dict]:
    """A run's strongest pairs, where a reader can start: kept pairs whose E interval (95 %,
    docs/method.md §5) lies above chance (lower bound above 0.5) with at least
    ``scoring.MIN_HELDOUT_PER_CLASS`` answered distinct held-out prompts in each class, ranked by
    that lower bound (a pair's best explanation counts), at most ``limit``. Each row: the pair,
    its neuron and token, the explainer, E with its interval and n, the explanation, its URL."""
    cands = Q.strong_candidates(s, run_id=run.id, min_per_class=MIN_HELDOUT_PER_CLASS)
    counts = explain_reads.answer_counts(s, explanation_ids=[e.id for e, _, _ in cands if e.n_unparsed])
    docs = explain_reads.heldout_documents(s, explanation_ids=[e.id for e, _, _ in cands])
    best: dict[int, dict] = {}
    for e, p, n in cands:
        ex = explanation_dict(e, counts.get(e.id), docs.get(e.id))
        if not ex["interval"] or ex["interval"][0] <= 0.5 or ex["small"]:
            continue
        row = {"layer": n.layer, "neuron": n.neuron, "kind": n.kind, "token": n.token,
               "token_escaped": token_escaped(n.token_id, n.token, {}),
               "head": head_label(p.head_layer, p.head),
               "explainer": e.explainer, "score": e.score, "n_pos": e.n_pos, "n_neg": e.n_neg,
               **flat_uncertainty(ex), "explanation": ex["text"], "truncated": ex["truncated"],
               "url": urls.pair(run.slug, n.layer, n.neuron, p.head_layer, p.head)}
        old = best.get(p.id)
        if old is None or (row["e_lo"], row["score"]) > (old["e_lo"], old["score"]):
            best[p.id] = row
    return sorted(best.values(), key=lambda r: (-r["e_lo"], -r["score"], r["layer"], r["neuron"],
                                                r["head"]))[:limit]


def model_note(run) -> dict | None:
    """What the embedded run's model is, in one line, and where its model card is; None for
    other runs (their model is named on the page)."""
    if run.model_name != "embedded" or run.provenance is not None:
        return None
    return {"text": model_card.note(run.n_layers, run.n_heads, run.d_model), "card": urls.model_card()}


def neurons(s: Session, ctx: RunContext, *, flt: Q.NeuronFilter, default_per_page: int = 50,
            ids=None) -> dict:
    """A run's neurons (one page of ``flt``), each with the held-out size and interval of its
    best E (docs/method.md §1, §5)."""
    run, slug, partial = ctx.run, ctx.slug, ctx.partial
    rows, total = Q.list_neurons(s, run=run, flt=flt, ids=ids)
    best = explain_reads.best_explanations(s, neurons=rows)
    counts = explain_reads.answer_counts(s, explanation_ids=[e.id for e in best.values() if e.n_unparsed])
    docs = explain_reads.heldout_documents(s, explanation_ids=[e.id for e in best.values()])
    with_pairs = head_reads.kept_pair_neurons(s, neuron_ids=[n.id for n in rows if n.id not in best])
    pages = max(1, math.ceil(total / flt.per_page))
    defaults = vars(Q.NeuronFilter(per_page=default_per_page))
    params = {k: v for k, v in vars(flt).items() if k != "page" and v != defaults[k]}
    page = flt.page if flt.page > 1 else None
    items = []
    for n in rows:
        d = neuron_dict(n, partial)
        d.pop("top_tokens")
        d.pop("bottom_tokens")
        e = best.get(n.id)
        ex = explanation_dict(e, counts.get(e.id), docs.get(e.id)) if e is not None else {}
        d.update(n_pos=ex.get("n_pos"), n_neg=ex.get("n_neg"), **flat_uncertainty(ex))
        d["reason"] = None if n.best_score is not None else states.neuron_score_reason(
            kind=n.kind, status=n.status, has_kept_pair=n.id in best or n.id in with_pairs,
            provenance=run.provenance, best=ex or None, settings=ctx.rules)
        d["url"] = urls.neuron(slug, n.layer, n.neuron)
        items.append(d)
    return {"run": run_dict(run), "filter": vars(flt), "total": total, "page": flt.page, "pages": pages,
            "neurons": items,
            "links": {"prev": urls.neurons(slug, page=flt.page - 1, **params) if flt.page > 1 else None,
                      "next": urls.neurons(slug, page=flt.page + 1, **params) if flt.page < pages else None,
                      "json": urls.neurons(slug, fmt="json", page=page, **params),
                      "csv": urls.neurons(slug, fmt="csv", **_all_rows(params)),  # every page
                      "page": urls.neurons(slug, page=page, **params)},
            "sort_links": {k: urls.neurons(slug, **_sort_params(params, flt, k)) for k in Q.SORTS},
            "kind_links": {"all": urls.neurons(slug, **{**params, "kind": "all"}),
                           "selected": urls.neurons(slug, **{**params, "kind": None})},
            "layers": run.layers, "kinds": Q.KINDS, "sorts": list(Q.SORTS)}


def _all_rows(params: dict) -> dict:
    """A list's filter parameters without its paging (the CSV twin holds every row)."""
    return {k: v for k, v in params.items() if k != "per_page"}


def _sort_params(params: dict, flt: Q.NeuronFilter, key: str) -> dict:
    """Clicking a column sorts by it; clicking the sorted column flips the order."""
    if flt.sort == key:
        order = "asc" if flt.order == "desc" else "desc"
    else:
        order = "asc" if key in ("token", "layer", "neuron", "kind") else "desc"
    default = Q.NeuronFilter()
    return {**params, "sort": key if key != default.sort else None,
            "order": order if order != default.order else None}


def pair(s: Session, ctx: RunContext, *, layer: int, neuron_: int, head_layer: int, head: int,
         score: str) -> dict:
    """The pair page's data (paper §4.3-§5.4 for one (neuron, head) pair): its prompts split by
    the head's activity, with their look-ups, its explanations with their held-out answers, its
    ablation per held-out prompt, and the state of each.

    Raises:
        NotFound: no such neuron or pair.
    """
    run, slug, partial = ctx.run, ctx.slug, ctx.partial
    n = neuron_reads.get_neuron(s, run=run, layer=layer, neuron=neuron_)
    p = head_reads.get_pair(s, run=run, neuron=n, head_layer=head_layer, head=head)
    label = head_label(head_layer, head)
    explain = head_reads.neuron_prompts(s, neuron_id=n.id, split="explain", limit=Q.MAX_PAGE_PROMPTS)
    heldout = head_reads.neuron_prompts(s, neuron_id=n.id, split="heldout", limit=Q.MAX_PAGE_PROMPTS)
    expl = explain_reads.pair_explanations(s, pair_id=p.id)
    cls = explain_reads.pair_classifications(s, explanation_ids=[e.id for e in expl])
    abl = ablation_reads.pair_ablations(s, pair_id=p.id)
    kept_why = states.kept_reason(p, ctx.rules)
    pair_state = {"kept_reason": kept_why,
                  "explanation": states.explanation_state(kept_why=kept_why, n_explanations=len(expl),
                                                          provenance=run.provenance),
                  "ablation": states.ablation_state(
                      kept_why=kept_why, n_rows=sum(len(a) for a in abl.values()),
                      phases=ablation_reads.ablation_phases(s, run_id=run.id, pair_ids=[p.id]).get(p.id, {}),
                      provenance=run.provenance)}
    key = "attr_ln" if score == "ln" else "attr_raw"
    looks, look = LK.pair_lookups(s, run, p, explain + heldout, score, ctx.rules)
    look["tokens"] = LK.summary_tokens(look["groups"], explain + heldout, partial)

    def row(pr, with_outcomes: bool) -> dict:
        d = prompt_dict(pr, partial)
        d["head_attr"] = getattr(pr, key)[head_layer][head] if head_layer < len(pr.attr_raw) else None
        d["head_active"] = label in pr.active
        d["lookup"] = looks.get(pr.id)
        if with_outcomes:
            d["classifications"] = {e.explainer: classification_dict(cls[e.id][pr.id])
                                    for e in expl if pr.id in cls.get(e.id, {})}
            d["ablations"] = {m: ablation_dict(a[pr.id]) for m, a in abl.items() if pr.id in a}
        return d

    held = [row(pr, True) for pr in heldout]
    scored_ids = {pid for c in cls.values() for pid in c} | {pid for a in abl.values() for pid in a}
    if scored_ids:
        held = [h for h in held if h["id"] in scored_ids]
    prompts = explain + heldout
    by_id = {pr.id: pr for pr in prompts}
    pair_d = pair_dict(p)
    # distinct explain prompts (pair.n_prompts) and the documents they came from (repeats merged)
    pair_d["n_documents"] = sum(pr.multiplicity or 1 for pr in explain)
    return {
        "run": run_dict(run), "neuron": neuron_dict(n, partial), "pair": pair_d, "label": label,
        "score": score,
        "active": [row(pr, False) for pr in explain if label in pr.active],
        "inactive": [row(pr, False) for pr in explain if label not in pr.active],
        "heldout": held,
        "explanations": [explanation_dict(e, _counts(cls.get(e.id, {})),
                                          sum(by_id[pid].multiplicity or 1 for pid in cls.get(e.id, {})
                                              if pid in by_id) or None) for e in expl],
        "ablation_summary": ablation_reads.pair_ablation_summary(s, pair_id=p.id), "state": pair_state,
        "lookup": look,
        "act_scale": nice_scale([n.max_act or 0.0] + [a for pr in prompts for a in pr.acts]),
        "act_lo": act_floor(a for pr in prompts for a in pr.acts),
        "links": {"neuron": urls.neuron(slug, layer, neuron_), "head": urls.head(slug, head_layer, head)},
    }


def score_reason_project(ex: dict) -> str | None:
    """Why a row that shows the project's E (``score``) has none."""
    return states.score_reason(ex, rule="project")


def _pair_reason(p, ex: dict, run, rules) -> str | None:
    """Why a pair row's E is missing (None when it has one): its explanation's reason, or why it
    has none (:func:`app.pages.states.score_reason`)."""
    if ex:  # the list shows the project's E (``score``)
        return score_reason_project(ex)
    return states.score_reason(None, explanation_state=states.explanation_state(
        kept_why=states.kept_reason(p, rules), n_explanations=0, provenance=run.provenance),
        neurons_only=states.neurons_only(run.provenance))


def _counts(answers: dict) -> tuple[int, int, int, int] | None:
    """(TP, FN, TN, FP) of one explanation's stored answers (``{prompt_id: Classification}``)."""
    parsed = [(c.truth, c.predicted) for c in answers.values() if c.predicted is not None]
    if not parsed:
        return None
    return (sum(t and p for t, p in parsed), sum(t and not p for t, p in parsed),
            sum(not t and not p for t, p in parsed), sum(not t and p for t, p in parsed))


def head(s: Session, ctx: RunContext, *, layer: int, head_: int, order: str, kept: bool) -> dict:
    """The head page's data: the neurons the head was scored against (reverse index over
    pairs, paper §4.3), most driven first, each with its pair's best explanation.

    Raises:
        NotFound: the head is outside the run's range.
    """
    run, slug, partial = ctx.run, ctx.slug, ctx.partial
    rows = head_reads.head_pairs(s, run=run, head_layer=layer, head=head_, kept_only=kept, order=order,
                                 limit=Q.MAX_PAGE_ROWS)
    bests = explain_reads.best_of_pairs(s, pair_ids=[p.id for p, _ in rows])
    counts = explain_reads.answer_counts(s, explanation_ids=[bests[p.id].id for p, _ in rows
                                                             if p.id in bests and bests[p.id].n_unparsed])
    docs = explain_reads.heldout_documents(s, explanation_ids=[e.id for e in bests.values()])
    items = []
    for p, n in rows:
        best = bests.get(p.id)
        d = pair_dict(p)
        ex = explanation_dict(best, counts.get(best.id), docs.get(best.id)) if best is not None else {}
        d.update(layer=n.layer, neuron=n.neuron, kind=n.kind, token=n.token,
                 token_escaped=token_escaped(n.token_id, n.token, partial), congruence=n.congruence,
                 best_score=best.score if best is not None else None, best_explainer=ex.get("explainer"),
                 n_pos=ex.get("n_pos"),
                 n_neg=ex.get("n_neg"), **flat_uncertainty(ex), url=urls.neuron(slug, n.layer, n.neuron),
                 pair_url=urls.pair(slug, n.layer, n.neuron, layer, head_),
                 reason=_pair_reason(p, ex, run, ctx.rules))
        items.append(d)
    total = head_reads.count_head_pairs(s, run=run, head_layer=layer, head=head_, kept_only=kept)
    return {"run": run_dict(run), "head": {"layer": layer, "head": head_, "label": head_label(layer, head_)},
            "order": order, "kept": kept, "pairs": items, "total": total,
            "raw_scale": nice_scale(i["mean_attr_raw"] for i in items),
            "ln_scale": nice_scale(i["mean_attr_ln"] for i in items),
            "links": {f: urls.head(slug, layer, head_, fmt=f, order=order if order != "raw" else None,
                                   kept="true" if kept else None) for f in ("json", "csv")}}


def pairs(s: Session, ctx: RunContext, *, flt: Q.PairFilter, keys=None) -> dict:
    """A run's (neuron, head) pairs, one row per explanation (or per pair without one), with
    the explanation's text and score E (paper §4.4) and the pair's ablation (§5.4): per method
    of the run, the mean drop of p(token) on its held-out prompts where the head is active and
    where it is not, with their n (``ablation``, and flat as ``{method}_drop_active``,
    ``{method}_n_active``, ``{method}_drop_inactive``, ``{method}_n_inactive`` for the CSV: the
    figures of the pair page)."""
    run, slug, partial = ctx.run, ctx.slug, ctx.partial
    rows, total = Q.list_pairs(s, run=run, flt=flt, keys=keys)
    methods = ablation_reads.ablation_methods(s, run_id=run.id)
    drops = ablation_reads.mean_drops(s, pair_ids=list(dict.fromkeys(p.id for p, _, _ in rows)))
    counts = explain_reads.answer_counts(s, explanation_ids=[e.id for _, _, e in rows
                                                             if e is not None and e.n_unparsed])
    docs = explain_reads.heldout_documents(s, explanation_ids=[e.id for _, _, e in rows if e is not None])
    items = []
    for p, n, e in rows:
        d = {"layer": n.layer, "neuron": n.neuron, "kind": n.kind, "token": n.token,
             "token_escaped": token_escaped(n.token_id, n.token, partial), **pair_dict(p)}
        d.pop("id")
        ex = explanation_dict(e, counts.get(e.id), docs.get(e.id)) if e is not None else {}
        d.update(explainer=ex.get("explainer"), status=ex.get("status"), status_text=ex.get("status_text"),
                 score=ex.get("score"), score_authors=ex.get("score_authors"),
                 tpr=ex.get("tpr"), tnr=ex.get("tnr"), n_pos=ex.get("n_pos"), n_neg=ex.get("n_neg"),
                 **flat_uncertainty(ex), explanation=ex.get("text"),
                 reason=_pair_reason(p, ex, run, ctx.rules),
                 url=urls.pair(slug, n.layer, n.neuron, p.head_layer, p.head))
        d["ablation"] = {m: drops.get(p.id, {}).get(m, {}) for m in methods}
        for m, sides in d["ablation"].items():
            for side in ("active", "inactive"):
                d[f"{m}_drop_{side}"] = (sides.get(side) or {}).get("mean_drop")
                d[f"{m}_n_{side}"] = (sides.get(side) or {}).get("n", 0 if sides else None)
        items.append(d)
    pages = max(1, math.ceil(total / flt.per_page))
    defaults = vars(Q.PairFilter())
    params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in vars(flt).items()
              if k != "page" and v != defaults[k]}
    page = flt.page if flt.page > 1 else None
    return {"run": run_dict(run), "filter": vars(flt), "total": total, "page": flt.page, "pages": pages,
            "pairs": items, "explainers": sorted(explainers_of_run(s, run_id=run.id)), "layers": run.layers,
            "ablation_methods": methods,
            "links": {"prev": urls.pairs(slug, page=flt.page - 1, **params) if flt.page > 1 else None,
                      "next": urls.pairs(slug, page=flt.page + 1, **params) if flt.page < pages else None,
                      "page": urls.pairs(slug, page=page, **params),
                      "json": urls.pairs(slug, fmt="json", page=page, **params),
                      "csv": urls.pairs(slug, fmt="csv", **_all_rows(params))}}  # every page
